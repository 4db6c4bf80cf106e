"""Train the offline demo model: a tiny LENS from scratch on synthetic referring scenes, on CPU, with this
project's own stages, then evaluate it on the held-out test split with generated answers.

    python -m training.demo --out runs/demo                       # ~1.5 h on 2 CPU cores; rerun to resume
    python -m training.demo --out runs/demo --ship assets/demo-model   # then write the fp16 model directory

Steps (each skipped when its output exists, a stopped training phase resumes from its last checkpoint):
  1. scenes   `make_synthetic`, every object of a scene in its own colour: phase A (2 objects, attribute
              expressions) and phase B (2-4 objects, 20 % relational expressions, textured backgrounds); the test
              split is phase B's held-out `testA`.
  2. init     a tiny LENS (`make_tiny`, SAM2 at 128 px, official context pass), random weights.
  3. align-a  stage 1 (`training.align`) on phase A, then align-b and align-c (half the learning rate) on phase B
              (+ phase A at 1/4 of the samples),
              trainable: MLLM, context module, SAM2 prompt encoder and mask decoder. Two losses are added to the
              paper's stage 1 for a model trained from scratch (docs/design.md, "Stage 1"): the answer's
              language-modelling loss (`lm_weight`, the random MLLM must learn to write the answer) and the
              expression-token loss on the query states (`expression_weight`, without it the mask loss alone
              never routes the expression into SAM2's prompt and the model masks every object).
  4. grpo     stage 2 (`training.grpo`) with the paper's rewards (format, box IoU², mask IoU²).
  5. eval     each phase's final model on the test split: greedy decoding, no teacher forcing; referred-object
              accuracy, gIoU, cIoU, P@0.5, format, expression named, box accuracy, with 95 % bootstrap intervals,
              next to the empty / all-objects baselines; written to OUT/report.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("training.demo")


@dataclass(frozen=True)
class SceneSet:
    name: str
    n_images: int
    seed: int
    min_objects: int
    max_objects: int
    relation_rate: float
    background: str
    object_scale: float = 1.1
    image_size: int = 128
    distinct_colors: bool = True


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo model: seeds, data, schedule. `--quick` scales it down for a smoke run."""

    phase_a: SceneSet = SceneSet("phase-a", 2500, 1, 2, 2, 0.0, "noise")
    phase_b: SceneSet = SceneSet("phase-b", 5000, 2, 2, 4, 0.2, "texture")
    model_seed: int = 0
    num_queries: int = 8
    sam_image_size: int = 128
    align_a_steps: int = 600
    align_b_steps: int = 3000
    align_c_steps: int = 1500  # phase B's scenes again at half the learning rate: referred accuracy still rose
    grpo_steps: int = 300
    batch: int = 8
    lr: float = 5e-4
    grpo_lr: float = 1e-5
    grpo_prompts: int = 4
    grpo_generations: int = 4
    lm_weight_a: float = 0.0  # phase A learns to select first: the answer loss slows that down (0.75 vs 1.0)
    lm_weight: float = 0.5
    expression_weight: float = 1.0
    trainable: tuple[str, ...] = ("context", "sam_decoder", "sam_prompt_encoder", "mllm")
    test_samples: int = 500
    max_new_tokens: int = 96
    save_every: int = 250
    bootstrap: int = 2000

    def quick(self) -> DemoRecipe:
        small = dict(n_images=60)
        return DemoRecipe(
            phase_a=SceneSet(**{**asdict(self.phase_a), **small}),
            phase_b=SceneSet(**{**asdict(self.phase_b), **small}),
            align_a_steps=4,
            align_b_steps=4,
            align_c_steps=4,
            grpo_steps=2,
            test_samples=8,
            max_new_tokens=24,
            save_every=2,
            bootstrap=200,
        )


# ---------------------------------------------------------------------------- evaluation
@dataclass
class SampleOutcome:
    """One test expression, answered by the model with greedy decoding."""

    sample_id: str
    iou: float  # mask IoU with the referred object
    intersection: int
    union: int
    referred: bool  # the mask overlaps the referred object more (IoU) than any other object of the scene
    format_ok: bool  # the answer follows the grounding template
    names_expression: bool  # the answer's object reference is the expression asked about
    box_hit: bool  # answer box IoU >= 0.5 with the GT box
    all_objects_iou: float  # baseline: IoU of the union of every object with the referred one
    objects: int
    text: str


def _normalise(text: str | None) -> str:
    return " ".join((text or "").lower().strip().rstrip(".").split())


def evaluate_model(
    model_dir: Path,
    records,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    progress: bool = True,
    backend_dir: Path | None = None,
):
    """-> list[SampleOutcome] of `model_dir` on `records` (synthetic scenes), greedy decoding, generated answers.
    `backend_dir`: a `lens export` of the model, run with --backend onnxruntime (its per-graph CPU choice)."""
    import torch
    from tqdm.auto import tqdm

    from lens_model.data.synthetic import referred_object_index, scene_object_masks
    from lens_model.eval.metrics import score_sample
    from lens_model.image_io import load_image
    from lens_model.inference.answer import parse_answer
    from lens_model.inference.pipeline import LensPipeline

    backend = {"backend": "onnxruntime", "backend_dir": str(backend_dir)} if backend_dir is not None else {}
    pipeline = LensPipeline.from_pretrained(str(model_dir), device="cpu", dtype="float32", **backend)
    objects = scene_object_masks(records)
    outcomes: list[SampleOutcome] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(records), batch_size), desc="evaluate", unit="batch", disable=not progress):
            chunk = records[start : start + batch_size]
            paths = sorted({str(r.image_path) for r in chunk})
            images = [load_image(p) for p in paths]
            index = [paths.index(str(r.image_path)) for r in chunk]
            results = pipeline.segment_batch(images, [r.expression for r in chunk], index, max_new_tokens)
            for record, result in zip(chunk, results):
                gt = record.mask()
                score = score_sample(result.mask, gt, result.box, record.box)
                scene = objects[record.ids["image_id"]]
                everything = np.logical_or.reduce(list(scene.values()))
                parsed = parse_answer(result.text, pipeline.config.prompt.answer_format)
                outcomes.append(
                    SampleOutcome(
                        sample_id=record.sample_id,
                        iou=score.iou,
                        intersection=score.intersection,
                        union=score.union,
                        referred=referred_object_index(result.mask, scene) == record.ids["ann_id"],
                        format_ok=result.format_ok,
                        names_expression=_normalise(parsed.object_ref) == _normalise(record.expression),
                        box_hit=score.box_hit,
                        all_objects_iou=score_sample(everything, gt).iou,
                        objects=len(scene),
                        text=result.text,
                    )
                )
    return outcomes


def summarize(outcomes: list[SampleOutcome], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric -> {value, low, high}: the 95 % percentile bootstrap interval over samples."""
    from lens_model.eval.metrics import bootstrap_interval

    columns = {
        "referred-object accuracy": [o.referred for o in outcomes],
        "gIoU": [o.iou for o in outcomes],
        "P@0.5": [o.iou >= 0.5 for o in outcomes],
        "format": [o.format_ok for o in outcomes],
        "expression named": [o.names_expression for o in outcomes],
        "box accuracy (IoU>=0.5)": [o.box_hit for o in outcomes],
        "all-objects mask gIoU (baseline)": [o.all_objects_iou for o in outcomes],
        "chance of picking the referred object": [1.0 / o.objects for o in outcomes],
    }
    out = {}
    for name, values in columns.items():
        value, low, high = bootstrap_interval(np.asarray(values, dtype=np.float64), n_boot=n_boot, seed=seed)
        out[name] = {"value": value, "low": low, "high": high}
    inter = np.array([o.intersection for o in outcomes], dtype=np.float64)
    union = np.array([o.union for o in outcomes], dtype=np.float64)
    value, low, high = bootstrap_interval(np.stack([inter, union], 1), n_boot=n_boot, seed=seed, statistic=_ciou)
    out["cIoU"] = {"value": value, "low": low, "high": high}
    return out


def _ciou(rows: np.ndarray) -> float:
    """(n, 2) [intersection, union] rows -> cumulative IoU."""
    return float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1.0))


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: one column per evaluated model, value [low, high] per metric."""
    names = list(results)
    metrics = list(next(iter(results.values())))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        cells = [
            f"{results[n][metric]['value']:.3f} [{results[n][metric]['low']:.3f}, {results[n][metric]['high']:.3f}]"
            for n in names
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- steps
def make_scenes(out: Path, scenes: SceneSet, progress: bool = True) -> Path:
    from lens_model.data.synthetic import make_synthetic

    root = out / "scenes" / scenes.name
    if not (root / "synthetic" / "refs(unc).p").exists():
        log.info("rendering %d %s scenes into %s", scenes.n_images, scenes.name, root)
        if root.exists():  # a half-written set from an interrupted run
            import shutil

            shutil.rmtree(root)
        make_synthetic(
            root,
            n_images=scenes.n_images,
            seed=scenes.seed,
            image_size=scenes.image_size,
            relation_rate=scenes.relation_rate,
            min_objects=scenes.min_objects,
            max_objects=scenes.max_objects,
            object_scale=scenes.object_scale,
            background=scenes.background,
            distinct_colors=scenes.distinct_colors,
            progress=progress,
        )
    return root


def run_training(entry, out_dir: Path, overrides: list[str], progress: bool) -> None:
    """One training phase; resumes OUT/checkpoints/latest when a stopped run left one; skipped when final/ exists."""
    from training.engine import TrainingError

    if (out_dir / "final" / "config.json").exists():
        log.info("%s: done already (final/ exists)", out_dir)
        return
    resume = ["--resume"] if (out_dir / "checkpoints" / "latest").exists() else []
    args = [*resume, *([] if progress else ["--no-progress"]), *overrides, f"output_dir={out_dir}"]
    if entry(args) != 0:
        raise TrainingError(f"{out_dir}: training failed (see the log above); rerun to resume")


def align_overrides(
    recipe: DemoRecipe, init: Path, datasets: str, val: Path, steps: int, lm_weight: float, lr: float
) -> list[str]:
    return [
        f"init_from={init}",
        f"datasets={datasets}",
        f"val_dataset={{name: synthetic, root: {val}, split: val}}",
        "val_samples=100",
        f"trainable=[{','.join(recipe.trainable)}]",
        f"lm_weight={lm_weight}",
        f"expression_weight={recipe.expression_weight}",
        f"global_batch_size={recipe.batch}",
        f"max_steps={steps}",
        f"lr={lr}",
        "warmup_steps=20",
        f"eval_every={recipe.save_every * 2}",
        "log_every=10",
        f"save_every={recipe.save_every}",
        "keep_last=1",
        "num_workers=1",
        "gradient_checkpointing=false",
        f"seed={recipe.model_seed}",
    ]


def held_out_records(scenes: Path, n: int):
    """The first `n` expressions of the held-out testA split, one per ref (the first sentence), scene order."""
    from lens_model.data import load_dataset

    records = load_dataset("synthetic", scenes, "testA")
    seen, out = set(), []
    for record in records:
        key = record.ids["ann_id"]
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out[:n]


def evaluate_phase(out: Path, name: str, model_dir: Path, records, recipe: DemoRecipe, progress: bool) -> dict:
    path = out / f"eval-{name}.json"
    if path.exists():
        rows = json.loads(path.read_text())
        outcomes = [SampleOutcome(**row) for row in rows]
    else:
        log.info("evaluating %s on %d test expressions (generated answers)", name, len(records))
        outcomes = evaluate_model(model_dir, records, max_new_tokens=recipe.max_new_tokens, progress=progress)
        path.write_text(json.dumps([asdict(o) for o in outcomes]))
    return summarize(outcomes, recipe.bootstrap)


def grpo_rewards(run_dir: Path, window: int = 25) -> dict[str, dict[str, float]]:
    """Mean of every reward component over the first and the last `window` GRPO steps."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"]
    keys = [k for k in rows[0] if k.startswith("reward") and k != "reward_group_std"] + ["mask_iou"]
    first, last = rows[:window], rows[-window:]
    return {
        k: {"first": float(np.mean([r[k] for r in first])), "last": float(np.mean([r[k] for r in last]))}
        for k in keys
        if k in rows[0]
    }


MODEL_CARD = """# lens demo model: a tiny LENS trained from scratch on synthetic shapes

A complete LENS model (Qwen2.5-VL-architecture reasoning model with {mllm_params:.1f} M parameters — text hidden 128 × 2
layers, vision depth 2 × 64 — 8 context queries, 4-layer connector, SAM2 Hiera at width 32 with 128 px input;
{params:.1f} M parameters in all, float16 weights), trained on 2 CPU cores by this repository's own stages:

    python -m training.demo --out runs/demo --ship assets/demo-model

Loaded like any LENS checkpoint (`lens segment --model assets/demo-model ...`, `LensPipeline.from_pretrained`).

## What it can do
Coloured circles, squares and triangles (red, green, blue, yellow; every object of a scene in its own colour) on
a grey or textured background, 128 × 128 px images with 2-4 objects: it writes the grounding answer
`<|object_ref_start|>EXPRESSION.<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` and masks the object the
expression names ("the red circle", "green square", "the small blue triangle").

## What it cannot do
Anything else: real photographs, other objects, colours or image sizes give meaningless masks. Its boxes are
rough (box accuracy below). It reads colours, not relations: attribute expressions (which always name the
colour) are solved almost always, relational ones ("the circle left of the blue square", 20 % of its training
and test data) not much better than chance (table "by kind of expression" below). SAM2's video-memory weights
are not included (`lens track` needs `--sam-memory-checkpoint`).

## Training
Recipe (`training/demo.py`, seeds fixed): stage 1 (`training.align`) {align_a} steps on 2-object scenes, then
{align_b} + {align_c} steps on 2-4-object scenes, batch 8, lr 5e-4 cosine (2.5e-4 for the last {align_c}); MLLM,
context module, SAM2 prompt encoder and mask decoder trained (SAM2's image encoder keeps its random weights).
Two losses not in the paper, for a model trained from scratch: the answer's language-modelling loss
(`lm_weight` {lm_weight}, after the first phase) and the expression-token loss on the query states
(`expression_weight` {expression_weight}). Stage 2 (`training.grpo`): {grpo_steps} steps of {prompts} prompts ×
G={generations}, the paper's rewards (format, box IoU², mask IoU²), lr {grpo_lr}.

{report}
"""


def ship(model_dir: Path, dest: Path):
    """The trained model as a LENS model directory with float16 weights (half the bytes; any dtype loads them).
    SAM2's video-memory weights are left out: the demo model never trained them (`lens track` then asks for an
    official SAM2 checkpoint, as for the released models)."""
    import torch

    from lens_model.model.checkpoint import load_model, save_model

    model, processor = load_model(model_dir, dtype=torch.float32)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_model(model, dest, processor=processor, state=state)
    return model


def write_demo_scene(records, outcomes: list[SampleOutcome], dest: Path) -> Path:
    """The test scene with the most objects whose every evaluated expression the model got right (referred object,
    IoU >= 0.75) -> DEST/demo-scene.png + demo-scene.json (the expressions with their objects' polygons)."""
    import shutil

    by_image: dict[int, list] = {}
    for record, outcome in zip(records, outcomes):
        by_image.setdefault(record.ids["image_id"], []).append((record, outcome))
    good = [
        (len(pairs), -image_id, pairs)
        for image_id, pairs in by_image.items()
        if len(pairs) >= 2 and all(o.referred and o.iou >= 0.75 for _, o in pairs)
    ]
    if not good:
        raise RuntimeError("no test scene the model gets entirely right: nothing to show as the demo scene")
    pairs = max(good, key=lambda g: g[:2])[2]
    instances = json.loads((pairs[0][0].image_path.parents[1] / "synthetic" / "instances.json").read_text())
    polygons = {a["id"]: a["segmentation"] for a in instances["annotations"]}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pairs[0][0].image_path, dest / "demo-scene.png")
    scene = {
        "image": "demo-scene.png",
        "source": f"{pairs[0][0].image_path.name} of the demo recipe's held-out test split",
        "objects": [{"expression": r.expression, "segmentation": polygons[r.ids["ann_id"]]} for r, _ in pairs],
    }
    (dest / "demo-scene.json").write_text(json.dumps(scene, indent=1))
    return dest / "demo-scene.png"


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder (default: runs/demo)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few scenes: checks the pipeline only")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    parser.add_argument("--ship", type=Path, help="after training, write the final model here in fp16")
    args = parser.parse_args(argv)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from lens_model.model.tiny import make_tiny
    from training.align import main as align_main
    from training.grpo import main as grpo_main

    torch.set_num_threads(args.threads)
    recipe = DemoRecipe().quick() if args.quick else DemoRecipe()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    progress = not args.no_progress
    clock: dict[str, float] = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}

    def timed(name, fn, *a):
        if name in clock:
            return fn(*a)
        start = time.perf_counter()
        result = fn(*a)
        clock[name] = time.perf_counter() - start
        (out / "times.json").write_text(json.dumps(clock, indent=1))
        return result

    scenes_a = timed("scenes-a", make_scenes, out, recipe.phase_a, progress)
    scenes_b = timed("scenes-b", make_scenes, out, recipe.phase_b, progress)
    init = out / "init"
    if not (init / "config.json").exists():
        make_tiny(
            init,
            seed=recipe.model_seed,
            num_queries=recipe.num_queries,
            context_pass="official",
            sam_image_size=recipe.sam_image_size,
        )
    data_a = f"[{{name: synthetic, root: {scenes_a}}}]"
    data_b = f"[{{name: synthetic, root: {scenes_b}, ratio: 1.0}}, {{name: synthetic, root: {scenes_a}, ratio: 0.25}}]"
    align_a, align_b, align_c, grpo = out / "align-a", out / "align-b", out / "align-c", out / "grpo"
    timed(
        "align-a",
        run_training,
        align_main,
        align_a,
        align_overrides(recipe, init, data_a, scenes_a, recipe.align_a_steps, recipe.lm_weight_a, recipe.lr),
        progress,
    )
    timed(
        "align-b",
        run_training,
        align_main,
        align_b,
        align_overrides(recipe, align_a / "final", data_b, scenes_b, recipe.align_b_steps, recipe.lm_weight, recipe.lr),
        progress,
    )
    timed(
        "align-c",
        run_training,
        align_main,
        align_c,
        align_overrides(
            recipe, align_b / "final", data_b, scenes_b, recipe.align_c_steps, recipe.lm_weight, recipe.lr / 2
        ),
        progress,
    )
    grpo_overrides = [
        f"init_from={align_c / 'final'}",
        f"datasets=[{{name: synthetic, root: {scenes_b}}}]",
        f"global_batch_size={recipe.grpo_prompts}",
        f"num_generations={recipe.grpo_generations}",
        f"max_completion_length={recipe.max_new_tokens}",
        f"max_steps={recipe.grpo_steps}",
        f"lr={recipe.grpo_lr}",
        f"trainable=[{','.join(recipe.trainable)}]",
        "reward_weights={format: 1.0, box_iou: 1.0, segment_iou: 1.0}",
        "log_every=1",
        f"save_every={recipe.save_every}",
        "keep_last=1",
        "gradient_checkpointing=false",
        f"seed={recipe.model_seed}",
    ]
    timed("grpo", run_training, grpo_main, grpo, grpo_overrides, progress)

    records = held_out_records(scenes_b, recipe.test_samples)
    results = {}
    for name, model_dir in (
        ("stage 1a", align_a / "final"),
        ("stage 1b", align_b / "final"),
        ("stage 1", align_c / "final"),
        ("stage 2", grpo / "final"),
    ):
        results[name] = timed(
            f"eval-{name}", evaluate_phase, out, name.replace(" ", "-"), model_dir, records, recipe, progress
        )
    from lens_model.data.synthetic import is_relational

    rewards = grpo_rewards(grpo)
    table = format_table(results)
    final = [SampleOutcome(**row) for row in json.loads((out / "eval-stage-2.json").read_text())]
    kinds = {
        kind: [o for o, r in zip(final, records) if is_relational(r.expression) == relational]
        for kind, relational in (("attribute expressions", False), ("relational expressions", True))
    }
    by_kind = format_table({f"{kind} ({len(o)})": summarize(o, recipe.bootstrap) for kind, o in kinds.items() if o})
    before, after = results["stage 1"]["gIoU"], results["stage 2"]["gIoU"]
    overlap = before["low"] <= after["high"] and after["low"] <= before["high"]
    verdict = (
        f"Stage 2 changed gIoU by {after['value'] - before['value']:+.3f} "
        f"({'within' if overlap else 'outside'} the two 95 % intervals)."
    )
    reward_lines = "\n".join(f"| {k} | {v['first']:.3f} | {v['last']:.3f} |" for k, v in rewards.items())
    wall = sum(clock.values())
    report = (
        f"# Demo model: held-out test split ({len(records)} expressions, generated answers, greedy)\n\n"
        f"Values with 95 % bootstrap intervals ({recipe.bootstrap} resamples). Columns: after stage 1's first "
        f"phase (1a), second phase (1b), third phase (1, stage 1's final model) and after stage 2 (the shipped "
        f"model). {verdict}\n\n{table}\n\nThe shipped model by kind of expression:\n\n{by_kind}\n\n"
        f"## Stage 2 rewards (mean of the first / last 25 steps)\n\n| reward | first | last |\n|---|---|---|\n"
        f"{reward_lines}\n\nwall time: {wall / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in clock.items())
        + ")\n"
    )
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps({"test": results, "grpo_rewards": rewards, "times_s": clock}, indent=1)
    )
    print(report)
    if args.ship:
        model = ship(grpo / "final", args.ship)
        (args.ship / "README.md").write_text(
            MODEL_CARD.format(
                mllm_params=sum(p.numel() for p in model.mllm.parameters()) / 1e6,
                params=sum(p.numel() for p in model.parameters()) / 1e6,
                align_a=recipe.align_a_steps,
                align_b=recipe.align_b_steps,
                align_c=recipe.align_c_steps,
                lm_weight=recipe.lm_weight,
                expression_weight=recipe.expression_weight,
                grpo_steps=recipe.grpo_steps,
                prompts=recipe.grpo_prompts,
                generations=recipe.grpo_generations,
                grpo_lr=recipe.grpo_lr,
                report=report.replace("# Demo model:", "## Scores:"),
            )
        )
        outcomes = [SampleOutcome(**row) for row in json.loads((out / "eval-stage-2.json").read_text())]
        scene = write_demo_scene(records, outcomes, args.ship.parent)
        print(f"wrote the fp16 demo model to {args.ship} and its demo scene to {scene}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
