"""Synthetic referring scenes: written in the REFER layout, deterministic, and every expression is unambiguous.

The checks re-derive each object's attributes from the written files (colour from the image pixels, shape from
the category, size from the box) and parse each sentence independently of the generator's own code.
"""

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from lens_cli import main
from lens_model.data import load_dataset
from lens_model.data.synthetic import COLORS, make_synthetic
from lens_model.errors import LensError

N_IMAGES = 20
SIDE = 96


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "a", n_images=N_IMAGES, seed=3, image_size=SIDE)


def _objects_from_files(root):
    """image_id -> list of dicts (ann_id, shape, color, size, box xyxy), read back from the written files."""
    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    from lens_model.data.refer import decode_segmentation

    objects = {}
    for ann in instances["annotations"]:
        pixels = np.asarray(Image.open(root / "images" / files[ann["image_id"]]))
        mask = decode_segmentation(ann["segmentation"], SIDE, SIDE)
        colours = pixels[mask]
        assert (colours == colours[0]).all(), "an object is painted in one flat colour"
        colour = [name for name, rgb in COLORS.items() if tuple(colours[0]) == rgb]
        x, y, w, h = ann["bbox"]
        # small shapes have half-extent <= 0.11 * side, large ones >= 0.15 * side
        size = "small" if w / 2 <= 0.11 * SIDE + 0.01 else "large"
        assert w / 2 <= 0.11 * SIDE + 0.01 or w / 2 >= 0.15 * SIDE - 0.01
        objects.setdefault(ann["image_id"], []).append(
            {
                "ann_id": ann["id"],
                "shape": names[ann["category_id"]],
                "color": colour[0],
                "size": size,
                "box": (x, y, x + w, y + h),
            }
        )
    return objects


SENTENCE = re.compile(
    r"^(?:the )?(?P<noun>[a-z ]+?)(?: (?:that is )?(?P<rel>left of|right of|above|below) the "
    r"(?P<anchor>[a-z ]+))?$"
)


def _matches(obj, noun):
    words = noun.split()
    return words[-1] == obj["shape"] and all(w in (obj["size"], obj["color"]) for w in words[:-1])


def _relation(rel, a, b):
    return {
        "left of": a["box"][2] < b["box"][0],
        "right of": a["box"][0] > b["box"][2],
        "above": a["box"][3] < b["box"][1],
        "below": a["box"][1] > b["box"][3],
    }[rel]


def test_every_sentence_picks_out_exactly_its_object(scenes):
    objects = _objects_from_files(scenes)
    refs = pickle.loads((scenes / "synthetic" / "refs(unc).p").read_bytes())
    relational = 0
    for ref in refs:
        scene = objects[ref["image_id"]]
        for sentence in ref["sentences"]:
            m = SENTENCE.match(sentence["sent"])
            assert m, sentence["sent"]
            hits = [o for o in scene if _matches(o, m["noun"])]
            if m["rel"]:
                relational += 1
                anchors = [o for o in scene if _matches(o, m["anchor"])]
                assert len(anchors) == 1, f"anchor of {sentence['sent']!r} is ambiguous"
                hits = [o for o in hits if _relation(m["rel"], o, anchors[0])]
            assert [o["ann_id"] for o in hits] == [ref["ann_id"]], sentence["sent"]
    assert relational >= len(refs) // 4, "spatial relations must be a sizeable part of the expressions"


def test_reader_loads_the_scenes_with_masks_matching_the_painted_pixels(scenes):
    split_sizes = {}
    for split in ("train", "val", "testA"):
        records = load_dataset("synthetic", scenes, split)
        split_sizes[split] = len({r.image_path for r in records})
        for record in records:
            pixels = np.asarray(Image.open(record.image_path))
            mask = record.mask()
            assert mask.shape == pixels.shape[:2] == (SIDE, SIDE)
            colours = np.unique(pixels[mask].reshape(-1, 3), axis=0)
            assert len(colours) == 1 and tuple(colours[0]) in COLORS.values()
            ys, xs = np.nonzero(mask)  # the GT box encloses the mask, within one pixel of its extent
            x0, y0, x1, y1 = record.box
            assert x0 - 1 <= xs.min() and xs.max() <= x1 and y0 - 1 <= ys.min() and ys.max() <= y1
    # image i goes to val when i % 10 == 8, testA when i % 10 == 9 (images without a unique object have no ref)
    assert split_sizes["val"] <= 2 and split_sizes["testA"] <= 2 and split_sizes["train"] >= 12


def test_same_seed_same_bytes_other_seed_other_scenes(scenes, tmp_path):
    again = make_synthetic(tmp_path / "b", n_images=N_IMAGES, seed=3, image_size=SIDE)
    other = make_synthetic(tmp_path / "c", n_images=N_IMAGES, seed=4, image_size=SIDE)
    for name in ("synthetic/instances.json", "synthetic/refs(unc).p", "images/synthetic_000007.png"):
        assert (again / name).read_bytes() == (scenes / name).read_bytes(), name
    assert (other / "synthetic/instances.json").read_bytes() != (scenes / "synthetic/instances.json").read_bytes()


def test_refuses_to_overwrite_and_bad_sizes(scenes, tmp_path):
    with pytest.raises(LensError, match="already holds a synthetic dataset"):
        make_synthetic(scenes, n_images=2)
    with pytest.raises(LensError, match="at least 1"):
        make_synthetic(tmp_path / "x", n_images=0)


def test_cli_make_synthetic(tmp_path, capsys):
    assert main(["make-synthetic", "--out", str(tmp_path / "s"), "--n", "3", "--seed", "0"]) == 0
    assert "wrote 3 synthetic scenes" in capsys.readouterr().out
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 3
