"""GroundingSuite-Eval reader on a JSONL fixture in the released format (idx, image_path, class_id, label,
caption, box xyxy, segmentation as compressed COCO RLE) with COCO unlabeled2017 images."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lens_model.data import load_dataset
from lens_model.data.groundingsuite import read_groundingsuite
from lens_model.data.records import mask_box
from lens_model.errors import LensError


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _line(idx, image, caption, mask, box="tight", **extra):
    row = {"idx": idx, "image_path": f"unlabeled2017/{image}", "class_id": 1, "label": "thing", "caption": caption}
    if box == "tight":
        box = list(mask_box(mask))
    if box is not None:
        row["box"] = box
    row["segmentation"] = _rle(mask) if isinstance(mask, np.ndarray) else mask
    row.update(extra)
    return json.dumps(row)


@pytest.fixture()
def gs_root(tmp_path):
    root = tmp_path / "datasets"
    images = root / "coco" / "unlabeled2017"
    images.mkdir(parents=True)
    for name, (h, w) in {"000000000267.jpg": (20, 30), "000000000615.jpg": (16, 12)}.items():
        Image.fromarray(np.full((h, w, 3), 50, np.uint8)).save(images / name)
    first = np.zeros((20, 30), bool)
    first[4:9, 3:20] = True
    part_a, part_b = np.zeros((16, 12), bool), np.zeros((16, 12), bool)
    part_a[1:3, 1:4] = True
    part_b[10:15, 6:11] = True
    lines = [
        _line(
            0,
            "000000000267.jpg",
            "The cat is on the mat; there are two.",
            first,
            box=[2.5, 3.25, 20.75, 9.0],
            class_id=4,
            label="the cat",
        ),
        "",  # blank lines are skipped
        _line(1, "000000000615.jpg", "Two separate parts", [_rle(part_a), _rle(part_b)], box=None),
        _line(2, "000000000267.jpg", "  Spaces kept as written ", first, box="tight"),
    ]
    anno = root / "GroundingSuite-Eval.jsonl"
    anno.write_text("\n".join(lines) + "\n")
    return root, anno, first, part_a | part_b


def test_every_line_is_a_sample_with_its_caption_mask_and_box(gs_root):
    root, anno, first, union = gs_root
    records = load_dataset("groundingsuite", root, "eval")
    images = root / "coco" / "unlabeled2017"
    assert [r.sample_id for r in records] == ["0", "1", "2"]
    # captions as written: no `.replace('is','').replace('are','')`, no lower-casing, no stripping
    assert [r.expression for r in records] == [
        "The cat is on the mat; there are two.",
        "Two separate parts",
        "  Spaces kept as written ",
    ]
    assert [r.image_path for r in records] == [
        images / "000000000267.jpg",
        images / "000000000615.jpg",
        images / "000000000267.jpg",
    ]
    assert all(r.image_path.exists() and r.dataset == "groundingsuite" and r.split == "eval" for r in records)
    assert [r.image_size for r in records] == [(20, 30), (16, 12), (20, 30)]
    assert records[0].ids == {
        "idx": 0,
        "line": 1,
        "image": "unlabeled2017/000000000267.jpg",
        "label": "the cat",
        "class_id": 4,
    }
    assert records[1].ids["line"] == 3  # line numbers of the file, blank line counted
    assert np.array_equal(records[0].mask(), first) and records[0].mask().sum() == 5 * 17
    assert np.array_equal(records[1].mask(), union)  # a list of RLEs is their union
    assert records[0].ignore_mask() is None


def test_box_is_the_lines_xyxy_else_the_masks_tight_box(gs_root):
    root, anno, first, union = gs_root
    records = read_groundingsuite(anno, root / "coco" / "unlabeled2017")
    assert records[0].box == (2.5, 3.25, 20.75, 9.0)  # xyxy as given, not x, y, w, h
    assert records[1].box == (1.0, 1.0, 11.0, 15.0) == mask_box(union)  # no "box" field
    assert records[2].box == (3.0, 4.0, 20.0, 9.0)


def test_annotation_file_path_and_image_folder_one_level_up(gs_root):
    root, anno, first, _ = gs_root
    records = load_dataset("groundingsuite", anno, "eval")  # the JSONL itself as data root
    assert records[0].image_path == root / "coco" / "unlabeled2017" / "000000000267.jpg"
    # the released script joins image_dir with image_path as written: a folder one level up works too
    records = read_groundingsuite(anno, root / "coco")
    assert records[0].image_path == root / "coco" / "unlabeled2017" / "000000000267.jpg"
    assert all(r.image_path.exists() for r in records)


def test_line_without_idx_gets_its_line_number(tmp_path):
    mask = np.ones((4, 4), bool)
    row = json.loads(_line(0, "a.jpg", "x", mask))
    del row["idx"]
    anno = tmp_path / "gs.jsonl"
    anno.write_text(json.dumps(row) + "\n")
    (record,) = read_groundingsuite(anno, tmp_path)
    assert record.sample_id == "line1" and record.image_path == tmp_path / "a.jpg"


def _bad(tmp_path, *lines):
    anno = tmp_path / "GroundingSuite-Eval.jsonl"
    anno.write_text("\n".join(lines) + "\n")
    return anno


GOOD = _line(0, "a.jpg", "a caption", np.ones((4, 5), bool))


@pytest.mark.parametrize(
    "lines, expected",
    [
        ((GOOD, '{"idx": 1, "caption": "cut'), r"line 2 is not valid JSON"),
        ((GOOD, "[1, 2]"), r"line 2: expected a JSON object"),
        (
            (json.dumps({k: v for k, v in json.loads(GOOD).items() if k != "caption"}),),
            r"line 1: missing field 'caption'",
        ),
        (
            (json.dumps({k: v for k, v in json.loads(GOOD).items() if k != "image_path"}),),
            r"line 1: missing field 'image_path'",
        ),
        (
            (json.dumps({k: v for k, v in json.loads(GOOD).items() if k != "segmentation"}),),
            r"line 1: missing field 'segmentation'",
        ),
        ((json.dumps({**json.loads(GOOD), "caption": " "}),), r"line 1: field 'caption' must be a non-empty string"),
        ((json.dumps({**json.loads(GOOD), "box": [1, 2, 3]}),), r"line 1: field 'box' must be \[x1, y1, x2, y2\]"),
        (
            (json.dumps({**json.loads(GOOD), "segmentation": [[0, 0, 3, 0, 3, 3]]}),),
            r"line 1: field 'segmentation' must be a COCO RLE",
        ),
        (
            (json.dumps({**json.loads(GOOD), "segmentation": {"size": [4], "counts": "x"}}),),
            r"line 1: field 'segmentation\.size' must be \[H, W\]",
        ),
        ((GOOD, GOOD), r"line 2: sample id '0' \(field 'idx'\) repeats line 1"),
        (("",), r"no samples"),
    ],
)
def test_bad_lines_name_the_file_line_and_field(tmp_path, lines, expected):
    anno = _bad(tmp_path, *lines)
    with pytest.raises(LensError, match=re.escape(str(anno)) + ".*" + expected):
        read_groundingsuite(anno, tmp_path)


def test_undecodable_rle_fails_when_the_mask_is_read(tmp_path):
    row = {**json.loads(GOOD), "segmentation": {"size": [4, 5], "counts": "garbage!!"}}
    anno = _bad(tmp_path, GOOD.replace('"idx": 0', '"idx": 7'), json.dumps(row))
    records = read_groundingsuite(anno, tmp_path)  # the box is given: nothing decoded yet
    assert records[0].mask().all()
    with pytest.raises(LensError, match=re.escape(str(anno)) + r" line 2: cannot decode field 'segmentation'"):
        records[1].mask()


def test_registry_errors(gs_root, tmp_path):
    root, anno, _, _ = gs_root
    with pytest.raises(LensError, match=r"unknown split 'val' for groundingsuite; valid: eval"):
        load_dataset("groundingsuite", root, "val")
    with pytest.raises(LensError, match=r"unknown split 'val' for groundingsuite; valid: eval"):
        read_groundingsuite(anno, root, "val")
    (root / "coco" / "unlabeled2017").rename(root / "elsewhere")
    with pytest.raises(LensError, match="image folder not found; looked in"):
        load_dataset("groundingsuite", root, "eval")
    records = load_dataset("groundingsuite", root, "eval", image_dir=root / "elsewhere")
    assert records[0].image_path == root / "elsewhere" / "000000000267.jpg" and records[0].image_path.exists()
