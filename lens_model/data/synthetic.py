"""Synthetic referring scenes: coloured shapes with expressions that need attributes and spatial relations.

`make_synthetic(out, n_images, seed)` writes them in the REFER layout, so `read_refer(out, "synthetic", split)`
(and `lens eval --dataset synthetic`) loads them like RefCOCO:

    OUT/images/synthetic_000000.png ...
    OUT/synthetic/instances.json      COCO images + annotations (polygon segmentation, xywh bbox; each object's
                                      "color" and "size" name besides its shape category)
    OUT/synthetic/refs(unc).p         refs with split train/val/testA and 1-2 sentences each

Every expression picks out exactly one object of its scene ("the small red circle left of the blue square").
The image is painted from the same polygons that pycocotools decodes, so GT masks match the pixels exactly.

Two tasks (`task=`):
- "basic": attribute expressions by the shortest unique description ("the triangle", "red circle") and relations
  between described objects ("the circle left of the blue square").
- "reasoning": scenes where colour alone never decides. Colours and shapes repeat within a scene and every object
  has its own (size, colour, shape) triple, so each object can be *named* by its own attributes ("large blue
  square"). Attribute expressions name a target whose colour and whose shape are both shared with other objects
  ("the red circle", "the small red circle"); relational expressions name a neighbour of an anchor and nothing of
  the target ("the shape left of the red circle", "the shape that is above the blue square"). Each sentence also
  carries the target's own name and a rationale written from the scene (`reasoning_expressions`), which the
  think/answer training data uses.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LensError
from ..vocab import SYNTHETIC_BACKGROUNDS, SYNTHETIC_TASKS
from .refer import decode_segmentation

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.08, 0.11), "large": (0.15, 0.2)}  # half-extent as a fraction of the image side
RELATIONS = ("left of", "right of", "above", "below")
ATTRIBUTE_SETS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))
SPLIT_OF_INDEX = {8: "val", 9: "testA"}  # image i goes to SPLIT_OF_INDEX.get(i % 10, "train")
CATEGORY_IDS = {name: k + 1 for k, name in enumerate(SHAPES)}
# Reasoning task: where an object is, in thirds of the image (by its box centre), as the rationales say it.
LOCATION_ROWS = ("top", "middle", "bottom")
LOCATION_COLUMNS = ("left", "center", "right")
# Reasoning task, relations: "a left of b" when a's box ends before b's begins and their vertical extents overlap
# by at least this share of the smaller one (the same row); borderline overlaps make no expression.
SAME_BAND = 0.5


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    polygon: tuple[float, ...]  # flat x1, y1, x2, y2, ... in pixels (COCO polygon)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        xs, ys = self.polygon[0::2], self.polygon[1::2]
        return min(xs), min(ys), max(xs), max(ys)

    def attribute(self, name: str) -> str:
        return getattr(self, name)


def _polygon(shape: str, cx: float, cy: float, r: float) -> tuple[float, ...]:
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        points = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
    elif shape == "square":
        points = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:  # upright equilateral-ish triangle inside the same half-extent
        points = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return tuple(round(float(v), 2) for p in points for v in p)


_RELATION_WORDS = re.compile(r"\b(" + "|".join(RELATIONS) + r")\b")


def is_relational(expression: str) -> bool:
    """Does the expression single its object out by a spatial relation ("... left of the blue square")?"""
    return _RELATION_WORDS.search(expression) is not None


def relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """`a` RELATION `b`, with the boxes fully separated along the relation's axis (no borderline cases)."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return {"left of": ax1 < bx0, "right of": ax0 > bx1, "above": ay1 < by0, "below": ay0 > by1}[relation]


def _matches(obj: SceneObject, attrs: tuple[str, ...], values: tuple[str, ...]) -> bool:
    return all(obj.attribute(a) == v for a, v in zip(attrs, values))


def _phrase(obj: SceneObject, attrs: tuple[str, ...]) -> str:
    order = [a for a in ("size", "color", "shape") if a in attrs]
    return " ".join(obj.attribute(a) for a in order)


def plain_descriptions(objects: list[SceneObject], target: int) -> list[str]:
    """Attribute-only noun phrases ("red circle") that match `objects[target]` and nothing else, shortest first."""
    t = objects[target]
    out = []
    for attrs in ATTRIBUTE_SETS:
        values = tuple(t.attribute(a) for a in attrs)
        if [k for k, o in enumerate(objects) if _matches(o, attrs, values)] == [target]:
            out.append(_phrase(t, attrs))
    return out


def relational_descriptions(objects: list[SceneObject], target: int) -> list[tuple[str, str, str]]:
    """(noun, relation, anchor) triples such that only `objects[target]` is a NOUN that is RELATION the ANCHOR,
    the anchor itself being named uniquely by its attributes."""
    t = objects[target]
    out = []
    for attrs in ATTRIBUTE_SETS:
        values = tuple(t.attribute(a) for a in attrs)
        same = [k for k, o in enumerate(objects) if _matches(o, attrs, values)]
        for anchor_index, anchor in enumerate(objects):
            anchor_names = plain_descriptions(objects, anchor_index) if anchor_index != target else []
            for relation in RELATIONS if anchor_names else ():
                hits = [k for k in same if relation_holds(relation, objects[k], anchor)]
                if hits == [target]:
                    out.append((_phrase(t, attrs), relation, anchor_names[0]))
    return out


def sample_scene(
    rng: np.random.Generator,
    image_size: int | tuple[int, int],
    max_objects: int = 4,
    min_objects: int = 2,
    object_scale: float = 1.0,
    distinct_colors: bool = False,
) -> list[SceneObject]:
    """min_objects..max_objects non-overlapping shapes (boxes at least 2 px apart) placed by rejection sampling;
    fewer when they do not fit. `object_scale` multiplies the half-extents of SIZES (larger objects cover more of
    the MLLM's image tokens); `distinct_colors`: no two objects share a colour. `image_size`: one side or (H, W)."""
    h, w = _hw(image_size)
    count = int(rng.integers(min_objects, max_objects + 1))
    objects: list[SceneObject] = []
    for _ in range(200):
        if len(objects) == count:
            break
        size_name = str(rng.choice(list(SIZES)))
        lo, hi = SIZES[size_name]
        r = float(rng.uniform(lo, hi)) * object_scale * min(h, w)
        cx, cy = (float(v) for v in rng.uniform(r + 1, [w - r - 1, h - r - 1]))
        free = [c for c in COLORS if not (distinct_colors and any(o.color == c for o in objects))]
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(free))
        candidate = SceneObject(shape, color, size_name, _polygon(shape, cx, cy, r))
        if _fits(candidate, objects):
            objects.append(candidate)
    return objects


def _fits(candidate: SceneObject, objects: list[SceneObject]) -> bool:
    """Does the candidate's box keep at least 2 px from every placed object's box?"""
    x0, y0, x1, y1 = candidate.bbox
    return all(x1 + 2 < o.bbox[0] or o.bbox[2] + 2 < x0 or y1 + 2 < o.bbox[1] or o.bbox[3] + 2 < y0 for o in objects)


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """An image size given as one side (square) or (height, width) -> (height, width)."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def _place(
    rng: np.random.Generator, triple: tuple[str, str, str], hw: tuple[int, int], scale: float, objects, tries: int
) -> SceneObject | None:
    """A (size, colour, shape) object at a random place whose box keeps 2 px from every object's; None when
    `tries` draws find no room. Half-extents are SIZES × scale × the image's shorter side."""
    size_name, color, shape = triple
    h, w = hw
    for _ in range(tries):
        r = float(rng.uniform(*SIZES[size_name])) * scale * min(h, w)
        cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
        candidate = SceneObject(shape, color, size_name, _polygon(shape, cx, cy, r))
        if _fits(candidate, objects):
            return candidate
    return None


def sample_repeated_scene(
    rng: np.random.Generator,
    image_size: int | tuple[int, int],
    min_objects: int = 3,
    max_objects: int = 5,
    object_scale: float = 1.0,
) -> list[SceneObject]:
    """min_objects..max_objects (>= 3) shapes, each with its own (size, colour, shape) triple, among them one whose
    colour and one whose shape repeat those of a third object (so that an attribute expression about it needs
    colour *and* shape); the others drawn at random. Placed as `sample_scene` places them, in up to 20 fresh
    layouts; fewer objects when none fits them all. `image_size`: one side or (height, width)."""
    count = int(rng.integers(min_objects, max_objects + 1))
    colors, sizes = list(COLORS), list(SIZES)
    color, shape = str(rng.choice(colors)), str(rng.choice(SHAPES))
    other_color = str(rng.choice([c for c in colors if c != color]))
    other_shape = str(rng.choice([s for s in SHAPES if s != shape]))
    triples = [(str(rng.choice(sizes)), c, s) for c, s in ((color, shape), (color, other_shape), (other_color, shape))]
    while len(triples) < count:
        triple = (str(rng.choice(sizes)), str(rng.choice(colors)), str(rng.choice(SHAPES)))
        if triple not in triples:
            triples.append(triple)
    best: list[SceneObject] = []
    for _ in range(20):  # a few fresh layouts before settling for fewer objects
        objects: list[SceneObject] = []
        for k in rng.permutation(len(triples)):
            placed = _place(rng, triples[k], _hw(image_size), object_scale, objects, tries=50)
            if placed is not None:
                objects.append(placed)
        best = max(best, objects, key=len)
        if len(best) == count:
            break
    return best


def full_name(obj: SceneObject) -> str:
    """The object by all its attributes ("large blue square"): unique in a reasoning scene."""
    return f"{obj.size} {obj.color} {obj.shape}"


def location(obj: SceneObject, hw: tuple[int, int]) -> str:
    """Where the object's box centre lies, in thirds of the (height, width) image: "top left" ... "bottom right"."""
    x0, y0, x1, y1 = obj.bbox
    row = LOCATION_ROWS[min(int(3 * (y0 + y1) / 2 / hw[0]), 2)]
    column = LOCATION_COLUMNS[min(int(3 * (x0 + x1) / 2 / hw[1]), 2)]
    return f"{row} {column}"


def beside(relation: str, a: SceneObject, b: SceneObject) -> bool | None:
    """Is `a` RELATION `b` in the reasoning task's sense: True when a's box is entirely on that side of b's and
    the two overlap across the relation's axis by at least SAME_BAND of the smaller extent (same row for left /
    right, same column for above / below); False when it is not on that side or shares no row / column with b;
    None for the borderline case in between (on that side, overlapping a little)."""
    if not relation_holds(relation, a, b):
        return False
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    lo, hi, other_lo, other_hi = (ay0, ay1, by0, by1) if relation in ("left of", "right of") else (ax0, ax1, bx0, bx1)
    overlap = min(hi, other_hi) - max(lo, other_lo)
    if overlap <= 0:
        return False
    return True if overlap >= SAME_BAND * min(hi - lo, other_hi - other_lo) else None


def unique_name(objects: list[SceneObject], index: int) -> str:
    """The shortest description by colour and shape (and size where needed) that fits only `objects[index]`."""
    obj = objects[index]
    for attrs in (("color", "shape"), ("size", "color", "shape")):
        values = tuple(obj.attribute(a) for a in attrs)
        if [k for k, o in enumerate(objects) if _matches(o, attrs, values)] == [index]:
            return _phrase(obj, attrs)
    raise LensError(f"object {index} ({full_name(obj)}) has a twin in its scene: no description fits it alone")


@dataclass(frozen=True)
class ReasoningExpression:
    """One way to refer to `objects[target]` in a reasoning scene, with what a model should write about it."""

    kind: str  # "attribute" | "relational"
    phrases: tuple[str, ...]  # the expression's wordings ("the shape left of the red circle", "... that is ...")
    target: int
    target_name: str  # the target by its own attributes: full_name
    # what was found, from the scene: "the red circle is at the top right; left of it, at the top left, is the small
    # blue square" — the target's place comes before its name, so the relation leads to the place, the place to the
    # object (naming the object first, the tiny demo model learnt relations far worse: docs/reasoning-probes.md, po2)
    rationale: str
    anchor: int | None = None
    relation: str | None = None


def reasoning_expressions(objects: list[SceneObject], target: int, hw: tuple[int, int]) -> list[ReasoningExpression]:
    """Every expression of the reasoning task that picks out `objects[target]` alone.

    attribute: when the target's colour and its shape are each shared with another object (colour alone and shape
    alone never decide), "the {unique_name}". relational: for each anchor and relation such that the target is the
    one object `beside` the anchor in that relation and no other object is borderline, "the shape {relation} the
    {anchor's unique_name}". The rationale locates what the expression names, then the target."""
    t = objects[target]
    name = full_name(t)
    out = []
    shares = (
        [k for k, o in enumerate(objects) if k != target and o.color == t.color],
        [k for k, o in enumerate(objects) if k != target and o.shape == t.shape],
    )
    if all(shares):
        rationale = f"the {name} is at the {location(t, hw)}"
        out.append(ReasoningExpression("attribute", (f"the {unique_name(objects, target)}",), target, name, rationale))
    for anchor, a in enumerate(objects):
        if anchor == target:
            continue
        anchor_name = unique_name(objects, anchor)
        for relation in RELATIONS:
            if beside(relation, t, a) is not True:
                continue
            others = [beside(relation, o, a) for k, o in enumerate(objects) if k not in (target, anchor)]
            if any(v is not False for v in others):
                continue
            rationale = (
                f"the {anchor_name} is at the {location(a, hw)}; {relation} it, at the {location(t, hw)}, is the {name}"
            )
            phrases = (f"the shape {relation} the {anchor_name}", f"the shape that is {relation} the {anchor_name}")
            out.append(ReasoningExpression("relational", phrases, target, name, rationale, anchor, relation))
    return out


def _texture(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float: smooth blotches of low saturation, ±40 grey levels (a 6×6 random grid, upsampled)."""
    grid = rng.uniform(-40, 40, size=(6, 6, 1)) + rng.uniform(-12, 12, size=(6, 6, 3))
    up = Image.fromarray(((grid + 64) * 2).astype(np.uint8), "RGB").resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float64) / 2 - 64


def render(
    objects: list[SceneObject], image_size: int | tuple[int, int], rng: np.random.Generator, background: str = "noise"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """-> (H, W, 3) uint8 image on a noisy grey background (`background="texture"`: with smooth blotches), and each
    object's (H, W) bool mask. Objects are painted in their flat colour. `image_size`: one side or (H, W)."""
    h, w = _hw(image_size)
    grey = rng.integers(150, 200)
    pixels = grey + rng.normal(0, 6, size=(h, w, 3))
    if background == "texture":
        pixels = pixels + _texture(rng, (h, w))
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    masks = []
    for obj in objects:
        mask = decode_segmentation([list(obj.polygon)], h, w)
        image[mask] = COLORS[obj.color]
        masks.append(mask)
    return image, masks


def _sentences(
    rng: np.random.Generator, plain: list[str], relational: list[tuple[str, str, str]], relation_rate: float
) -> list[tuple[str, dict]]:
    """One or two phrasings of one unique description; a relational one is chosen at `relation_rate`."""
    if relational and (not plain or rng.random() < relation_rate):
        noun, relation, anchor = relational[int(rng.integers(len(relational)))]
        variants = [f"the {noun} {relation} the {anchor}", f"the {noun} that is {relation} the {anchor}"]
    else:
        noun = plain[int(rng.integers(len(plain)))]
        variants = [f"the {noun}", noun]
    return [(v, {}) for v in variants[: 1 + int(rng.random() < 0.5)]]


def _reasoning_sentences(
    rng: np.random.Generator, candidates: list[ReasoningExpression], relation_rate: float, first_ann_id: int
) -> list[tuple[str, dict]]:
    """One sentence (and its annotations) for one object of a reasoning scene: relational at `relation_rate`
    where a relation singles it out (always when nothing else does, unless `relation_rate` is 0), else by its
    attributes; [] when neither."""
    relational = [c for c in candidates if c.kind == "relational"] if relation_rate > 0 else []
    attribute = [c for c in candidates if c.kind == "attribute"]
    if not relational and not attribute:
        return []
    pool = relational if relational and (not attribute or rng.random() < relation_rate) else attribute
    chosen = pool[int(rng.integers(len(pool)))]
    phrase = chosen.phrases[int(rng.integers(len(chosen.phrases)))]
    extra = {
        "kind": chosen.kind,
        "target_name": chosen.target_name,
        "rationale": chosen.rationale,
        "anchor_ann_id": None if chosen.anchor is None else first_ann_id + chosen.anchor,
    }
    return [(phrase, extra)]


def make_synthetic(
    out: str | Path,
    n_images: int,
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    relation_rate: float = 0.5,
    progress: bool = False,
    min_objects: int = 2,
    max_objects: int = 4,
    object_scale: float = 1.0,
    background: str = "noise",
    distinct_colors: bool = False,
    task: str = "basic",
) -> Path:
    """Render `n_images` scenes into `out` (REFER layout, dataset name "synthetic"); returns `out`.

    Each scene has min_objects..max_objects shapes (fewer when they do not fit) with half-extents SIZES ×
    object_scale × the shorter side, on a `background` of SYNTHETIC_BACKGROUNDS; `image_size` is one side (square) or
    (height, width). The split of image i is fixed by i (SPLIT_OF_INDEX), the scenes by `seed`: the same arguments
    write the same bytes. `distinct_colors`: every object of a scene has its own colour (at most len(COLORS) objects)
    and attribute expressions always name it — the easiest referring task, a curriculum's first step.

    `task` (SYNTHETIC_TASKS, module docstring): "basic", or "reasoning" (at least 3 objects, colours and shapes
    repeat; one sentence per object, relational at `relation_rate` where a relation singles it out). A reasoning
    sentence also holds `kind` (attribute / relational), `target_name`, `rationale` and `anchor_ann_id`."""
    if n_images < 1:
        raise LensError(f"number of images (--n) must be at least 1, got {n_images}")
    hw = _hw(image_size)
    if min(hw) < 32:
        raise LensError(f"image size (--image-size) must be at least 32 pixels, got {image_size}")
    if task not in SYNTHETIC_TASKS:
        raise LensError(f"task (--task) must be one of {', '.join(SYNTHETIC_TASKS)}, got {task!r}")
    if task == "reasoning" and (min_objects < 3 or distinct_colors):
        raise LensError(
            "the reasoning task repeats colours and shapes within a scene: it needs at least 3 objects "
            f"(--min-objects, got {min_objects}) and no --distinct-colors"
        )
    if not 1 <= min_objects <= max_objects <= 8:
        raise LensError(
            f"objects per scene (--min-objects, --max-objects) must satisfy 1 <= min <= max <= 8, "
            f"got {min_objects} and {max_objects}"
        )
    if distinct_colors and max_objects > len(COLORS):
        raise LensError(
            f"--distinct-colors gives every object its own colour: at most {len(COLORS)} objects per scene "
            f"(--max-objects), got {max_objects}"
        )
    largest = max(hi for _, hi in SIZES.values())
    if not 0 < object_scale * largest < 0.45:
        raise LensError(
            f"object scale (--object-scale) must be > 0 and keep a large object inside the image "
            f"(scale × {largest} < 0.45, i.e. scale < {0.45 / largest:.2f}), got {object_scale}"
        )
    if not 0.0 <= relation_rate <= 1.0:
        raise LensError(f"relation rate (--relation-rate) must be within 0..1, got {relation_rate}")
    if background not in SYNTHETIC_BACKGROUNDS:
        raise LensError(
            f"background (--background) must be one of {', '.join(SYNTHETIC_BACKGROUNDS)}, got {background!r}"
        )
    out = Path(out)
    ann_dir, image_dir = out / "synthetic", out / "images"
    if (ann_dir / "refs(unc).p").exists():
        raise LensError(f"{ann_dir} already holds a synthetic dataset; choose another --out or delete it first")
    ann_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    images, annotations, refs = [], [], []
    from tqdm.auto import tqdm

    for index in tqdm(range(n_images), desc="scenes", unit="img", disable=not progress):
        if task == "reasoning":
            objects = sample_repeated_scene(rng, hw, min_objects, max_objects, object_scale)
        else:
            objects = sample_scene(rng, hw, max_objects, min_objects, object_scale, distinct_colors)
        pixels, masks = render(objects, hw, rng, background)
        file_name = f"synthetic_{index:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": hw[0], "width": hw[1]})
        split = SPLIT_OF_INDEX.get(index % 10, "train")
        first_ann_id = len(annotations) + 1
        for k, (obj, mask) in enumerate(zip(objects, masks)):
            ann_id = len(annotations) + 1
            x0, y0, x1, y1 = obj.bbox
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[obj.shape],
                    "color": obj.color,
                    "size": obj.size,
                    "segmentation": [list(obj.polygon)],
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
            if task == "reasoning":
                candidates = reasoning_expressions(objects, k, hw)
                sentences = _reasoning_sentences(rng, candidates, relation_rate, first_ann_id)
            else:
                plain, relational = plain_descriptions(objects, k), relational_descriptions(objects, k)
                if distinct_colors:
                    plain = [p for p in plain if obj.color in p.split()]
                sentences = _sentences(rng, plain, relational, relation_rate) if plain or relational else []
            if not sentences:
                continue  # an object no expression can single out (e.g. two identical unrelatable shapes)
            ref_id = len(refs) + 1
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "split": split,
                    "category_id": CATEGORY_IDS[obj.shape],
                    "file_name": file_name,
                    "sentences": [
                        {"sent_id": ref_id * 10 + j, "sent": s, "raw": s, "tokens": s.split(), **extra}
                        for j, (s, extra) in enumerate(sentences)
                    ],
                }
            )
    categories = [{"id": i, "name": name, "supercategory": "shape"} for name, i in CATEGORY_IDS.items()]
    (ann_dir / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    (ann_dir / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return out


def scene_object_masks(records) -> dict[int, dict[int, np.ndarray]]:
    """image_id -> {ann_id: (H, W) bool} of every object in the scenes of `records` (one synthetic dataset),
    read from its instances.json."""
    if not records:
        return {}
    path = records[0].image_path.parents[1] / "synthetic" / "instances.json"
    if not path.exists():
        raise LensError(f"{path} not found: scene objects come from a synthetic dataset (lens make-synthetic)")
    instances = json.loads(path.read_text())
    wanted = {r.ids["image_id"] for r in records}
    sizes = {im["id"]: (im["height"], im["width"]) for im in instances["images"] if im["id"] in wanted}
    objects: dict[int, dict[int, np.ndarray]] = {i: {} for i in wanted}
    for ann in instances["annotations"]:
        if ann["image_id"] in wanted:
            objects[ann["image_id"]][ann["id"]] = decode_segmentation(ann["segmentation"], *sizes[ann["image_id"]])
    return objects


def referred_object_index(pred: np.ndarray | None, objects: dict[int, np.ndarray]) -> int | None:
    """The ann_id of the scene object the predicted mask has the largest IoU with; None for an empty mask (it
    picks nothing). Referred-object accuracy: how often this is the object the expression names."""
    if pred is None or not pred.any():
        return None
    ious = {ann: np.logical_and(pred, mask).sum() / np.logical_or(pred, mask).sum() for ann, mask in objects.items()}
    return max(ious, key=ious.get)
