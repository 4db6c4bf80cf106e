"""The plain record every dataset reader yields: one (image, referring expression) pair with its target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError


@dataclass
class Record:
    """One evaluation/training sample. The mask is decoded on demand (datasets hold tens of thousands)."""

    sample_id: str  # unique within the dataset split, stable across runs (resume keys on it)
    dataset: str
    split: str
    image_path: Path
    expression: str
    box: tuple[float, float, float, float] | None  # GT box xyxy in original image pixels (None: empty target)
    image_size: tuple[int, int]  # (H, W) of the original image
    load_mask: Callable[[], np.ndarray] = field(repr=False)  # -> (H, W) bool, the GT target
    ids: dict = field(default_factory=dict)  # source ids: image_id, ref_id, ann_id, sent_id, ...
    # what the dataset says about the sentence beyond its text (synthetic reasoning scenes: kind, target_name,
    # rationale, anchor_ann_id); empty for the public datasets
    annotations: dict = field(default_factory=dict)
    # -> (H, W) bool of pixels left out of the metric (ReasonSeg's "ignore" regions); None: every pixel counts
    load_ignore: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def check_image(self, rgb: np.ndarray) -> None:
        """The loaded image has the size the annotation gives (its masks and boxes are in those pixels)."""
        if rgb.shape[:2] != tuple(self.image_size):
            (h, w), (ah, aw) = rgb.shape[:2], self.image_size
            raise ImageError(
                f"{self.dataset}/{self.sample_id}: image {self.image_path} is {w}x{h} pixels but its annotation "
                f"says {aw}x{ah}; the annotation's masks and boxes would not line up with it"
            )

    def mask(self) -> np.ndarray:
        return self._checked(self.load_mask(), "mask")

    def ignore_mask(self) -> np.ndarray | None:
        return None if self.load_ignore is None else self._checked(self.load_ignore(), "ignore mask")

    def _checked(self, mask: np.ndarray, what: str) -> np.ndarray:
        if mask.shape != tuple(self.image_size):
            raise ValueError(
                f"{self.dataset}/{self.sample_id}: {what} shape {mask.shape} != image size {self.image_size}"
            )
        return mask.astype(bool, copy=False)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight xyxy box (pixel edges) of a boolean mask; None when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
