"""Answer parsing (both formats), smart resize against transformers, box transforms."""

import random

import pytest

from lens_model.inference.answer import ANSWER_FORMATS, box_iou, clip_box, parse_answer, rescale_box, smart_resize


@pytest.mark.parametrize(
    "text, box",
    [
        (
            "<|object_ref_start|>the red cup<|object_ref_end|><|box_start|>(12,34),(56,78)<|box_end|><|im_end|>",
            (12, 34, 56, 78),
        ),
        ("<|box_start|>( 12 , 34 ) , ( 56.5 , 78.25 )<|box_end|>", (12, 34, 56.5, 78.25)),
        ("<|box_start|>(-5,-3),(10,20)<|box_end|>", (-5, -3, 10, 20)),
        ("<|box_start|>(1,2),(3,4)<|box_end|> and <|box_start|>(10,20),(30,40)<|box_end|>", (1, 2, 3, 4)),
    ],
)
def test_grounding_tokens(text, box):
    parsed = parse_answer(text, "grounding")
    assert parsed.box == box and parsed.format_ok and parsed.error is None


def test_grounding_object_ref_is_returned():
    parsed = parse_answer(
        "<|object_ref_start|>the red cup.<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", "grounding"
    )
    assert parsed.object_ref == "the red cup."


@pytest.mark.parametrize(
    "text, box",
    [
        ("the box is [10, 20, 30, 40] I think", (10, 20, 30, 40)),
        ("(1.5,2,3,4)", (1.5, 2, 3, 4)),
        ("at (10,20),(30,40).", (10, 20, 30, 40)),
        ("first (5,6),(7,8) then [1,2,3,4]", (5, 6, 7, 8)),
    ],
)
def test_grounding_fallback_takes_the_first_box_anywhere(text, box):
    parsed = parse_answer(text, "grounding")
    assert parsed.box == box and not parsed.format_ok


@pytest.mark.parametrize(
    "text, error",
    [
        ("<|box_start|>(50,20),(10,40)<|box_end|>", "box has x2 <= x1 (10 <= 50)"),
        ("<|box_start|>(10,40),(50,40)<|box_end|>", "box has y2 <= y1 (40 <= 40)"),
        ("I don't see any cup here.", "no box found in model output"),
        ("<|box_start|>(1,2),(3", "no box found in model output"),
        ("", "no box found in model output"),
    ],
)
def test_grounding_invalid_or_missing_box(text, error):
    parsed = parse_answer(text, "grounding")
    assert parsed.box is None and parsed.error == error


@pytest.mark.parametrize(
    "text, box",
    [
        (
            '<think>The cup on the left is red.</think><answer>{"bbox_2d": [10, 20, 30, 40], "label": "cup"}</answer>',
            (10, 20, 30, 40),
        ),
        (
            '<think>x</think>\n<answer>[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]</answer><|im_end|>',
            (1, 2, 3, 4),
        ),
        ("<think>x</think><answer>[1.5, 2, 3, 4]</answer>", (1.5, 2, 3, 4)),
        ("<thinking>paper spelling</thinking><answer>[1, 2, 3, 4]</answer>", (1, 2, 3, 4)),
    ],
)
def test_think_answer_json(text, box):
    parsed = parse_answer(text, "think_answer")
    assert parsed.box == box and parsed.format_ok and parsed.error is None


def test_think_answer_keeps_reasoning_and_answer_text():
    parsed = parse_answer("<think> left one </think><answer> [1, 2, 3, 4] </answer>", "think_answer")
    assert parsed.reasoning == "left one" and parsed.answer_text == "[1, 2, 3, 4]"


@pytest.mark.parametrize(
    "text, box, format_ok, error",
    [
        (
            "<think>x</think><answer>{bbox: [1, 2, 3, 4]}</answer>",
            (1, 2, 3, 4),
            True,
            None,
        ),  # invalid JSON, box still readable
        ("<think>x</think><answer>no idea</answer>", None, True, "answer is not valid JSON"),
        ('<think>x</think><answer>{"label": "cup"}</answer>', None, True, "no box in the JSON answer"),
        ("<think>x</think><answer>[1, 2, 3, 4]", None, False, "no <answer>...</answer> block in model output"),
        (
            "<answer>[1, 2, 3, 4]</answer>",
            (1, 2, 3, 4),
            False,
            None,
        ),  # no reasoning block: box kept, format not followed
        ("<think>x</think><answer>[5, 2, 3, 4]</answer>", None, True, "box has x2 <= x1 (3 <= 5)"),
        # a name before the JSON (the demo model's answers): the box's own fault is named, not the JSON's
        (
            '<think>x</think><answer>the red square {"bbox_2d": [8, 90, 37, 11]}</answer>',
            None,
            True,
            "box has y2 <= y1 (11 <= 90)",
        ),
        ('<think>x</think><answer>the red square {"bbox_2d": [8, 9, 37, 41]}</answer>', (8, 9, 37, 41), True, None),
    ],
)
def test_think_answer_malformed(text, box, format_ok, error):
    parsed = parse_answer(text, "think_answer")
    assert (parsed.box, parsed.format_ok, parsed.error) == (box, format_ok, error)


def test_unknown_format_lists_valid_ones():
    assert ANSWER_FORMATS == ("grounding", "think_answer")
    with pytest.raises(ValueError, match="valid: grounding, think_answer"):
        parse_answer("x", "json")


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    rng = random.Random(0)
    for _ in range(500):
        h, w = rng.randint(10, 4000), rng.randint(10, 4000)
        if max(h, w) / min(h, w) > 200:
            continue
        kwargs = dict(factor=28, min_pixels=56 * 56, max_pixels=rng.choice([1_000_000, 224 * 224, 12845056]))
        assert smart_resize(h, w, **kwargs) == tuple(reference(h, w, **kwargs)), (h, w, kwargs)


def test_smart_resize_hand_values():
    assert smart_resize(480, 640, 28, 3136, 1_000_000) == (476, 644)  # rounded to multiples of 28, under the cap
    assert smart_resize(2000, 3000, 28, 3136, 1_000_000) == (812, 1204)  # scaled down: 812*1204 = 977,648 <= 1e6
    assert smart_resize(20, 20, 28, 56 * 56, 1_000_000) == (56, 56)  # scaled up to min_pixels
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


def test_rescale_box():
    assert rescale_box((14, 28, 140, 280), (280, 560), (560, 1120)) == (28, 56, 280, 560)
    back = rescale_box(rescale_box((3.0, 7.0, 11.0, 13.0), (100, 200), (37, 91)), (37, 91), (100, 200))
    assert back == pytest.approx((3.0, 7.0, 11.0, 13.0))


def test_clip_box():
    assert clip_box((-5, -5, 50, 50), (40, 30)) == (0, 0, 30, 40)
    assert clip_box((100, 100, 200, 200), (40, 30)) is None


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


REF = "<|object_ref_start|>the red cup.<|object_ref_end|>"


@pytest.mark.parametrize(
    "text, ok",
    [
        (REF + "<|box_start|>(12,34),(56,78)<|box_end|>", True),
        (REF + "<|box_start|>(12,34),(56,78)<|box_end|><|im_end|>", True),
        (REF + "<|box_start|>(12,34),(56,78)<|box_end|><|im_end|><|endoftext|><|endoftext|>", True),  # padding
        (REF + "<|box_start|>somewhere left<|box_end|>", True),  # the box reward judges the box, not the format
        ("<|box_start|>(12,34),(56,78)<|box_end|>", False),  # no object ref
        (" " + REF + "<|box_start|>(12,34),(56,78)<|box_end|>", False),  # must start with the template
        (REF + "<|box_start|>(12,34),(56,78)<|box_end|> there", False),  # nothing between box and end token
        (REF + " <|box_start|>(12,34),(56,78)<|box_end|>", False),  # box tokens right after the ref
        ("<|object_ref_start|>the red\ncup<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", False),  # 1 line
        ("<|object_ref_start|>cup<|box_start|>(1,2),(3,4)<|box_end|>", False),
        ("the cup is at [12, 34, 56, 78]", False),
    ],
)
def test_grounding_template_as_the_released_format_reward(text, ok):
    assert parse_answer(text, "grounding").template_ok is ok


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>x</think><answer>[1, 2, 3, 4]</answer>", True),
        ("<think>two\nlines</think>\n\n<answer>no box at all</answer>", True),  # content is not checked
        ("<think>x</think><answer>[1, 2, 3, 4]</answer> and more", True),  # anything may follow
        ("<thinking>x</thinking><answer>[1, 2, 3, 4]</answer>", False),  # read, but not the released template
        (" <think>x</think><answer>[1, 2, 3, 4]</answer>", False),  # must start with <think>
        ("<answer>[1, 2, 3, 4]</answer>", False),
        ("<think>x</think> so <answer>[1, 2, 3, 4]</answer>", False),
        ("<think>x</think><answer>[1, 2, 3, 4]", False),
    ],
)
def test_think_template_as_the_released_format_reward(text, ok):
    assert parse_answer(text, "think_answer").template_ok is ok
