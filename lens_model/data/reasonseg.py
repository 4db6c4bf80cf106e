"""ReasonSeg in the LISA layout: each image sits next to a labelme-style JSON of polygons.

    ROOT/reason_seg/ReasonSeg/{train,val,test}/NAME.jpg + NAME.json   (also ROOT/ReasonSeg/SPLIT or ROOT/SPLIT)

    NAME.json: {"text": [sentence, ...], "is_sentence": bool,
                "shapes": [{"label": "target" | "ignore" | "flag" | ..., "points": [[x, y], ...], ...}, ...], ...}

The GT follows LISA's `get_mask_from_json`: shapes labelled "flag" are dropped; the others are rasterised
(closed 1-pixel outline + fill, points truncated to int32) largest first, painting 255 where the label contains
"ignore" and 1 elsewhere, so a smaller shape drawn later lands on top of a larger one. Target = pixels of value 1;
ignore = pixels of value 255, which the metric leaves out (LISA's ignore_index=255). Shapes of equal area: the one
listed first ends on top (LISA's `np.argsort(areas)[::-1]` leaves ties to numpy's default sort, which is not
stable on SIMD builds, so LISA's own result differs between machines there).

Samples: val and test use the first sentence of each image (the released protocol), one record per image,
sample_id NAME; train gives one record per sentence, sample_id NAME/k. The image size is read from the image
header (EXIF orientation applied, as cv2.imread does in LISA and as the pipeline's image loading does).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import LensError
from .records import Record, mask_box

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TARGET, IGNORE = 1, 255
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


def split_dir_candidates(root: Path, split: str) -> list[Path]:
    return [root / "reason_seg" / "ReasonSeg" / split, root / "ReasonSeg" / split, root / split]


def read_annotation(json_path: Path) -> dict:
    """Parse one ReasonSeg JSON: UTF-8 first, then cp1252 (as LISA does, some files are not UTF-8)."""
    try:
        raw = json_path.read_bytes()
    except OSError as exc:
        raise LensError(f"cannot read {json_path}: {exc.strerror or exc}") from None
    try:
        anno = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as first:
        try:
            anno = json.loads(raw.decode("cp1252"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            reason = first.msg if isinstance(first, json.JSONDecodeError) else "neither UTF-8 nor cp1252 text"
            raise LensError(f"{json_path} is not valid JSON ({reason}); expected a ReasonSeg annotation") from None
    if not isinstance(anno, dict):
        raise LensError(f"{json_path}: expected a JSON object with 'text' and 'shapes', got {type(anno).__name__}")
    return anno


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_sentences(anno: dict, json_path: Path) -> list[str]:
    if "text" not in anno:
        raise LensError(f"{json_path}: missing field 'text' (the list of sentences)")
    text = anno["text"]
    if not isinstance(text, list):
        raise LensError(f"{json_path}: field 'text' must be a list of sentences, got {type(text).__name__}")
    if not text:
        raise LensError(f"{json_path}: field 'text' is an empty list; at least one sentence is needed")
    for k, sentence in enumerate(text):
        if not isinstance(sentence, str) or not sentence.strip():
            raise LensError(f"{json_path}: field 'text[{k}]' must be a non-empty string, got {sentence!r}")
    return list(text)


def parse_shapes(anno: dict, json_path: Path) -> list[tuple[str, np.ndarray]]:
    """-> [(label, (N, 2) int32 points)] of the shapes that count (not "flag"), in file order."""
    if "shapes" not in anno:
        raise LensError(f"{json_path}: missing field 'shapes' (the list of polygons)")
    shapes = anno["shapes"]
    if not isinstance(shapes, list):
        raise LensError(f"{json_path}: field 'shapes' must be a list of polygons, got {type(shapes).__name__}")
    polygons = []
    for i, shape in enumerate(shapes):
        where = f"{json_path}: field 'shapes[{i}]"
        if not isinstance(shape, dict):
            raise LensError(f"{where}' must be an object with 'label' and 'points'")
        if not isinstance(shape.get("label"), str):
            raise LensError(f"{where}.label' must be a string, got {shape.get('label')!r}")
        if shape["label"].lower() == "flag":  # deprecated, meaningless annotations (LISA drops them unread)
            continue
        points = shape.get("points")
        # 1-2 points are drawn as a dot / line by the outline pass, as LISA does (labelme may store such shapes)
        if not isinstance(points, list) or len(points) < 1:
            got = "no points" if isinstance(points, list) else repr(points)
            raise LensError(f"{where}.points' must be a non-empty list of [x, y] points, got {got}")
        for j, point in enumerate(points):
            if not (isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)):
                raise LensError(f"{where}.points[{j}]' must be [x, y] with two finite numbers, got {point!r}")
        # float -> int32 truncates toward zero, as LISA's np.array(points, dtype=np.int32)
        polygons.append((shape["label"], np.array(points, dtype=np.float64).astype(np.int32)))
    return polygons


def _is_ignore(label: str) -> bool:
    return "ignore" in label.lower()


def _draw(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    import cv2

    cv2.polylines(canvas, [points], True, value, 1)
    cv2.fillPoly(canvas, [points], value)


def rasterize(polygons: list[tuple[str, np.ndarray]], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 label map: 0 background, 1 target, 255 ignore (LISA's get_mask_from_json)."""
    areas = []
    for _, points in polygons:
        scratch = np.zeros((height, width), np.uint8)
        _draw(scratch, points, 1)
        areas.append(int(np.count_nonzero(scratch)))
    label_map = np.zeros((height, width), np.uint8)
    for index in np.argsort(np.array(areas, dtype=np.int64), kind="stable")[::-1]:
        label, points = polygons[index]
        _draw(label_map, points, IGNORE if _is_ignore(label) else TARGET)
    return label_map


def _image_size(image_path: Path, anno: dict, json_path: Path) -> tuple[int, int]:
    """(H, W) as displayed (EXIF orientation applied), from the header; the JSON's imageHeight/imageWidth
    only when the header cannot be read (the sample then fails at evaluation, where the image is loaded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as image:
            width, height = image.size
            # JPEG keeps EXIF in its header; other formats only when already parsed (no full decode)
            if (image.format == "JPEG" or "exif" in image.info) and image.getexif().get(
                0x0112
            ) in _SWAPPED_ORIENTATIONS:
                width, height = height, width
        return int(height), int(width)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        h, w = anno.get("imageHeight"), anno.get("imageWidth")
        if (
            isinstance(h, int)
            and isinstance(w, int)
            and not isinstance(h, bool)
            and not isinstance(w, bool)
            and h > 0
            and w > 0
        ):
            return h, w
        raise LensError(
            f"cannot read the size of {image_path} ({exc}) and {json_path} has no valid imageHeight/imageWidth"
        ) from None


def _find_image(json_path: Path) -> Path:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (json_path.with_suffix(ext), json_path.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    raise LensError(
        f"{json_path}: no image next to it (looked for {json_path.stem} with {', '.join(IMAGE_EXTENSIONS)})"
    )


def read_reasonseg(root: str | Path, split: str) -> list[Record]:
    root = Path(root)
    if split not in SPLITS:
        raise LensError(f"unknown split {split!r} for reasonseg; valid: {', '.join(SPLITS)}")
    candidates = split_dir_candidates(root, split)
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise LensError(
            f"reasonseg: split folder not found; looked in {', '.join(str(c) for c in candidates)} "
            f"(expected the LISA layout: NAME.jpg + NAME.json)"
        )
    json_paths = sorted(folder.glob("*.json"), key=lambda p: p.stem)
    if not json_paths:
        raise LensError(f"reasonseg: no annotation (*.json) in {folder}")
    stems = {p.stem for p in json_paths}
    orphans = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem not in stems and p.is_file()
    )
    if orphans:
        raise LensError(
            f"reasonseg: image {orphans[0]} has no annotation {orphans[0].with_suffix('.json').name}"
            + (f" (and {len(orphans) - 1} more images without one)" if len(orphans) > 1 else "")
        )

    records = []
    for json_path in json_paths:
        anno = read_annotation(json_path)
        sentences = parse_sentences(anno, json_path)
        polygons = parse_shapes(anno, json_path)
        image_path = _find_image(json_path)
        h, w = _image_size(image_path, anno, json_path)
        is_sentence = anno.get("is_sentence")

        def load_mask(polygons=polygons, h=h, w=w):
            return rasterize(polygons, h, w) == TARGET

        def load_ignore(polygons=polygons, h=h, w=w):
            return rasterize(polygons, h, w) == IGNORE

        box = mask_box(load_mask())
        has_ignore = any(_is_ignore(label) for label, _ in polygons)

        stem = json_path.stem
        chosen = list(enumerate(sentences)) if split == "train" else [(0, sentences[0])]
        for k, sentence in chosen:
            records.append(
                Record(
                    sample_id=f"{stem}/{k}" if split == "train" else stem,
                    dataset="reasonseg",
                    split=split,
                    image_path=image_path,
                    expression=sentence,
                    box=box,
                    image_size=(h, w),
                    load_mask=load_mask,
                    ids={
                        "image": stem,
                        "sent_index": k,
                        "is_sentence": is_sentence if isinstance(is_sentence, bool) else None,
                    },
                    load_ignore=load_ignore if has_ignore else None,
                )
            )
    return records
