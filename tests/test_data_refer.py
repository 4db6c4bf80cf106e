"""REFER-layout reader (RefCOCO / RefCOCO+ / RefCOCOg) on fixture files in the real format."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lens_model.data import load_dataset
from lens_model.data.refer import decode_segmentation
from lens_model.errors import LensError


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture()
def refcoco_root(tmp_path):
    """Two COCO images, three annotations (polygon, compressed RLE, two-part polygon), refs in two splits."""
    root = tmp_path / "datasets"
    ann_dir = root / "refer_seg" / "refcoco"
    img_dir = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    ann_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    for image_id, (h, w) in {1: (40, 60), 2: (30, 50)}.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(img_dir / f"COCO_train2014_{image_id:012d}.jpg")
    rle_mask = np.zeros((30, 50), bool)
    rle_mask[5:15, 10:30] = True
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 30, "width": 50},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 5, 20, 10],
                "iscrowd": 0,
                "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]],
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 1,
                "bbox": [10, 5, 20, 10],
                "iscrowd": 1,
                "segmentation": _rle(rle_mask),
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "bbox": [0, 0, 50, 30],
                "iscrowd": 0,
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10], [40, 20, 50, 20, 50, 30, 40, 30]],
            },
        ],
        "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "book"}],
    }
    (ann_dir / "instances.json").write_text(json.dumps(instances))
    refs = [
        {
            "ref_id": 100,
            "ann_id": 10,
            "image_id": 1,
            "split": "val",
            "category_id": 1,
            "sent_ids": [1, 2],
            "sentences": [
                {"sent_id": 1, "sent": "red cup", "raw": "Red cup", "tokens": ["red", "cup"]},
                {"sent_id": 2, "sent": "the cup on the left", "raw": "", "tokens": []},
            ],
        },
        {
            "ref_id": 101,
            "ann_id": 11,
            "image_id": 2,
            "split": "val",
            "category_id": 1,
            "sent_ids": [3],
            "sentences": [{"sent_id": 3, "sent": "crowd of cups", "raw": "", "tokens": []}],
        },
        {
            "ref_id": 102,
            "ann_id": 12,
            "image_id": 1,
            "split": "testA",
            "category_id": 2,
            "sent_ids": [4],
            "sentences": [{"sent_id": 4, "sent": "two books", "raw": "", "tokens": []}],
        },
    ]
    (ann_dir / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return root, rle_mask


def test_every_sentence_is_a_sample_with_its_mask_and_box(refcoco_root):
    root, rle_mask = refcoco_root
    records = load_dataset("refcoco", root, "val")
    assert [r.sample_id for r in records] == ["100/1", "100/2", "101/3"]
    assert [r.expression for r in records] == ["red cup", "the cup on the left", "crowd of cups"]
    first = records[0]
    assert first.image_path.name == "COCO_train2014_000000000001.jpg" and first.image_path.exists()
    assert first.image_size == (40, 60) and first.box == (10.0, 5.0, 30.0, 15.0)
    assert first.ids == {"ref_id": 100, "ann_id": 10, "image_id": 1, "sent_id": 1}
    expected = mask_utils.decode(mask_utils.frPyObjects([[10, 5, 30, 5, 30, 15, 10, 15]], 40, 60))[..., 0].astype(bool)
    assert np.array_equal(first.mask(), expected) and first.mask().sum() == expected.sum() > 0
    assert np.array_equal(records[2].mask(), rle_mask)  # compressed RLE


def test_multi_polygon_target_is_the_union(refcoco_root):
    root, _ = refcoco_root
    (record,) = load_dataset("refcoco", root, "testA")
    mask = record.mask()
    assert mask[5, 5] and mask[25, 45] and not mask[20, 20]


def test_decode_segmentation_formats():
    m = np.zeros((12, 9), bool)
    m[2:7, 3:8] = True
    assert np.array_equal(decode_segmentation(_rle(m), 12, 9), m)
    assert np.array_equal(decode_segmentation([_rle(m)], 12, 9), m)
    assert np.array_equal(decode_segmentation(_uncompressed_rle(m), 12, 9), m)
    assert not decode_segmentation([], 12, 9).any()


def test_bad_inputs_name_what_is_expected(refcoco_root, tmp_path):
    root, _ = refcoco_root
    with pytest.raises(LensError, match=r"unknown split 'testC' for refcoco; valid: train, val, testA, testB"):
        load_dataset("refcoco", root, "testC")
    with pytest.raises(LensError, match=r"unknown dataset 'refclef'; valid: refcoco, refcoco\+"):
        load_dataset("refclef", root, "val")
    with pytest.raises(LensError, match=r"refcocog: annotation file refs\(umd\)\.p not found; looked in"):
        load_dataset("refcocog", root, "val")
    with pytest.raises(LensError, match="data root not found"):
        load_dataset("refcoco", tmp_path / "nothing", "val")
    images = root / "refer_seg" / "images"
    images.rename(root / "moved")
    with pytest.raises(LensError, match="image folder not found; looked in"):
        load_dataset("refcoco", root, "val")
    records = load_dataset("refcoco", root, "val", image_dir=root / "moved" / "mscoco" / "images" / "train2014")
    assert records[0].image_path.exists()
    (root / "refer_seg" / "refcoco" / "instances.json").unlink()
    with pytest.raises(LensError, match=r"instances\.json not found"):
        load_dataset("refcoco", root, "val")


def test_undecodable_mask_raises_with_ids(refcoco_root):
    root, _ = refcoco_root
    path = root / "refer_seg" / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [{"size": [40, 60], "counts": "garbage!!"}]
    path.write_text(json.dumps(data))
    record = load_dataset("refcoco", root, "val")[0]
    with pytest.raises(LensError, match=r"cannot decode the mask of ref 100 \(annotation 10\)"):
        record.mask()


def test_a_sentence_naming_an_anchor_gets_its_box_and_a_missing_anchor_is_named(refcoco_root):
    """A relational sentence's `anchor_ann_id` (synthetic reasoning scenes) brings the anchor's box in image pixels
    (xyxy, from its COCO [x, y, w, h]); an id absent from instances.json is one error naming the sentence and file."""
    root, _ = refcoco_root
    ref_file = root / "refer_seg" / "refcoco" / "refs(unc).p"
    refs = pickle.loads(ref_file.read_bytes())
    refs[0]["sentences"][0]["anchor_ann_id"] = 12
    ref_file.write_bytes(pickle.dumps(refs))
    first = load_dataset("refcoco", root, "val")[0]
    twelve = next(
        a for a in json.loads((ref_file.parent / "instances.json").read_text())["annotations"] if a["id"] == 12
    )
    x, y, w, h = twelve["bbox"]
    assert first.annotations["anchor_box"] == (x, y, x + w, y + h)
    assert "anchor_box" not in load_dataset("refcoco", root, "val")[1].annotations
    refs[0]["sentences"][0]["anchor_ann_id"] = 99
    ref_file.write_bytes(pickle.dumps(refs))
    with pytest.raises(LensError, match=r"sentence 1: anchor_ann_id 99 is not in .*instances\.json"):
        load_dataset("refcoco", root, "val")
