"""GroundingSuite-Eval (hustvl/GroundingSuite): one JSON object per line, COCO unlabeled2017 images.

    {"idx": 0, "image_path": "unlabeled2017/000000000267.jpg", "class_id": 1, "label": "a trail of white smoke",
     "caption": "A trail of white smoke follows the plane, trailing behind it.",
     "box": [x1, y1, x2, y2],                       # xyxy in original image pixels (floats)
     "segmentation": {"size": [H, W], "counts": "<compressed COCO RLE>"}}

The released file has 3,715 lines, all with these seven fields; `box` is xyxy (the released evaluation unpacks it
as `xmin, ymin, xmax, ymax`, and x2 <= W, y2 <= H on every line). Every line is one sample: the caption is the
expression, kept exactly as written (the released LENS script's `.replace('is','').replace('are','')` is a bug
we do not copy); the target is the decoded RLE (a list of RLEs is their union); the image size is the RLE's size.
Required fields: caption, image_path, segmentation; `box` (else the mask's tight box), `idx` (the sample id; else
"line<N>"), `label` and `class_id` are optional.

Image path: `image_path` has a leading folder ("unlabeled2017/…"), while `image_dir` is the folder holding the
images (ROOT/coco/unlabeled2017, as in the released README). So the image is `image_dir / <file name>`; when that
file does not exist but `image_dir / image_path` does (the released script's literal join, or an image_dir one
level up), that one is used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

from ..errors import LensError
from .records import Record, mask_box
from .refer import decode_segmentation

SPLITS = ("eval",)
REQUIRED_FIELDS = ("caption", "image_path", "segmentation")


def _rle_size(segmentation, where: str) -> tuple[int, int]:
    rles = segmentation if isinstance(segmentation, list) else [segmentation]
    if not rles or not all(isinstance(r, dict) and "size" in r and "counts" in r for r in rles):
        raise LensError(
            f'{where}: field \'segmentation\' must be a COCO RLE {{"size": [H, W], "counts": ...}} or a list of them'
        )
    sizes = []
    for rle in rles:
        size = rle["size"]
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise LensError(f"{where}: field 'segmentation.size' must be [H, W] (two positive integers), got {size!r}")
        sizes.append((size[0], size[1]))
    if len(set(sizes)) > 1:
        raise LensError(f"{where}: the RLEs of field 'segmentation' have different sizes {sorted(set(sizes))}")
    return sizes[0]


def _box(value, where: str) -> tuple[float, float, float, float] | None:
    """xyxy box of the line; None when degenerate (the caller falls back to the mask's box)."""
    if not (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise LensError(f"{where}: field 'box' must be [x1, y1, x2, y2] (four numbers), got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _image_path(image_dir: Path, relative: str, where: str) -> Path:
    name = PurePosixPath(relative.replace("\\", "/")).name
    if not name:
        raise LensError(f"{where}: field 'image_path' has no file name: {relative!r}")
    path = image_dir / name
    if not path.exists() and (image_dir / relative).exists():
        path = image_dir / relative
    return path


def read_groundingsuite(anno: str | Path, image_dir: str | Path, split: str = "eval") -> list[Record]:
    anno, image_dir = Path(anno), Path(image_dir)
    if split not in SPLITS:
        raise LensError(f"unknown split {split!r} for groundingsuite; valid: {', '.join(SPLITS)}")
    try:
        text = anno.read_text(encoding="utf-8")
    except OSError as exc:
        raise LensError(f"cannot read {anno}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LensError(f"{anno} is not UTF-8 text ({exc.reason}); expected GroundingSuite-Eval JSONL") from None

    records, seen = [], {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{anno} line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LensError(f"{where} is not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(row, dict):
            raise LensError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for name in REQUIRED_FIELDS:
            if name not in row:
                raise LensError(f"{where}: missing field '{name}'")
        caption, relative = row["caption"], row["image_path"]
        if not isinstance(caption, str) or not caption.strip():
            raise LensError(f"{where}: field 'caption' must be a non-empty string, got {caption!r}")
        if not isinstance(relative, str) or not relative.strip():
            raise LensError(f"{where}: field 'image_path' must be a non-empty string, got {relative!r}")
        segmentation = row["segmentation"]
        h, w = _rle_size(segmentation, where)

        def load_mask(segmentation=segmentation, h=h, w=w, where=where):
            try:
                return decode_segmentation(segmentation, h, w)
            except Exception as exc:
                raise LensError(f"{where}: cannot decode field 'segmentation': {exc}") from None

        box = _box(row["box"], where) if row.get("box") is not None else None
        if box is None:
            box = mask_box(load_mask())

        idx = row.get("idx")
        if idx is not None and (not isinstance(idx, (int, str)) or isinstance(idx, bool)):
            raise LensError(f"{where}: field 'idx' must be an integer or a string, got {idx!r}")
        sample_id = str(idx) if idx is not None else f"line{line_no}"
        if sample_id in seen:
            raise LensError(f"{where}: sample id {sample_id!r} (field 'idx') repeats line {seen[sample_id]}")
        seen[sample_id] = line_no

        records.append(
            Record(
                sample_id=sample_id,
                dataset="groundingsuite",
                split=split,
                image_path=_image_path(image_dir, relative, where),
                expression=caption,
                box=box,
                image_size=(h, w),
                load_mask=load_mask,
                ids={
                    "idx": idx,
                    "line": line_no,
                    "image": relative,
                    "label": row.get("label"),
                    "class_id": row.get("class_id"),
                },
            )
        )
    if not records:
        raise LensError(f"{anno}: no samples (the file is empty)")
    return records
