"""The shipped demo model (assets/demo-model, trained by `python -m training.demo`) gets synthetic scenes right:
it writes its reasoning and names the object it found, its masks are that object, a relational prompt's mask is the
referred object and not the anchor it names, and every way of running it (batched, ONNX Runtime, bfloat16, `lens
eval`, the ROS engine) gives the same answer. These are the tests that fail when the model or the pipeline around it
is broken (the query states, the answer parsing, the resizing), which tests on random tiny models cannot show."""

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import REPO, run_cli
from ros_helpers import needs_ros

from lens_model.data.refer import decode_segmentation
from lens_model.image_io import load_image

DEMO_MODEL = REPO / "assets" / "demo-model"
DEMO_SCENE = REPO / "assets" / "demo-scene.json"
# The README's relational prompt, which the model answers right: of the demo scene's four relational expressions it
# gets two right ("below the red triangle", "above the yellow square") and two wrong, about what its card's
# relational accuracy (0.66) leads one to expect.
RELATIONAL_PROMPT = "the shape below the red triangle"
# Fresh scenes of the recipe's kind (3-5 shapes whose colours and shapes repeat, 40 % relational expressions) from a
# seed no training or test split used; HELD_OUT_EXPRESSIONS of them (83 attribute, 157 relational). Measured on the
# shipped model, with 95 % intervals: attribute referred 0.771 [0.687, 0.855], named 0.976, format 1.000; relational
# referred 0.637 [0.561, 0.713], named 0.675, format 1.000, mask on the anchor 0.064 [0.032, 0.108]; gIoU 0.521
# [0.479, 0.561] (all-objects mask 0.253, chance 0.24-0.26). Each floor sits about three standard errors below.
HELD_OUT_SEED = 7
HELD_OUT_EXPRESSIONS = 240
FLOORS = {  # kind -> metric -> floor
    "attribute": {"referred-object accuracy": 0.62, "object named": 0.93, "format": 0.95},
    "relational": {"referred-object accuracy": 0.52, "object named": 0.56, "format": 0.95},
    "all": {"gIoU": 0.46, "format": 0.95},
}
MAX_ANCHOR_MASKS = 0.16  # relational expressions whose mask is the anchor's object
MIN_PHOTO_FLAGGED = 2 / 3  # of the colour-shape prompts about the sample photo, flagged as not confident
MIN_HELD_OUT_GIOU = FLOORS["all"]["gIoU"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def scene():
    """The demo scene: image, per attribute expression its object's GT mask, and per relational expression
    (expression, target's GT mask, anchor's GT mask, target's and anchor's attribute expressions)."""
    spec = json.loads(DEMO_SCENE.read_text())
    rgb = load_image(DEMO_SCENE.parent / spec["image"])
    h, w = rgb.shape[:2]
    objects = [(o["expression"], decode_segmentation(o["segmentation"], h, w)) for o in spec["objects"]]
    masks = dict(objects)
    relational = [
        (r["expression"], masks[r["target"]], masks[r["anchor"]], r["target"], r["anchor"]) for r in spec["relational"]
    ]
    return rgb, objects, relational


@pytest.fixture(scope="module")
def pipe():
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(str(DEMO_MODEL), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """(scenes root, HELD_OUT_EXPRESSIONS records: one sentence per referred object, every split)."""
    from lens_model.data import load_dataset
    from training.demo import DemoRecipe, make_scenes

    scenes = replace(DemoRecipe().scenes, name="held-out", n_images=100, seed=HELD_OUT_SEED)
    root = make_scenes(tmp_path_factory.mktemp("held-out"), scenes, progress=False)
    seen, records = set(), []
    for record in (r for split in ("train", "val", "testA") for r in load_dataset("synthetic", root, split)):
        if record.ids["ann_id"] not in seen:
            seen.add(record.ids["ann_id"])
            records.append(record)
    return root, records[:HELD_OUT_EXPRESSIONS]


def named(result, pipe) -> str:
    """The object the answer names ("the small red triangle")."""
    from lens_model.inference.answer import parse_answer

    return parse_answer(result.text, pipe.config.prompt.answer_format).object_ref or ""


def test_the_demo_scenes_relational_expressions_are_the_generators():
    """demo-scene.json's relational expressions, with their targets and anchors, are exactly those the reasoning
    task's generator writes for the scene's objects (by their polygons' boxes): each has one right answer."""
    from lens_model.data.synthetic import SceneObject, reasoning_expressions

    spec = json.loads(DEMO_SCENE.read_text())
    names = [o["expression"] for o in spec["objects"]]
    objects = [
        SceneObject(name.split()[2], name.split()[1], "small", tuple(o["segmentation"][0]))
        for name, o in zip(names, spec["objects"])
    ]  # one colour per object: "the {colour} {shape}" names it whatever its size
    generated = {
        (e.phrases[0], names[e.target], names[e.anchor])
        for k in range(len(objects))
        for e in reasoning_expressions(objects, k, (128, 128))
        if e.kind == "relational"
    }
    assert {(r["expression"], r["target"], r["anchor"]) for r in spec["relational"]} == generated
    assert RELATIONAL_PROMPT in {expression for expression, _, _ in generated}


def test_the_demo_model_is_a_normal_lens_directory_within_30_mb():
    from lens_model.model.checkpoint import load_model

    size = sum(p.stat().st_size for p in DEMO_MODEL.iterdir())
    assert size <= 30 * 2**20, f"{size / 2**20:.1f} MiB"
    model, _ = load_model(DEMO_MODEL)
    assert type(model).__name__ == "LensModel" and model.context.num_queries == 8
    assert model.lens_config.prompt.answer_format == "think_answer"


def test_each_prompt_gets_its_own_answer_and_the_right_mask(pipe, scene):
    """The answer follows the think/answer template and names the object asked about by its colour and shape (so
    the text depends on the prompt), the mask matches that object's GT (IoU >= 0.5) and not the others' masks."""
    rgb, objects, _ = scene
    assert len(objects) >= 2
    results = [pipe(rgb, expression) for expression, _ in objects]
    texts = [r.text for r in results]
    assert len(set(texts)) == len(texts), texts
    for (expression, gt), result in zip(objects, results):
        assert expression.removeprefix("the ") in named(result, pipe), result.text
        assert result.format_ok and result.text.startswith("<think>"), result.text
        assert iou(result.mask, gt) >= 0.5, expression
        others = [iou(result.mask, other) for e, other in objects if e != expression]
        assert max(others) < 0.2, expression
    for a in range(len(results)):
        for b in range(a + 1, len(results)):
            assert iou(results[a].mask, results[b].mask) < 0.2


def test_a_relational_prompt_masks_the_referred_object_not_the_anchor(pipe, scene):
    """RELATIONAL_PROMPT ("the shape below the red triangle"): the reasoning locates the anchor the prompt names,
    the answer names the object below it, and the mask is that object's, not the anchor's (the query states carry
    the answer's name to the mask decoder; a model or pipeline that segments the named anchor fails here)."""
    rgb, _, relational = scene
    expression, target, anchor, target_name, anchor_name = next(r for r in relational if r[0] == RELATIONAL_PROMPT)
    result = pipe(rgb, expression)
    assert result.format_ok, result.text
    assert anchor_name.removeprefix("the ") in result.text.split("</think>")[0], result.text
    assert target_name.removeprefix("the ") in named(result, pipe), result.text
    assert iou(result.mask, target) >= 0.5 and iou(result.mask, anchor) < 0.2, result.text


def test_right_answers_are_confident_and_photo_prompts_mostly_not(pipe, scene):
    """`confident` (lens_model.inference.confidence, thresholds calibrated by scripts/calibrate_confidence.py): the
    demo scene's expressions are right and confident; the twelve colour-shape prompts about the sample photo (masks
    of whatever the model picks there) are mostly flagged, each with its reason — MIN_PHOTO_FLAGGED, against 0.95 of
    photo crops in the calibration's evaluation draw and 9 of 12 measured here; the prompts of objects "at the middle
    center" pass. The score alone cannot tell right answers and photo answers apart."""
    from conftest import SAMPLE_PHOTO

    from lens_model.data.synthetic import COLORS, SHAPES

    rgb, objects, _ = scene
    right = pipe(rgb, [expression for expression, _ in objects])
    for (expression, gt), result in zip(objects, right):
        assert iou(result.mask, gt) >= 0.5 and result.confident and result.reason is None, (expression, result.reason)
    photo = pipe(load_image(SAMPLE_PHOTO), [f"the {colour} {shape}" for colour in COLORS for shape in SHAPES])
    flagged = [r for r in photo if not r.confident]
    assert len(flagged) >= MIN_PHOTO_FLAGGED * len(photo), [(r.prompt, r.stability) for r in photo]
    assert all(r.reason for r in flagged) and all(r.reason is None for r in photo if r.confident)
    scores = [r.score for r in right + photo]
    assert max(scores) - min(scores) < 0.1  # SAM2's IoU prediction is no help here


def test_held_out_scenes_are_segmented_above_the_stated_scores(held_out):
    """HELD_OUT_EXPRESSIONS expressions of fresh scenes whose colours and shapes repeat: per kind of expression,
    referred-object accuracy, the object named and format above the stated floors, far above chance; relational
    masks rarely land on the anchor; gIoU above the all-objects mask."""
    from training.demo import evaluate_model, summarize

    root, records = held_out
    outcomes = evaluate_model(DEMO_MODEL, records, progress=False)
    tables = {"all": summarize(outcomes, n_boot=100)}
    for kind in ("attribute", "relational"):
        part = [o for o in outcomes if o.kind == kind]
        assert len(part) >= 60, (kind, len(part))
        tables[kind] = summarize(part, n_boot=100)
    for kind, floors in FLOORS.items():
        for metric, floor in floors.items():
            assert tables[kind][metric]["value"] >= floor, (kind, metric, tables[kind][metric])
    for kind in ("attribute", "relational"):
        chance = tables[kind]["chance of picking the referred object"]["value"]
        assert tables[kind]["referred-object accuracy"]["value"] > chance + 0.2, (kind, tables[kind])
    assert tables["relational"]["mask on the anchor (relational)"]["value"] <= MAX_ANCHOR_MASKS
    assert tables["all"]["gIoU"]["value"] > tables["all"]["all-objects mask gIoU (baseline)"]["value"] + 0.05


NON_SQUARE_SIZES = [(96, 160), (160, 96)]  # (H, W): wide and tall, so that any swap of the two axes shows
# Each edge of the mask's box vs the GT object's box: the decoder's 32 × 32 logits, upsampled, round a shape's
# corners and a triangle's apex by a few pixels, and a speck of mask apart from the object widens the box (measured
# on the masks that hit their object: 6 of 9 boxes within 6 px, median 3.3 px, the largest 102 px, at 96 × 160).
MASK_BOX_TOLERANCE_PX = 6
MIN_CLOSE_MASK_BOXES = 0.6
# Prompts of the non-square scenes whose mask is the named object (IoU >= 0.5): measured 9 of 10 (96 × 160) and 7 of
# 10 (160 × 96; the model trained on square scenes only).
MIN_NON_SQUARE_HITS = 0.6


def non_square_scenes(hw, n=3):
    """`n` scenes of 2-4 objects in distinct colours on a textured background drawn at (H, W) = `hw` from the
    held-out seed -> [(image, [(prompt, GT mask, GT box)])], one colour-and-shape prompt per object."""
    from lens_model.data.synthetic import plain_descriptions, render, sample_scene

    rng = np.random.default_rng(HELD_OUT_SEED)
    scenes = []
    for _ in range(n):
        objects = sample_scene(rng, hw, max_objects=4, min_objects=2, object_scale=1.1, distinct_colors=True)
        rgb, masks = render(objects, hw, rng, "texture")
        items = []
        for k, (obj, mask) in enumerate(zip(objects, masks)):
            names = [p for p in plain_descriptions(objects, k) if obj.color in p.split()]
            if names:
                items.append((f"the {names[0]}", mask, obj.bbox))
        scenes.append((rgb, items))
    return scenes


@pytest.mark.parametrize("hw", NON_SQUARE_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_non_square_scenes_get_masks_and_boxes_in_their_own_pixels(pipe, hw):
    """Scenes 96 × 160 and 160 × 96 (the model trained on 128 × 128 only): masks come back at (H, W), on the named
    object (IoU >= 0.5) for at least MIN_NON_SQUARE_HITS of the prompts; those masks' boxes within
    MASK_BOX_TOLERANCE_PX of the GT box for at least MIN_CLOSE_MASK_BOXES of them (a stray speck of mask widens a
    box, not the IoU) and within 4 px at the median; and the answer's box is the MLLM-image box
    rescaled by W / w across and H / h down — checked against the answer itself, so it holds for the demo model's
    nearly constant boxes and any better ones (a box rescaled with the factors swapped is off by several pixels
    here)."""
    from lens_model.data.records import mask_box
    from lens_model.inference.answer import parse_answer
    from lens_model.inference.prompting import mllm_image

    h, w = hw
    ious, box_errors, swap_shifts, checked_boxes = [], [], [], 0
    for rgb, items in non_square_scenes(hw):
        assert rgb.shape[:2] == hw
        results = pipe(rgb, [prompt for prompt, _, _ in items])
        llm_w, llm_h = mllm_image(rgb, pipe.config, pipe.mllm_longest_side).size
        assert (llm_h > llm_w) == (h > w)  # the MLLM sees the same orientation
        for (_, gt, gt_box), result in zip(items, results):
            assert result.mask.shape == hw and result.image_size == hw and result.mllm_image_size == (llm_h, llm_w)
            ious.append(iou(result.mask, gt))
            if ious[-1] >= 0.5:
                box_errors.append(np.abs(np.subtract(mask_box(result.mask), gt_box)).max())
            answer = parse_answer(result.text, pipe.config.prompt.answer_format).box  # MLLM-image pixels
            if answer is None:
                continue
            x1, y1, x2, y2 = answer
            want = (x1 * w / llm_w, y1 * h / llm_h, x2 * w / llm_w, y2 * h / llm_h)
            want = tuple(min(max(v, 0.0), side) for v, side in zip(want, (w, h, w, h)))
            assert result.box == pytest.approx(want, abs=0.01), (result.text, result.box)
            swapped = (x1 * h / llm_h, y1 * w / llm_w, x2 * h / llm_h, y2 * w / llm_w)
            swap_shifts.append(np.abs(np.subtract(swapped, want)).max())
            checked_boxes += 1
    close = np.asarray(box_errors) <= MASK_BOX_TOLERANCE_PX
    assert np.mean(close) >= MIN_CLOSE_MASK_BOXES and np.median(box_errors) <= 4, box_errors
    assert np.mean(np.asarray(ious) >= 0.5) >= MIN_NON_SQUARE_HITS, ious
    assert checked_boxes >= 0.8 * len(ious)  # the model wrote boxes: the rescaling was checked
    assert max(swap_shifts) > 3  # a swapped rescaling would have failed the check above


def test_batched_segmentation_gives_the_single_answers(pipe, scene):
    rgb, objects, _ = scene
    prompts = [expression for expression, _ in objects]
    batched = pipe(rgb, prompts)
    for prompt, together in zip(prompts, batched):
        alone = pipe(rgb, prompt)
        assert together.text == alone.text
        assert np.mean(together.mask == alone.mask) >= 0.999
        assert together.score == pytest.approx(alone.score, abs=1e-4)


def test_onnxruntime_backend_gives_the_official_answers(pipe, scene, tmp_path_factory):
    from export_helpers import MIN_MASK_AGREEMENT, exported

    from lens_model.inference.pipeline import LensPipeline

    ort_pipe = LensPipeline.from_pretrained(
        str(DEMO_MODEL),
        device="cpu",
        dtype="float32",
        backend="onnxruntime",
        backend_dir=str(exported(DEMO_MODEL, tmp_path_factory)),
    )
    rgb, objects, _ = scene
    for expression, gt in objects:
        want, got = pipe(rgb, expression), ort_pipe(rgb, expression)
        assert got.text == want.text
        assert np.mean(got.mask == want.mask) >= MIN_MASK_AGREEMENT
        assert iou(got.mask, gt) >= 0.5


# `lens export --int8` (dynamic int8 matrix products, lens_model.export.quantize) against the float32 torch model:
# pixels of each mask that must agree, and how far the held-out gIoU may move (for the earlier demo model: 99.8 % or
# more on the demo scene, held-out gIoU 0.771 -> 0.768; the current one passes both bounds).
MIN_INT8_MASK_AGREEMENT = 0.99
MAX_INT8_GIOU_CHANGE = 0.02


def test_int8_export_keeps_the_masks_and_the_held_out_score(pipe, scene, held_out, tmp_path_factory):
    """The int8 graphs (run on the CPU because --int8 was asked without timing) give the same answers, masks that
    agree with float32 torch on >= 99 % of pixels and still match the objects, and a held-out gIoU within 0.02."""
    from export_helpers import exported

    from lens_model.inference.pipeline import LensPipeline
    from lens_model.parity import mask_agreement
    from training.demo import evaluate_model, summarize

    export_dir = exported(DEMO_MODEL, tmp_path_factory, int8=True)
    int8 = LensPipeline.from_pretrained(
        str(DEMO_MODEL), device="cpu", dtype="float32", backend="onnxruntime", backend_dir=str(export_dir)
    )
    assert all(path.name.endswith(".int8.onnx") for path in int8.backend.files.values()), int8.backend.files
    rgb, objects, _ = scene
    for expression, gt in objects:
        want, got = pipe(rgb, expression), int8(rgb, expression)
        assert got.text == want.text
        assert mask_agreement(got.mask, want.mask) >= MIN_INT8_MASK_AGREEMENT, expression
        assert iou(got.mask, gt) >= 0.5, expression
    _, records = held_out
    scores = [
        summarize(evaluate_model(DEMO_MODEL, records, progress=False, backend_dir=d), n_boot=10)["gIoU"]["value"]
        for d in (None, export_dir)
    ]
    assert abs(scores[1] - scores[0]) <= MAX_INT8_GIOU_CHANGE, scores


def test_bfloat16_gives_the_float32_answers(pipe, scene):
    """bf16 (MLLM weights in bf16, SAM2 under bf16 autocast) writes the same reasoning and name, a box within
    BF16_BOX_TOLERANCE_PX (measured: one coordinate off by 1 px in one of the four answers) and a mask that still
    matches the object: 98 % of pixels agree with fp32 (bf16 moves mask edges by a pixel here and there)."""
    from conftest import BF16_BOX_TOLERANCE_PX, assert_same_answer

    from lens_model.inference.pipeline import LensPipeline

    bf16 = LensPipeline.from_pretrained(str(DEMO_MODEL), device="cpu", dtype="bfloat16")
    rgb, objects, _ = scene
    for expression, gt in objects:
        want, got = pipe(rgb, expression), bf16(rgb, expression)
        assert_same_answer(got, want, pipe.config.prompt.answer_format, BF16_BOX_TOLERANCE_PX)
        assert np.mean(got.mask == want.mask) >= 0.98
        assert iou(got.mask, gt) >= 0.5


def test_lens_eval_on_a_synthetic_split_lands_in_the_stated_band(held_out, tmp_path):
    """`lens eval` (the evaluation protocol's own code) on the held-out scenes' train split: gIoU within
    [MIN_HELD_OUT_GIOU, 1] — a broken model (random: ~0.05) or pipeline falls out of it."""
    root, _ = held_out
    out = tmp_path / "eval"
    code, stdout, stderr = run_cli(
        "eval", "--model", DEMO_MODEL, "--dataset", "synthetic", "--data-root", root, "--split", "train",
        "--limit", "24", "--device", "cpu", "--out", out, "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    giou = results["gIoU"]
    assert MIN_HELD_OUT_GIOU <= giou <= 1.0, results


def test_the_ros_engine_publishes_the_right_mask(scene, pipe):
    """lens_ros's engine (the node's logic, without rclpy) on a camera frame of the demo scene and a text command:
    the published mono8 mask is the named object."""
    from ros_helpers import image_msg, lens_test_typestore

    from lens_ros.engine import SegmentationEngine
    from lens_ros.params import NodeSettings

    store = lens_test_typestore()
    rgb, objects, _ = scene
    published = []
    settings = NodeSettings.from_values({"audio_enabled": False, "service_timeout_s": 60.0})
    engine = SegmentationEngine(pipe, settings, publish=published.append, clock=lambda: 10.0, types=store.types)
    engine.start()
    try:
        engine.on_image(image_msg(store, rgb, sec=10, frame="camera"))
        for expression, gt in objects:
            outcome = engine.submit(expression).wait(60)
            assert outcome.success, outcome.message
            m = outcome.messages.mask
            mask = np.asarray(m.data).reshape(m.height, m.width) == 255
            assert iou(mask, gt) >= 0.5, expression
            assert m.header.frame_id == "camera"
    finally:
        engine.stop()


def test_the_readme_quick_start_segments_the_named_object(scene, tmp_path):
    """The README's first command, as written (its outputs redirected to a temporary folder): the mask it writes
    is the object its prompt names."""
    import shlex

    from PIL import Image

    line = next(
        line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("bash scripts/setup_env.sh")
    )
    args = [a.replace("runs/", f"{tmp_path}/") for a in shlex.split(line.split(".venv/bin/lens ", 1)[1])]
    assert args[0] == "segment" and "assets/demo-model" in args
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    prompt = args[args.index("--prompt") + 1]
    assert prompt == RELATIONAL_PROMPT  # the front page shows the model reasoning
    targets = dict(scene[1]) | {expression: target for expression, target, *_ in scene[2]}
    gt = targets[prompt]
    mask = np.asarray(Image.open(args[args.index("--out-mask") + 1])) > 0
    assert iou(mask, gt) >= 0.5 and json.loads(stdout)["format_ok"]


@needs_ros
def test_the_ros_pages_lens_node_command_segments_the_named_objects(scene, tmp_path):
    """ROS 2 from PyPI (docs/ros.md, "Without a ROS install"): its `lens_node` command as written (the demo model
    on CPU, `image` remapped to /camera/image_raw), driven from an rclpy node here with camera frames of the demo
    scene and one command per object: each SegmentationResult on /result holds the named object's mask and the
    frame's header, and SIGINT ends the node with exit code 0."""
    import os
    import shlex
    import signal
    import subprocess
    import threading

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from ros_helpers import lens_node_command, wait_for
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String

    from lens_interfaces.msg import SegmentationResult
    from lens_ros.messages import array_to_image

    page = (REPO / "docs" / "ros.md").read_text().splitlines()
    args = shlex.split(next(line for line in page if line.startswith(".venv/bin/lens_node")))[1:]
    assert args[0] == "--ros-args" and {"model:=assets/demo-model", "image:=/camera/image_raw"} <= set(args)
    log_path = tmp_path / "lens_node.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            lens_node_command(*args),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("readme_camera", context=context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    results = []
    node.create_subscription(SegmentationResult, "/result", results.append, 10)
    camera = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    commands = node.create_publisher(String, "/command", 10)
    threading.Thread(target=executor.spin, daemon=True).start()
    rgb, objects, _ = scene

    def asked(expression: str):
        """Publish a fresh frame and the command (both may be lost) until a result for it arrives."""
        header = Header(stamp=node.get_clock().now().to_msg(), frame_id="demo_camera")
        camera.publish(array_to_image(rgb, "rgb8", header))
        time.sleep(0.3)
        commands.publish(String(data=expression))
        return wait_for(lambda: any(r.prompt == expression for r in results), 3)

    try:
        assert wait_for(lambda: commands.get_subscription_count() > 0 or proc.poll() is not None, 120)
        for expression, gt in objects:
            assert wait_for(lambda expression=expression: asked(expression), 60), log_path.read_text()[-3000:]
            result = next(r for r in results if r.prompt == expression)
            assert result.header.frame_id == "demo_camera" and result.mask.header == result.header
            mask = np.frombuffer(bytes(result.mask.data), np.uint8).reshape(result.mask.height, result.mask.width)
            assert iou(mask == 255, gt) >= 0.5, expression
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
