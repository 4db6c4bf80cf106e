"""gIoU, cIoU, precision@IoU and box accuracy exactly as LISA / LENS compute them (numpy only).

Per sample: I = |P ∧ G|, U = |P ∨ G| at the original resolution.
  cIoU = Σ I / (Σ U + 1e-8) over the split
  gIoU = mean of I / (U + 1e-5), where U = 0 (empty prediction and empty target) counts 1.0
Split statistics are sums, so shards merge exactly (intersections and unions add; per-rank IoUs don't).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..inference.answer import box_iou as _box_iou

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
BOX_HIT_IOU = 0.5


@dataclass(frozen=True)
class SampleScore:
    intersection: int
    union: int
    box_iou: float | None = None  # None when the prediction or the target has no box
    has_gt_box: bool = True
    has_pred_box: bool = False

    @property
    def iou(self) -> float:
        """Mask IoU with the protocol's convention: an empty prediction of an empty target scores 1."""
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def giou_term(self) -> float:
        return 1.0 if self.union == 0 else self.intersection / (self.union + 1e-5)

    @property
    def box_hit(self) -> bool:
        if not self.has_gt_box:
            return not self.has_pred_box
        return self.box_iou is not None and self.box_iou >= BOX_HIT_IOU


def score_sample(
    pred_mask: np.ndarray, gt_mask: np.ndarray, pred_box=None, gt_box=None, ignore: np.ndarray | None = None
) -> SampleScore:
    """I and U of one sample. `ignore` (H, W) bool: pixels left out of both (LISA's ignore_index=255)."""
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} does not match ground-truth shape {gt_mask.shape}")
    pred, gt = pred_mask.astype(bool), gt_mask.astype(bool)
    if ignore is not None:
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore mask shape {ignore.shape} does not match ground-truth shape {gt.shape}")
        keep = ~ignore.astype(bool)
        pred, gt = pred & keep, gt & keep
    iou = _box_iou(pred_box, gt_box) if pred_box is not None and gt_box is not None else None
    return SampleScore(
        int(np.count_nonzero(pred & gt)),
        int(np.count_nonzero(pred | gt)),
        iou,
        has_gt_box=gt_box is not None,
        has_pred_box=pred_box is not None,
    )


@dataclass
class SplitMetrics:
    """Running sums over samples; `merge` and `to_array` make sharded evaluation exact."""

    n: int = 0
    sum_intersection: int = 0
    sum_union: int = 0
    sum_giou: float = 0.0
    precision_hits: list[int] = field(default_factory=lambda: [0] * len(PRECISION_THRESHOLDS))
    box_hits: int = 0

    def add(self, score: SampleScore) -> None:
        self.n += 1
        self.sum_intersection += score.intersection
        self.sum_union += score.union
        self.sum_giou += score.giou_term
        iou = score.iou
        for k, threshold in enumerate(PRECISION_THRESHOLDS):
            self.precision_hits[k] += int(iou >= threshold)
        self.box_hits += int(score.box_hit)

    def merge(self, other: SplitMetrics) -> SplitMetrics:
        return SplitMetrics.from_array(self.to_array() + other.to_array())

    def to_array(self) -> np.ndarray:
        """float64 vector of the sums (integers stay exact below 2**53), e.g. for an all-reduce."""
        return np.array(
            [self.n, self.sum_intersection, self.sum_union, self.sum_giou, *self.precision_hits, self.box_hits],
            dtype=np.float64,
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> SplitMetrics:
        k = len(PRECISION_THRESHOLDS)
        return cls(
            int(values[0]),
            int(values[1]),
            int(values[2]),
            float(values[3]),
            [int(v) for v in values[4 : 4 + k]],
            int(values[4 + k]),
        )

    def summary(self) -> dict[str, float | int]:
        ratio = (lambda x: x / self.n) if self.n else (lambda x: math.nan)
        out: dict[str, float | int] = {
            "n": self.n,
            "gIoU": ratio(self.sum_giou),
            "cIoU": self.sum_intersection / (self.sum_union + 1e-8) if self.n else math.nan,
        }
        out.update({f"P@{t}": ratio(h) for t, h in zip(PRECISION_THRESHOLDS, self.precision_hits)})
        out["box_acc"] = ratio(self.box_hits)
        return out


def bootstrap_interval(
    samples, statistic=np.mean, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(value, low, high): `statistic` of the samples (rows of an (n, ...) array) and its percentile bootstrap
    interval at `level`, from `n_boot` resamples of n rows with replacement (seeded: the same call, the same
    interval)."""
    samples = np.asarray(samples)
    if len(samples) == 0:
        raise ValueError("bootstrap_interval needs at least one sample")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    draws = np.random.default_rng(seed).integers(0, len(samples), size=(n_boot, len(samples)))
    stats = np.array([statistic(samples[rows]) for rows in draws], dtype=np.float64)
    low, high = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(statistic(samples)), float(low), float(high)
