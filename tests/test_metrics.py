"""gIoU / cIoU / P@IoU / box accuracy (lens_model.eval.metrics), checked against numbers worked out by hand.

Protocol (docs/design.md, "Evaluation"): per sample I = |P ∧ G|, U = |P ∨ G|;
cIoU = ΣI / (ΣU + 1e-8) over a split; gIoU = mean of I / (U + 1e-5), a sample with U = 0 counting 1.0.
"""

import math
import random

import numpy as np
import pytest

from lens_model.eval.metrics import BOX_HIT_IOU, PRECISION_THRESHOLDS, SampleScore, SplitMetrics, score_sample
from lens_model.inference.answer import box_iou

SUMMARY_KEYS = {"n", "gIoU", "cIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "box_acc"}


def _masks(i: int, u: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A (1, size) prediction/GT pair with exactly I = i and U = u: pred = [0, u), gt = [0, i)."""
    assert 0 <= i <= u
    size = size if size is not None else max(u, 1) + 2
    pred = np.zeros((1, size), bool)
    gt = np.zeros((1, size), bool)
    pred[0, :u] = True
    gt[0, :i] = True
    return pred, gt


def _score(i: int, u: int, **kw) -> SampleScore:
    pred, gt = _masks(i, u)
    return score_sample(pred, gt, **kw)


def _split(scores) -> SplitMetrics:
    m = SplitMetrics()
    for s in scores:
        m.add(s)
    return m


def _assert_summaries_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == b[k], (k, a[k], b[k])  # exact, no tolerance


# ---------------------------------------------------------------------------------------------- score_sample


def test_counts_iou_and_giou_term_on_a_small_mask():
    pred = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
    gt = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]], bool)
    s = score_sample(pred, gt)
    # pred has 4 pixels, gt 6; they share (0,1) and (1,1): I = 2; U = 4 + 6 - 2 = 8
    assert (s.intersection, s.union) == (2, 8)
    assert type(s.intersection) is int and type(s.union) is int  # python ints: sums can't overflow
    assert s.iou == 2 / 8 == 0.25
    assert s.giou_term == 2 / (8 + 1e-5)
    assert s.giou_term < s.iou  # the 1e-5 makes the gIoU term slightly smaller


def test_full_overlap_iou_one_but_giou_term_just_below_one():
    pred, gt = _masks(5, 5)  # I = U = 5
    s = score_sample(pred, gt)
    assert s.iou == 1.0
    assert s.giou_term == 5 / 5.00001
    assert s.giou_term < 1.0


def test_empty_prediction_of_empty_target_scores_one():
    z = np.zeros((4, 5), bool)
    s = score_sample(z, z.copy())
    # I = 0, U = 0: the protocol counts this sample as 1.0 (not 0/0 and not 0/(0+1e-5) = 0)
    assert (s.intersection, s.union) == (0, 0)
    assert s.iou == 1.0
    assert s.giou_term == 1.0


def test_empty_prediction_of_nonempty_target_scores_zero():
    pred = np.zeros((3, 3), bool)
    gt = np.zeros((3, 3), bool)
    gt[1, 1:] = True  # 2 GT pixels
    s = score_sample(pred, gt)
    # I = 0, U = 0 + 2 - 0 = 2 -> 0/2 = 0
    assert (s.intersection, s.union) == (0, 2)
    assert s.iou == 0.0 and s.giou_term == 0.0


def test_nonempty_prediction_of_empty_target_scores_zero():
    pred = np.zeros((3, 3), bool)
    pred[0, :] = True  # 3 predicted pixels
    gt = np.zeros((3, 3), bool)
    s = score_sample(pred, gt)
    # I = 0, U = 3 -> 0/3 = 0
    assert (s.intersection, s.union) == (0, 3)
    assert s.iou == 0.0 and s.giou_term == 0.0


def test_shape_mismatch_raises_naming_both_shapes():
    with pytest.raises(ValueError) as err:
        score_sample(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    assert str((3, 4)) in str(err.value) and str((4, 3)) in str(err.value)


@pytest.mark.parametrize("dtype, on", [(np.uint8, 1), (np.uint8, 255), (np.int64, 1), (np.float32, 1.0)])
def test_non_bool_masks_are_treated_as_bool(dtype, on):
    pred = np.array([[on, on, 0], [0, on, 0]], dtype)
    gt = np.array([[on, 0, 0], [0, on, on]], dtype)
    # nonzero = True: pred {(0,0),(0,1),(1,1)}, gt {(0,0),(1,1),(1,2)}; I = 2 ((0,0),(1,1)); U = 3 + 3 - 2 = 4
    s = score_sample(pred, gt)
    assert (s.intersection, s.union) == (2, 4)
    assert s.iou == 0.5
    # the same masks as bool give the same counts, and mixing dtypes works too
    assert score_sample(pred.astype(bool), gt.astype(bool)) == s
    assert score_sample(pred, gt.astype(bool)) == s


def _reference_counts(pred, gt, ignore=None):
    """Independent reference with plain Python loops (no numpy logic)."""
    inter = union = 0
    h, w = len(pred), len(pred[0])
    for y in range(h):
        for x in range(w):
            if ignore is not None and ignore[y][x]:
                continue
            p, g = bool(pred[y][x]), bool(gt[y][x])
            inter += p and g
            union += p or g
    return inter, union


@pytest.mark.parametrize(
    "seed, shape, density",
    [
        (0, (1, 1), 0.5),
        (1, (1, 17), 0.3),
        (2, (13, 1), 0.7),
        (3, (5, 8), 0.5),
        (4, (32, 24), 0.1),
        (5, (64, 48), 0.5),
        (6, (7, 9), 0.95),
        (7, (20, 30), 0.02),
    ],
)
def test_score_sample_matches_loop_reference(seed, shape, density):
    rng = random.Random(seed)
    h, w = shape
    pred = [[rng.random() < density for _ in range(w)] for _ in range(h)]
    gt = [[rng.random() < density for _ in range(w)] for _ in range(h)]
    inter, union = _reference_counts(pred, gt)
    s = score_sample(np.array(pred, bool), np.array(gt, bool))
    assert (s.intersection, s.union) == (inter, union)
    assert s.iou == (1.0 if union == 0 else inter / union)
    # and as uint8 0/255 (how masks come off disk)
    s255 = score_sample(np.array(pred, np.uint8) * 255, np.array(gt, np.uint8) * 255)
    assert (s255.intersection, s255.union) == (inter, union)


# ---------------------------------------------------------------------------------------------- box accuracy


def test_box_iou_closed_form():
    # (0,0,10,10) vs (5,5,15,15): overlap 5x5 = 25; union 100 + 100 - 25 = 175
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == 25 / 175
    assert box_iou((5, 5, 15, 15), (0, 0, 10, 10)) == 25 / 175  # symmetric
    # disjoint -> 0; identical -> 1
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((1, 2, 3, 4), (1, 2, 3, 4)) == 1.0
    # touching edges: overlap width 0 -> 0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    # float corners: (0,0,2.5,4) vs (0.5,1,3,4): overlap 2 x 3 = 6; areas 10 and 7.5; union 11.5
    assert box_iou((0, 0, 2.5, 4), (0.5, 1, 3, 4)) == 6 / 11.5


def test_score_sample_box_iou_uses_both_boxes():
    s = _score(1, 1, pred_box=(0, 0, 10, 10), gt_box=(5, 5, 15, 15))
    assert s.box_iou == 25 / 175
    assert s.has_gt_box and s.has_pred_box
    assert not s.box_hit  # 1/7 < 0.5


def test_box_hit_at_exact_half():
    assert BOX_HIT_IOU == 0.5
    # (0,0,10,10) inside (0,0,10,20): I = 100, U = 200 -> exactly 0.5 -> hit (>=)
    s = _score(1, 1, pred_box=(0, 0, 10, 10), gt_box=(0, 0, 10, 20))
    assert s.box_iou == 0.5 and s.box_hit
    # (0,0,10,10) in (0,0,10,21): 100/210 < 0.5 -> miss
    s = _score(1, 1, pred_box=(0, 0, 10, 10), gt_box=(0, 0, 10, 21))
    assert s.box_iou == 100 / 210 and not s.box_hit
    # (0,0,10,10) in (0,0,10,19): 100/190 > 0.5 -> hit
    s = _score(1, 1, pred_box=(0, 0, 10, 10), gt_box=(0, 0, 10, 19))
    assert s.box_iou == 100 / 190 and s.box_hit


def test_no_predicted_box_is_a_miss():
    s = _score(3, 3, pred_box=None, gt_box=(0, 0, 10, 10))
    assert s.box_iou is None and s.has_gt_box and not s.has_pred_box
    assert not s.box_hit


def test_no_gt_box_and_no_predicted_box_is_a_hit():
    s = _score(0, 0, pred_box=None, gt_box=None)
    assert s.box_iou is None and not s.has_gt_box and not s.has_pred_box
    assert s.box_hit


def test_no_gt_box_but_a_predicted_box_is_a_miss():
    s = _score(0, 2, pred_box=(0, 0, 10, 10), gt_box=None)
    assert s.box_iou is None and not s.has_gt_box and s.has_pred_box
    assert not s.box_hit


# ---------------------------------------------------------------------------------------------- SplitMetrics


def test_split_giou_and_ciou_differ_and_match_hand_computation():
    scores = [
        _score(1, 2, pred_box=(0, 0, 10, 10), gt_box=(0, 0, 10, 20)),  # iou 0.5,   box IoU 0.5  -> hit
        _score(9, 10, pred_box=(0, 0, 10, 10), gt_box=(5, 5, 15, 15)),  # iou 0.9,   box IoU 1/7  -> miss
        _score(0, 0),  # U = 0 -> 1.0, no boxes   -> hit
        _score(0, 5, gt_box=(0, 0, 4, 4)),  # iou 0,     no pred box  -> miss
    ]
    m = _split(scores)
    assert (m.n, m.sum_intersection, m.sum_union) == (4, 1 + 9 + 0 + 0, 2 + 10 + 0 + 5)  # 4, 10, 17
    out = m.summary()
    assert set(out) == SUMMARY_KEYS
    assert out["n"] == 4
    # gIoU = (1/2.00001 + 9/10.00001 + 1 + 0) / 4 = (0.4999975 + 0.8999991 + 1) / 4 ≈ 0.59999915
    expected_giou = (1 / (2 + 1e-5) + 9 / (10 + 1e-5) + 1.0 + 0.0) / 4
    assert out["gIoU"] == pytest.approx(expected_giou, rel=1e-15, abs=0)
    assert out["gIoU"] == pytest.approx(0.59999915, abs=1e-8)
    # cIoU = ΣI / (ΣU + 1e-8) = 10 / 17.00000001 ≈ 0.5882353
    assert out["cIoU"] == 10 / (17 + 1e-8)
    assert out["cIoU"] == pytest.approx(0.58823529, abs=1e-8)
    assert out["gIoU"] - out["cIoU"] > 0.01  # the two really differ on this split
    # IoUs 0.5, 0.9, 1.0, 0.0: P@0.5 -> 3 of 4; P@0.6..0.9 -> 2 of 4 (0.9 counts at 0.9 exactly)
    assert [out[f"P@{t}"] for t in PRECISION_THRESHOLDS] == [0.75, 0.5, 0.5, 0.5, 0.5]
    assert m.precision_hits == [3, 2, 2, 2, 2]
    # box: hit, miss, hit, miss -> 2/4
    assert m.box_hits == 2 and out["box_acc"] == 0.5


@pytest.mark.parametrize("k", [5, 6, 7, 8, 9])
def test_precision_counts_iou_exactly_at_threshold(k):
    t = k / 10
    at = _score(k, 10)  # IoU = k/10, the same double as the literal threshold (0.5, 0.6, ...)
    assert at.iou == t
    assert at.giou_term < t  # k/10.00001: P@ must use the plain IoU, or this sample would miss
    m = _split([at])
    # hits at every threshold <= k/10, none above
    assert m.precision_hits == [int(th <= t) for th in PRECISION_THRESHOLDS]
    assert m.summary()[f"P@{t}"] == 1.0

    below = _score(100 * k - 1, 1000)  # IoU = (100k - 1)/1000, just under k/10
    assert below.iou < t
    m = _split([below])
    assert m.precision_hits == [int(th < t) for th in PRECISION_THRESHOLDS]
    assert m.summary()[f"P@{t}"] == 0.0


def test_precision_counts_empty_empty_sample_at_every_threshold():
    m = _split([_score(0, 0)])  # iou 1.0 by convention
    assert m.precision_hits == [1, 1, 1, 1, 1]


def test_empty_split_is_nan():
    out = SplitMetrics().summary()
    assert set(out) == SUMMARY_KEYS
    assert out["n"] == 0
    for k in SUMMARY_KEYS - {"n"}:
        assert math.isnan(out[k]), k


def test_merge_reduces_sums_not_per_shard_ious():
    a = [_score(1, 10), _score(0, 0)]  # shard A: ΣI = 1,  ΣU = 10 -> cIoU 0.1
    b = [_score(90, 100)]  # shard B: ΣI = 90, ΣU = 100 -> cIoU 0.9
    shard_a, shard_b = _split(a), _split(b)
    merged = shard_a.merge(shard_b)
    whole = _split(a + b)
    # sums: n 3, ΣI 91, ΣU 110; true cIoU 91/110.00000001 ≈ 0.82727
    assert (merged.n, merged.sum_intersection, merged.sum_union) == (3, 91, 110)
    assert merged == whole
    _assert_summaries_identical(merged.summary(), whole.summary())
    assert merged.summary()["cIoU"] == 91 / (110 + 1e-8)
    # averaging the per-shard cIoUs, (0.1 + 0.9) / 2 = 0.5, would be wrong
    mean_of_shards = (shard_a.summary()["cIoU"] + shard_b.summary()["cIoU"]) / 2
    assert mean_of_shards == pytest.approx(0.5, abs=1e-8)
    assert abs(mean_of_shards - merged.summary()["cIoU"]) > 0.3
    # merging doesn't mutate the shards
    assert (shard_a.n, shard_b.n) == (2, 1)


def test_merge_of_shards_equals_single_pass_exactly():
    boxes = [((0, 0, 10, 10), (0, 0, 10, 20)), ((0, 0, 10, 10), (5, 5, 15, 15)), (None, None), (None, (0, 0, 1, 1))]
    scores = []
    for j, (i, u) in enumerate([(1, 2), (9, 10), (0, 0), (0, 5), (3, 7), (6, 6), (7, 10), (12, 20)]):
        pb, gb = boxes[j % 4]
        scores.append(_score(i, u, pred_box=pb, gt_box=gb))
    whole = _split(scores)
    # shards whose float sums are added in the same order as the single pass: bitwise equal
    # (a prefix shard, then one-sample shards in order; merging with an empty shard adds exact zeros)
    for cut in range(len(scores) + 1):
        merged = _split(scores[:cut]).merge(SplitMetrics())
        for s in scores[cut:]:
            merged = merged.merge(_split([s]))
        assert merged == whole, cut
        _assert_summaries_identical(merged.summary(), whole.summary())
    # arbitrary shards: integer sums and all integer-derived values exact, gIoU up to float reassociation
    shards = [scores[0::3], scores[1::3], scores[2::3]]
    merged = _split(shards[0]).merge(_split(shards[1])).merge(_split(shards[2]))
    assert (merged.n, merged.sum_intersection, merged.sum_union, merged.precision_hits, merged.box_hits) == (
        whole.n,
        whole.sum_intersection,
        whole.sum_union,
        whole.precision_hits,
        whole.box_hits,
    )
    mo, wo = merged.summary(), whole.summary()
    for k in SUMMARY_KEYS - {"gIoU"}:
        assert mo[k] == wo[k], k
    assert mo["gIoU"] == pytest.approx(wo["gIoU"], rel=1e-15, abs=0)


def test_merge_with_empty_is_identity():
    m = _split([_score(1, 2), _score(9, 10, pred_box=(0, 0, 1, 1), gt_box=(0, 0, 1, 1))])
    assert m.merge(SplitMetrics()) == m
    assert SplitMetrics().merge(m) == m
    _assert_summaries_identical(SplitMetrics().merge(SplitMetrics()).summary(), SplitMetrics().summary())


def test_to_array_from_array_round_trip():
    m = _split([_score(1, 2), _score(9, 10, pred_box=(0, 0, 1, 1), gt_box=(0, 0, 1, 1)), _score(0, 0), _score(0, 5)])
    arr = m.to_array()
    assert arr.dtype == np.float64
    # [n, ΣI, ΣU, ΣgIoU, P@0.5..P@0.9, box_hits]
    assert arr.shape == (4 + len(PRECISION_THRESHOLDS) + 1,)
    assert arr[:3].tolist() == [4, 10, 17]
    assert arr[3] == m.sum_giou
    # IoUs 0.5, 0.9, 1.0, 0 -> P hits [3, 2, 2, 2, 2]; boxes: no-box/no-box x3 and identical boxes -> 4 hits
    assert arr[4:].tolist() == [3, 2, 2, 2, 2, 4]
    back = SplitMetrics.from_array(arr)
    assert back == m
    assert type(back.n) is int and type(back.sum_union) is int and all(type(h) is int for h in back.precision_hits)
    _assert_summaries_identical(back.summary(), m.summary())
    assert SplitMetrics.from_array(SplitMetrics().to_array()) == SplitMetrics()


def test_large_integer_sums_stay_exact():
    big = 10**12
    scores = [SampleScore(big - 1, big), SampleScore(big // 2, big), SampleScore(7, big + 3)]
    m = _split(scores)
    # ΣI = (10^12 - 1) + 5*10^11 + 7 = 1_500_000_000_006; ΣU = 3*10^12 + 3
    assert m.sum_intersection == 1_500_000_000_006
    assert m.sum_union == 3_000_000_000_003
    back = SplitMetrics.from_array(m.to_array())
    assert (back.sum_intersection, back.sum_union) == (1_500_000_000_006, 3_000_000_000_003)
    merged = _split(scores[:1]).merge(_split(scores[1:]))
    assert (merged.sum_intersection, merged.sum_union) == (1_500_000_000_006, 3_000_000_000_003)
    assert merged.summary()["cIoU"] == 1_500_000_000_006 / (3_000_000_000_003 + 1e-8)
    # each sample: (10^12-1)/10^12 ≥ 0.9 -> P@0.9 hit; 0.5 -> P@0.5 only; ~7e-12 -> none
    assert m.precision_hits == [2, 1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------- ignore regions


def test_ignore_excludes_predicted_pixels_from_union():
    pred = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)
    gt = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    ignore = np.zeros_like(pred)
    ignore[0, 2] = True  # a false-positive pixel inside the ignore region
    assert (score_sample(pred, gt).intersection, score_sample(pred, gt).union) == (1, 3)  # without: I 1, U 3
    s = score_sample(pred, gt, ignore=ignore)
    # (0,2) dropped: I = 1 ((0,0)), U = |{(0,0),(0,1)}| = 2 -> 0.5
    assert (s.intersection, s.union) == (1, 2)
    assert s.iou == 0.5


def test_ignore_excludes_gt_pixels_from_intersection_and_union():
    pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
    gt = np.array([[1, 1, 1], [1, 0, 0]], bool)
    ignore = np.array([[0, 1, 1], [0, 0, 0]], bool)
    # without ignore: I = 2 ((0,0),(0,1)); U = 4
    # ignoring (0,1) (pred and gt) and (0,2) (gt only): I = 1 ((0,0)); U = |{(0,0),(1,0)}| = 2
    s = score_sample(pred, gt, ignore=ignore)
    assert (s.intersection, s.union) == (1, 2)
    assert s.iou == 0.5 and s.giou_term == 1 / (2 + 1e-5)


def test_ignore_none_or_all_false_changes_nothing():
    pred, gt = _masks(3, 7)
    plain = score_sample(pred, gt)
    assert score_sample(pred, gt, ignore=None) == plain
    assert score_sample(pred, gt, ignore=np.zeros(pred.shape, bool)) == plain
    assert (plain.intersection, plain.union) == (3, 7)


def test_ignore_covering_every_positive_pixel_gives_empty_union():
    pred, gt = _masks(2, 4)  # pred [0,4), gt [0,2) of a (1, 6) row
    ignore = np.zeros(pred.shape, bool)
    ignore[0, :4] = True
    s = score_sample(pred, gt, ignore=ignore)
    # nothing left: I = 0, U = 0 -> scored like an empty/empty sample, 1.0
    assert (s.intersection, s.union) == (0, 0)
    assert s.iou == 1.0 and s.giou_term == 1.0


def test_ignore_does_not_touch_boxes():
    pred, gt = _masks(1, 2)
    ignore = np.ones(pred.shape, bool)
    s = score_sample(pred, gt, (0, 0, 10, 10), (5, 5, 15, 15), ignore=ignore)
    assert s.box_iou == 25 / 175 and s.has_gt_box and s.has_pred_box


@pytest.mark.parametrize("seed, shape", [(10, (1, 9)), (11, (6, 7)), (12, (25, 18)), (13, (40, 3))])
def test_ignore_matches_loop_reference(seed, shape):
    rng = random.Random(seed)
    h, w = shape
    pred = [[rng.random() < 0.5 for _ in range(w)] for _ in range(h)]
    gt = [[rng.random() < 0.5 for _ in range(w)] for _ in range(h)]
    ign = [[rng.random() < 0.3 for _ in range(w)] for _ in range(h)]
    inter, union = _reference_counts(pred, gt, ign)
    s = score_sample(np.array(pred, bool), np.array(gt, bool), ignore=np.array(ign, bool))
    assert (s.intersection, s.union) == (inter, union)


def test_ignore_as_uint8_255_is_treated_as_bool():
    pred, gt = _masks(2, 4)  # (1, 6): pred [0,4), gt [0,2)
    ignore = np.zeros(pred.shape, np.uint8)
    ignore[0, 1] = 255  # a TP pixel
    ignore[0, 3] = 255  # an FP pixel
    s = score_sample(pred, gt, ignore=ignore)
    # left: pred {0, 2}, gt {0}: I = 1, U = 2
    assert (s.intersection, s.union) == (1, 2)


def test_ignore_shape_mismatch_raises_naming_shapes():
    pred, gt = _masks(1, 2, size=5)  # (1, 5)
    with pytest.raises(ValueError) as err:
        score_sample(pred, gt, ignore=np.zeros((5, 1), bool))
    assert str((5, 1)) in str(err.value) and str((1, 5)) in str(err.value)


def test_loop_reference_itself():
    # the reference on a case small enough to check by eye: I = 1 ((0,0)), U = 3; ignoring (0,1) -> U = 2
    pred = [[1, 1], [0, 0]]
    gt = [[1, 0], [1, 0]]
    assert _reference_counts(pred, gt) == (1, 3)
    assert _reference_counts(pred, gt, [[0, 1], [0, 0]]) == (1, 2)


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    """For a 0/1 sample of n = 2,000 with p = 0.8 the 95 % percentile bootstrap interval of the mean is close to
    the closed-form p ± 1.96·sqrt(p(1−p)/n) = 0.8 ± 0.0175 (tolerance 0.004: bootstrap noise with 2,000
    resamples); seeded, so the same call gives the same interval; a statistic on rows (cIoU) works too."""
    from lens_model.eval.metrics import bootstrap_interval

    values = np.array([1.0] * 1600 + [0.0] * 400)
    value, low, high = bootstrap_interval(values, n_boot=2000, seed=1)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 2000)
    assert value == pytest.approx(0.8)
    assert low == pytest.approx(0.8 - half, abs=0.004) and high == pytest.approx(0.8 + half, abs=0.004)
    assert bootstrap_interval(values, n_boot=2000, seed=1) == (value, low, high)
    rows = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 5.0]])  # [I, U] per sample: cIoU = 4 / 11
    ciou, c_low, c_high = bootstrap_interval(rows, lambda r: r[:, 0].sum() / r[:, 1].sum(), n_boot=500)
    assert ciou == pytest.approx(4 / 11) and 0.0 <= c_low <= ciou <= c_high <= 0.75
    constant = bootstrap_interval(np.full(10, 0.3), n_boot=100)
    assert constant == pytest.approx((0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="at least one sample"):
        bootstrap_interval(np.array([]))
