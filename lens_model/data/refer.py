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


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygons, RLE dict(s) or uncompressed RLE -> (H, W) bool union."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not segmentation:
        return np.zeros((height, width), bool)
    if isinstance(segmentation[0], list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rles = []
        for rle in segmentation:
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
    try:
        refs = pickle.loads(ref_file.read_bytes())
    except Exception as exc:
        raise LensError(f"cannot read {ref_file}: {exc}") from None
    try:
        instances = json.loads(instances_file.read_text())
    except json.JSONDecodeError as exc:
        raise LensError(f"{instances_file} is not valid JSON: {exc}") from None
    valid_splits = SPLITS.get(dataset) or tuple(sorted({r["split"] for r in refs}))
    if split not in valid_splits:
        raise LensError(f"unknown split {split!r} for {dataset}; valid: {', '.join(valid_splits)}")
    images = {img["id"]: img for img in instances["images"]}
    anns = {ann["id"]: ann for ann in instances["annotations"]}
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
        h, w = int(image["height"]), int(image["width"])
        x, y, bw, bh = (float(v) for v in ann["bbox"])

        def load_mask(seg=ann["segmentation"], h=h, w=w, ref_id=ref["ref_id"], ann_id=ann["id"]):
            try:
                return decode_segmentation(seg, h, w)
            except Exception as exc:
                raise LensError(
                    f"{dataset}: cannot decode the mask of ref {ref_id} (annotation {ann_id}): {exc}"
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
                    annotations={k: v for k, v in sentence.items() if k not in _SENTENCE_KEYS},
                )
            )
    return records
