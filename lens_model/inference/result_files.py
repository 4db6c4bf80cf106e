"""What `lens segment` makes of one result: the JSON record it prints (and writes with --json), the mask PNG and the
overlay picture; with several targets (`--multi-target`) one entry per target and the label mask. `lens demo`
serves the same files through these functions, so both give the same schema."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from ..outputs import json_text, save_image, write_atomic
from ..overlay import draw_overlay, draw_targets_overlay
from .pipeline import SegmentationResult
from .targets import CommandResult


def save_mask_png(mask: np.ndarray, path: str | os.PathLike, what: str = "mask") -> None:
    """(H, W) bool mask -> single-channel image of 0 and 255 (write a lossless format: PNG, BMP, TIFF), written
    atomically (`outputs.save_image`: a failed write names `what` and leaves the earlier file as it was)."""
    save_image(Image.fromarray(mask.astype(np.uint8) * 255), path, what)


def save_overlay(rgb: np.ndarray, result: SegmentationResult, path: str | os.PathLike, what: str = "overlay") -> None:
    """The picture of `result` on its HxWx3 uint8 image: tinted mask, the answer's box, the prompt as caption
    (written atomically, as `save_mask_png`)."""
    save_image(draw_overlay(rgb, result.mask, result.box, result.prompt), path, what)


def save_label_png(labels: np.ndarray, path: str | os.PathLike, what: str = "label mask") -> None:
    """(H, W) uint8 label image (0 = background, k = target k) -> single-channel 8-bit image (lossless format),
    written atomically (as `save_mask_png`)."""
    save_image(Image.fromarray(np.asarray(labels, np.uint8)), path, what)


def save_command_overlay(
    rgb: np.ndarray, result: CommandResult, path: str | os.PathLike, what: str = "overlay"
) -> None:
    """Every target of `result` in its own colour, the command as caption (one target: `save_overlay`'s picture),
    written atomically (as `save_mask_png`)."""
    masks, boxes = [t.mask for t in result.targets], [t.box for t in result.targets]
    save_image(draw_targets_overlay(rgb, masks, boxes, result.command), path, what)


def command_record(
    result: CommandResult,
    image: str | os.PathLike,
    model: str | os.PathLike,
    backend: str,
    targets_3d: list[dict[str, Any]] | None = None,
    mask_png: str | os.PathLike | None = None,
    overlay_png: str | os.PathLike | None = None,
    label_png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The JSON object of `lens segment --multi-target`: the command, one entry per target (`id` = k, the value of
    its pixels in the label mask, then segment_record's result fields and, with a depth image, its `target_3d`),
    the image, model and backend, and the names of the union mask, label mask and overlay files."""
    targets = []
    for k, target in zip(result.ids, result.targets):
        entry = {"id": k, **target.to_json_dict()}
        if targets_3d is not None:
            entry["target_3d"] = targets_3d[k - 1]
        targets.append(entry)
    data: dict[str, Any] = {"command": result.command, "targets": targets}
    data.update(image=str(image), model=str(model), backend=backend)
    for key, path in (("mask_png", mask_png), ("label_mask_png", label_png), ("overlay_png", overlay_png)):
        if path is not None:
            data[key] = str(path)
    return data


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


def record_text(record: dict[str, Any]) -> str:
    """`record` as indented JSON text; LensError for a NaN or infinity in it (JSON has none)."""
    return json_text(record, "the result", indent=2)


def write_record(record: dict[str, Any], path: str | os.PathLike | None = None, what: str = "record") -> str:
    """`record` as indented JSON text (`record_text`); written atomically to `path` (with a final newline) when
    given."""
    text = record_text(record)
    if path is not None:
        write_atomic(path, text + "\n", what)
    return text
