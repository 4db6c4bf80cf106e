"""DeepSpeed plumbing shared by the training stages: process group, engine config, checkpoints, export, logs.

Launch any stage with `deepspeed`, `torchrun` or plain `python` (one process). On machines without CUDA set
DS_ACCELERATOR=cpu: DeepSpeed then runs ZeRO over the gloo backend (tests, CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lens_model.devices import resolve_dtype
from lens_model.distributed import all_sum, barrier
from lens_model.errors import CheckpointError, LensError
from lens_model.model.checkpoint import save_model
from lens_model.outputs import write_atomic, write_json

log = logging.getLogger(__name__)
RUN_FILE = "lens_run.json"  # written next to every DeepSpeed checkpoint: step + what model it belongs to


class TrainingError(LensError):
    """A run cannot go on (non-finite loss, incompatible checkpoint); the message says what to do."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device


def init_distributed() -> DistInfo:
    """One process: no process group. Several (deepspeed / torchrun set WORLD_SIZE): DeepSpeed's own init,
    NCCL on GPUs, gloo on CPU. Each rank uses cuda:LOCAL_RANK when CUDA is present."""
    import deepspeed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    if world > 1 or "MASTER_ADDR" in os.environ:
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    elif not dist.is_initialized():  # DeepSpeed wants a process group even for one process
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank, world, local_rank, torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def enable_activation_checkpointing(mllm) -> None:
    """Recompute each decoder layer in backward instead of storing its activations (non-reentrant, so frozen
    inputs and partially trainable models work)."""
    if hasattr(mllm, "activation_checkpointing_enable"):  # transformers >= 5.x name
        mllm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        mllm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The config's precision -> the training dtype; reduced precision only on CUDA."""
    dtype = resolve_dtype(precision, device)
    if dtype != torch.float32 and device.type != "cuda":
        raise LensError(f"precision={precision} needs a CUDA GPU; on CPU use precision=fp32 (or auto)")
    return dtype


def deepspeed_config(
    zero_stage: int, per_device: int, grad_accum: int, world: int, dtype: torch.dtype, grad_clip: float
) -> dict:
    """The engine config, derived from the run config (no separate JSON to keep in sync)."""
    zero: dict = {"stage": zero_stage}
    if zero_stage == 3:
        # consolidated weights for the exported model; frozen MLLM/SAM2 weights are partitioned too
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=1e4)
    return {
        "train_micro_batch_size_per_gpu": per_device,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": per_device * grad_accum * world,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # torch AdamW over the trainable parameters only
        "steps_per_print": 10**9,  # our own logging
    }


def build_engine(
    model: torch.nn.Module,
    cfg,
    per_device: int,
    grad_accum: int,
    world: int,
    dtype: torch.dtype,
    total_updates: int,
    resume_from: tuple[Path, str] | None,
):
    """DeepSpeed engine over `model` with AdamW on its trainable parameters only (frozen ones never get optimizer
    state) and the config's warm-up + decay schedule; restores a checkpoint when resuming. -> (engine, scheduler)"""
    import deepspeed

    from .schedule import build_lr_scheduler

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    scheduler = build_lr_scheduler(optimizer, cfg, total_updates)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg.zero_stage, per_device, grad_accum, world, dtype, cfg.grad_clip),
    )
    if cfg.zero_stage == 3:  # parameters read outside their own module's forward must be gathered for ours
        for param in model.external_parameters():
            deepspeed.zero.register_external_parameter(engine.module, param)
    if resume_from is not None:
        loaded, _ = engine.load_checkpoint(str(resume_from[0]), tag=resume_from[1], load_module_strict=False)
        if loaded is None:
            raise TrainingError(f"DeepSpeed could not load {resume_from[0] / resume_from[1]}")
    return engine, scheduler


@contextlib.contextmanager
def gathered(module: torch.nn.Module, zero_stage: int):
    """Full weights on every rank for generation under ZeRO-3 (token-by-token decoding would otherwise gather
    each layer's shards for every token)."""
    if zero_stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


# ---------------------------------------------------------------------------- command line
def stage_main(argv, prog: str, doc: str, recipe: str, example_override: str, train) -> int:
    """The shared `python -m training.<stage>` front end: parse, set up logging, run `train(args)`, and turn
    LensError (bad config, data, checkpoint) into one `error:` line and exit status 1."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Defaults follow the paper; see {recipe}.",
    )
    parser.add_argument("--config", type=Path, help="YAML run config (default: the dataclass defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example_override}")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from OUT/checkpoints/latest, or from the given checkpoints/step-* directory",
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS
    )  # deepspeed launcher
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return train(args)
    except LensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------- inside the training loop
def zero_loss(engine) -> torch.Tensor:
    """A loss of 0 connected to every trainable weight: keeps ranks in step when a whole micro-batch failed."""
    return sum(p.sum() * 0.0 for p in engine.module.parameters() if p.requires_grad)


def agree_on_update(
    loss: torch.Tensor,
    samples: int,
    step: int,
    rank: int,
    world: int,
    device: torch.device,
    out_dir: Path,
    last_saved: int | None,
) -> int:
    """All ranks agree whether `loss` is finite before anyone updates; if not, stop naming the (1-based) step
    and the last checkpoint, which the update never touched. -> the micro-batch's valid samples summed over ranks
    (one collective for both)."""
    both = all_sum(torch.tensor([float(torch.isfinite(loss.detach()).all()), float(samples)], device=device), world)
    if float(both[0]) < world:
        raise TrainingError(
            f"non-finite loss at step {step} (loss={float(loss.detach()):.4g} on rank {rank}); "
            f"stopped before the update; {_last_checkpoint(out_dir, last_saved)}. Lower lr or check the data of "
            "this step."
        )
    return int(both[1])


def stop_without_samples(step: int, world: int, out_dir: Path, last_saved: int | None) -> None:
    """An update none of whose micro-batches, on any rank, had a sample that could be used (every image missing,
    every answer too long, ...): stop before it, instead of logging a loss of 0 and saving an untrained checkpoint."""
    files = out_dir / ("failed_samples-rank0.jsonl" if world == 1 else "failed_samples-rank*.jsonl")
    raise TrainingError(
        f"step {step} has no sample that could be used: every sample of its batch failed to load (the reasons are in "
        f"{files}); stopped before the update; {_last_checkpoint(out_dir, last_saved)}. Check the dataset paths"
    )


def _last_checkpoint(out_dir: Path, last_saved: int | None) -> str:
    if last_saved:
        return f"last good checkpoint: {out_dir / 'checkpoints' / step_tag(last_saved)}"
    return "no checkpoint was saved yet"


def log_failed_samples(path: Path, step: int, failed: list[tuple[str, str]]) -> None:
    """Samples skipped at (1-based) `step`: a warning each and a line in the rank's failed_samples JSONL."""
    if not failed:
        return
    with path.open("a") as f:
        for sample_id, error in failed:
            log.warning("step %d: skipping sample %s", step, error)
            f.write(json.dumps({"step": step, "sample_id": sample_id, "error": error}) + "\n")


# ---------------------------------------------------------------------------- checkpoints
def step_tag(step: int) -> str:
    return f"step-{step:07d}"


def full_state_dict(engine, zero_stage: int, prefix: str = "") -> dict[str, torch.Tensor] | None:
    """The engine module's state dict gathered from all ranks (a collective under ZeRO-3: every rank must call
    it), keys under `prefix` only, with the prefix removed; the full dict on rank 0, None elsewhere under ZeRO-3."""
    state = (
        engine._zero3_consolidated_16bit_state_dict()
        if zero_stage == 3
        else {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    )
    if state is None:
        return None
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def save_checkpoint(
    engine,
    out_dir: Path,
    step: int,
    run_info: dict,
    processor,
    rank: int,
    zero_stage: int,
    keep_last: int,
    lens_attr: str | None = None,
) -> Path:
    """DeepSpeed state for --resume + the model written by save_model (loadable by `lens segment`).
    `lens_attr`: where the LensModel sits inside the engine module (None: it is the module).

    A checkpoint is complete once its lens_run.json exists: it is written last (atomically, after every rank's
    DeepSpeed files and the model), and only then does checkpoints/latest name the step. A run killed while saving
    leaves a step folder without it, which --resume passes over (`resolve_resume`)."""
    ckpt_root = out_dir / "checkpoints"
    tag = step_tag(step)
    # frozen weights (the MLLM and SAM2 in stage 1) come back from the run's init on resume: not saved again;
    # `latest` is ours to write, once the checkpoint is complete
    engine.save_checkpoint(
        str(ckpt_root), tag=tag, client_state={"step": step}, save_latest=False, exclude_frozen_parameters=True
    )
    state = full_state_dict(engine, zero_stage, prefix=f"{lens_attr}." if lens_attr else "")
    lens = getattr(engine.module, lens_attr) if lens_attr else engine.module
    path = ckpt_root / tag
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank == 0:
        save_model(lens, path / "model", processor=processor, state=state)
    barrier(world)  # every rank's DeepSpeed files are on disk
    if rank == 0:
        write_json(path / RUN_FILE, {**run_info, "step": step}, "the checkpoint's run file")
        write_atomic(ckpt_root / "latest", tag, "checkpoints/latest")
        _prune(ckpt_root, keep_last)
    barrier(world)
    return path


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / RUN_FILE).is_file()


def _prune(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; remove older ones, and incomplete ones older than the
    newest complete one (left by a run killed while saving)."""
    if keep_last <= 0:
        return
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    complete = [p for p in steps if _complete(p)]
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in (p for p in steps if not _complete(p) and complete and p.name < complete[-1].name):
        shutil.rmtree(partial, ignore_errors=True)


def resolve_resume(resume: str, out_dir: Path) -> tuple[Path, str]:
    """--resume (latest in OUT/checkpoints) or --resume DIR (a step-* directory) -> (checkpoint root, tag).

    "latest" is the step `checkpoints/latest` names when that checkpoint is complete; otherwise (a run killed while
    saving: DeepSpeed's files without the model or lens_run.json) the newest complete one, with a warning."""
    if resume == "latest":
        root = out_dir / "checkpoints"
        complete = sorted(p.name for p in root.glob("step-*") if _complete(p))
        latest = root / "latest"
        named = latest.read_text().strip() if latest.is_file() else None
        if named is not None and _complete(root / named):
            return root, named
        if not complete:
            raise CheckpointError(
                f"--resume: no complete checkpoint to resume in {root} (expected a step-* folder with {RUN_FILE}); "
                "start without --resume or pass --resume PATH/step-NNNNNNN"
            )
        partial = sorted(p.name for p in root.glob("step-*") if p.is_dir() and not _complete(p))
        log.warning(
            "--resume: %s is incomplete (no %s: the run stopped while saving it); resuming from %s, the last "
            "complete checkpoint",
            named or (partial[-1] if partial else "the newest checkpoint"),
            RUN_FILE,
            complete[-1],
        )
        return root, complete[-1]
    path = Path(resume)
    if path.is_dir() and (path / "model").exists() and not (path / RUN_FILE).is_file():
        raise CheckpointError(
            f"--resume {path}: incomplete checkpoint (no {RUN_FILE}: the run stopped while saving it); pass an "
            "earlier step, or --resume alone for the last complete one"
        )
    if not (path / RUN_FILE).is_file():
        raise CheckpointError(
            f"--resume {path}: not a training checkpoint (no {RUN_FILE}); "
            f"pass a directory like {out_dir / 'checkpoints' / step_tag(500)}"
        )
    return path.parent, path.name


def start_run(resume: str | None, out_dir: Path, run_info: dict, config_text: str, rank: int):
    """Check a --resume target against this run, write OUT/config.yaml -> (first step, (root, tag) or None)."""
    start_step, resume_from = 0, None
    if resume:
        root, tag = resolve_resume(resume, out_dir)
        start_step = check_compatible(root / tag / RUN_FILE, run_info)
        resume_from = (root, tag)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "config.yaml", config_text, "the run's config")
    return start_step, resume_from


def check_compatible(run_file: Path, run_info: dict) -> int:
    """The checkpoint must come from the same model and trainable parts; -> the step it was saved at."""
    saved = json.loads(run_file.read_text())
    for key in ("model_signature", "trainable", "init"):
        if saved.get(key) != run_info.get(key):
            diff = _first_difference(saved.get(key), run_info.get(key))
            raise TrainingError(
                f"{run_file.parent} was written by a run with a different {key.replace('_', ' ')} "
                f"({diff}); resume with the config it was trained with, or start a new output_dir"
            )
    return int(saved["step"])


def _first_difference(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'value'}: checkpoint {a!r} vs now {b!r}"


# ---------------------------------------------------------------------------- logging
class MetricLog:
    """Rank 0's training curves: TensorBoard scalars (when tensorboard is installed) + metrics.jsonl."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed run replaces what came after its checkpoint
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step
            ]
            write_atomic(self.path, "".join(line + "\n" for line in kept), "metrics.jsonl")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
            )
        except ImportError:
            log.warning("tensorboard is not installed: curves go to %s only (pip install tensorboard)", self.path)

    def log(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class Throughput:
    def __init__(self) -> None:
        self.start, self.samples = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else 0.0

    def reset(self) -> None:
        self.start, self.samples = time.perf_counter(), 0
