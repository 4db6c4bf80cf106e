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
from lens_model.data.synthetic import COLORS, is_relational, make_synthetic
from lens_model.errors import LensError

N_IMAGES = 20
SIDE = 96


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "a", n_images=N_IMAGES, seed=3, image_size=SIDE)


def _objects_from_files(root, side=SIDE, scale=1.0, width=None):
    """image_id -> list of dicts (ann_id, shape, color, size, box xyxy), read back from the written files
    (`scale`: the object_scale the scenes were made with; `width`: the images' width when not `side`, which is
    then their height)."""
    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    from lens_model.data.refer import decode_segmentation

    width = width or side
    assert all((im["height"], im["width"]) == (side, width) for im in instances["images"])
    side = min(side, width)  # shapes are sized by the shorter side
    objects = {}
    for ann in instances["annotations"]:
        pixels = np.asarray(Image.open(root / "images" / files[ann["image_id"]]))
        assert pixels.shape[:2] == (instances["images"][0]["height"], width)
        mask = decode_segmentation(ann["segmentation"], *pixels.shape[:2])
        colours = pixels[mask]
        assert (colours == colours[0]).all(), "an object is painted in one flat colour"
        colour = [name for name, rgb in COLORS.items() if tuple(colours[0]) == rgb]
        x, y, w, h = ann["bbox"]
        # small shapes have half-extent 0.08-0.11 × side × scale, large ones 0.15-0.2 × side × scale
        unit = side * scale
        size = "small" if w / 2 <= 0.11 * unit + 0.01 else "large"
        assert 0.08 * unit - 0.01 <= w / 2 <= 0.11 * unit + 0.01 or 0.15 * unit - 0.01 <= w / 2 <= 0.2 * unit + 0.01
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


def _check_sentences(scenes, objects):
    """Every sentence names exactly its object; -> the number of relational sentences."""
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
    return relational, len(refs)


def test_every_sentence_picks_out_exactly_its_object(scenes):
    relational, n_refs = _check_sentences(scenes, _objects_from_files(scenes))
    assert relational >= n_refs // 4, "spatial relations must be a sizeable part of the expressions"


def _background_blotchiness(root):
    """Mean over images of the spread of 8×8-block means of the pixels outside every object (pixel noise averages
    out in a block; smooth blotches do not)."""
    from lens_model.data.refer import decode_segmentation

    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    spreads = []
    for image in instances["images"]:
        pixels = np.asarray(Image.open(root / "images" / image["file_name"])).astype(float).mean(axis=2)
        side = image["height"]
        inside = np.zeros((side, side), bool)
        for ann in instances["annotations"]:
            if ann["image_id"] == image["id"]:
                inside |= decode_segmentation(ann["segmentation"], side, side)
        blocks = [
            pixels[y : y + 8, x : x + 8].mean()
            for y in range(0, side, 8)
            for x in range(0, side, 8)
            if not inside[y : y + 8, x : x + 8].any()
        ]
        spreads.append(np.std(blocks))
    return float(np.mean(spreads))


def test_scene_options_objects_per_scene_size_and_textured_background(scenes, tmp_path):
    side = 128
    many = make_synthetic(
        tmp_path / "many",
        10,
        seed=1,
        image_size=side,
        min_objects=5,
        max_objects=6,
        object_scale=0.6,
        background="texture",
    )
    objects = _objects_from_files(many, side, scale=0.6)  # also: sizes within the scaled ranges, flat colours
    assert {len(v) for v in objects.values()} <= {5, 6} and len({len(v) for v in objects.values()}) == 2
    relational, _ = _check_sentences(many, objects)
    assert relational > 0
    big = make_synthetic(tmp_path / "big", 10, seed=1, image_size=side, min_objects=2, max_objects=2, object_scale=2)
    objects = _objects_from_files(big, side, scale=2.0)
    assert all(1 <= len(v) <= 2 for v in objects.values()) and sum(len(v) == 2 for v in objects.values()) >= 5
    assert min(o["box"][2] - o["box"][0] for v in objects.values() for o in v) >= 2 * 0.16 * side - 1
    assert _background_blotchiness(many) > 8 > 3 > _background_blotchiness(big)


def test_distinct_colours_give_every_object_its_own_colour_named_by_attribute_expressions(tmp_path):
    root = make_synthetic(
        tmp_path / "distinct", 20, seed=3, image_size=SIDE, min_objects=3, max_objects=4, distinct_colors=True,
        relation_rate=0.3,
    )  # fmt: skip
    objects = _objects_from_files(root)
    assert all(len({o["color"] for o in v}) == len(v) for v in objects.values())
    assert sum(len(v) >= 3 for v in objects.values()) >= 10
    refs = pickle.loads((root / "synthetic" / "refs(unc).p").read_bytes())
    colour_of = {o["ann_id"]: o["color"] for v in objects.values() for o in v}
    plain = [(r, s["sent"]) for r in refs for s in r["sentences"] if not is_relational(s["sent"])]
    assert len(plain) > 20 and all(colour_of[r["ann_id"]] in sent.split() for r, sent in plain)
    relational = [s["sent"] for r in refs for s in r["sentences"] if is_relational(s["sent"])]
    assert relational  # relations still come at relation_rate


REASONING_HW = (96, 144)  # non-square: height 96, width 144
REASONING_SENTENCE = re.compile(
    r"^the shape (?:that is )?(?P<rel>left of|right of|above|below) the (?P<anchor>[a-z ]+)$"
)


@pytest.fixture(scope="module")
def reasoning_scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoning") / "r"
    return make_synthetic(root, 40, seed=5, image_size=REASONING_HW, task="reasoning", min_objects=3, max_objects=5)


def _same_side(rel, a, b):
    """(a is on REL's side of b with a gap, the share of the smaller extent the two share across that axis)."""
    horizontal = rel in ("left of", "right of")
    separated = _relation(rel, a, b)
    lo, hi = (1, 3) if horizontal else (0, 2)
    overlap = min(a["box"][hi], b["box"][hi]) - max(a["box"][lo], b["box"][lo])
    smaller = min(a["box"][hi] - a["box"][lo], b["box"][hi] - b["box"][lo])
    return separated, max(overlap, 0.0) / smaller


def _where(o, hw):
    cx, cy = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2
    rows, columns = ("top", "middle", "bottom"), ("left", "center", "right")
    return f"{rows[min(int(cy / hw[0] * 3), 2)]} {columns[min(int(cx / hw[1] * 3), 2)]}"


def test_reasoning_scenes_colour_never_decides_and_each_expression_has_one_answer(reasoning_scenes):
    """Re-derived from the written files (the image's pixels, boxes, categories) with this test's own rules: every
    object has its own (size, colour, shape); an attribute expression names its target alone, and neither the
    target's colour nor its shape alone would; a relational expression's anchor is named uniquely and the target is
    the one object on that side of it in the same row / column (sharing at least half of the smaller extent),
    with no other object even partly in that row on that side. The target's name and the rationale are the
    scene's, the anchor's annotation id is the anchor's."""
    objects = _objects_from_files(reasoning_scenes, REASONING_HW[0], width=REASONING_HW[1])
    for scene in objects.values():
        triples = [(o["size"], o["color"], o["shape"]) for o in scene]
        assert len(set(triples)) == len(triples) and len(scene) >= 3
        assert len({o["color"] for o in scene}) < len(scene) and len({o["shape"] for o in scene}) < len(scene)
    records = [r for split in ("train", "val", "testA") for r in load_dataset("synthetic", reasoning_scenes, split)]
    kinds = {"attribute": 0, "relational": 0}
    for record in records:
        scene = objects[record.ids["image_id"]]
        target = next(o for o in scene if o["ann_id"] == record.ids["ann_id"])
        notes = record.annotations
        kinds[notes["kind"]] += 1
        assert notes["target_name"] == f"{target['size']} {target['color']} {target['shape']}"
        m = REASONING_SENTENCE.match(record.expression)
        assert (m is not None) == (notes["kind"] == "relational") == is_relational(record.expression)
        if m is None:
            noun = record.expression.removeprefix("the ")
            assert [o for o in scene if _matches(o, noun)] == [target], record.expression
            assert len(noun.split()) >= 2 and target["color"] in noun and target["shape"] in noun
            assert sum(o["color"] == target["color"] for o in scene) >= 2
            assert sum(o["shape"] == target["shape"] for o in scene) >= 2
            assert notes["anchor_ann_id"] is None
            assert notes["rationale"] == f"the {notes['target_name']} is at the {_where(target, REASONING_HW)}"
            continue
        anchors = [o for o in scene if _matches(o, m["anchor"])]
        assert len(anchors) == 1, record.expression
        anchor = anchors[0]
        assert notes["anchor_ann_id"] == anchor["ann_id"] != target["ann_id"]
        sides = {o["ann_id"]: _same_side(m["rel"], o, anchor) for o in scene if o is not anchor}
        assert sides[target["ann_id"]][0] and sides[target["ann_id"]][1] >= 0.5, record.expression
        for ann_id, (separated, shared) in sides.items():
            if ann_id != target["ann_id"]:
                assert not separated or shared == 0, record.expression
        assert notes["rationale"] == (
            f"the {m['anchor']} is at the {_where(anchor, REASONING_HW)}; {m['rel']} it, at the "
            f"{_where(target, REASONING_HW)}, is the {notes['target_name']}"
        )
    assert kinds["attribute"] >= 15 and kinds["relational"] >= 40, kinds


def test_reasoning_scenes_masks_match_the_painted_pixels_of_non_square_images(reasoning_scenes):
    for record in load_dataset("synthetic", reasoning_scenes, "train")[:20]:
        pixels = np.asarray(Image.open(record.image_path))
        assert pixels.shape[:2] == record.image_size == REASONING_HW
        colours = np.unique(pixels[record.mask()].reshape(-1, 3), axis=0)
        assert len(colours) == 1 and tuple(colours[0]) in COLORS.values()


def test_reasoning_scenes_are_deterministic_and_refuse_what_cannot_repeat_colours(reasoning_scenes, tmp_path):
    again = make_synthetic(
        tmp_path / "again", 40, seed=5, image_size=REASONING_HW, task="reasoning", min_objects=3, max_objects=5
    )
    for name in ("synthetic/instances.json", "synthetic/refs(unc).p", "images/synthetic_000011.png"):
        assert (again / name).read_bytes() == (reasoning_scenes / name).read_bytes(), name
    attribute_only = make_synthetic(tmp_path / "attr", 20, seed=5, task="reasoning", min_objects=3, relation_rate=0.0)
    kinds = {r.annotations["kind"] for r in load_dataset("synthetic", attribute_only, "train")}
    assert kinds == {"attribute"}  # relation_rate 0: no relational expression, even where nothing else fits
    with pytest.raises(LensError, match="at least 3 objects"):
        make_synthetic(tmp_path / "x", 2, task="reasoning", min_objects=2)
    with pytest.raises(LensError, match="task .--task. must be one of basic, reasoning"):
        make_synthetic(tmp_path / "y", 2, task="riddles")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(distinct_colors=True, max_objects=5), "at most 4 objects per scene (--max-objects), got 5"),
        (dict(min_objects=0), "1 <= min <= max <= 8, got 0 and 4"),
        (dict(min_objects=5, max_objects=4), "1 <= min <= max <= 8, got 5 and 4"),
        (dict(max_objects=9), "1 <= min <= max <= 8"),
        (dict(object_scale=0), "object scale (--object-scale) must be > 0"),
        (dict(object_scale=2.5), "scale < 2.25), got 2.5"),
        (dict(relation_rate=1.5), "relation rate (--relation-rate) must be within 0..1, got 1.5"),
        (dict(background="stripes"), "background (--background) must be one of noise, texture, got 'stripes'"),
    ],
)
def test_bad_scene_options_are_refused(tmp_path, options, message):
    with pytest.raises(LensError) as e:
        make_synthetic(tmp_path / "x", n_images=2, **options)
    assert message in str(e.value)


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
    options = ["--min-objects", "6", "--max-objects", "6", "--object-scale", "0.5", "--background", "texture"]
    options += ["--relation-rate", "0"]
    assert main(["make-synthetic", "--out", str(tmp_path / "t"), "--n", "2", *options]) == 0
    instances = json.loads((tmp_path / "t" / "synthetic" / "instances.json").read_text())
    assert len(instances["annotations"]) == 12
    assert max(a["bbox"][2] for a in instances["annotations"]) <= 2 * 0.2 * 0.5 * 128 + 0.02
    sentences = [
        s["sent"]
        for ref in pickle.loads((tmp_path / "t" / "synthetic" / "refs(unc).p").read_bytes())
        for s in ref["sentences"]
    ]
    assert sentences and not any(r in s for s in sentences for r in ("left of", "right of", "above", "below"))
    distinct = ["--min-objects", "4", "--max-objects", "4", "--distinct-colors", "--relation-rate", "0"]
    assert main(["make-synthetic", "--out", str(tmp_path / "d"), "--n", "2", *distinct]) == 0
    sentences = [
        s["sent"]
        for ref in pickle.loads((tmp_path / "d" / "synthetic" / "refs(unc).p").read_bytes())
        for s in ref["sentences"]
    ]
    assert sentences and all(any(c in s.split() for c in COLORS) for s in sentences)
    reasoning = ["--min-objects", "3", "--max-objects", "5", "--task", "reasoning", "--relation-rate", "1"]
    assert main(["make-synthetic", "--out", str(tmp_path / "r"), "--n", "3", *reasoning]) == 0
    refs = pickle.loads((tmp_path / "r" / "synthetic" / "refs(unc).p").read_bytes())
    assert refs and all("rationale" in s and "target_name" in s for ref in refs for s in ref["sentences"])


def test_scene_object_masks_and_the_referred_object_of_a_mask(scenes):
    """Every object of a scene is read back (the referred one equal to the record's mask); a mask picks the object
    it overlaps most (IoU), the union of two objects the larger IoU; an empty mask picks nothing."""
    from lens_model.data.synthetic import referred_object_index, scene_object_masks

    records = load_dataset("synthetic", scenes, "train")
    objects = scene_object_masks(records)
    for record in records:
        scene = objects[record.ids["image_id"]]
        assert np.array_equal(scene[record.ids["ann_id"]], record.mask())
        assert referred_object_index(record.mask(), scene) == record.ids["ann_id"]
        assert referred_object_index(np.zeros_like(record.mask()), scene) is None
    scene = next(s for s in objects.values() if len(s) >= 2)
    (a, mask_a), (b, mask_b) = sorted(scene.items(), key=lambda kv: -kv[1].sum())[:2]
    assert referred_object_index(mask_a | mask_b, scene) == a  # larger object, larger share of the union
