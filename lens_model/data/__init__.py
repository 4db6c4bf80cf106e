"""Dataset readers: every reader yields plain `Record`s (image path, expression, lazy GT mask, GT box, ids)."""

from __future__ import annotations

from pathlib import Path

from ..errors import LensError
from .records import Record, mask_box

DATASET_NAMES = ("refcoco", "refcoco+", "refcocog", "reasonseg", "groundingsuite", "synthetic")
GROUNDINGSUITE_FILE = "GroundingSuite-Eval.jsonl"
_GS_IMAGE_DIRS = ("coco/unlabeled2017", "unlabeled2017", "images")


def _groundingsuite(data_root: Path, split: str, image_dir: Path | None) -> list[Record]:
    from .groundingsuite import read_groundingsuite

    if split != "eval":
        raise LensError(f"unknown split {split!r} for groundingsuite; valid: eval")
    anno = data_root if data_root.is_file() else data_root / GROUNDINGSUITE_FILE
    if not anno.exists():
        raise LensError(f"groundingsuite: annotation file not found: {anno}")
    if image_dir is None:
        base = anno.parent
        found = [base / d for d in _GS_IMAGE_DIRS if (base / d).is_dir()]
        if not found:
            raise LensError(
                "groundingsuite: image folder not found; looked in "
                + ", ".join(str(base / d) for d in _GS_IMAGE_DIRS)
                + " (COCO unlabeled2017; pass --image-dir)"
            )
        image_dir = found[0]
    return read_groundingsuite(anno, image_dir, split=split)


def load_dataset(name: str, data_root: str | Path, split: str, image_dir: str | Path | None = None) -> list[Record]:
    """Records of one split, in a stable order. Errors name the path or value expected."""
    root = Path(data_root)
    if name not in DATASET_NAMES:
        raise LensError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}")
    if not root.exists():
        raise LensError(f"data root not found: {root}")
    image_dir = Path(image_dir) if image_dir else None
    if name == "reasonseg":
        from .reasonseg import read_reasonseg

        return read_reasonseg(root, split)
    if name == "groundingsuite":
        return _groundingsuite(root, split, image_dir)
    from .refer import read_refer

    return read_refer(root, name, split, image_dir=image_dir)


__all__ = ["DATASET_NAMES", "Record", "load_dataset", "mask_box"]
