"""What `lens segment` makes of one result: the JSON record it prints (and writes with --json), the mask PNG and the
overlay picture. `lens demo` serves the same files through these functions, so both give the same schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..overlay import draw_overlay
from .pipeline import SegmentationResult


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """(H, W) bool mask -> single-channel image of 0 and 255 (write a lossless format: PNG, BMP, TIFF)."""
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def save_overlay(rgb: np.ndarray, result: SegmentationResult, path: str | os.PathLike) -> None:
    """The picture of `result` on its HxWx3 uint8 image: tinted mask, the answer's box, the prompt as caption."""
    draw_overlay(rgb, result.mask, result.box, result.prompt).save(path)


def segment_record(
    result: SegmentationResult,
    image: str | os.PathLike,
    model: str | os.PathLike,
    backend: str,
    target_3d: dict[str, Any] | None = None,
    mask_png: str | os.PathLike | None = None,
    overlay_png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The JSON object of `lens segment`: the result's fields, the image and model it came from, the backend that
    ran SAM2, with a depth image the target's 3D point and box, and the names of the mask and overlay files."""
    data = result.to_json_dict()
    data.update(image=str(image), model=str(model), backend=backend)
    if target_3d is not None:
        data["target_3d"] = target_3d
    if mask_png is not None:
        data["mask_png"] = str(mask_png)
    if overlay_png is not None:
        data["overlay_png"] = str(overlay_png)
    return data


def write_record(record: dict[str, Any], path: str | os.PathLike | None = None) -> str:
    """`record` as indented JSON text; written to `path` (with a final newline) when given."""
    text = json.dumps(record, indent=2)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text
