"""training.rewards: hand-computed rewards, the registry (names, import strings, decorator) and score()."""

import math
import sys

import numpy as np
import pytest

from lens_model.errors import LensError
from training.rewards import (
    DEFAULT_REWARD_WEIGHTS,
    REWARD_FUNCTIONS,
    RolloutSample,
    box_iou_reward,
    format_reward,
    register_reward,
    resolve_reward,
    score,
    segment_iou_reward,
)

GROUNDING = "<|object_ref_start|>cup<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|>"
THINK = '<think>the cup is left</think><answer>{"bbox_2d": [0, 0, 10, 10]}</answer>'


def _mask(hw=(4, 4), on=()):
    m = np.zeros(hw, dtype=bool)
    for r, c in on:
        m[r, c] = True
    return m


def _sample(text=GROUNDING, fmt="grounding", gt_box=(5, 5, 15, 15), gt_mask=None, pred_mask=None):
    gt_mask = _mask() if gt_mask is None else gt_mask
    return RolloutSample(text, fmt, gt_box, gt_mask, gt_mask.copy() if pred_mask is None else pred_mask)


def my_reward(s: RolloutSample) -> float:  # referenced as "test_grpo_rewards:my_reward"
    return float(len(s.expression))


# ------------------------------------------------------------------------------------------------ rewards
def test_grounding_answer_box_iou_squared_by_hand():
    # (0,0,10,10) vs (5,5,15,15): I = 25, U = 100 + 100 − 25 = 175
    s = _sample()
    assert format_reward(s) == 1.0
    assert box_iou_reward(s) == (25 / 175) ** 2


def test_grounding_answer_with_trailing_im_end_still_formats():
    assert format_reward(_sample(GROUNDING + "<|im_end|>")) == 1.0


def test_think_answer_json():
    s = _sample(THINK, "think_answer", gt_box=(0, 0, 10, 20))
    assert format_reward(s) == 1.0
    assert box_iou_reward(s) == pytest.approx(0.5**2, abs=1e-15)  # I = 100, U = 200


def test_think_answer_missing_think_block_is_format_0_but_box_counts():
    s = _sample('<answer>{"bbox_2d": [0, 0, 10, 10]}</answer>', "think_answer", gt_box=(0, 0, 10, 10))
    assert format_reward(s) == 0.0
    assert box_iou_reward(s) == 1.0


def test_malformed_text_is_format_0_box_0():
    s = _sample("I think it is the cup on the left, at 0 0 10 10")
    assert format_reward(s) == 0.0
    assert box_iou_reward(s) == 0.0
    s = _sample("<think>unfinished", "think_answer")
    assert format_reward(s) == 0.0 and box_iou_reward(s) == 0.0


def test_grounding_fallback_box_counts_without_format():
    # released parser: the first (a,b),(c,d) anywhere — box reward yes, format reward no
    s = _sample("the cup (0,0),(10,10)", gt_box=(0, 0, 10, 10))
    assert format_reward(s) == 0.0
    assert box_iou_reward(s) == 1.0


def test_degenerate_box_is_no_box():
    assert box_iou_reward(_sample("<|box_start|>(10,0),(0,10)<|box_end|>")) == 0.0


def test_no_gt_box_rewards_giving_no_box():
    assert box_iou_reward(_sample("<|object_ref_start|>nothing<|object_ref_end|>", gt_box=None)) == 1.0
    assert box_iou_reward(_sample(GROUNDING, gt_box=None)) == 0.0


def test_disjoint_boxes_zero():
    assert box_iou_reward(_sample(gt_box=(20, 20, 30, 30))) == 0.0


def test_segment_iou_squared_by_hand():
    gt = _mask(on=[(0, 0), (0, 1), (1, 0)])
    pred = _mask(on=[(0, 0), (1, 1)])  # I = 1, U = 4
    assert segment_iou_reward(_sample(gt_mask=gt, pred_mask=pred)) == (1 / 4) ** 2
    assert segment_iou_reward(_sample(gt_mask=gt, pred_mask=gt.copy())) == 1.0


def test_segment_iou_empty_conventions():
    assert segment_iou_reward(_sample(gt_mask=_mask(), pred_mask=_mask())) == 1.0
    assert segment_iou_reward(_sample(gt_mask=_mask(on=[(2, 2)]), pred_mask=_mask())) == 0.0
    assert segment_iou_reward(_sample(gt_mask=_mask(), pred_mask=_mask(on=[(2, 2)]))) == 0.0


def test_segment_iou_accepts_uint8_masks():
    gt = _mask(on=[(0, 0), (0, 1)]).astype(np.uint8) * 255
    pred = _mask(on=[(0, 0)]).astype(np.uint8)
    assert segment_iou_reward(_sample(gt_mask=gt, pred_mask=pred)) == 0.25


def test_segment_iou_shape_mismatch_names_both_shapes():
    s = _sample(gt_mask=_mask((4, 5)), pred_mask=_mask((5, 4)))
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(4, 5\)"):
        segment_iou_reward(s)


def test_sample_validation():
    with pytest.raises(LensError, match="answer_format"):
        _sample(fmt="json")
    with pytest.raises(LensError, match="gt_box"):
        _sample(gt_box=(1, 2, 3))


# ----------------------------------------------------------------------------------------------- registry
def test_builtin_names_and_default_weights():
    assert set(DEFAULT_REWARD_WEIGHTS) == {"format", "box_iou", "segment_iou"}
    assert all(w == 1.0 for w in DEFAULT_REWARD_WEIGHTS.values())
    assert REWARD_FUNCTIONS["format"] is format_reward
    assert resolve_reward("box_iou") is box_iou_reward
    assert resolve_reward("segment_iou") is segment_iou_reward


def test_import_string_resolves_to_this_module():
    # tests/ has no __init__.py: pytest (default "prepend" import mode) puts it on sys.path
    assert "test_grpo_rewards" in sys.modules
    fn = resolve_reward("test_grpo_rewards:my_reward")
    assert fn is my_reward
    s = _sample()
    s.expression = "the cup"
    total, parts = score([s], {"format": 0.5, "test_grpo_rewards:my_reward": 2.0})
    assert parts["test_grpo_rewards:my_reward"].tolist() == [7.0]
    assert total.tolist() == [0.5 + 14.0]


def test_import_string_to_library_function():
    assert resolve_reward("training.rewards:format_reward") is format_reward


def test_unknown_name_lists_registered():
    with pytest.raises(LensError, match=r"unknown reward 'iou'.*box_iou.*format.*segment_iou"):
        resolve_reward("iou")


def test_import_failures_name_module_and_attribute():
    with pytest.raises(LensError, match="cannot import module 'no_such_module_xyz'"):
        resolve_reward("no_such_module_xyz:f")
    with pytest.raises(LensError, match="module 'training.rewards' has no attribute 'nope'"):
        resolve_reward("training.rewards:nope")
    with pytest.raises(LensError, match="not a function"):
        resolve_reward("training.rewards:DEFAULT_REWARD_WEIGHTS")
    with pytest.raises(LensError, match="package.module:function"):
        resolve_reward("training.rewards:")


@pytest.fixture
def clean_registry():
    before = dict(REWARD_FUNCTIONS)
    yield
    REWARD_FUNCTIONS.clear()
    REWARD_FUNCTIONS.update(before)


def test_register_by_decorator(clean_registry):
    @register_reward("always_half")
    def half(s):
        return 0.5

    assert resolve_reward("always_half") is half
    total, parts = score([_sample(), _sample()], {"always_half": 4.0})
    assert total.tolist() == [2.0, 2.0] and parts["always_half"].tolist() == [0.5, 0.5]


def test_register_duplicate_name_errors(clean_registry):
    with pytest.raises(LensError, match="'format' is already registered"):
        register_reward("format")(lambda s: 0.0)
    with pytest.raises(LensError, match="without ':'"):
        register_reward("a:b")


# --------------------------------------------------------------------------------------------------- score
def test_score_weights_and_components():
    good = _sample()  # format 1, box (25/175)², mask identical -> 1
    bad = _sample("nothing here", gt_mask=_mask(on=[(0, 0)]), pred_mask=_mask(on=[(0, 0), (0, 1)]))  # 0, 0, 1/4
    total, parts = score([good, bad], {"format": 1.0, "box_iou": 2.0, "segment_iou": 0.5})
    assert total.dtype == np.float64 and total.shape == (2,)
    box = (25 / 175) ** 2
    np.testing.assert_array_equal(parts["format"], [1.0, 0.0])
    np.testing.assert_array_equal(parts["box_iou"], [box, 0.0])
    np.testing.assert_array_equal(parts["segment_iou"], [1.0, 0.25])
    np.testing.assert_allclose(total, [1.0 + 2 * box + 0.5, 0.125], rtol=0, atol=1e-15)


def test_score_defaults_to_paper_sum():
    total, parts = score([_sample()])
    assert set(parts) == set(DEFAULT_REWARD_WEIGHTS)
    assert total[0] == pytest.approx(1.0 + (25 / 175) ** 2 + 1.0, abs=1e-15)


def test_zero_weight_component_is_still_computed():
    total, parts = score([_sample()], {"format": 1.0, "box_iou": 0.0})
    assert parts["box_iou"][0] == (25 / 175) ** 2
    assert total[0] == 1.0


def test_score_empty_batch():
    total, parts = score([], {"format": 1.0})
    assert total.shape == (0,) and parts["format"].shape == (0,)


def test_score_accepts_numpy_scalars(clean_registry):
    register_reward("np32")(lambda s: np.float32(0.25))
    register_reward("np0d")(lambda s: np.array(0.5))
    total, _ = score([_sample()], {"np32": 1.0, "np0d": 1.0})
    assert total[0] == 0.75


@pytest.mark.parametrize(
    "value, pattern",
    [
        (float("nan"), r"reward 'bad' returned nan for sample 1; rewards must be finite"),
        (float("inf"), r"reward 'bad' returned inf for sample 1"),
        ("0.5", r"reward 'bad' returned str '0.5' for sample 1; expected a float"),
        (None, r"reward 'bad' returned NoneType None for sample 1"),
    ],
)
def test_bad_reward_output_names_reward_and_sample(clean_registry, value, pattern):
    register_reward("bad")(lambda s: 0.0 if s.expression == "ok" else value)
    ok, broken = _sample(), _sample()
    ok.expression = "ok"
    with pytest.raises(LensError, match=pattern):
        score([ok, broken], {"format": 1.0, "bad": 1.0})


def test_bad_weights():
    with pytest.raises(LensError, match="empty"):
        score([_sample()], {})
    with pytest.raises(LensError, match="weight of reward 'format'"):
        score([_sample()], {"format": math.nan})
    with pytest.raises(LensError, match="unknown reward"):
        score([_sample()], {"fromat": 1.0})


def test_format_reward_needs_the_whole_template():
    # a box-only answer reads a box (box reward) but is not the template (released format reward: 0)
    s = _sample("<|box_start|>(0,0),(10,10)<|box_end|>", gt_box=(0, 0, 10, 10))
    assert s.answer.format_ok and format_reward(s) == 0.0 and box_iou_reward(s) == 1.0
    assert format_reward(_sample("<thinking>x</thinking><answer>[0, 0, 10, 10]</answer>", "think_answer")) == 0.0
