"""Stage-2 (GRPO) rewards: one float per sampled completion, from its text and its context pass's mask.

Paper: r = r_format + r_box + r_seg, each weighted 1.0 (`DEFAULT_REWARD_WEIGHTS`).
- format:      1 when the completion follows its answer format's template, by the released format rewards' rule
               (`answer.template_ok`: object ref + box tokens and nothing else / <think>…</think> then <answer>).
- box_iou:     IoU(predicted box, GT box)², the box parsed as at inference (incl. the released fallback to the
               first [a,b,c,d] / (a,b,c,d) / (a,b),(c,d) in the text), both in the MLLM image's pixels.
- segment_iou: IoU(predicted mask, GT mask)² at the original image size.
Squaring keeps the reward small for loose boxes/masks so that the group-normalised advantage favours tight ones.

Rewards are plain functions `RolloutSample -> float`; `register_reward` adds one under a name, and
`resolve_reward` also accepts "package.module:function" so configs can name rewards defined outside this file.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lens_model.errors import LensError
from lens_model.eval.metrics import score_sample
from lens_model.inference.answer import ANSWER_FORMATS, Box, ParsedAnswer, parse_answer
from lens_model.inference.answer import box_iou as boxes_iou

RewardFn = Callable[["RolloutSample"], float]


@dataclass
class RolloutSample:
    """One sampled completion and everything a reward may look at."""

    text: str  # decoded completion (special tokens kept except padding)
    answer_format: str  # "grounding" | "think_answer"
    gt_box: Box | None  # in the MLLM image's pixels (what the model must output); None: empty target
    gt_mask: np.ndarray  # (H, W) bool at the original image size
    pred_mask: np.ndarray  # (H, W) bool, the mask from this completion's context pass
    expression: str = ""
    answer: ParsedAnswer | None = None  # `text` parsed with `answer_format` (parsed here when not given)

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise LensError(
                f"RolloutSample.answer_format is {self.answer_format!r}; valid: {', '.join(ANSWER_FORMATS)}"
            )
        if self.gt_box is not None:
            if len(self.gt_box) != 4:
                raise LensError(f"RolloutSample.gt_box must be (x1, y1, x2, y2), got {self.gt_box!r}")
            self.gt_box = tuple(float(v) for v in self.gt_box)
        if self.answer is None:
            self.answer = parse_answer(self.text, self.answer_format)

    @cached_property
    def mask_iou(self) -> float:
        """IoU(pred_mask, gt_mask), computed once; both empty -> 1 (the gIoU metric's convention)."""
        pred, gt = np.asarray(self.pred_mask), np.asarray(self.gt_mask)
        if pred.shape != gt.shape:
            raise ValueError(f"pred_mask shape {pred.shape} does not match gt_mask shape {gt.shape}")
        return score_sample(pred, gt).iou

    @cached_property
    def box_iou(self) -> float | None:
        """IoU(answer's box, gt_box), computed once; None when either box is missing."""
        if self.answer.box is None or self.gt_box is None:
            return None
        return boxes_iou(self.answer.box, self.gt_box)


# ------------------------------------------------------------------------------------------------ registry
REWARD_FUNCTIONS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: `@register_reward("my_reward")` makes the function available to `score` under that name."""
    if not isinstance(name, str) or not name or ":" in name:
        raise LensError(
            f"reward name must be a non-empty string without ':' (reserved for import strings), got {name!r}"
        )

    def decorator(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS:
            raise LensError(
                f"reward {name!r} is already registered (by {_qualname(REWARD_FUNCTIONS[name])}); pick another name"
            )
        if not callable(fn):
            raise LensError(f"reward {name!r} must be callable, got {type(fn).__name__}")
        REWARD_FUNCTIONS[name] = fn
        return fn

    return decorator


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def resolve_reward(name: str) -> RewardFn:
    """A registered name ("format", "box_iou", ...) or an import string "package.module:function"."""
    if not isinstance(name, str):
        raise LensError(f"reward must be named by a string, got {type(name).__name__}")
    if ":" not in name:
        if name not in REWARD_FUNCTIONS:
            raise LensError(
                f"unknown reward {name!r}; registered: {', '.join(sorted(REWARD_FUNCTIONS))}"
                " (or give an import string 'package.module:function')"
            )
        return REWARD_FUNCTIONS[name]
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise LensError(f"reward import string {name!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LensError(f"reward {name!r}: cannot import module {module_name!r} ({exc})") from exc
    fn = module
    for part in attr.split("."):  # "module:Class.method" works too
        if not hasattr(fn, part):
            raise LensError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise LensError(f"reward {name!r}: {module_name}:{attr} is a {type(fn).__name__}, not a function")
    return fn


# ------------------------------------------------------------------------------------------------- rewards
@register_reward("format")
def format_reward(s: RolloutSample) -> float:
    """1 when the completion follows the answer format's template (`ParsedAnswer.template_ok`), else 0."""
    return 1.0 if s.answer.template_ok else 0.0


@register_reward("box_iou")
def box_iou_reward(s: RolloutSample) -> float:
    """IoU(parsed box, gt_box)²; 0 when no box parses.

    gt_box None is an empty target (nothing to ground): 1 when the completion gives no box either, else 0 —
    the same rule as the box-accuracy metric's `box_hit`.
    """
    if s.gt_box is None:
        return 1.0 if s.answer.box is None else 0.0
    return 0.0 if s.box_iou is None else s.box_iou**2


@register_reward("segment_iou")
def segment_iou_reward(s: RolloutSample) -> float:
    """IoU(pred_mask, gt_mask)²; both empty -> 1 (the gIoU metric's convention)."""
    return s.mask_iou**2


DEFAULT_REWARD_WEIGHTS: dict[str, float] = {"format": 1.0, "box_iou": 1.0, "segment_iou": 1.0}


# --------------------------------------------------------------------------------------------------- score
def _as_reward_value(value, name: str, index: int) -> float:
    """A reward's return value -> float; anything else than one finite real number is a bug in the reward."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d numpy array / torch tensor
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise LensError(
            f"reward {name!r} returned {type(value).__name__} {value!r:.60} for sample {index}; expected a float"
        )
    value = float(value)
    if not math.isfinite(value):
        raise LensError(f"reward {name!r} returned {value} for sample {index}; rewards must be finite")
    return value


def score(
    samples: list[RolloutSample], weights: dict[str, float] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Total reward (N,) float64 = Σ_name weight·component, and each component (N,) float64 for logging.

    `weights` maps reward names (registered or import strings) to weights; zero weights are still computed
    so their curves can be logged. None -> DEFAULT_REWARD_WEIGHTS.
    """
    weights = DEFAULT_REWARD_WEIGHTS if weights is None else weights
    if not weights:
        raise LensError("no rewards to score: the reward weights are empty")
    for name, w in weights.items():
        if not isinstance(w, numbers.Real) or not math.isfinite(float(w)):
            raise LensError(f"weight of reward {name!r} must be a finite number, got {w!r}")
    fns = {name: resolve_reward(name) for name in weights}
    components = {
        name: np.array([_as_reward_value(fn(s), name, i) for i, s in enumerate(samples)], dtype=np.float64)
        for name, fn in fns.items()
    }
    total = np.zeros(len(samples), dtype=np.float64)  # (N,)
    for name, values in components.items():
        total += float(weights[name]) * values
    return total, components
