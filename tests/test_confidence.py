"""When a result is `confident` (lens_model.inference.confidence): the signals computed by hand, the checks and their
reasons, the thresholds read from the model's config, and `lens segment` reporting it. The demo model's right
answers and photo prompts are in tests/test_demo_model.py, the node's and the tracker's handling in the ROS and
tracking tests."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SAMPLE_PHOTO, run_cli
from PIL import Image

from lens_model.inference.answer import parse_answer
from lens_model.inference.confidence import ConfidenceSignals, judge, names_prompt, stability_score, unknown_words
from lens_model.model.config import ConfidenceConfig, LensConfig

BOX = "<|box_start|>(1,2),(30,40)<|box_end|>"
GOOD = ConfidenceSignals(
    format_ok=True, named=True, answer_name="the red circle", mask_fraction=0.05, stability=0.95, score=0.5
)


def test_stability_is_the_iou_of_the_masks_at_plus_and_minus_one():
    ramp = (torch.arange(-20, 20) + 0.5).repeat(7, 1)  # logits -19.5, -18.5, ..., 19.5 in every row
    # > +1: 19 values (1.5 .. 19.5), > -1: 21 values (-0.5 .. 19.5), per row
    assert stability_score(ramp) == pytest.approx(19 / 21)
    assert stability_score(ramp, offset=10.0) == pytest.approx(10 / 30)  # 10.5 .. 19.5 of -9.5 .. 19.5
    assert stability_score(torch.full((5, 5), 10.0)) == 1.0  # a crisp mask
    assert stability_score(torch.full((5, 5), -10.0)) == 0.0  # nothing even at -1: empty


@pytest.mark.parametrize(
    "text, prompt, want",
    [
        ("<|object_ref_start|>The Red  circle.<|object_ref_end|>" + BOX, "the red circle", True),
        ("<|object_ref_start|>the large red circle.<|object_ref_end|>" + BOX, "the red circle", False),
        (BOX, "the red circle", False),
        ("the red circle (1,2),(30,40)", "the red circle", False),
    ],
)  # fmt: skip
def test_a_grounding_answer_names_the_prompt_when_it_writes_it_back(text, prompt, want):
    assert names_prompt(parse_answer(text, "grounding"), prompt, "grounding") is want


@pytest.mark.parametrize(
    "text, want",
    [
        ('<think>the red circle is top left</think><answer>the blue square {"bbox_2d": [1, 2, 30, 40]}</answer>', True),
        ('<think>...</think><answer>{"bbox_2d": [1, 2, 30, 40]}</answer>', False),
        ('<think>...</think><answer>  [1, 2, 30, 40]</answer>', False),
        ("no answer block at all", False),
    ],
)  # fmt: skip
def test_a_think_answer_names_the_object_it_found_whatever_the_prompt_said(text, want):
    """The reasoning format names the target by its own attributes ("the blue square" for "the shape left of the red
    circle"): it must name something, not repeat the prompt."""
    parsed = parse_answer(text, "think_answer")
    assert names_prompt(parsed, "the shape left of the red circle", "think_answer") is want


def test_every_failed_check_is_in_the_reason():
    thresholds = ConfidenceConfig()
    assert judge(GOOD, thresholds) == (True, None)
    cases = {
        "format_ok": (False, "does not follow the model's answer format"),
        "named": (False, "names 'the red circle', not the asked-for object"),
        "mask_fraction": (0.0, "the mask is (nearly) empty (0.00 % of the image)"),
        "stability": (0.5, f"the mask is unstable (stability 0.50 < {thresholds.min_stability:g})"),
    }
    for field, (value, reason) in cases.items():
        confident, why = judge(dataclasses.replace(GOOD, **{field: value}), thresholds)
        assert not confident and reason in why, (field, why)
    whole = judge(dataclasses.replace(GOOD, mask_fraction=0.97), thresholds)
    assert whole == (False, "the mask covers 97 % of the image")
    both = judge(dataclasses.replace(GOOD, format_ok=False, stability=0.1), thresholds)[1]
    assert both.count("; ") == 1 and "format" in both and "unstable" in both
    scored = dataclasses.replace(thresholds, min_score=0.6)
    assert judge(GOOD, scored) == (False, "SAM2's IoU prediction 0.50 < 0.6")
    worst = dataclasses.replace(GOOD, format_ok=False, named=False, stability=0.0, mask_fraction=1.0)
    assert judge(worst, ConfidenceConfig.accept_all()) == (True, None)


def test_words_outside_the_models_vocabulary_make_a_result_unconfident():
    """A model whose config lists its training prompts' words: a prompt with another word is flagged, naming the
    words (case and punctuation aside, each once); an empty vocabulary checks nothing."""
    vocabulary = ["the", "shape", "left", "of", "red", "green", "circle", "triangle"]
    assert unknown_words("the red circle", vocabulary) == ()
    assert unknown_words("The shape LEFT of the green triangle.", vocabulary) == ()
    assert unknown_words("the purple circle", vocabulary) == ("purple",)
    assert unknown_words("the astronaut's helmet, the helmet", vocabulary) == ("astronaut's", "helmet")
    assert unknown_words("the purple circle", []) == ()
    flagged = dataclasses.replace(GOOD, unknown_words=("purple",))
    assert judge(flagged, ConfidenceConfig()) == (False, "the model was not trained on the word(s) 'purple'")
    assert ConfidenceConfig(vocabulary=["the"]).vocabulary == ["the"]
    with pytest.raises(ValueError, match="lens.confidence.vocabulary: expected a list of str"):
        ConfidenceConfig(vocabulary="the red circle")


def test_thresholds_come_from_the_models_config_and_can_be_replaced(tiny_grounding_dir, tmp_path):
    """One place: `lens.confidence` in config.json (defaults when absent); a pipeline's `confidence` replaces it."""
    from lens_model.inference.pipeline import LensPipeline

    assert LensConfig.from_dict({}).confidence == ConfidenceConfig()
    assert LensConfig.from_dict({"confidence": {"min_stability": 0.5}}).confidence.min_stability == 0.5
    with pytest.raises(ValueError, match="min_mask_fraction <= max_mask_fraction"):
        ConfidenceConfig(min_mask_fraction=0.5, max_mask_fraction=0.4)
    model = tmp_path / "model"
    shutil.copytree(tiny_grounding_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["lens"]["confidence"] = dataclasses.asdict(ConfidenceConfig.accept_all())
    (model / "config.json").write_text(json.dumps(config))
    image = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))[:96, :128]
    strict = LensPipeline.from_pretrained(str(tiny_grounding_dir), device="cpu", max_new_tokens=40)
    lenient = LensPipeline.from_pretrained(str(model), device="cpu", max_new_tokens=40)
    assert strict.confidence == ConfidenceConfig() and lenient.confidence == ConfidenceConfig.accept_all()
    a, b = strict(image, "the cup"), lenient(image, "the cup")
    assert a.text == b.text and np.array_equal(a.mask, b.mask)  # the thresholds change the verdict only
    assert not a.confident and a.reason and b.confident and b.reason is None
    lenient.confidence = ConfidenceConfig()
    assert lenient(image, "the cup").reason == a.reason
    lenient.confidence = dataclasses.replace(ConfidenceConfig.accept_all(), vocabulary=["the", "mug"])
    assert lenient(image, "the cup").reason == "the model was not trained on the word(s) 'cup'"
    assert lenient(image, "the mug").confident


def test_lens_segment_reports_an_unconfident_result_in_its_json_and_on_stderr(tiny_grounding_dir, tmp_path):
    """A random model's answer about a photo: confident false with the reason in the JSON (stdout and --json), one
    warning line on stderr, exit 0 (the result is still written)."""
    out = tmp_path / "result.json"
    code, stdout, stderr = run_cli(
        "segment", "--model", tiny_grounding_dir, "--image", SAMPLE_PHOTO, "--prompt", "the cup", "--device", "cpu",
        "--max-new-tokens", "40", "--json", out,
    )  # fmt: skip
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["confident"] is False and data["reason"]
    assert json.loads(out.read_text())["reason"] == data["reason"]
    assert 0.0 <= data["stability"] <= 1.0 and isinstance(data["named"], bool)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: the result is not confident: {data['reason']}"]
