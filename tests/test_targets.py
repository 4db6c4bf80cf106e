"""Several objects in one command (lens_model.inference.targets): the splitting rule on a table of commands, its
errors, the label image, and the demo model segmenting two targets of one command in one batched call — each target
gets its own object's mask (the demo scene's ground truth), in the command's order."""

import json

import numpy as np
import pytest
from conftest import REPO, run_cli
from PIL import Image

from lens_model.data.refer import decode_segmentation
from lens_model.image_io import load_image
from lens_model.inference.targets import (
    MAX_TARGETS,
    CommandResult,
    TargetError,
    label_image,
    segment_command,
    split_targets,
)

DEMO_MODEL = REPO / "assets" / "demo-model"
DEMO_SCENE = REPO / "assets" / "demo-scene.json"

# command -> target phrases (the rule in the module docstring and docs/ros.md)
SPLITS = [
    ("the red cup", ["the red cup"]),
    ("pick up the cup and the spoon", ["pick up the cup", "the spoon"]),
    ("the red block, the blue block", ["the red block", "the blue block"]),
    ("the cup left of the plate and the spoon", ["the cup left of the plate", "the spoon"]),
    ("the cup between the plate and the bowl", ["the cup between the plate and the bowl"]),
    ("the cup between the plate and the bowl and the spoon", ["the cup between the plate and the bowl", "the spoon"]),
    ("the red and white mug", ["the red and white mug"]),
    ("the mug, left of the laptop", ["the mug, left of the laptop"]),
    ("the cup and spoon", ["the cup and spoon"]),
    ("the cup then the spoon", ["the cup", "the spoon"]),
    ("the cup, and then the spoon", ["the cup", "the spoon"]),
    ("the cup; a fork, and my keys", ["the cup", "a fork", "my keys"]),
    ("THE CUP AND THE SPOON", ["THE CUP", "THE SPOON"]),
    ("the robot's gripper and the cup", ["the robot's gripper", "the cup"]),
    ('the box labelled "cups and the plates"', ['the box labelled "cups and the plates"']),
    ("the cup (and the lid) and the spoon", ["the cup (and the lid)", "the spoon"]),
    ("pick up the cup and put it in the box", ["pick up the cup and put it in the box"]),
    ("the green triangle and the red triangle", ["the green triangle", "the red triangle"]),
]


@pytest.mark.parametrize("command,phrases", SPLITS, ids=[c for c, _ in SPLITS])
def test_the_splitting_rule(command, phrases):
    assert split_targets(command) == phrases


def test_a_command_that_does_not_split_is_returned_unchanged():
    for command in ("  the red cup.  ", "the mug, left of the laptop"):
        assert split_targets(command) == [command]


@pytest.mark.parametrize(
    "command,reason",
    [
        ("the cup and", "nothing after 'and' at the end of 'the cup and'"),
        ("the cup,", "nothing after ',' at the end of"),
        ("the cup and.", "nothing after 'and.' at the end of 'the cup and.'"),
        ("the cup, the spoon and ?", "nothing after 'and' at the end of"),
        (", the cup", "empty target phrase before ',' at the start of ', the cup'"),
        ("and the spoon", "empty target phrase before 'and' at the start of"),
        ("the cup,, the spoon", "empty target phrase inside ',,' in 'the cup,, the spoon'"),
        ("the cup and and the spoon", "empty target phrase inside 'and and'"),
        ("   ", "the command is empty"),
    ],
)
def test_an_empty_phrase_is_refused_naming_the_place(command, reason):
    with pytest.raises(TargetError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        split_targets(command)


def test_more_targets_than_the_label_image_holds_are_refused():
    many = ", ".join(f"the object {i}" for i in range(MAX_TARGETS))
    assert len(split_targets(many)) == MAX_TARGETS == 254
    with pytest.raises(TargetError, match=r"^255 targets in one command; at most 254"):
        split_targets(many + ", the object 254")


def test_the_label_image_numbers_targets_in_order_and_the_first_named_keeps_an_overlap():
    a, b, c = (np.zeros((5, 7), bool) for _ in range(3))
    a[0:3, 0:3] = True
    b[2:5, 2:6] = True  # overlaps a at (2, 2)
    c[0, 6] = True
    labels = label_image([a, b, c])
    assert labels.dtype == np.uint8 and labels.shape == (5, 7)
    want = np.zeros((5, 7), np.uint8)
    want[b] = 2
    want[a] = 1
    want[c] = 3
    assert np.array_equal(labels, want) and labels[2, 2] == 1
    assert np.array_equal(label_image([b, a, c])[2, 2], 1)  # the first named wins, whichever it is


@pytest.fixture(scope="module")
def scene():
    spec = json.loads(DEMO_SCENE.read_text())
    rgb = load_image(DEMO_SCENE.parent / spec["image"])
    h, w = rgb.shape[:2]
    return rgb, {o["expression"]: decode_segmentation(o["segmentation"], h, w) for o in spec["objects"]}


@pytest.fixture(scope="module")
def demo_pipe():
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(str(DEMO_MODEL), device="cpu", dtype="float32")


def iou(a, b):
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


class CountingPipe:
    """The real pipeline, counting its calls (to see one batched call per command)."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, image, prompt, **kwargs):
        self.calls.append(prompt)
        return self.pipe(image, prompt, **kwargs)


def test_two_targets_of_one_command_get_their_own_objects_in_one_batched_call(demo_pipe, scene):
    rgb, gt = scene
    pipe = CountingPipe(demo_pipe)
    result = segment_command(pipe, rgb, "the green triangle and the red triangle")
    assert pipe.calls == [["the green triangle", "the red triangle"]]  # one call, both phrases
    assert result.ids == [1, 2] and result.phrases == ["the green triangle", "the red triangle"]
    first, second = result.targets
    assert iou(first.mask, gt["the green triangle"]) >= 0.5 and iou(first.mask, gt["the red triangle"]) < 0.2
    assert iou(second.mask, gt["the red triangle"]) >= 0.5 and iou(second.mask, gt["the green triangle"]) < 0.2
    labels = result.label_image()
    assert iou(labels == 1, gt["the green triangle"]) >= 0.5 and iou(labels == 2, gt["the red triangle"]) >= 0.5
    assert np.array_equal(result.union_mask(), first.mask | second.mask)
    # the batch gives each phrase what it gets alone
    for phrase, target in zip(result.phrases, result.targets):
        alone = demo_pipe(rgb, phrase)
        assert alone.text == target.text and np.array_equal(alone.mask, target.mask)


def test_a_single_phrase_is_one_call_exactly_as_a_prompt(demo_pipe, scene):
    rgb, _ = scene
    pipe = CountingPipe(demo_pipe)
    result = segment_command(pipe, rgb, "the blue circle")
    assert pipe.calls == ["the blue circle"] and isinstance(result, CommandResult) and result.ids == [1]
    assert result.targets[0].text == demo_pipe(rgb, "the blue circle").text
    off = segment_command(pipe, rgb, "the green triangle and the red triangle", multi_target=False)
    assert pipe.calls[-1] == "the green triangle and the red triangle" and off.ids == [1]


def test_lens_segment_multi_target_prints_one_entry_per_target_and_writes_the_label_mask(tmp_path, scene):
    _, gt = scene
    command = "the green triangle and the red triangle, the blue circle"
    code, out, err = run_cli(
        "segment", "--model", DEMO_MODEL, "--image", REPO / "assets" / "demo-scene.png", "--prompt", command,
        "--multi-target", "--device", "cpu", "--out-mask", tmp_path / "union.png",
        "--out-label-mask", tmp_path / "labels.png", "--out-overlay", tmp_path / "overlay.png",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["command"] == command
    assert [(t["id"], t["prompt"]) for t in record["targets"]] == [
        (1, "the green triangle"),
        (2, "the red triangle"),
        (3, "the blue circle"),
    ]
    assert record["label_mask_png"] == str(tmp_path / "labels.png")
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    for k, phrase in ((1, "the green triangle"), (2, "the red triangle"), (3, "the blue circle")):
        assert iou(labels == k, gt[phrase]) >= 0.5, phrase
        assert record["targets"][k - 1]["mask_pixels"] == int((labels == k).sum())  # no overlaps here
    assert np.array_equal(np.asarray(Image.open(tmp_path / "union.png")) == 255, labels > 0)
    assert Image.open(tmp_path / "overlay.png").size == (128, 128)


def test_lens_segment_multi_target_says_per_target_whether_it_is_confident(tmp_path):
    """Target 1 names a colour the demo model was never taught (its vocabulary check: not confident), target
    2 is right: each JSON entry carries its own confident/reason, and stderr warns about target 1 only."""
    command = "the purple square and the green triangle"
    code, out, err = run_cli(
        "segment", "--model", DEMO_MODEL, "--image", REPO / "assets" / "demo-scene.png", "--prompt", command,
        "--multi-target", "--device", "cpu", "--out-label-mask", tmp_path / "labels.png",
    )  # fmt: skip
    assert code == 0, err
    unsure, sure = json.loads(out)["targets"]
    assert (unsure["confident"], sure["confident"], sure["reason"]) == (False, True, None)
    assert unsure["reason"] == "the model was not trained on the word(s) 'purple'"
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: target 1 'the purple square' is not confident: {unsure['reason']}"]
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    assert (labels == 1).sum() == unsure["mask_pixels"] > 0  # the label mask keeps the unconfident target


def test_lens_segment_refuses_an_empty_phrase_before_loading_the_model(tmp_path):
    code, out, err = run_cli(
        "segment", "--model", tmp_path / "no-model", "--image", REPO / "assets" / "demo-scene.png",
        "--prompt", "the cup and", "--multi-target",
    )  # fmt: skip
    assert code != 0 and out == ""
    assert err.strip().splitlines()[-1].endswith("nothing after 'and' at the end of 'the cup and': remove it or name "
                                                 "the object")  # fmt: skip
    code, _, err = run_cli(
        "segment", "--image", REPO / "assets" / "demo-scene.png", "--prompt", "cup", "--out-label-mask",
        tmp_path / "l.png",
    )  # fmt: skip
    assert code != 0 and "--out-label-mask needs --multi-target" in err
