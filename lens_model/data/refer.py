"""RefCOCO, RefCOCO+, RefCOCOg (and the synthetic scenes) in the REFER layout.

    ROOT/[refer_seg/]DATASET/refs(unc).p | refs(umd).p   pickled list of refs (ref_id, ann_id, image_id, split,
                                                        sentences[{sent_id, sent}])
    ROOT/[refer_seg/]DATASET/instances.json              COCO images + annotations (polygons or RLE)
    images: ROOT/[refer_seg/]images/mscoco/images/train2014/ (COCO train2014), or ROOT/images/

Every sentence of every ref in the split is one sample (the LISA/LENS protocol); the target is the union of
the annotation's decoded polygons / RLEs; the GT box is the annotation's bbox.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from ..errors import LensError
from .records import Record

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "synthetic": "unc"}
SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
_SENTENCE_KEYS = ("sent_id", "sent", "raw", "tokens")  # REFER's own; any other key is an annotation of the sentence
_IMAGE_DIRS = ("refer_seg/images/mscoco/images/train2014", "images/mscoco/images/train2014", "images", "train2014")


class _RefusedName(pickle.UnpicklingError):
    """A pickle asked for a global (a function or class) that a refs file has no use for."""


class _RefsUnpickler(pickle.Unpickler):
    """A pickle reader that builds only what a REFER refs file holds: lists, dicts, tuples, strings, numbers,
    booleans and None come from pickle's own opcodes; of the names a pickle may ask for, only the builtin set types
    are given. Anything else (os.system, builtins.open, a class) is refused, so that a crafted file runs no code."""

    ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _RefusedName(f"{module}.{name}")


def load_refs(path: Path) -> list:
    """A REFER refs(*.p) pickle -> its list of refs, through `_RefsUnpickler`. LensError naming the file when it
    asks for anything but plain data, or is not a pickle."""
    try:
        with path.open("rb") as stream:
            refs = _RefsUnpickler(stream).load()
    except _RefusedName as exc:
        raise LensError(
            f"{path}: refused to load: the pickle asks for {exc} (code, not data); a REFER refs file holds only "
            "lists, dicts, strings and numbers"
        ) from None
    except pickle.UnpicklingError as exc:
        raise LensError(f"cannot read {path}: not a valid pickle ({exc})") from None
    except Exception as exc:  # truncated data, a Python 2 pickle of bytes, ...
        raise LensError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(refs, list):
        raise LensError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


def _check_polygons(segmentation: list) -> None:
    for k, polygon in enumerate(segmentation):
        if (
            not isinstance(polygon, list)
            or len(polygon) < 6
            or len(polygon) % 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon)
        ):
            raise ValueError(
                f"polygon {k} of 'segmentation' must be a flat list of at least 3 (x, y) points [x1, y1, x2, y2, "
                f"...], got {str(polygon)[:60]}"
            )


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygons, RLE dict(s) or uncompressed RLE -> (H, W) bool union. ValueError naming what is malformed."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not isinstance(segmentation, list):
        raise ValueError(f"'segmentation' must be polygons (a list of lists) or RLE (a dict), got {segmentation!r}")
    if not segmentation:
        return np.zeros((height, width), bool)
    if isinstance(segmentation[0], list):  # polygons
        _check_polygons(segmentation)
        rles = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rles = []
        for rle in segmentation:
            if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
                raise ValueError(f"'segmentation' RLE must be a dict with 'size' and 'counts', got {str(rle)[:60]}")
            if isinstance(rle.get("counts"), list):  # uncompressed RLE
                rles.append(mask_utils.frPyObjects(rle, height, width))
            else:
                counts = rle["counts"]
                rles.append({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts})
    decoded = mask_utils.decode(rles)
    return (decoded.reshape(height, width, -1).sum(axis=2) > 0) if decoded.ndim == 3 else decoded.astype(bool)


def _find_annotation_dir(root: Path, dataset: str) -> Path:
    candidates = [root / "refer_seg" / dataset, root / dataset, root]
    ref_file = f"refs({SPLIT_BY[dataset]}).p"
    for folder in candidates:
        if (folder / ref_file).exists():
            return folder
    raise LensError(
        f"{dataset}: annotation file {ref_file} not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + " (expected the REFER layout with instances.json)"
    )


def _find_image_dir(root: Path, annotation_dir: Path, image_dir: Path | None) -> Path:
    if image_dir is not None:
        if not Path(image_dir).is_dir():
            raise LensError(f"image folder not found: {image_dir}")
        return Path(image_dir)
    candidates = [root / d for d in _IMAGE_DIRS] + [annotation_dir.parent / "images"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise LensError(
        "image folder not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + " (COCO train2014 images; pass --image-dir)"
    )


def _fields(item, keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    """`item` is a dict holding each of `keys` with a value of its type; LensError naming `where` and the field."""
    if not isinstance(item, dict):
        raise LensError(f"{where}: expected a mapping, got {type(item).__name__}")
    for key, kind in keys.items():
        if key not in item:
            raise LensError(f"{where} has no {key!r}; expected fields {', '.join(keys)}")
        value = item[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise LensError(f"{where}: {key!r} must be {names}, got {value!r}"[:300])


def _bbox(ann: dict, where: str) -> tuple[float, float, float, float]:
    bbox = ann["bbox"]
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise LensError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {bbox!r}"[:300])
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def _read_instances(path: Path) -> tuple[dict, dict]:
    """instances.json -> ({image id: image}, {annotation id: annotation}), every field the reader uses checked."""
    try:
        instances = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LensError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(instances, dict):
        raise LensError(
            f"{path}: expected a COCO object with 'images' and 'annotations', got {type(instances).__name__}"
        )
    for key in ("images", "annotations"):
        if not isinstance(instances.get(key), list):
            got = "missing" if key not in instances else f"a {type(instances[key]).__name__}"
            raise LensError(f"{path}: '{key}' is {got}; expected a list (COCO format: images and annotations)")
    images, anns = {}, {}
    for i, image in enumerate(instances["images"]):
        where = f"{path}: images[{i}]" + (f" (id {image.get('id')})" if isinstance(image, dict) else "")
        _fields(image, {"id": int, "file_name": str, "height": int, "width": int}, where)
        if image["height"] < 1 or image["width"] < 1:
            raise LensError(f"{where}: height and width must be >= 1, got {image['height']}x{image['width']}")
        images[image["id"]] = image
    for i, ann in enumerate(instances["annotations"]):
        where = f"{path}: annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) else "")
        if isinstance(ann, dict) and "bbox" not in ann:
            raise LensError(f"{where} has no 'bbox'; expected fields id, bbox [x, y, width, height], segmentation")
        _fields(ann, {"id": int, "segmentation": (list, dict)}, where)
        _bbox(ann, where)
        anns[ann["id"]] = ann
    return images, anns


def _check_ref(ref, index: int, ref_file: Path) -> None:
    where = f"{ref_file}: ref {index}" + (f" (ref_id {ref.get('ref_id')})" if isinstance(ref, dict) else "")
    _fields(ref, {"ref_id": int, "ann_id": int, "image_id": int, "split": str, "sentences": list}, where)
    for k, sentence in enumerate(ref["sentences"]):
        _fields(sentence, {"sent_id": int, "sent": str}, f"{where} sentences[{k}]")


def _sentence_annotations(sentence: dict, anns: dict, instances_file: Path) -> dict:
    """What a sentence says beyond its text; a relational expression's anchor (`anchor_ann_id`, synthetic reasoning
    scenes) also gets its box as `anchor_box` (xyxy, image pixels), for stage 1's grounding attention."""
    notes = {k: v for k, v in sentence.items() if k not in _SENTENCE_KEYS}
    anchor_id = notes.get("anchor_ann_id")
    if anchor_id is not None:
        if anchor_id not in anns:
            raise LensError(f"sentence {sentence['sent_id']}: anchor_ann_id {anchor_id} is not in {instances_file}")
        x, y, bw, bh = _bbox(anns[anchor_id], f"{instances_file}: annotation {anchor_id}")
        notes["anchor_box"] = (x, y, x + bw, y + bh)
    return notes


def read_refer(data_root: str | Path, dataset: str, split: str, image_dir: str | Path | None = None) -> list[Record]:
    if dataset not in SPLIT_BY:
        raise LensError(f"unknown REFER dataset {dataset!r}; valid: {', '.join(SPLIT_BY)}")
    root = Path(data_root)
    if not root.exists():
        raise LensError(f"data root not found: {root}")
    ann_dir = _find_annotation_dir(root, dataset)
    ref_file = ann_dir / f"refs({SPLIT_BY[dataset]}).p"
    instances_file = ann_dir / "instances.json"
    if not instances_file.exists():
        raise LensError(f"{dataset}: {instances_file} not found (COCO annotations of the REFER layout)")
    refs = load_refs(ref_file)
    for index, ref in enumerate(refs):
        _check_ref(ref, index, ref_file)
    images, anns = _read_instances(instances_file)
    valid_splits = SPLITS.get(dataset) or tuple(sorted({r["split"] for r in refs}))
    if split not in valid_splits:
        raise LensError(f"unknown split {split!r} for {dataset}; valid: {', '.join(valid_splits)}")
    folder = _find_image_dir(root, ann_dir, Path(image_dir) if image_dir else None)

    records = []
    for ref in refs:
        if ref["split"] != split:
            continue
        ann, image = anns.get(ref["ann_id"]), images.get(ref["image_id"])
        if ann is None or image is None:
            raise LensError(
                f"{ref_file}: ref {ref['ref_id']} points at a missing "
                f"{'annotation ' + str(ref['ann_id']) if ann is None else 'image ' + str(ref['image_id'])} "
                f"in {instances_file}"
            )
        h, w = image["height"], image["width"]
        x, y, bw, bh = _bbox(ann, f"{instances_file}: annotation {ann['id']}")

        def load_mask(seg=ann["segmentation"], h=h, w=w, ref_id=ref["ref_id"], ann_id=ann["id"]):
            try:
                return decode_segmentation(seg, h, w)
            except Exception as exc:
                raise LensError(
                    f"{dataset}: cannot decode the mask of ref {ref_id} (annotation {ann_id}) in {instances_file}: "
                    f"{exc}"
                ) from None

        for sentence in ref["sentences"]:
            records.append(
                Record(
                    sample_id=f"{ref['ref_id']}/{sentence['sent_id']}",
                    dataset=dataset,
                    split=split,
                    image_path=folder / image["file_name"],
                    expression=sentence["sent"],
                    box=(x, y, x + bw, y + bh) if bw > 0 and bh > 0 else None,
                    image_size=(h, w),
                    load_mask=load_mask,
                    ids={
                        "ref_id": ref["ref_id"],
                        "ann_id": ref["ann_id"],
                        "image_id": ref["image_id"],
                        "sent_id": sentence["sent_id"],
                    },
                    annotations=_sentence_annotations(sentence, anns, instances_file),
                )
            )
    return records
