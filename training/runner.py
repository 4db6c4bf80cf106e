"""One training stage's run, shared by stage 1 (training.align) and stage 2 (training.grpo).

`run_stage(stage, args)` owns what every stage does the same way:

    config + datasets (a wrong path fails before the model loads) -> process group, batch split, step count
    seed -> stage.build (model, frozen parts) -> --resume check + OUT/config.yaml -> DeepSpeed engine
    for each step: stage.step (micro-batches -> losses, each update through `Run.update`: all ranks stop together
        on a non-finite loss) -> log every log_every (loss parts and timings averaged over ranks, lr, grad norm,
        samples/s) -> stage.validate every eval_every -> checkpoint every save_every
    final checkpoint -> OUT/final (the trained model) + the curves figure

A stage (`TrainingStage`) supplies only what differs: how its model is built, how a step's micro-batches
become losses, what it validates and what it logs.
"""

from __future__ import annotations

import logging
import math
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lens_model.distributed import all_mean, all_sum, barrier
from lens_model.errors import LensError
from lens_model.eval.metrics import SampleScore, SplitMetrics
from lens_model.model.checkpoint import check_model_path
from lens_model.outputs import check_output_dir

from .config import derive_batch, dump_config, load_config, total_steps
from .data import Schedule, load_mixture
from .engine import (
    MetricLog,
    Throughput,
    agree_on_update,
    build_engine,
    init_distributed,
    resolve_precision,
    save_checkpoint,
    start_run,
    stop_without_samples,
)
from .plots import plot_curves

log = logging.getLogger("training.runner")

TRAINABLE_MODULES = {  # part name -> attribute paths of LensModel
    "context": ("context",),
    "sam_decoder": ("sam.sam_mask_decoder",),
    "sam_prompt_encoder": ("sam.sam_prompt_encoder",),
    "mllm": ("mllm",),
    "mllm_language": ("mllm.model.language_model", "mllm.lm_head"),
    "sam_image_encoder": ("sam.image_encoder",),
}


def freeze_all_but(model, parts: list[str]) -> dict[str, int]:
    """requires_grad only on the named parts; -> trainable parameter count per part (printed at start)."""
    model.requires_grad_(False)
    counts = {}
    for part in parts:
        n = 0
        for path in TRAINABLE_MODULES[part]:
            module = model.get_submodule(path)
            module.requires_grad_(True)
            n += sum(p.numel() for p in module.parameters())
        counts[part] = n
    return counts


def model_signature(model) -> dict:
    """What a checkpoint must agree on to be resumed into this run."""
    text = model.mllm.config.get_text_config()
    return {
        "mllm_type": model.mllm.config.model_type,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
        "vocab_size": text.vocab_size,
        "lens": model.lens_config.to_dict(),
    }


@dataclass
class Run:
    """What the runner set up, handed to the stage's hooks."""

    args: object  # the parsed command line (config, overrides, resume, no_progress)
    cfg: object  # AlignConfig | GRPOConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    per_device: int
    accum: int
    steps: int
    dtype: torch.dtype
    start_step: int = 0
    last_saved: int | None = None
    engine: object = None  # the DeepSpeed engine (after build_engine)
    update_samples: int = 0  # valid samples, summed over ranks, of the optimizer step being accumulated
    failed_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.failed_log = self.out / f"failed_samples-rank{self.rank}.jsonl"

    def update(self, loss: torch.Tensor, step: int, samples: int) -> None:
        """One micro-batch's backward + (accumulated) optimizer step, `samples` the micro-batch's valid samples on
        this rank. All ranks first agree that `loss` is finite; an optimizer step none of whose micro-batches had a
        valid sample on any rank stops the run before it is taken."""
        self.update_samples += agree_on_update(
            loss, samples, step + 1, self.rank, self.world, self.device, self.out, self.last_saved
        )
        if self.engine.is_gradient_accumulation_boundary():
            if self.update_samples == 0:
                stop_without_samples(step + 1, self.world, self.out, self.last_saved)
            self.update_samples = 0
        self.engine.backward(loss)
        self.engine.step()

    def mean(self, value: float) -> float:
        return all_mean(value, self.world, self.device)

    def sample_positions(self, datasets: list) -> list[tuple[int, int]]:
        """This rank's (dataset, sample) positions for steps [start_step, steps), in order: the seeded mixture of
        the config's datasets and ratios, split across ranks and micro-batches (training.data.Schedule)."""
        cfg = self.cfg
        schedule = Schedule(
            tuple(len(d) for d in datasets),
            tuple(s.ratio for s in cfg.datasets),
            cfg.seed,
            cfg.global_batch_size,
            self.per_device,
            self.world,
            self.accum,
        )
        return schedule.rank_positions(self.rank, self.start_step, self.steps)


@dataclass
class StepResult:
    parts: dict[str, float]  # loss parts averaged over the step's micro-batches (logged as their mean over ranks)
    samples: int  # samples (answers) trained on, for samples/s
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, logged as time_<name>


class TrainingStage(ABC):
    """What a stage supplies to `run_stage`; `self.lens` (the LensModel) and `self.processor` are set by `build`."""

    name: str  # progress-bar label
    config_class: type
    curves_file: str  # figure written next to metrics.jsonl
    lens_attr: str | None = None  # where the LensModel sits inside the trained module (None: it is the module)
    log: logging.Logger = log

    def check(self, cfg) -> None:
        """Fail on config errors before anything heavy starts."""

    @abstractmethod
    def build(self, run: Run) -> tuple[torch.nn.Module, dict[str, int]]:
        """-> (the module DeepSpeed trains, on run.device; trainable parameter count per part)."""

    @abstractmethod
    def init_info(self, cfg) -> dict:
        """Where the weights came from (a resumed run must agree)."""

    @abstractmethod
    def describe(self, run: Run, counts: dict[str, int], num_samples: int) -> str:
        """The start-of-run log line."""

    def updates_per_step(self, cfg) -> int:
        return 1

    def before_engine(self, run: Run) -> None:
        """Set up what must see the weights before DeepSpeed partitions them."""

    def after_engine(self, run: Run, datasets: list, val_records: list) -> None:
        """Set up the data (and anything else) once the engine exists."""

    def train_mode(self, run: Run) -> None:
        run.engine.train()
        self.lens.sam.image_encoder.eval()  # frozen; keep any stochastic layers off

    @abstractmethod
    def step(self, run: Run, step: int) -> StepResult:
        """One optimizer step (0-based `step`): every micro-batch through `run.update`."""

    def statistics(self, run: Run, result: StepResult) -> dict[str, float]:
        """Extra values logged before the loss parts (collective: every rank calls it at log steps)."""
        return {}

    @abstractmethod
    def report(self, run: Run, done: int, values: dict[str, float]) -> tuple[dict[str, str], str]:
        """-> (progress-bar postfix, log line when the bar is off)."""

    def has_validation(self) -> bool:
        return False

    def validate(self, run: Run) -> dict[str, float]:
        raise NotImplementedError

    def report_validation(self, done: int, val: dict[str, float]) -> str:
        raise NotImplementedError

    @abstractmethod
    def done_message(self, run: Run) -> str:
        """The closing log line (rank 0)."""


def check_paths(cfg) -> None:
    """The config's paths, checked before the datasets, DeepSpeed or the model start (minutes on a large run): the
    output folder, and the models and SAM2 weights it names (a Hub id is fetched later)."""
    check_output_dir(cfg.output_dir, "output_dir")
    models = ["init_from", "reference"] if cfg.init_from else ["reference", "base_mllm"]
    for key in models:
        if getattr(cfg, key, None):
            check_model_path(getattr(cfg, key), key)
    sam = getattr(cfg, "sam_checkpoint", None)
    if sam and not cfg.init_from and not Path(sam).is_file():
        raise LensError(f"sam_checkpoint: SAM2 checkpoint not found: {sam} (the official .pt, or null: random SAM2)")


def run_stage(stage: TrainingStage, args) -> int:
    cfg = load_config(stage.config_class, args.config, args.overrides)
    stage.check(cfg)
    check_paths(cfg)
    datasets = load_mixture(cfg.datasets)  # before the model: a wrong path fails in seconds, not minutes
    val_records = load_mixture([cfg.val_dataset])[0][: cfg.val_samples] if cfg.val_dataset and cfg.val_samples else []
    dist_info = init_distributed()
    per_device, accum = derive_batch(cfg.global_batch_size, dist_info.world, cfg.per_device_batch_size)
    num_samples = sum(len(d) for d in datasets)
    run = Run(
        args,
        cfg,
        dist_info.rank,
        dist_info.world,
        dist_info.device,
        Path(cfg.output_dir),
        per_device,
        accum,
        total_steps(cfg, num_samples),
        resolve_precision(cfg.precision, dist_info.device),
    )

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    module, counts = stage.build(run)
    run_info = {
        "model_signature": model_signature(stage.lens),
        "trainable": sorted(cfg.trainable),
        "init": stage.init_info(cfg),
    }
    run.start_step, resume_from = start_run(args.resume, run.out, run_info, dump_config(cfg), run.rank)
    run.last_saved = run.start_step or None
    if run.rank == 0:
        stage.log.info(stage.describe(run, counts, num_samples))
    stage.before_engine(run)
    run.engine, scheduler = build_engine(
        module, cfg, per_device, accum, run.world, run.dtype, run.steps * stage.updates_per_step(cfg), resume_from
    )
    stage.after_engine(run, datasets, val_records)
    stage.train_mode(run)

    curves = MetricLog(run.out, enabled=run.rank == 0, resume_step=run.start_step)
    from tqdm import tqdm

    bar = tqdm(
        total=run.steps, initial=run.start_step, desc=stage.name, unit="step", disable=run.rank != 0 or args.no_progress
    )
    throughput = Throughput()
    for step in range(run.start_step, run.steps):
        step_lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        result = stage.step(run, step)
        throughput.add(result.samples)
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == run.steps:
            values = stage.statistics(run, result)
            values.update({k: run.mean(v) for k, v in result.parts.items()})
            grad_norm = run.engine.get_global_grad_norm()
            values.update(
                lr=step_lr,
                grad_norm=float(grad_norm) if grad_norm is not None else math.nan,
                samples_per_s=run.mean(throughput.rate()) * run.world,
                **{f"time_{k}": run.mean(v) for k, v in result.timings.items()},
            )
            throughput.reset()
            curves.log(done, values)
            postfix, line = stage.report(run, done, values)
            bar.set_postfix(**postfix)
            if args.no_progress and run.rank == 0:
                stage.log.info(line)
        if stage.has_validation() and (done % cfg.eval_every == 0 or done == run.steps):
            run.engine.eval()
            val = stage.validate(run)
            stage.train_mode(run)
            curves.log(done, val, prefix="val")
            if run.rank == 0:
                stage.log.info(stage.report_validation(done, val))
        if done % cfg.save_every == 0 and done != run.steps:
            save_checkpoint(
                run.engine,
                run.out,
                done,
                run_info,
                stage.processor,
                run.rank,
                cfg.zero_stage,
                cfg.keep_last,
                stage.lens_attr,
            )
            run.last_saved = done
    bar.close()

    final_ckpt = save_checkpoint(
        run.engine,
        run.out,
        run.steps,
        run_info,
        stage.processor,
        run.rank,
        cfg.zero_stage,
        cfg.keep_last,
        stage.lens_attr,
    )
    if run.rank == 0:
        shutil.copytree(final_ckpt / "model", run.out / "final", dirs_exist_ok=True)
        curves.close()
        plot_curves(run.out / "metrics.jsonl", run.out / stage.curves_file)
        stage.log.info(stage.done_message(run))
    barrier(run.world)
    return 0


# ---------------------------------------------------------------------------- validation
def shard_rounds(num_samples: int, rank: int, world: int) -> Iterator[tuple[int, bool]]:
    """This rank's share of `num_samples` (every world-th from `rank`) as (index, real), padded so that every
    rank runs the same number of rounds (ZeRO-3 gathers weights collectively): padding rounds repeat a sample
    with real=False and must not be scored."""
    mine = list(range(rank, num_samples, world))
    for k in range(math.ceil(num_samples / world)):
        real = k < len(mine)
        yield (mine[k] if real else (mine[-1] if mine else 0)), real


def sharded_validation(
    num_samples: int, run: Run, score_one: Callable[[int, bool], tuple[SampleScore | None, list]], num_extras: int
) -> tuple[dict, np.ndarray]:
    """`score_one(index, real)` on this rank's share (see `shard_rounds`) -> (its mask score or None when not
    scored, `num_extras` numbers to sum). Intersections, unions and extras are summed over ranks, so cIoU is
    exact. -> (SplitMetrics summary, summed extras (num_extras,) float64)."""
    metrics = SplitMetrics()
    extras = np.zeros(num_extras, dtype=np.float64)
    for index, real in shard_rounds(num_samples, run.rank, run.world):
        score, more = score_one(index, real)
        if score is not None:
            metrics.add(score)
        extras += np.asarray(more, dtype=np.float64)
    totals = (
        all_sum(torch.tensor(np.append(metrics.to_array(), extras), dtype=torch.float64, device=run.device), run.world)
        .cpu()
        .numpy()
    )
    return SplitMetrics.from_array(totals[:-num_extras]).summary(), totals[-num_extras:]
