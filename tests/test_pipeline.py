"""LensPipeline end to end on CPU with the tiny model: shapes through every stage, sharing, coordinates."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import SAMPLE_PHOTO, run_cli
from PIL import Image

from lens_model.errors import ImageError, PromptError
from lens_model.inference.answer import smart_resize
from lens_model.inference.pipeline import LensPipeline
from lens_model.inference.prompting import box_from_answer
from lens_model.model.sam import preprocess_for_sam, upsample_logits


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return LensPipeline.from_pretrained(str(tiny_dir), device="cpu", max_new_tokens=8)


@pytest.fixture(scope="module")
def gpipe(tiny_grounding_dir):
    """Answers that differ between images and prompts and hold boxes: equal texts/boxes between paths mean
    something here (a random tiny model answers every input alike, without a box)."""
    return LensPipeline.from_pretrained(str(tiny_grounding_dir), device="cpu", max_new_tokens=40)


def _assert_inputs_matter(results):
    """Guard for the equality tests below: the answers compared there are not one constant, and boxes are compared
    (a box whose top-left corner lies outside a small image is refused: `box_error`)."""
    assert len({r.text for r in results}) >= 2 and any(r.box is not None for r in results), [r.text for r in results]


def test_result_fields_and_shapes(pipe):
    image = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))
    decoded = []
    hook = pipe.model.sam.sam_mask_decoder.register_forward_hook(lambda m, i, out: decoded.append(out))
    try:
        start = time.perf_counter()
        result = pipe(image, "the astronaut's helmet")
        wall = time.perf_counter() - start
    finally:
        hook.remove()
    h, w = image.shape[:2]
    assert result.mask.shape == (h, w) and result.mask.dtype == bool
    assert result.image_size == (h, w)
    assert result.mllm_image_size == smart_resize(h, w, 28, pipe.config.min_pixels, pipe.config.max_pixels)
    assert 1 <= result.num_tokens <= 8 and isinstance(result.text, str)
    assert result.box is None and result.box_error  # an untrained model does not answer with a box
    # the score is SAM2's IoU prediction for the very mask returned (one decoder call, one mask output)
    assert len(decoded) == 1
    low_res, iou = decoded[0][0], decoded[0][1]
    assert iou.shape == (1, 1) and result.score == pytest.approx(float(iou[0, 0]), abs=1e-6)
    assert np.array_equal(result.mask, (upsample_logits(low_res, (h, w))[0] > 0).numpy())
    assert set(result.timings) == {
        "preprocess",
        "mllm_vision",
        "generate",
        "context",
        "sam_encode",
        "sam_decode",
        "postprocess",
        "total",
    }
    # every stage took time, and the stages together account for the call: untimed work would leave a gap
    stages = {k: v for k, v in result.timings.items() if k != "total"}
    assert all(v > 0 for v in stages.values()), stages
    assert 0.9 * wall <= result.timings["total"] <= wall, (result.timings, wall)


def test_score_depends_on_the_input(gpipe):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (100, 110, 3), dtype=np.uint8) for _ in range(3)]
    scores = [gpipe(image, prompt).score for image in images for prompt in ("the cup", "the left one")]
    assert len({round(s, 6) for s in scores}) >= 4, scores


def test_accepts_path_pil_and_array_with_identical_results(gpipe):
    a = gpipe(SAMPLE_PHOTO, "the flag")
    b = gpipe(Image.open(SAMPLE_PHOTO), "the flag")
    c = gpipe(np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB")), "the flag")
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)
    assert a.text == b.text == c.text and a.box == b.box == c.box
    _assert_inputs_matter([a, gpipe(np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))[::-1], "the flag")])


def test_several_prompts_share_one_image_encoding_and_match_single_runs(gpipe):
    pipe = gpipe
    calls = {"vision": 0, "sam": 0}
    h1 = pipe.model.mllm.model.visual.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    h2 = pipe.model.sam.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("sam", calls["sam"] + 1))
    try:
        image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
        prompts = ["the red cup", "the small blue square on the left of the table"]
        batched = pipe(image, prompts)
        assert calls == {"vision": 1, "sam": 1}
    finally:
        h1.remove()
        h2.remove()
    _assert_inputs_matter(batched)
    for prompt, got in zip(prompts, batched):
        alone = pipe(image, prompt)
        assert got.text == alone.text and got.box == alone.box
        assert np.mean(got.mask == alone.mask) > 0.999  # left padding changes summation order only
        assert got.score == pytest.approx(alone.score, abs=1e-4)


def test_shapes_through_every_stage(pipe):
    model = pipe.model
    s = pipe.config.sam.image_size
    n, hidden = model.context.num_queries, model.hidden_size
    image = np.random.default_rng(1).integers(0, 255, (70, 130, 3), dtype=np.uint8)
    sam_in = preprocess_for_sam(image, s)
    assert sam_in.shape == (3, s, s) and sam_in.dtype == torch.float32
    # normalisation: (pixel - mean) / std with ImageNet statistics in 0-255 units
    flat = Image.fromarray(image).resize((s, s), Image.BILINEAR)
    assert sam_in[0, 0, 0].item() == pytest.approx((np.asarray(flat)[0, 0, 0] - 123.675) / 58.395, abs=1e-5)
    with torch.no_grad():
        feats = model.encode_sam_images(sam_in[None].repeat(2, 1, 1, 1))
        assert feats.image_embed.shape == (2, 256, s // 16, s // 16)
        assert [tuple(f.shape) for f in feats.high_res_feats] == [(2, 32, s // 4, s // 4), (2, 64, s // 8, s // 8)]
        states = torch.randn(2, n, hidden)
        prompt = model.context(states)
        assert prompt.shape == (2, 1, 256)
        low_res, iou = model.masks_from_query_states(states, feats)
        assert low_res.shape == (2, 1, s // 4, s // 4) and iou.shape == (2, 1)
        with pytest.raises(
            ValueError, match=rf"expects query states of shape \(B, {n}, {hidden}\), got \(2, {n + 1}, {hidden}\)"
        ):
            model.context(torch.randn(2, n + 1, hidden))


def test_released_style_official_mode_runs_end_to_end(tiny_official_dir):
    pipe = LensPipeline.from_pretrained(str(tiny_official_dir), device="cpu", max_new_tokens=4)
    assert pipe.config.context_pass == "official"
    result = pipe(np.zeros((50, 60, 3), np.uint8), "anything")
    assert result.mask.shape == (50, 60)


def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(PromptError, match="prompt is empty"):
        pipe(np.zeros((32, 32, 3), np.uint8), "   ")
    with pytest.raises(ImageError, match="image file not found"):
        pipe(tmp_path / "missing.jpg", "cup")
    with pytest.raises(PromptError, match=r"prompt is \d+ tokens with the image; this model accepts at most"):
        pipe(np.zeros((32, 32, 3), np.uint8), "cup " * 3000)


@pytest.mark.parametrize(
    "text, fmt, expected",
    [
        # MLLM saw 224x336 (h, w); original is 448x1008: x scales by 3, y by 2
        (
            "<|object_ref_start|>cup<|object_ref_end|><|box_start|>(10,20),(110,120)<|box_end|>",
            "grounding",
            (30.0, 40.0, 330.0, 240.0),
        ),
        (
            '<think>left one</think><answer>{"bbox_2d": [0, 0, 336, 224]}</answer>',
            "think_answer",
            (0.0, 0.0, 1008.0, 448.0),
        ),
        ("<|box_start|>(300,200),(400,300)<|box_end|>", "grounding", (900.0, 400.0, 1008.0, 448.0)),  # clipped
    ],
)
def test_box_from_answer_rescales_to_original_pixels(text, fmt, expected):
    box, error, format_ok = box_from_answer(text, fmt, (224, 336), (448, 1008))
    assert box == pytest.approx(expected) and error is None and format_ok


def test_box_from_answer_reports_missing_and_outside_boxes():
    assert box_from_answer("I cannot see it", "grounding", (224, 224), (448, 448)) == (
        None,
        "no box found in model output",
        False,
    )
    box, error, _ = box_from_answer("<|box_start|>(500,500),(600,600)<|box_end|>", "grounding", (224, 224), (448, 448))
    assert box is None and error == "box lies outside the image"


def test_sam_uses_released_decoder_postprocessing(pipe):
    decoder = pipe.model.sam.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability and not pipe.model.sam.training
    assert (decoder.dynamic_multimask_stability_delta, decoder.dynamic_multimask_stability_thresh) == (0.05, 0.98)


def test_bfloat16_path_keeps_sam_weights_float32_and_agrees_with_float32(tiny_dir, pipe):
    """The GPU default dtype, exercised on CPU: MLLM and context head in bf16, SAM2 under bf16 autocast."""
    bf16 = LensPipeline.from_pretrained(str(tiny_dir), device="cpu", dtype="bfloat16", max_new_tokens=8)
    assert bf16.model.mllm.dtype == torch.bfloat16 and bf16.model.context.learnable_query.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.model.sam.parameters())
    a, b = pipe(SAMPLE_PHOTO, "the helmet"), bf16(SAMPLE_PHOTO, "the helmet")
    assert b.mask.shape == a.mask.shape
    assert np.mean(a.mask == b.mask) > 0.95  # bf16 has ~3 significant digits; logits near 0 may flip
    assert b.score == pytest.approx(a.score, abs=0.02)


def test_batch_over_different_images_matches_single_runs(gpipe):
    pipe = gpipe
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 255, (60, 90, 3), dtype=np.uint8), rng.integers(0, 255, (120, 80, 3), dtype=np.uint8)]
    prompts, index = ["the cup", "the left block", "the cup"], [1, 0, 0]
    calls = []
    hook = pipe.model.sam.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        batched = pipe.segment_batch(images, prompts, index)
    finally:
        hook.remove()
    assert calls == [2]  # one SAM2 encoder call over the two distinct images
    _assert_inputs_matter(batched)
    for result, prompt, j in zip(batched, prompts, index):
        alone = pipe(images[j], prompt)
        assert result.mask.shape == images[j].shape[:2] == result.image_size
        assert result.text == alone.text and np.mean(result.mask == alone.mask) > 0.999
        assert result.box == alone.box and result.score == pytest.approx(alone.score, abs=1e-4)
    with pytest.raises(ValueError, match=r"image_index must lie in \[0, 1\]"):
        pipe.segment_batch(images, ["a"], [2])


def test_bfloat16_answers_agree_with_float32(tiny_grounding_dir, gpipe):
    """With answers that depend on the input: bf16 reads the same image and prompt into the same answer, except
    where two digits' logits lie within bf16 rounding of each other (rare: at most one of four here)."""
    bf16 = LensPipeline.from_pretrained(str(tiny_grounding_dir), device="cpu", dtype="bfloat16", max_new_tokens=40)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (150, 160, 3), dtype=np.uint8) for _ in range(2)]
    pairs = [(gpipe(image, p), bf16(image, p)) for image in images for p in ("the helmet", "the flag")]
    _assert_inputs_matter([a for a, _ in pairs])
    assert sum(a.text == b.text and a.box == b.box for a, b in pairs) >= 3, [(a.text, b.text) for a, b in pairs]
    assert all(np.mean(a.mask == b.mask) > 0.95 for a, b in pairs)


def test_a_model_trained_at_one_mllm_image_size_sees_every_image_at_that_size(tiny_grounding_dir, tmp_path):
    """`mllm_longest_side` (saved with the model, the size it was trained for): every input image is resized to
    that longest side before the smart resize, so the MLLM sees a 128 px scene and the same scene 3× larger alike
    (same answer; the box scales with the image), and a 640×480 frame at 128×96. Without it (released models) the
    MLLM sees each image at its own size."""
    from dataclasses import replace

    from lens_model.data.synthetic import make_synthetic
    from lens_model.model.checkpoint import load_model, save_model

    model, processor = load_model(tiny_grounding_dir)
    model.lens_config = replace(model.lens_config, mllm_longest_side=128)
    save_model(model, tmp_path / "sized", processor=processor)
    sized = LensPipeline.from_pretrained(str(tmp_path / "sized"), device="cpu", max_new_tokens=40)
    assert sized.config.mllm_longest_side == 128
    plain = LensPipeline.from_pretrained(str(tiny_grounding_dir), device="cpu", max_new_tokens=40)
    assert plain.config.mllm_longest_side is None
    scene = np.asarray(Image.open(make_synthetic(tmp_path / "s", 1, seed=0) / "images" / "synthetic_000000.png"))
    big = np.repeat(np.repeat(scene, 3, axis=0), 3, axis=1)  # 384 × 384, the same picture
    small, large = sized(scene, "the red circle"), sized(big, "the red circle")
    assert small.mllm_image_size == large.mllm_image_size == smart_resize(128, 128, 28, 3136, 224 * 224)
    assert small.text == large.text and small.box is not None
    assert large.box == pytest.approx(tuple(3 * v for v in small.box), abs=1e-3)
    frame = np.asarray(Image.fromarray(scene).resize((640, 480)))
    wide = sized(frame, "the red circle")
    assert wide.mllm_image_size == smart_resize(96, 128, 28, 3136, 224 * 224) == (84, 140)
    assert wide.mask.shape == (480, 640)
    assert plain(big, "the red circle").mllm_image_size == smart_resize(384, 384, 28, 3136, 224 * 224) != (140, 140)
    code, stdout, stderr = run_cli(
        "segment", "--model", tmp_path / "sized", "--image", SAMPLE_PHOTO, "--prompt", "the helmet", "--device", "cpu"
    )
    assert code == 0, stderr
    h, w = np.asarray(Image.open(SAMPLE_PHOTO)).shape[:2]
    longest = max(h, w)
    expected = smart_resize(round(h * 128 / longest), round(w * 128 / longest), 28, 3136, 224 * 224)
    assert tuple(json.loads(stdout)["mllm_image_size"]) == expected
