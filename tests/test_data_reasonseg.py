"""ReasonSeg reader (LISA layout: NAME.jpg + labelme-style NAME.json) on fixture files in the real format."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from lens_model.data import load_dataset
from lens_model.data.reasonseg import read_reasonseg
from lens_model.errors import LensError
from lens_model.image_io import load_image

RECT = [[2, 3], [9, 3], [9, 7], [2, 7]]  # cv2 fills rows 3..7 and columns 2..9, both inclusive


def _shape(label, points):
    return {"label": label, "labels": [label], "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


def _write(folder, stem, text, shapes, size=(12, 16), ext=".jpg", encoding="utf-8", exif=None, **extra):
    """An image of `size` (H, W) and its annotation, as LISA's annotation tool writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    image = Image.fromarray(np.full((h, w, 3), 120, np.uint8))
    image.save(folder / f"{stem}{ext}", **({"exif": exif} if exif is not None else {}))
    anno = {
        "text": text,
        "is_sentence": True,
        "shapes": shapes,
        "imagePath": f"{stem}{ext}",
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
        **extra,
    }
    (folder / f"{stem}.json").write_bytes(json.dumps(anno, ensure_ascii=False).encode(encoding))
    return folder / f"{stem}{ext}"


def _rect(y0, y1, x0, x1, size):
    """Boolean (H, W) mask of rows y0..y1 and columns x0..x1, inclusive."""
    mask = np.zeros(size, bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


@pytest.fixture()
def reasonseg_root(tmp_path):
    root = tmp_path / "datasets"
    val = root / "reason_seg" / "ReasonSeg" / "val"
    # written out of name order: records come back sorted by name
    _write(
        val,
        "c_cp1252",
        ["the caf\u00e9\u2019s sign", "second"],
        [_shape("target", [[1.9, 2.2], [6.99, 2.0], [6.5, 5.9], [1.0, 5.1]])],  # truncated to rows 2..5, cols 1..6
        size=(8, 9),
        ext=".png",
        encoding="cp1252",
    )
    _write(
        val,
        "a_nested",
        ["what holds the soup?", "the bowl"],
        [
            _shape("flag", [[0, 0], [15, 0], [15, 11], [0, 11]]),  # deprecated: dropped
            _shape("target", RECT),
            _shape("ignore", [[4, 4], [6, 4], [6, 6], [4, 6]]),
        ],
    )
    _write(
        val,
        "b_area_order",
        ["the small thing"],
        [
            _shape("target", [[1, 1], [3, 1], [3, 3], [1, 3]]),  # listed first, but smaller: painted last
            _shape("Ignore region", [[0, 0], [9, 0], [9, 9], [0, 9]]),
        ],
        size=(10, 10),
        is_sentence=False,
    )
    train = root / "reason_seg" / "ReasonSeg" / "train"
    _write(train, "t1", ["first", "second", "third"], [_shape("target", RECT)])
    _write(train, "t0", ["only"], [_shape("target", [[0, 0], [3, 0], [3, 2], [0, 2]])])
    return root


def test_val_is_one_record_per_image_with_its_first_sentence(reasonseg_root):
    records = load_dataset("reasonseg", reasonseg_root, "val")
    val = reasonseg_root / "reason_seg" / "ReasonSeg" / "val"
    assert [r.sample_id for r in records] == ["a_nested", "b_area_order", "c_cp1252"]
    assert [r.expression for r in records] == ["what holds the soup?", "the small thing", "the caf\u00e9\u2019s sign"]
    assert [r.image_path for r in records] == [val / "a_nested.jpg", val / "b_area_order.jpg", val / "c_cp1252.png"]
    assert [r.image_size for r in records] == [(12, 16), (10, 10), (8, 9)]
    assert all(r.dataset == "reasonseg" and r.split == "val" for r in records)
    assert records[0].ids == {"image": "a_nested", "sent_index": 0, "is_sentence": True}
    assert records[1].ids == {"image": "b_area_order", "sent_index": 0, "is_sentence": False}


def test_ignore_inside_target_is_cut_out_of_the_target_and_flag_is_dropped(reasonseg_root):
    record = read_reasonseg(reasonseg_root, "val")[0]
    inner = _rect(4, 6, 4, 6, (12, 16))
    assert np.array_equal(record.mask(), _rect(3, 7, 2, 9, (12, 16)) & ~inner)  # the flag shape would cover all
    assert record.mask().sum() == 5 * 8 - 9
    assert np.array_equal(record.ignore_mask(), inner)
    assert record.box == (2.0, 3.0, 10.0, 8.0)  # pixel edges of the target


def test_shapes_are_painted_largest_first(reasonseg_root):
    record = read_reasonseg(reasonseg_root, "val")[1]
    target = _rect(1, 3, 1, 3, (10, 10))
    assert np.array_equal(record.mask(), target)  # painted over the bigger ignore, though listed before it
    assert np.array_equal(record.ignore_mask(), ~target)
    assert record.box == (1.0, 1.0, 4.0, 4.0)


def test_equal_areas_leave_the_shape_listed_first_on_top(tmp_path):
    _write(
        tmp_path / "val",
        "tie",
        ["a"],
        [_shape("target", [[0, 0], [3, 0], [3, 3], [0, 3]]), _shape("ignore", [[1, 1], [4, 1], [4, 4], [1, 4]])],
        size=(6, 6),
    )
    (record,) = read_reasonseg(tmp_path, "val")
    assert np.array_equal(record.mask(), _rect(0, 3, 0, 3, (6, 6)))
    assert np.array_equal(record.ignore_mask(), _rect(1, 4, 1, 4, (6, 6)) & ~_rect(0, 3, 0, 3, (6, 6)))


def test_cp1252_annotation_and_truncated_float_points(reasonseg_root):
    raw = (reasonseg_root / "reason_seg" / "ReasonSeg" / "val" / "c_cp1252.json").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    record = read_reasonseg(reasonseg_root, "val")[2]
    assert record.expression == "the caf\u00e9\u2019s sign"
    assert np.array_equal(record.mask(), _rect(2, 5, 1, 6, (8, 9)))
    assert record.ignore_mask() is None  # no ignore shape: every pixel counts
    assert record.box == (1.0, 2.0, 7.0, 6.0)


def test_train_has_one_record_per_sentence(reasonseg_root):
    records = read_reasonseg(reasonseg_root, "train")
    assert [r.sample_id for r in records] == ["t0/0", "t1/0", "t1/1", "t1/2"]
    assert [r.expression for r in records] == ["only", "first", "second", "third"]
    assert [r.ids["sent_index"] for r in records] == [0, 0, 1, 2]
    assert records[0].box == (0.0, 0.0, 4.0, 3.0)
    assert all(np.array_equal(r.mask(), _rect(3, 7, 2, 9, (12, 16))) for r in records[1:])


def test_other_layouts_and_test_split(tmp_path):
    root = tmp_path / "ReasonSegCopy"
    _write(root / "ReasonSeg" / "test", "x", ["one", "two"], [_shape("target", RECT)])
    (record,) = read_reasonseg(root, "test")
    assert (record.sample_id, record.expression) == ("x", "one")
    _write(root / "val", "y", ["bare split folder"], [_shape("target", RECT)])
    (record,) = load_dataset("reasonseg", root, "val")
    assert record.image_path == root / "val" / "y.jpg" and record.mask().sum() == 40


def test_image_size_follows_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 10 x 16 (H x W), shown rotated by 90 degrees: 16 x 10
    image_path = _write(
        tmp_path / "val",
        "rotated",
        ["a"],
        [_shape("target", [[1, 1], [5, 1], [5, 12], [1, 12]])],
        size=(10, 16),
        exif=exif,
    )
    (record,) = read_reasonseg(tmp_path, "val")
    assert record.image_size == (16, 10) == load_image(image_path).shape[:2]
    assert np.array_equal(record.mask(), _rect(1, 12, 1, 5, (16, 10)))


def _error(folder, stem, anno_bytes, with_image=True):
    folder.mkdir(parents=True, exist_ok=True)
    if with_image:
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folder / f"{stem}.jpg")
    (folder / f"{stem}.json").write_bytes(anno_bytes)
    return folder / f"{stem}.json"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"{not json", "is not valid JSON"),
        (b"[1, 2]", "expected a JSON object with 'text' and 'shapes'"),
        (json.dumps({"shapes": []}).encode(), "missing field 'text'"),
        (json.dumps({"text": ["a"]}).encode(), "missing field 'shapes'"),
        (json.dumps({"text": [], "shapes": []}).encode(), "field 'text' is an empty list"),
        (json.dumps({"text": ["a", 3], "shapes": []}).encode(), r"field 'text\[1\]' must be a non-empty string"),
        (
            json.dumps({"text": ["a"], "shapes": [_shape("target", [])]}).encode(),
            r"field 'shapes\[0\]\.points' must be a non-empty list of \[x, y\] points, got no points",
        ),
        (
            json.dumps(
                {"text": ["a"], "shapes": [_shape("target", RECT), _shape("target", [[0, 0], [1, 0], ["x", 2]])]}
            ).encode(),
            r"field 'shapes\[1\]\.points\[2\]' must be \[x, y\] with two finite numbers",
        ),
        (
            json.dumps({"text": ["a"], "shapes": [{"points": RECT}]}).encode(),
            r"field 'shapes\[0\]\.label' must be a string",
        ),
    ],
)
def test_bad_annotation_names_the_file_and_field(tmp_path, content, expected):
    json_path = _error(tmp_path / "val", "broken", content)
    with pytest.raises(LensError, match=re.escape(str(json_path)) + ".*" + expected):
        read_reasonseg(tmp_path, "val")


def test_annotation_and_image_must_come_in_pairs(tmp_path):
    json_path = _error(tmp_path / "val", "lonely", json.dumps({"text": ["a"], "shapes": []}).encode(), with_image=False)
    with pytest.raises(
        LensError, match=re.escape(str(json_path)) + r": no image next to it \(looked for lonely with .jpg"
    ):
        read_reasonseg(tmp_path, "val")
    json_path.unlink()
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "val" / "orphan.jpg")
    _error(tmp_path / "val", "paired", json.dumps({"text": ["a"], "shapes": []}).encode())
    with pytest.raises(
        LensError, match=re.escape(str(tmp_path / "val" / "orphan.jpg")) + " has no annotation orphan.json"
    ):
        read_reasonseg(tmp_path, "val")


def test_bad_split_or_folder_names_what_is_expected(reasonseg_root, tmp_path):
    with pytest.raises(LensError, match=r"unknown split 'testA' for reasonseg; valid: train, val, test"):
        load_dataset("reasonseg", reasonseg_root, "testA")
    looked = [
        reasonseg_root / "reason_seg" / "ReasonSeg" / "test",
        reasonseg_root / "ReasonSeg" / "test",
        reasonseg_root / "test",
    ]
    with pytest.raises(LensError, match="split folder not found; looked in " + re.escape(", ".join(map(str, looked)))):
        read_reasonseg(reasonseg_root, "test")
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(LensError, match=r"no annotation \(\*\.json\) in " + re.escape(str(tmp_path / "empty" / "val"))):
        read_reasonseg(tmp_path / "empty", "val")


def test_two_point_shape_is_drawn_as_a_line_like_lisa(tmp_path):
    from lens_model.data.reasonseg import read_reasonseg

    folder = tmp_path / "val"
    folder.mkdir()
    Image.new("RGB", (12, 8)).save(folder / "line.jpg")
    (folder / "line.json").write_text(
        json.dumps({"text": ["a line"], "is_sentence": False, "shapes": [_shape("target", [[1, 2], [6, 2]])]})
    )
    (record,) = read_reasonseg(tmp_path, "val")
    expected = np.zeros((8, 12), bool)
    expected[2, 1:7] = True  # a closed 1-px polyline from (1,2) to (6,2): row 2, columns 1..6
    assert (record.mask() == expected).all()
    assert record.box == (1.0, 2.0, 7.0, 3.0)
