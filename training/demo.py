"""Train the offline demo model: a tiny LENS from scratch on synthetic scenes that need reasoning, on CPU, with this
project's own stages, and measure what each stage adds (the paper's ablation in miniature) on held-out scenes.

    python -m training.demo --out runs/demo                            # ~1 h 50 min on 2 CPU cores; rerun to resume
    python -m training.demo --out runs/demo --ship assets/demo-model   # then write the fp16 model directory
    python -m training.demo --out runs/demo --compare OLD_MODEL        # also score another model on the test split

The task (`make_synthetic(task="reasoning")`): 3-5 shapes whose colours and shapes repeat, so colour alone never
decides; attribute expressions ("the red circle", "the small red circle") and relational ones that name only an
anchor ("the shape left of the red circle"). The model answers in the think/answer format of the released
chain-of-thought checkpoints and names the object it found by its own attributes:
`<think>the red circle is at the top right; left of it, at the top left, is the small blue square</think>`
`<answer>the small blue square {"bbox_2d": [x1, y1, x2, y2]}</answer>`; the context queries read that answer, so
the mask follows the name.

Steps (each skipped when its output exists; a stopped training phase resumes from its last complete checkpoint):
  1. scenes    `make_synthetic`: attribute-only scenes, the main scenes (its held-out testA is the test split),
               a small rationale set, and test scenes at 384 px and 640 × 480.
  2. init      a tiny LENS (`make_tiny`, sizes in the recipe), random weights.
  3. stage 0   `training.vision_pretrain`: the MLLM's vision encoder on dense per-token labels of the scenes
               (docs/design.md, "The demo model's vision encoder"); frozen from here on.
  4. stage 1   `training.align` on attribute scenes, then on the main scenes: an attribute expression's think
               block says where the object is, a relational one's is empty; the answer names the target. The
               MLLM's language model, context module, SAM2 prompt encoder and mask decoder trained (its image
               encoder keeps its random weights), with the three losses this project adds for a model trained
               from scratch (docs/design.md: the answer's language-modelling loss, the expression-token loss,
               grounding attention). -> row (a)
  5. warm-up   `training.align` on the main scenes with every expression's rationale in the think block (the
               generator knows the answer: a relational one locates the anchor, then the target's place, then
               names it), mixed 2:1 with a small set of relational scenes. -> row (b)
  6. GRPO      `training.grpo` from the warm-up model on the main scenes, twice: format + box IoU² rewards
               -> row (c); format + box IoU² + mask IoU² (the paper's rewards) -> row (d), the shipped model.
  7. eval      every row on the test split: greedy decoding, generated answers; by kind of expression, with 95 %
               bootstrap intervals, next to the all-objects mask and chance; the shipped model also at 384 px and
               640 × 480. OUT/report.md, OUT/results.json; `--ship` writes the model card from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger("training.demo")

# The demo model's question: the released chain-of-thought template asks for the same answer in 88 tokens, which
# would be most of what a tiny MLLM reads per sample (measured: 1.75× the CPU time per training step).
DEMO_QUESTION = (
    'Find "{question}": think in <think> </think>, then name the object and give its bbox in JSON in '
    "<answer> </answer>."
)


@dataclass(frozen=True)
class SceneSet:
    """One `make_synthetic` call (reasoning task)."""

    name: str
    n_images: int
    seed: int
    relation_rate: float
    image_size: int | tuple[int, int] = 128  # one side or (height, width)
    min_objects: int = 3
    max_objects: int = 5
    object_scale: float = 1.1
    background: str = "texture"


@dataclass(frozen=True)
class ModelShape:
    """The tiny LENS `make_tiny` builds (docs/design.md, "The demo model")."""

    hidden: int = 128
    layers: int = 3
    vision_depth: int = 2
    vision_hidden: int = 128
    # a fixed sinusoid of each patch's position in the vision encoder (LensConfig.mllm_absolute_positions)
    absolute_positions: bool = True
    # Qwen's rotary base: "where" reaches the language model through the encoder's absolute positions (a small base
    # that made M-RoPE's image frequencies visible blurred the content lookups instead: docs/reasoning-probes.md)
    rope_theta: float = 10000.0
    num_queries: int = 8
    sam_image_size: int = 128
    mllm_longest_side: int = 128  # the MLLM image size it is trained for (every input is resized to it)
    context_pass: str = "cached"


@dataclass(frozen=True)
class GRPORun:
    """One stage-2 run from the warm-up model: a row of the ablation."""

    name: str
    rewards: tuple[str, ...]


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo model: seeds, data, model, schedules. `--quick` scales it down."""

    attribute_scenes: SceneSet = SceneSet("attribute", 3000, 1, relation_rate=0.0)
    scenes: SceneSet = SceneSet("main", 6000, 2, relation_rate=0.4)
    warmup_scenes: SceneSet = SceneSet("rationales", 400, 3, relation_rate=1.0)
    size_tests: tuple[SceneSet, ...] = (
        SceneSet("test-384", 1000, 4, relation_rate=0.4, image_size=384),
        SceneSet("test-640x480", 1000, 4, relation_rate=0.4, image_size=(480, 640)),
    )
    model: ModelShape = field(default_factory=ModelShape)
    model_seed: int = 0
    # after stage 0 the MLLM's vision encoder stays frozen (mllm_language): the answer loss would wear its place
    # features away before the language model learns to select the named object (docs/reasoning-probes.md, pa1-pa2)
    trainable: tuple[str, ...] = ("context", "sam_decoder", "sam_prompt_encoder", "mllm_language")
    # SAM2's image encoder keeps its random weights, as in the released recipe (which keeps the pretrained ones):
    # trained along, it lets the mask decoder settle within 250 steps on one mask for every prompt (the outlines of
    # all objects), and it never learns to read the prompt again (docs/reasoning-probes.md, pmA)
    stage1_trainable: tuple[str, ...] = ("context", "sam_decoder", "sam_prompt_encoder", "mllm_language")
    # stage 0: the vision encoder on dense per-token labels (training/vision_pretrain.py)
    vision_steps: int = 3000
    vision_lr: float = 2e-3
    # stage 1 (two phases) and the supervised warm-up
    batch: int = 16
    # above ~5e-4 the mask decoder learns to ignore the prompt before the prompt carries anything (and stays so)
    lr: float = 4e-4
    attribute_steps: int = 800
    stage1_steps: int = 2000
    lm_weight: float = 1.0
    expression_weight: float = 1.0
    grounding_weight: float = 1.0  # training/grounding.py: a head's attention on the object an answer token is about
    # every main-scene expression with its rationale, plus the relational rationale set: 400 steps taught the form of a
    # relational rationale but not its content (relational accuracy 0.34); 1500 with the target's place before its
    # name, 0.64 (docs/reasoning-probes.md, po2)
    warmup_steps: int = 1500
    warmup_lr: float = 4e-4
    # stage 2
    grpo_runs: tuple[GRPORun, ...] = (
        GRPORun("grpo-box", ("format", "box_iou")),
        GRPORun("grpo", ("format", "box_iou", "segment_iou")),
    )
    # 300 steps of G = 4 left relational accuracy where the warm-up had it (0.61-0.63 against 0.64); G = 8 for 1000
    # steps moved it slowly up, 0.62 -> 0.65 -> 0.66 at steps 250 / 500 / 1000 (docs/reasoning-probes.md, sw-g8-1000)
    grpo_steps: int = 1000
    grpo_lr: float = 1e-4
    grpo_prompts: int = 8
    grpo_generations: int = 8
    grpo_temperature: float = 1.0
    grpo_beta: float = 0.04
    # the segmentation loss on the answers whose box hits the GT only: on every answer it teaches the mask decoder to
    # ignore answers that name another object (attribute accuracy 0.76 -> 0.57; docs/reasoning-probes.md, pg3)
    grpo_seg_loss_answers: str = "grounded"
    # evaluation
    test_samples: int = 800
    max_new_tokens: int = 80
    save_every: int = 250
    bootstrap: int = 2000

    def quick(self) -> DemoRecipe:
        """A few steps of every phase on a few scenes: checks the pipeline, not the model."""

        def small(s: SceneSet) -> SceneSet:
            return replace(s, n_images=40)

        return replace(
            self,
            attribute_scenes=small(self.attribute_scenes),
            scenes=small(self.scenes),
            warmup_scenes=small(self.warmup_scenes),
            size_tests=tuple(small(s) for s in self.size_tests),
            model=replace(self.model, layers=2),
            batch=4,
            vision_steps=3,
            attribute_steps=3,
            stage1_steps=3,
            warmup_steps=2,
            grpo_steps=2,
            grpo_prompts=2,
            grpo_generations=4,
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
    kind: str  # "attribute" | "relational" (the expression picks its object by a spatial relation to an anchor)
    iou: float  # mask IoU with the referred object
    intersection: int
    union: int
    referred: bool  # the mask overlaps the referred object more (IoU) than any other object of the scene
    picked_anchor: bool  # the mask's object is the relational expression's anchor (the object it names)
    format_ok: bool  # the answer follows its format's template (the format reward's rule)
    names_object: bool  # the answer names the referred object (think/answer: by its attributes; else the expression)
    box_hit: bool  # answer box IoU >= 0.5 with the GT box
    all_objects_iou: float  # baseline: IoU of the union of every object with the referred one
    objects: int
    text: str


def _normalise(text: str | None) -> str:
    return " ".join((text or "").lower().strip().rstrip(".").split())


def expected_name(record) -> str:
    """What a right answer names: the object by its own attributes where the scenes say so, else the expression."""
    name = record.annotations.get("target_name")
    return f"the {name}" if name else record.expression


def expression_kind(record) -> str:
    kind = record.annotations.get("kind")
    if kind:
        return kind
    from lens_model.data.synthetic import is_relational

    return "relational" if is_relational(record.expression) else "attribute"


def evaluate_model(
    model_dir: Path,
    records,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    progress: bool = True,
    mllm_longest_side: int | None = None,
    backend_dir: Path | None = None,
):
    """-> list[SampleOutcome] of `model_dir` on `records` (synthetic scenes), greedy decoding, generated answers.
    `mllm_longest_side`: the pipeline's (None: the model's own). `backend_dir`: a `lens export` of the model, run
    with --backend onnxruntime (its per-graph CPU choice)."""
    import torch
    from tqdm.auto import tqdm

    from lens_model.data.synthetic import referred_object_index, scene_object_masks
    from lens_model.eval.metrics import score_sample
    from lens_model.image_io import load_image
    from lens_model.inference.answer import parse_answer
    from lens_model.inference.pipeline import LensPipeline

    backend = {"backend": "onnxruntime", "backend_dir": str(backend_dir)} if backend_dir is not None else {}
    pipeline = LensPipeline.from_pretrained(
        str(model_dir), device="cpu", dtype="float32", mllm_longest_side=mllm_longest_side, **backend
    )
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
                picked = referred_object_index(result.mask, scene)
                anchor = record.annotations.get("anchor_ann_id")
                outcomes.append(
                    SampleOutcome(
                        sample_id=record.sample_id,
                        kind=expression_kind(record),
                        iou=score.iou,
                        intersection=score.intersection,
                        union=score.union,
                        referred=picked == record.ids["ann_id"],
                        picked_anchor=anchor is not None and picked == anchor,
                        format_ok=parsed.template_ok,
                        names_object=_normalise(parsed.object_ref) == _normalise(expected_name(record)),
                        box_hit=score.box_hit,
                        all_objects_iou=score_sample(everything, gt).iou,
                        objects=len(scene),
                        text=result.text,
                    )
                )
    return outcomes


def summarize(outcomes: list[SampleOutcome], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric -> {value, low, high}: the 95 % percentile bootstrap interval over samples ("mask on the named
    object" over the answers that name the referred object, "mask on the anchor" over the relational expressions;
    NaN without any, and every metric NaN without outcomes)."""
    from lens_model.eval.metrics import bootstrap_interval

    relational = [o for o in outcomes if o.kind == "relational"]
    named = [o for o in outcomes if o.names_object]
    columns = {
        "referred-object accuracy": [o.referred for o in outcomes],
        "gIoU": [o.iou for o in outcomes],
        "P@0.5": [o.iou >= 0.5 for o in outcomes],
        "format": [o.format_ok for o in outcomes],
        "object named": [o.names_object for o in outcomes],
        # the mask path's share: of the answers that name the referred object, how many masks are that object
        "mask on the named object": [o.referred for o in named],
        "box accuracy (IoU>=0.5)": [o.box_hit for o in outcomes],
        "mask on the anchor (relational)": [o.picked_anchor for o in relational],
        "all-objects mask gIoU (baseline)": [o.all_objects_iou for o in outcomes],
        "chance of picking the referred object": [1.0 / o.objects for o in outcomes],
    }
    out = {}
    for name, values in columns.items():
        if not values:
            out[name] = {"value": float("nan"), "low": float("nan"), "high": float("nan")}
            continue
        value, low, high = bootstrap_interval(np.asarray(values, dtype=np.float64), n_boot=n_boot, seed=seed)
        out[name] = {"value": value, "low": low, "high": high}
    if not outcomes:  # e.g. no relational expression among the first test expressions
        out["cIoU"] = {"value": float("nan"), "low": float("nan"), "high": float("nan")}
        return out
    inter = np.array([o.intersection for o in outcomes], dtype=np.float64)
    union = np.array([o.union for o in outcomes], dtype=np.float64)
    value, low, high = bootstrap_interval(np.stack([inter, union], 1), n_boot=n_boot, seed=seed, statistic=_ciou)
    out["cIoU"] = {"value": value, "low": low, "high": high}
    return out


def by_kind(outcomes: list[SampleOutcome], n_boot: int) -> dict[str, dict]:
    """summarize() of the attribute and of the relational expressions, keyed "attribute (N)" / "relational (N)"."""
    kinds = {kind: [o for o in outcomes if o.kind == kind] for kind in ("attribute", "relational")}
    return {f"{kind} ({len(o)})": summarize(o, n_boot) for kind, o in kinds.items() if o}


def _ciou(rows: np.ndarray) -> float:
    """(n, 2) [intersection, union] rows -> cumulative IoU."""
    return float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1.0))


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: one column per evaluated model, value [low, high] per metric."""
    names = list(results)
    metrics = list(next(iter(results.values())))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        cells = [_cell(results[n][metric]) for n in names]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(cell: dict) -> str:
    if np.isnan(cell["value"]):
        return "–"
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


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
            task="reasoning",
            progress=progress,
        )
    return root


def tokenizer_corpus() -> list[str]:
    """What the demo model's tokenizer learns its merges from: the scenes' words, the question and the answer
    format, so that each word is one token (as in a real Qwen tokenizer) and answers stay short."""
    from lens_model.data.synthetic import COLORS, LOCATION_COLUMNS, LOCATION_ROWS, RELATIONS, SHAPES, SIZES

    words = [*COLORS, *SHAPES, *SIZES, *RELATIONS, *LOCATION_ROWS, *LOCATION_COLUMNS, "the shape that is at it"]
    answer = '<think>the shape is at the top; left of it is</think><answer>the shape {"bbox_2d": [1, 2, 3, 4]}</answer>'
    return [DEMO_QUESTION, " ".join(words), answer] * 20


def make_init(path: Path, recipe: DemoRecipe) -> Path:
    from lens_model.model.config import QWEN_SYSTEM_PROMPT, PromptConfig
    from lens_model.model.tiny import make_tiny

    if not (path / "config.json").exists():
        shape = recipe.model
        make_tiny(
            path,
            seed=recipe.model_seed,
            num_queries=shape.num_queries,
            context_pass=shape.context_pass,
            sam_image_size=shape.sam_image_size,
            hidden=shape.hidden,
            layers=shape.layers,
            vision_depth=shape.vision_depth,
            vision_hidden=shape.vision_hidden,
            rope_theta=shape.rope_theta,
            prompt=PromptConfig("think_answer", QWEN_SYSTEM_PROMPT, DEMO_QUESTION),
            mllm_longest_side=shape.mllm_longest_side,
            tokenizer_corpus=tokenizer_corpus(),
            absolute_positions=shape.absolute_positions,
        )
    return path


PHASE_DONE = "phase-done.json"  # written once a phase's final/ is complete: a rerun then skips the phase


def run_training(entry, out_dir: Path, overrides: list[str], progress: bool) -> None:
    """One training phase. Skipped when OUT/phase-done.json says it finished; else resumed from its newest complete
    checkpoint (a stop while a checkpoint or final/ was being written leaves an incomplete one: it is passed over);
    else started."""
    from training.engine import TrainingError

    if (out_dir / PHASE_DONE).exists():
        log.info("%s: done already (%s exists)", out_dir, PHASE_DONE)
        return
    checkpoint = last_complete_checkpoint(out_dir)
    resume = ["--resume", str(checkpoint)] if checkpoint else []
    if checkpoint:
        log.info("%s: resuming from %s", out_dir, checkpoint)
    args = [*resume, *([] if progress else ["--no-progress"]), *overrides, f"output_dir={out_dir}"]
    if entry(args) != 0:
        raise TrainingError(f"{out_dir}: training failed (see the log above); rerun to resume")
    (out_dir / PHASE_DONE).write_text(json.dumps({"final": str(out_dir / "final")}))


def run_vision_pretraining(out_dir: Path, init: Path, scenes: tuple[Path, ...], recipe: DemoRecipe, progress: bool):
    """Stage 0 (training/vision_pretrain.py). Minutes long: a stopped run starts over rather than resuming."""
    import shutil

    from training.vision_pretrain import VisionPretrainConfig, train

    if (out_dir / PHASE_DONE).exists():
        log.info("%s: done already (%s exists)", out_dir, PHASE_DONE)
        return
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = VisionPretrainConfig(init, list(scenes), out_dir, recipe.vision_steps, recipe.batch, recipe.vision_lr,
                               seed=recipe.model_seed, progress=progress)  # fmt: skip
    train(cfg)
    (out_dir / PHASE_DONE).write_text(json.dumps({"final": str(out_dir / "final")}))


def last_complete_checkpoint(out_dir: Path) -> Path | None:
    """The newest OUT/checkpoints/step-* that was written to the end (the run file is written last), or None."""
    from training.engine import RUN_FILE

    steps = sorted((out_dir / "checkpoints").glob("step-*"), reverse=True)
    return next((p for p in steps if (p / RUN_FILE).is_file() and (p / "model" / "config.json").is_file()), None)


def datasets_override(*entries: tuple[Path, float, bool | str]) -> str:
    """`datasets=[...]` of synthetic scene folders: (root, ratio, rationale) each; rationale True, False, or an
    expression kind whose expressions alone carry theirs."""

    def spec(root: Path, ratio: float, rationale: bool | str) -> str:
        kinds = f", rationale_kinds: [{rationale}]" if isinstance(rationale, str) else ""
        return f"{{name: synthetic, root: {root}, ratio: {ratio}, rationale: {str(bool(rationale)).lower()}{kinds}}}"

    return f"datasets=[{', '.join(spec(*entry) for entry in entries)}]"


def align_overrides(recipe: DemoRecipe, init: Path, datasets: str, val: Path, steps: int, lr: float) -> list[str]:
    return [
        f"init_from={init}",
        datasets,
        f"val_dataset={{name: synthetic, root: {val}, split: val}}",
        "val_samples=64",
        f"trainable=[{','.join(recipe.stage1_trainable)}]",
        f"lm_weight={recipe.lm_weight}",
        f"expression_weight={recipe.expression_weight}",
        f"grounding_weight={recipe.grounding_weight}",
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


def grpo_overrides(recipe: DemoRecipe, init: Path, scenes: Path, rewards: tuple[str, ...]) -> list[str]:
    """The project's GRPO with its default objective (`compat: lens`), the paper's rewards named in `rewards`."""
    return [
        f"init_from={init}",
        datasets_override((scenes, 1.0, False)),
        f"global_batch_size={recipe.grpo_prompts}",
        f"num_generations={recipe.grpo_generations}",
        f"temperature={recipe.grpo_temperature}",
        f"beta={recipe.grpo_beta}",
        f"seg_loss_answers={recipe.grpo_seg_loss_answers}",
        f"max_completion_length={recipe.max_new_tokens}",
        f"max_steps={recipe.grpo_steps}",
        f"lr={recipe.grpo_lr}",
        f"trainable=[{','.join(recipe.trainable)}]",
        "reward_weights={" + ", ".join(f"{r}: 1.0" for r in rewards) + "}",
        "log_every=1",
        f"save_every={recipe.save_every}",
        "keep_last=1",
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


def evaluated(out: Path, name: str, model_dir: Path, records, recipe: DemoRecipe, progress: bool):
    """-> list[SampleOutcome] of `model_dir` on `records`, from OUT/eval-NAME.json when it was done before."""
    path = out / f"eval-{name}.json"
    if path.exists():
        return [SampleOutcome(**row) for row in json.loads(path.read_text())]
    log.info("evaluating %s on %d test expressions (generated answers)", name, len(records))
    outcomes = evaluate_model(model_dir, records, max_new_tokens=recipe.max_new_tokens, progress=progress)
    path.write_text(json.dumps([asdict(o) for o in outcomes]))
    return outcomes


GRPO_LOGGED = (
    "reward",
    "reward_format",
    "reward_box_iou",
    "reward_segment_iou",
    "mask_iou",
    "box_iou",
    "kl",
    "reward_group_std",
    "equal_reward_groups",
    "advantage_abs",
    "completion_length",
)


def grpo_log_summary(run_dir: Path, window: int = 25) -> dict[str, dict[str, float]]:
    """Mean of every logged reward component and group statistic over the first and the last `window` steps."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"]
    first, last = rows[:window], rows[-window:]
    return {
        k: {"first": float(np.mean([r[k] for r in first])), "last": float(np.mean([r[k] for r in last]))}
        for k in GRPO_LOGGED
        if k in rows[0]
    }


# ---------------------------------------------------------------------------- report
ROWS = {
    "stage1": "(a) stage 1 only",
    "warmup": "(b) + supervised warm-up",
    "grpo-box": "(c) + GRPO, format + box rewards",
    "grpo": "(d) + GRPO, format + box + segment rewards (shipped)",
}
ABLATION_COLUMNS = (
    ("attribute", "referred-object accuracy"),
    ("relational", "referred-object accuracy"),
    ("relational", "object named"),
    ("relational", "mask on the anchor (relational)"),
    ("all", "gIoU"),
    ("all", "box accuracy (IoU>=0.5)"),
    ("all", "format"),
)


def ablation_table(tables: dict[str, dict[str, dict]]) -> str:
    """Rows (a)-(d) and the baselines; `tables[row]` holds summarize() results under "all", "attribute",
    "relational"."""
    head = "| | " + " | ".join(f"{kind}: {metric}" for kind, metric in ABLATION_COLUMNS) + " |"
    lines = [head, "|---|" + "---|" * len(ABLATION_COLUMNS)]
    for key, label in ROWS.items():
        if key in tables:
            lines.append(f"| {label} | " + " | ".join(_cell(tables[key][k][m]) for k, m in ABLATION_COLUMNS) + " |")
    any_row = next(iter(tables.values()))
    baseline = {("all", "gIoU"): any_row["all"]["all-objects mask gIoU (baseline)"]}
    chance = {
        (k, "referred-object accuracy"): any_row[k]["chance of picking the referred object"]
        for k in ("attribute", "relational")
    }
    for label, cells in (("all-objects mask (baseline)", baseline), ("chance (a random object)", chance)):
        lines.append(
            f"| {label} | " + " | ".join(_cell(cells[c]) if c in cells else "" for c in ABLATION_COLUMNS) + " |"
        )
    return "\n".join(lines)


def tables_of(outcomes: list[SampleOutcome], n_boot: int) -> dict[str, dict]:
    return {
        "all": summarize(outcomes, n_boot),
        **{kind: summarize([o for o in outcomes if o.kind == kind], n_boot) for kind in ("attribute", "relational")},
    }


def stage2_verdict(tables: dict[str, dict]) -> str:
    """Row (d) against its own starting point (b) on relational expressions: the difference and whether the two
    95 % intervals overlap."""
    before, after = (tables[k]["relational"]["referred-object accuracy"] for k in ("warmup", "grpo"))
    overlap = before["low"] <= after["high"] and after["low"] <= before["high"]
    return (
        f"Stage 2 (d) against its starting point (b), relational expressions: referred-object accuracy "
        f"{before['value']:.3f} -> {after['value']:.3f} ({after['value'] - before['value']:+.3f}; the 95 % intervals "
        f"{'overlap' if overlap else 'do not overlap'})."
    )


def size_table(results: dict[str, dict]) -> str:
    lines = ["| input image | format | gIoU | referred-object accuracy |", "|---|---|---|---|"]
    for name, table in results.items():
        lines.append(
            f"| {name} | {_cell(table['format'])} | {_cell(table['gIoU'])} | "
            f"{_cell(table['referred-object accuracy'])} |"
        )
    return "\n".join(lines)


def grpo_table(logs: dict[str, dict]) -> str:
    names = list(logs)
    lines = [
        "| logged (mean of the first / last 25 steps) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in GRPO_LOGGED:
        cells = [f"{logs[n][key]['first']:.3f} / {logs[n][key]['last']:.3f}" if key in logs[n] else "–" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(tables: dict[str, dict], sizes: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """Issue 22's targets for the shipped model, each as (target, measured, met)."""
    shipped = tables["grpo"]
    rel = shipped["relational"]["referred-object accuracy"]["value"]
    att = shipped["attribute"]["referred-object accuracy"]["value"]
    fmt = shipped["all"]["format"]["value"]
    box = shipped["all"]["box accuracy (IoU>=0.5)"]["value"]
    before, after = (tables[k]["relational"]["referred-object accuracy"] for k in ("warmup", "grpo"))
    gain, apart = after["value"] - before["value"], after["low"] > before["high"]
    rows = [
        ("relational referred-object accuracy >= 0.80", f"{rel:.3f}", rel >= 0.80),
        ("attribute referred-object accuracy >= 0.95 (colours repeat)", f"{att:.3f}", att >= 0.95),
        ("format >= 0.95", f"{fmt:.3f}", fmt >= 0.95),
        (
            "stage 2 adds >= 0.10 relational accuracy over (b), intervals apart",
            f"{gain:+.3f}, intervals {'apart' if apart else 'overlap'}",
            gain >= 0.10 and apart,
        ),
        ("box accuracy (IoU >= 0.5) >= 0.5", f"{box:.3f}", box >= 0.5),
    ]
    base = sizes.get("128 px")
    for name, table in sizes.items():
        if table is base:
            continue
        f, g = table["format"]["value"], table["gIoU"]["value"]
        drop = base["gIoU"]["value"] - g
        rows.append(
            (f"{name}: format >= 0.95, gIoU within 0.05 of 128 px", f"format {f:.3f}, gIoU {g:.3f} ({-drop:+.3f})",
             f >= 0.95 and abs(drop) <= 0.05)
        )  # fmt: skip
    return rows


MODEL_CARD = """# lens demo model: a tiny LENS that reasons about where shapes are

A complete LENS model (a Qwen2.5-VL-architecture reasoning model with {mllm_params:.1f} M parameters — text hidden
{hidden} × {layers} layers, rotary base {rope_theta:g}, vision depth {vision_depth} × {vision_hidden} — {queries}
context queries, 4-layer connector, SAM2 Hiera at width 32 with {sam} px input; {params:.1f} M parameters in all,
float16 weights), trained from scratch on 2 CPU cores by this repository's own stages:

    python -m training.demo --out runs/demo --ship assets/demo-model

Loaded like any LENS checkpoint (`lens segment --model assets/demo-model ...`, `LensPipeline.from_pretrained`). It
answers in the think/answer format of the released chain-of-thought models and names the object it found by its
own attributes; the context queries read that answer, so the mask is the named object:

    <think>the red circle is at the top right; left of it, at the top left, is the small blue square</think>
    <answer>the small blue square {{"bbox_2d": [x1, y1, x2, y2]}}</answer>

Its question template is shorter than the released models' (`{question}`), and it sees every image
resized to a longest side of {longest} px, the size it was trained on (`mllm_longest_side` in its config): `lens
segment`, `lens eval` and the ROS node do that by default.

## What it was trained for
Circles, squares and triangles in red, green, blue and yellow, small and large, 3-5 per scene, on a textured grey
background; colours and shapes repeat within a scene, so colour alone never decides. Two kinds of expressions:
attribute ("the red circle", "the small red circle": the target's colour and its shape are each shared with
another object) and relational ("the shape left of the red circle", "the shape that is above the blue square":
the target is the one object on that side of the anchor, in the same row or column).

## What it cannot do
Anything else: real photographs, other objects, colours, relations or phrasings give meaningless answers and masks
(a prompt with a word outside its training prompts is flagged as not confident). The scores below are what it
reaches on held-out scenes of its own kind; the targets it misses are listed with them. Attribute masks that miss
cover the named object and another of the same colour: compare "object named" with "mask on the named object" in
the tables below. It was trained on square scenes only: non-square images lose gIoU ("Any input size" below).
Why stage 2 adds little here, with its logs and a short learning-rate / temperature / group-size sweep:
docs/design.md, "Stage 2 on the demo model".
SAM2's video-memory weights are not included (`lens track` needs `--sam-memory-checkpoint`).

## Training
Recipe (`training/demo.py`, seeds fixed): stage 0 (`training.vision_pretrain`) {vision_steps} steps training the
MLLM's vision encoder on dense per-token labels of the scenes (colour, shape, size, object centre, own position),
frozen from then on. Stage 1 (`training.align`) {attribute_steps} steps on attribute-only scenes, then
{stage1_steps} steps on the main scenes (40 % relational), batch {batch}, lr {lr:g} cosine; an attribute
expression's think block says where the object is, a relational one's is empty. The MLLM's language model, the
context module, SAM2's prompt encoder and mask decoder trained (its image encoder keeps its random weights). Three
losses not in the paper, for a model trained from
scratch: the answer's language-modelling loss (`lm_weight` {lm_weight}), the expression-token loss on the query
states (`expression_weight` {expression_weight}, its target the object's own name) and grounding attention
(`grounding_weight` {grounding_weight}: one head attends to the object each answer token is about). Supervised
warm-up: {warmup_steps} steps on the main scenes with every expression's rationale written from the scene (a
relational one: where the anchor is, then where the target is, then its name), mixed 2:1 with {warmup_scenes}
relational scenes. Stage 2 (`training.grpo`, the project's
default objective `compat: lens`): {grpo_steps} steps of {prompts} prompts × G={generations} sampled answers
(temperature {temperature:g}), β {beta:g}, lr {grpo_lr:g}, the paper's rewards (format, box IoU², mask IoU²) and
segmentation loss, the latter on the answers whose box hits the GT box (`seg_loss_answers: grounded`: on every
answer it teaches the mask decoder to ignore answers that name another object).

{report}
"""


def training_vocabulary(scene_roots) -> list[str]:
    """Every word of the training expressions (every sentence of the train split) of these scene folders, sorted."""
    from lens_model.data import load_dataset
    from lens_model.inference.confidence import prompt_words

    words = set()
    for root in scene_roots:
        for record in load_dataset("synthetic", root, "train"):
            words.update(prompt_words(record.expression))
    return sorted(words)


def ship(model_dir: Path, dest: Path, vocabulary: list[str] | None = None):
    """The trained model as a LENS model directory with float16 weights (half the bytes; any dtype loads them),
    with `vocabulary` (its training prompts' words) in its confidence section: a prompt with another word is then
    flagged. SAM2's video-memory weights are left out: the demo model never trained them (`lens track` then asks for
    an official SAM2 checkpoint, as for the released models)."""
    import torch

    from lens_model.model.checkpoint import load_model, save_model

    model, processor = load_model(model_dir, dtype=torch.float32)
    if vocabulary:
        model.lens_config.confidence = replace(model.lens_config.confidence, vocabulary=list(vocabulary))
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_model(model, dest, processor=processor, state=state)
    return model


def write_demo_scene(records, outcomes: list[SampleOutcome], dest: Path) -> Path:
    """The test scene with the most expressions, at least one of them relational, that the model got all right
    (referred object, IoU >= 0.75) -> DEST/demo-scene.png + demo-scene.json (each expression with its kind, its
    object's polygons and, for a relational one, the anchor's)."""
    import shutil

    by_image: dict[int, list] = {}
    for record, outcome in zip(records, outcomes):
        by_image.setdefault(record.ids["image_id"], []).append((record, outcome))
    good = [
        (len(pairs), -image_id, pairs)
        for image_id, pairs in by_image.items()
        if len(pairs) >= 2
        and all(o.referred and o.iou >= 0.75 for _, o in pairs)
        and any(o.kind == "relational" for _, o in pairs)
    ]
    if not good:
        raise RuntimeError(
            "no test scene with a relational expression that the model gets entirely right: nothing to show as the "
            "demo scene"
        )
    pairs = max(good, key=lambda g: g[:2])[2]
    instances = json.loads((pairs[0][0].image_path.parents[1] / "synthetic" / "instances.json").read_text())
    polygons = {a["id"]: a["segmentation"] for a in instances["annotations"]}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pairs[0][0].image_path, dest / "demo-scene.png")

    def entry(record) -> dict:
        anchor = record.annotations.get("anchor_ann_id")
        item = {
            "expression": record.expression,
            "kind": expression_kind(record),
            "target_name": record.annotations.get("target_name"),
            "segmentation": polygons[record.ids["ann_id"]],
        }
        return item | ({"anchor_segmentation": polygons[anchor]} if anchor is not None else {})

    scene = {
        "image": "demo-scene.png",
        "source": f"{pairs[0][0].image_path.name} of the demo recipe's held-out test split",
        "objects": [entry(r) for r, _ in pairs],
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
    parser.add_argument(
        "--ship", type=Path, help="write the final model here in fp16, with its card (refused when it is worse than "
        "--compare's model on attribute expressions)"
    )  # fmt: skip
    parser.add_argument("--compare", type=Path, help="also score this model on the test split (e.g. the shipped one)")
    parser.add_argument(
        "--evaluate", type=Path, metavar="MODEL_DIR", help="only score this model (e.g. a phase's "
        "checkpoints/step-*/model while the recipe trains) on the first --samples test expressions, by kind of "
        "expression against chance; no training"
    )  # fmt: skip
    parser.add_argument("--samples", type=int, help="test expressions for --evaluate (default: the recipe's)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    progress = not args.no_progress
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from training.align import main as align_main
    from training.grpo import main as grpo_main

    torch.set_num_threads(args.threads)
    recipe = DemoRecipe().quick() if args.quick else DemoRecipe()
    out = args.out
    if args.evaluate:
        return evaluate_checkpoint(out, recipe, args.evaluate, args.samples or recipe.test_samples, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    clock: dict[str, float] = json.loads((out / "times.json").read_text()) if (out / "times.json").exists() else {}

    def timed(name, fn, *a):
        if name in clock:
            return fn(*a)
        start = time.perf_counter()
        result = fn(*a)
        clock[name] = time.perf_counter() - start
        (out / "times.json").write_text(json.dumps(clock, indent=1))
        return result

    # 1-2. scenes, init
    attribute = timed("scenes-attribute", make_scenes, out, recipe.attribute_scenes, progress)
    scenes = timed("scenes-main", make_scenes, out, recipe.scenes, progress)
    rationales = timed("scenes-rationales", make_scenes, out, recipe.warmup_scenes, progress)
    size_scenes = {s.name: timed(f"scenes-{s.name}", make_scenes, out, s, progress) for s in recipe.size_tests}
    init = make_init(out / "init", recipe)
    vision = out / "vision"
    timed("vision", run_vision_pretraining, vision, init, (attribute, scenes), recipe, progress)

    # 3-5. stage 1 (two phases), warm-up, GRPO
    phases = {name: out / name for name in ("align-attribute", "stage1", "warmup")}
    steps = (
        ("align-attribute", vision / "final", datasets_override((attribute, 1.0, True)), recipe.attribute_steps,
         recipe.lr),
        (
            "stage1",
            phases["align-attribute"] / "final",
            datasets_override((scenes, 1.0, "attribute"), (attribute, 0.25, True)),
            recipe.stage1_steps,
            recipe.lr,
        ),
        (
            "warmup",
            phases["stage1"] / "final",
            datasets_override((scenes, 1.0, True), (rationales, 0.5, True)),
            recipe.warmup_steps,
            recipe.warmup_lr,
        ),
    )  # fmt: skip
    for name, start, datasets, n, lr in steps:
        overrides = align_overrides(recipe, start, datasets, scenes, n, lr)
        timed(name, run_training, align_main, phases[name], overrides, progress)
    for run in recipe.grpo_runs:
        phases[run.name] = out / run.name
        overrides = grpo_overrides(recipe, phases["warmup"] / "final", scenes, run.rewards)
        timed(run.name, run_training, grpo_main, phases[run.name], overrides, progress)

    # 6. evaluation
    records = held_out_records(scenes, recipe.test_samples)
    outcomes = {
        row: timed(f"eval-{row}", evaluated, out, row, phases[name] / "final", records, recipe, progress)
        for row, name in (("stage1", "stage1"), ("warmup", "warmup"), ("grpo-box", "grpo-box"), ("grpo", "grpo"))
    }
    tables = {row: tables_of(o, recipe.bootstrap) for row, o in outcomes.items()}
    sizes = {"128 px": tables["grpo"]["all"]}
    for s in recipe.size_tests:
        size_records = held_out_records(size_scenes[s.name], recipe.test_samples)
        shipped = phases["grpo"] / "final"
        sized = timed(f"eval-grpo-{s.name}", evaluated, out, f"grpo-{s.name}", shipped, size_records, recipe, progress)
        sizes[s.name.removeprefix("test-").replace("x", " × ") + (" px" if "x" not in s.name else "")] = summarize(
            sized, recipe.bootstrap
        )
    previous = None
    if args.compare:
        previous = timed("eval-compare", evaluated, out, "compare", args.compare, records, recipe, progress)
    logs = {run.name: grpo_log_summary(phases[run.name]) for run in recipe.grpo_runs}
    report = write_report(out, recipe, records, tables, sizes, logs, previous, clock)
    print(report)
    if args.ship:
        return ship_model(args, recipe, phases["grpo"] / "final", report, tables, previous, records, outcomes["grpo"])
    return 0


def checkpoint_eval_name(out: Path, model_dir: Path) -> str:
    """The name --evaluate files a model's scores under: its path (inside OUT: phase and step, e.g.
    stage1-step-0000500) and a fingerprint of its weights file (path, size, modification time), so that a phase
    trained again, or another model of the same name, is scored afresh rather than given the old scores."""
    import hashlib

    resolved = model_dir.resolve()
    inside = resolved.is_relative_to(out.resolve())
    parts = resolved.relative_to(out.resolve()).parts if inside else resolved.parts[-2:]
    name = "-".join(p for p in parts if p not in ("checkpoints", "model"))
    weights = sorted(resolved.glob("*.safetensors")) or [resolved / "config.json"]
    stamp = ":".join(f"{w}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
    return f"{name}-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"


def evaluate_checkpoint(out: Path, recipe: DemoRecipe, model_dir: Path, n: int, progress: bool) -> int:
    """--evaluate: `model_dir` on the first `n` test expressions of OUT's main scenes -> the by-kind table (with
    chance) printed and OUT/checkpoint-evals/NAME.json, NAME from the model's path (phase and step)."""
    scenes = out / "scenes" / recipe.scenes.name
    if not (scenes / "synthetic" / "refs(unc).p").exists():
        print(f"--evaluate: no test scenes in {scenes}; run the recipe once to render them", file=sys.stderr)
        return 2
    if not (model_dir / "config.json").exists():
        print(f"--evaluate: {model_dir} is not a model directory (no config.json)", file=sys.stderr)
        return 2
    records = held_out_records(scenes, n)
    dest = out / "checkpoint-evals" / f"{checkpoint_eval_name(out, model_dir)}-n{len(records)}.json"
    if dest.exists():
        outcomes = [SampleOutcome(**row) for row in json.loads(dest.read_text())]
    else:
        outcomes = evaluate_model(model_dir, records, max_new_tokens=recipe.max_new_tokens, progress=progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps([asdict(o) for o in outcomes]))
    print(f"{model_dir} on {len(records)} test expressions of {scenes} (generated answers, greedy); {dest}")
    print(format_table(tables_of(outcomes, recipe.bootstrap)))
    return 0


def write_report(out, recipe, records, tables, sizes, logs, previous, clock) -> str:
    kinds = {k: sum(o == k for o in (expression_kind(r) for r in records)) for k in ("attribute", "relational")}
    sections = [
        f"# Demo model: the ablation on held-out scenes ({len(records)} test expressions: {kinds['attribute']} "
        f"attribute, {kinds['relational']} relational; generated answers, greedy)\n",
        f"Values with 95 % bootstrap intervals ({recipe.bootstrap} resamples). {stage2_verdict(tables)}\n",
        ablation_table(tables),
        "\n## Targets (the shipped model)\n",
        "| target | measured | met |\n|---|---|---|\n"
        + "\n".join(f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets(tables, sizes)),
        "\n## The shipped model (d) by kind of expression\n",
        format_table({k: tables["grpo"][k] for k in ("all", "attribute", "relational")}),
        "\n## Any input size: the shipped model on test scenes rendered at other sizes\n",
        size_table(sizes),
        "\n## Stage 2: what was logged\n",
        grpo_table(logs),
    ]
    if previous is not None:
        sections += [
            "\n## The previous demo model on the same test split\n",
            format_table({k: v for k, v in tables_of(previous, recipe.bootstrap).items()}),
        ]
    wall = sum(clock.values())
    sections.append(
        f"\nwall time: {wall / 60:.1f} min (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in clock.items()) + ")\n"
    )
    report = "\n".join(sections)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps({"test": tables, "sizes": sizes, "grpo_logs": logs, "times_s": clock}, indent=1)
    )
    return report


def ship_model(args, recipe, model_dir, report, tables, previous, records, outcomes) -> int:
    """Write the fp16 model and its card (and a candidate demo scene to OUT/demo-scene: the bundled one in assets/ is
    chosen by hand, its expressions are the tests' ground truth); refused when the model is worse than the
    compared one on attribute expressions (the issue's condition for replacing the shipped model)."""
    if previous is not None:
        old = summarize([o for o in previous if o.kind == "attribute"], recipe.bootstrap)["referred-object accuracy"]
        new = tables["grpo"]["attribute"]["referred-object accuracy"]
        if new["value"] < old["value"]:
            print(
                f"not shipped: attribute referred-object accuracy {new['value']:.3f} is below the compared model's "
                f"{old['value']:.3f} ({args.compare})",
                file=sys.stderr,
            )
            return 1
    trained_on = [args.out / "scenes" / s.name for s in (recipe.attribute_scenes, recipe.scenes, recipe.warmup_scenes)]
    model = ship(model_dir, args.ship, training_vocabulary(trained_on))
    shape = recipe.model
    (args.ship / "README.md").write_text(
        MODEL_CARD.format(
            mllm_params=sum(p.numel() for p in model.mllm.parameters()) / 1e6,
            params=sum(p.numel() for p in model.parameters()) / 1e6,
            hidden=shape.hidden,
            layers=shape.layers,
            rope_theta=shape.rope_theta,
            vision_depth=shape.vision_depth,
            vision_hidden=shape.vision_hidden,
            queries=shape.num_queries,
            sam=shape.sam_image_size,
            question=DEMO_QUESTION,
            longest=shape.mllm_longest_side,
            vision_steps=recipe.vision_steps,
            grounding_weight=recipe.grounding_weight,
            attribute_steps=recipe.attribute_steps,
            stage1_steps=recipe.stage1_steps,
            batch=recipe.batch,
            lr=recipe.lr,
            lm_weight=recipe.lm_weight,
            expression_weight=recipe.expression_weight,
            warmup_steps=recipe.warmup_steps,
            warmup_scenes=recipe.warmup_scenes.n_images,
            grpo_steps=recipe.grpo_steps,
            prompts=recipe.grpo_prompts,
            generations=recipe.grpo_generations,
            temperature=recipe.grpo_temperature,
            beta=recipe.grpo_beta,
            grpo_lr=recipe.grpo_lr,
            report=report.replace("# Demo model:", "## Scores:"),
        )
    )
    print(f"wrote the fp16 demo model and its card to {args.ship}")
    try:
        print(f"wrote a candidate demo scene to {write_demo_scene(records, outcomes, args.out / 'demo-scene')}")
    except RuntimeError as exc:
        print(f"no demo scene written: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
