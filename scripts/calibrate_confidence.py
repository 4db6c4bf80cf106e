#!/usr/bin/env python
"""Calibrate when a LENS result is `confident` (lens_model.inference.confidence) on the demo model's kind of data:
how well each signal tells answers about objects in the scene from mismatched prompt/image pairs, which thresholds
to use, and what they keep and flag on fresh data.

    python scripts/calibrate_confidence.py --model assets/demo-model --out runs/confidence       # ~8 min, 2 cores
    python scripts/calibrate_confidence.py --model assets/demo-model --out runs/confidence --write   # + config.json

Two draws of fresh scenes (the demo recipe's main scenes from seeds no training or test split used): the
calibration draw picks the thresholds, the evaluation draw measures them. In each draw:
  in scene      every expression of every scene (attribute and relational), each about an object in the scene
  absent colour "the {colour} {shape}" with a colour no object of the scene has
  absent shape  "the {colour} {shape}" with a colour in the scene but no object of that colour and shape
  photo         crops of real photos (--photo, default assets/sample.jpg; calibration and evaluation crops differ)
                with demo-style prompts ("the red circle")
Per result it records the signals (format, named, mask fraction, stability, SAM2's IoU prediction, and SAM2's
object score read from the torch mask decoder) and prints, as markdown: each signal's ROC AUC (in scene vs each
mismatched set), a threshold table for stability, the stability threshold chosen (Youden's J on the calibration
draw: the share of right in-scene answers kept plus the mean share of each mismatched set flagged, highest; the
lowest such threshold), and on the evaluation draw the fraction of mismatched pairs flagged and of in-scene answers
kept, with 95 % bootstrap intervals, and what each check adds (the rule without it, and it alone). --write stores
the chosen thresholds in the model's config.json (`lens.confidence`). Samples go to OUT/samples-{draw}.jsonl; a
rerun reuses them (delete them after re-shipping the model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: import lens_model from it

SETS = ("in scene", "absent colour", "absent shape", "photo")
MISMATCHED = SETS[1:]
DRAW_SEEDS = {"calibration": 25, "evaluation": 26}  # training uses 1-4, tests/test_demo_model.py 7
STABILITY_GRID = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.5 .. 0.95
# (top, left, height, width) as fractions of the photo: calibration and evaluation see different parts and sizes
PHOTO_CROPS = {
    "calibration": [(0, 0, 1, 1), (0, 0, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5), (0.2, 0.4, 0.25, 0.25), (0, 0.2, 0.3, 0.2)],
    "evaluation": [(0.5, 0, 0.5, 0.5), (0, 0.5, 0.5, 0.5), (0.25, 0.25, 0.5, 0.5), (0.6, 0, 0.2, 0.3)]
    + [(0.1, 0.1, 0.8, 0.4)],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/demo-model", help="LENS model directory (default: assets/demo-model)")
    p.add_argument("--out", type=Path, default=Path("runs/confidence"), help="work folder (default: runs/confidence)")
    p.add_argument("--scenes", type=int, default=40, help="scenes per draw (default: 40)")
    p.add_argument("--photo", type=Path, action="append", help="real photo (repeatable; default: assets/sample.jpg)")
    p.add_argument("--write", action="store_true", help="store the chosen thresholds in the model's config.json")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return p.parse_args(argv)


def draw_scenes(out: Path, name: str, n: int, seed: int):
    """Fresh scenes of the demo recipe's main kind (colours and shapes repeat; attribute and relational
    expressions) -> records of every split."""
    from lens_model.data import load_dataset
    from lens_model.data.synthetic import SPLIT_OF_INDEX
    from training.demo import DemoRecipe, make_scenes

    root = make_scenes(out, dataclasses.replace(DemoRecipe().scenes, name=name, n_images=n, seed=seed), False)
    splits = dict.fromkeys(SPLIT_OF_INDEX.get(i % 10, "train") for i in range(n))  # those n scenes fill (n < 10: fewer)
    return [r for split in splits for r in load_dataset("synthetic", root, split)]


def mismatched_prompts(objects, rng) -> dict[str, list[str]]:
    """Demo-style prompts naming no object of the scene: up to 3 with an absent colour, 3 with an absent shape."""
    from lens_model.data.synthetic import COLORS, SHAPES

    present = {(o["color"], o["shape"]) for o in objects}
    colours = {c for c, _ in present}
    absent_colour = [f"the {c} {s}" for c in COLORS if c not in colours for s in SHAPES]
    absent_shape = [f"the {c} {s}" for c in sorted(colours) for s in SHAPES if (c, s) not in present]
    return {
        "absent colour": list(rng.permutation(absent_colour)[:3]) if absent_colour else [],
        "absent shape": list(rng.permutation(absent_shape)[:3]) if absent_shape else [],
    }


def scene_objects(records):
    """image path -> the scene's objects (colour, shape) read back from the pixels of each object's GT mask."""
    from lens_model.data.synthetic import COLORS, SHAPES, scene_object_masks
    from lens_model.image_io import load_image

    masks = scene_object_masks(records)
    by_image = {}
    for record in records:
        if record.image_path in by_image:
            continue
        rgb = load_image(record.image_path)
        objects = []
        instances = json.loads((record.image_path.parents[1] / "synthetic" / "instances.json").read_text())
        shape_of = {a["id"]: SHAPES[a["category_id"] - 1] for a in instances["annotations"]}
        for ann_id, mask in masks[record.ids["image_id"]].items():
            painted = tuple(int(v) for v in np.median(rgb[mask], axis=0))  # objects are painted in flat colours
            colour = next(name for name, value in COLORS.items() if tuple(value) == painted)
            objects.append({"color": colour, "shape": shape_of[ann_id]})
        by_image[record.image_path] = objects
    return by_image


def photo_crops(paths, draw: str):
    from lens_model.image_io import load_image

    for path in paths:
        rgb = load_image(path)
        h, w = rgb.shape[:2]
        for top, left, height, width in PHOTO_CROPS[draw]:
            y0, x0, y1, x1 = int(top * h), int(left * w), int((top + height) * h), int((left + width) * w)
            yield f"{path.name}[{y0}:{y1},{x0}:{x1}]", rgb[y0:y1, x0:x1]


def collect(pipe, records, photos, draw: str, seed: int) -> list[dict]:
    """Run every prompt of the draw; -> one row of signals per result."""
    import torch
    from tqdm.auto import tqdm

    from lens_model.data.synthetic import COLORS, SHAPES
    from lens_model.image_io import load_image

    object_scores = []
    hook = pipe.model.sam.sam_mask_decoder.register_forward_hook(
        lambda module, inputs, out: object_scores.append(out[3].float().reshape(-1).tolist())
    )
    rng = np.random.default_rng(seed)
    jobs = []  # (image id, image, [(set, prompt, GT mask or None)])
    objects = scene_objects(records)
    by_image: dict[Path, list] = {}
    for record in records:
        by_image.setdefault(record.image_path, []).append(record)
    for path, group in by_image.items():
        items = [("in scene", r.expression, r.mask()) for r in group]
        for name, prompts in mismatched_prompts(objects[path], rng).items():
            items += [(name, p, None) for p in prompts]
        jobs.append((path.name, load_image(path), items))
    demo_prompts = [f"the {c} {s}" for c in COLORS for s in SHAPES]
    for name, crop in photo_crops(photos, draw):
        jobs.append((name, np.ascontiguousarray(crop), [("photo", p, None) for p in demo_prompts]))
    rows = []
    try:
        with torch.inference_mode():
            for image_id, rgb, items in tqdm(jobs, desc=f"{draw} draw", unit="image"):
                for start in range(0, len(items), 8):
                    chunk = items[start : start + 8]
                    object_scores.clear()
                    results = pipe(rgb, [p for _, p, _ in chunk])
                    for (kind, prompt, gt), result, obj in zip(chunk, results, object_scores[-1]):
                        iou = None
                        if gt is not None:
                            union = np.logical_or(gt, result.mask).sum()
                            iou = float(np.logical_and(gt, result.mask).sum() / union) if union else 0.0
                        rows.append(
                            {
                                "set": kind,
                                "image": image_id,
                                "prompt": prompt,
                                "iou": iou,
                                "format_ok": result.format_ok,
                                "named": result.named,
                                "mask_fraction": float(result.mask.mean()),
                                "stability": result.stability,
                                "score": result.score,
                                "object_score": obj,
                                "text": result.text,
                            }
                        )
    finally:
        hook.remove()
    return rows


def auc(positive, negative) -> float:
    """P(a random positive scores above a random negative), ties counting half (the ROC's area)."""
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def passes(row, t) -> bool:
    from lens_model.inference.confidence import ConfidenceSignals, judge

    signals = ConfidenceSignals(
        row["format_ok"], row["named"], None, row["mask_fraction"], row["stability"], row["score"]
    )
    return judge(signals, t)[0]


def by_set(rows):
    return {name: [r for r in rows if r["set"] == name] for name in SETS}


def signal_table(rows) -> str:
    """ROC AUC of each signal: in-scene answers (higher = more confident) vs each mismatched set."""
    sets = by_set(rows)
    signals = {
        "format followed": lambda r: float(r["format_ok"]),
        "answer names the prompt": lambda r: float(r["named"]),
        "stability": lambda r: r["stability"],
        "SAM2 IoU prediction": lambda r: r["score"],
        "SAM2 object score": lambda r: r["object_score"],
        "mask not empty (fraction)": lambda r: r["mask_fraction"],
        "mask not large (-fraction)": lambda r: -r["mask_fraction"],
    }
    lines = ["| signal | " + " | ".join(f"AUC vs {m}" for m in MISMATCHED) + " |", "|---|" + "---|" * len(MISMATCHED)]
    for name, value in signals.items():
        right = [value(r) for r in sets["in scene"]]
        cells = [f"{auc(right, [value(r) for r in sets[m]]):.2f}" if sets[m] else "-" for m in MISMATCHED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rates(rows, t) -> dict[str, float]:
    """Share kept of the right in-scene answers (IoU >= 0.5), share flagged of the wrong ones and of each
    mismatched set (NaN for an empty set)."""
    sets = by_set(rows)
    groups = {
        "right": ([r for r in sets["in scene"] if r["iou"] >= 0.5], True),
        "wrong": ([r for r in sets["in scene"] if r["iou"] < 0.5], False),
        **{m: (sets[m], False) for m in MISMATCHED},
    }
    return {
        name: float(np.mean([passes(r, t) == kept for r in group])) if group else float("nan")
        for name, (group, kept) in groups.items()
    }


def youden(r: dict[str, float]) -> float:
    """Right answers kept + the mean share flagged over the mismatched sets - 1."""
    return r["right"] + float(np.nanmean([r[m] for m in MISMATCHED])) - 1.0


def threshold_table(rows, base) -> str:
    """For each stability threshold (the other checks at `base`): right in-scene answers kept, wrong ones and each
    mismatched set flagged, and Youden's J."""
    head = "| min_stability | kept: in scene, right (IoU ≥ 0.5) | flagged: in scene, wrong | " + " | ".join(
        f"flagged: {m}" for m in MISMATCHED
    )
    lines = [head + " | J |", "|---|---|---|" + "---|" * (len(MISMATCHED) + 1)]
    for s in STABILITY_GRID:
        r = rates(rows, dataclasses.replace(base, min_stability=s))
        cells = [r["right"], r["wrong"], *(r[m] for m in MISMATCHED), youden(r)]
        lines.append(f"| {s:g} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def choose(rows, base):
    """The stability threshold of the grid with the highest Youden's J (the lowest of equals: it keeps the most)."""
    scores = [(youden(rates(rows, dataclasses.replace(base, min_stability=s))), -s) for s in STABILITY_GRID]
    return dataclasses.replace(base, min_stability=-max(scores)[1])


def ablation_table(rows, t) -> str:
    """What each check adds: the rule, the rule without each check, and each check alone."""
    off = {
        "format": {"require_format": False},
        "named": {"require_named": False},
        "mask area": {"min_mask_fraction": 0.0, "max_mask_fraction": 1.0},
        "stability": {"min_stability": 0.0},
    }
    variants = {"all checks": t}
    variants.update({f"without {name}": dataclasses.replace(t, **change) for name, change in off.items()})
    for name in off:
        others = {k: v for other, c in off.items() if other != name for k, v in c.items()}
        variants[f"{name} only"] = dataclasses.replace(t, **others)
    head = "| rule | kept: right | flagged: wrong | " + " | ".join(f"flagged: {m}" for m in MISMATCHED)
    lines = [head + " |", "|---|---|---|" + "---|" * len(MISMATCHED)]
    for name, variant in variants.items():
        r = rates(rows, variant)
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in ("right", "wrong", *MISMATCHED)) + " |")
    return "\n".join(lines)


def outcome_table(rows, t) -> str:
    from lens_model.eval.metrics import bootstrap_interval

    sets = by_set(rows)
    groups = {
        "in scene, right (IoU ≥ 0.5): kept": ([r for r in sets["in scene"] if r["iou"] >= 0.5], True),
        "in scene, wrong (IoU < 0.5): flagged": ([r for r in sets["in scene"] if r["iou"] < 0.5], False),
        "in scene, all: kept": (sets["in scene"], True),
        **{f"{m}: flagged": (sets[m], False) for m in MISMATCHED},
        "all mismatched pairs: flagged": ([r for m in MISMATCHED for r in sets[m]], False),
    }
    lines = ["| set | n | fraction [95 % interval] |", "|---|---|---|"]
    for name, (group, kept) in groups.items():
        if not group:
            continue
        values = np.array([passes(r, t) == kept for r in group], float)
        value, low, high = bootstrap_interval(values)
        lines.append(f"| {name} | {len(group)} | {value:.3f} [{low:.3f}, {high:.3f}] |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from lens_model.inference.pipeline import LensPipeline

    torch.set_num_threads(args.threads)
    photos = args.photo or [Path(__file__).resolve().parents[1] / "assets" / "sample.jpg"]
    pipe = LensPipeline.from_pretrained(args.model, device="cpu", dtype="float32")
    args.out.mkdir(parents=True, exist_ok=True)
    draws = {}
    for draw, seed in DRAW_SEEDS.items():
        path = args.out / f"samples-{draw}.jsonl"
        if path.exists():  # rerun: reuse what an earlier run collected
            draws[draw] = [json.loads(line) for line in path.read_text().splitlines()]
            continue
        records = draw_scenes(args.out, f"{draw}-scenes", args.scenes, seed)
        draws[draw] = collect(pipe, records, photos, draw, seed)
        path.write_text("".join(json.dumps(r) + "\n" for r in draws[draw]))
    base = pipe.confidence
    chosen = choose(draws["calibration"], base)
    report = [
        f"Model `{args.model}`; calibration draw (seed {DRAW_SEEDS['calibration']}), "
        f"{len(draws['calibration'])} results:",
        "",
        signal_table(draws["calibration"]),
        "",
        threshold_table(draws["calibration"], base),
        "",
        "Chosen (highest J): " + ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(chosen).items()),
        "",
        f"Evaluation draw (seed {DRAW_SEEDS['evaluation']}), {len(draws['evaluation'])} results, chosen thresholds:",
        "",
        outcome_table(draws["evaluation"], chosen),
        "",
        "What each check adds (evaluation draw):",
        "",
        ablation_table(draws["evaluation"], chosen),
    ]
    text = "\n".join(report)
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    if args.write:
        config = Path(args.model) / "config.json"
        data = json.loads(config.read_text())
        data["lens"]["confidence"] = dataclasses.asdict(chosen)
        tmp = config.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(config)
        print(f"wrote lens.confidence into {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
