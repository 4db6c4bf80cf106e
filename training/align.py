"""Stage 1, alignment: train the context module (queries, connector, reduction, projection) with the MLLM and
SAM2 frozen, on teacher-forced answers, with dice + BCE (or focal) on the masks (paper Table A1, SPEC.md).

    python -m training.align --config training/configs/align.yaml [key=value ...]       # one process
    deepspeed --num_gpus 8 --module training.align --config ... [--hostfile hosts]     # one node / cluster
    torchrun --nproc_per_node 8 -m training.align --config ...
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m training.align ...               # CPU (tests)
    python -m training.align --config ... --resume                                     # continue OUT/checkpoints/latest

Each step: global batch = per-device batch × world × grad-accum; each sample is the chat prompt + GT answer
(`<|object_ref_start|>expr.<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|><|im_end|>`) followed by the
N queries, whose last-layer states become SAM2's prompt. Outputs in OUT (= output_dir): config.yaml,
metrics.jsonl + tensorboard/ (loss parts, lr, grad norm, samples/s, validation gIoU/cIoU), loss.png,
checkpoints/step-*/ (DeepSpeed state + model/ for `lens segment`), final/ (the trained model).
"""
from __future__ import annotations

import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from lens_model.config import LensConfig, SamConfig
from lens_model.metrics import SplitMetrics, score_sample
from lens_model.sam import upsample_logits

from .config import AlignConfig, dump_config, derive_batch, load_config, total_steps
from .data import AlignExamples, Collator, Schedule, load_mixture
from .engine import (MetricLog, Throughput, all_mean, all_sum, barrier, build_engine, enable_activation_checkpointing,
                     init_distributed, log_failed_samples, resolve_precision, save_checkpoint, stage_main, start_run,
                     stop_if_not_finite, zero_loss)
from .losses import mask_loss
from .plots import plot_curves

log = logging.getLogger("training.align")


# ---------------------------------------------------------------------------- model
def build_model(cfg: AlignConfig, dtype: torch.dtype):
    """-> (LensModel, processor): continue from a LENS checkpoint, or base MLLM + SAM2 .pt + new context module."""
    from lens_model.checkpoint import build_from_base, load_model

    if cfg.init_from:
        model, processor = load_model(cfg.init_from, dtype=dtype)
        if model.context.num_queries != cfg.num_queries:
            log.info("init_from has %d context queries (num_queries=%d applies only to new models)", model.context.num_queries,
                        cfg.num_queries)
        model.lens_config.context_pass = cfg.context_pass
    else:
        lens_config = LensConfig(
            num_queries=cfg.num_queries, context_pass=cfg.context_pass, min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            sam=SamConfig(config_name=cfg.sam_config, overrides=list(cfg.sam_overrides), image_size=cfg.sam_image_size),
        )
        model, processor = build_from_base(cfg.base_mllm, cfg.sam_checkpoint, lens_config, dtype=dtype)
    return model, processor


TRAINABLE_MODULES = {  # part name -> attribute paths of LensModel
    "context": ("context",),
    "sam_decoder": ("sam.sam_mask_decoder",),
    "sam_prompt_encoder": ("sam.sam_prompt_encoder",),
    "mllm": ("mllm",),
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
    return {"mllm_type": model.mllm.config.model_type, "hidden_size": text.hidden_size,
            "num_hidden_layers": text.num_hidden_layers, "vocab_size": text.vocab_size,
            "lens": model.lens_config.to_dict()}


# ---------------------------------------------------------------------------- one micro-batch
def mask_logits(engine, batch: dict, cfg: AlignConfig, device: torch.device, mllm_grad: bool = False) -> torch.Tensor:
    """Teacher-forced forward of a collated batch -> low-res mask logits (B, 1, S/4, S/4); the query positions
    follow the context pass the model is trained for (official: 1-D, cached: M-RoPE)."""
    low_res, _ = engine(
        batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["mm_token_type_ids"].to(device),
        batch["pixel_values"].to(device), batch["image_grid_thw"].to(device), batch["sam_images"].to(device),
        positions="1d" if cfg.context_pass == "official" else "mrope", mllm_grad=mllm_grad,
    )
    return low_res


def forward_loss(engine, batch: dict, cfg: AlignConfig, mllm_grad: bool, device: torch.device) -> dict[str, torch.Tensor]:
    low_res = mask_logits(engine, batch, cfg, device, mllm_grad)
    return mask_loss(low_res, [m.to(device) for m in batch["gt_masks"]], dice_weight=cfg.dice_weight,
                     pixel_weight=cfg.pixel_weight, pixel_loss=cfg.pixel_loss, focal_alpha=cfg.focal_alpha,
                     focal_gamma=cfg.focal_gamma)


# ---------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(engine, val_set: AlignExamples | None, collate, cfg: AlignConfig, rank: int, world: int,
             device: torch.device) -> dict | None:
    """Teacher-forced validation (GT answer in context, as in training), sharded: each rank scores every
    world-th sample and intersections/unions are summed across ranks, so cIoU is exact. Every rank runs the
    same number of forwards (ZeRO-3 gathers weights collectively); padding rows are not scored."""
    if val_set is None or len(val_set) == 0:
        return None
    engine.eval()
    metrics = SplitMetrics()
    mine = list(range(rank, len(val_set), world))
    rounds = math.ceil(len(val_set) / world)
    failed = 0
    for k in range(rounds):
        real = k < len(mine)
        example = val_set[mine[k] if real else mine[-1] if mine else 0]
        batch = collate([example])
        if batch["size"] == 0:
            failed += int(real)
            batch = collate([val_set[0]])  # something to forward so the collective calls line up
            real = False
        low_res = mask_logits(engine, batch, cfg, device)
        if real:
            gt = batch["gt_masks"][0].numpy()
            pred = (upsample_logits(low_res, gt.shape)[0] > 0).cpu().numpy()
            metrics.add(score_sample(pred, gt))
    engine.train()
    totals = all_sum(torch.tensor(np.append(metrics.to_array(), failed), dtype=torch.float64, device=device), world)
    merged = SplitMetrics.from_array(totals[:-1].cpu().numpy())
    summary = merged.summary()
    return {"gIoU": summary["gIoU"], "cIoU": summary["cIoU"], "P@0.5": summary["P@0.5"], "n": summary["n"],
            "failed": int(totals[-1])}


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    return stage_main(argv, "python -m training.align", __doc__, "training/configs/align.yaml", "lr=1e-4 datasets.0.root=/data", train)


def train(args) -> int:
    cfg = load_config(AlignConfig, args.config, args.overrides)
    datasets = load_mixture(cfg.datasets)  # before the model: a wrong path fails in seconds, not minutes
    val_records = load_mixture([cfg.val_dataset])[0][:cfg.val_samples] if cfg.val_dataset and cfg.val_samples else None
    dist_info = init_distributed()
    rank, world, device = dist_info.rank, dist_info.world, dist_info.device
    out = Path(cfg.output_dir)
    per_device, accum = derive_batch(cfg.global_batch_size, world, cfg.per_device_batch_size)
    num_samples = sum(len(d) for d in datasets)
    steps = total_steps(cfg, num_samples)
    dtype = resolve_precision(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model, processor = build_model(cfg, dtype)
    counts = freeze_all_but(model, cfg.trainable)
    mllm_grad = "mllm" in cfg.trainable
    if mllm_grad and cfg.gradient_checkpointing:
        enable_activation_checkpointing(model.mllm)
    model.to(device)
    run_info = {"model_signature": model_signature(model), "trainable": sorted(cfg.trainable),
                "init": {"init_from": cfg.init_from} if cfg.init_from else
                {"base_mllm": cfg.base_mllm, "sam_checkpoint": cfg.sam_checkpoint}}
    start_step, resume_from = start_run(args.resume, out, run_info, dump_config(cfg), rank)
    if rank == 0:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log.info("training %s (%s trainable parameters), %s frozen; %d ranks × %d per device × %d accumulation = "
                 "global batch %d; %d samples, %d steps%s", ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()),
                 f"{sum(counts.values()) / 1e6:.2f}M", f"{frozen / 1e6:.2f}M", world, per_device, accum,
                 cfg.global_batch_size, num_samples, steps, f", resuming at step {start_step}" if start_step else "")

    engine, scheduler = build_engine(model, cfg, per_device, accum, world, dtype, steps, resume_from)
    engine.train()
    model.sam.image_encoder.eval()  # frozen; keep any stochastic layers off

    # data: this rank's samples for steps [start_step, steps), in order
    schedule = Schedule(tuple(len(d) for d in datasets), tuple(s.ratio for s in cfg.datasets), cfg.seed,
                        cfg.global_batch_size, per_device, world, accum)
    max_length = cfg.max_prompt_length + cfg.max_completion_length
    train_set = AlignExamples(datasets, schedule.rank_positions(rank, start_step, steps), processor,
                              model.lens_config, max_length)
    collate = Collator(processor.tokenizer.pad_token_id)
    loader = torch.utils.data.DataLoader(train_set, batch_size=per_device, shuffle=False, collate_fn=collate,
                                         num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    val_set = (AlignExamples([val_records], [(0, i) for i in range(len(val_records))], processor, model.lens_config,
                             max_length) if val_records else None)

    curves = MetricLog(out, enabled=rank == 0, resume_step=start_step)
    failed_log = out / f"failed_samples-rank{rank}.jsonl"
    last_saved = start_step if start_step else None
    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start_step, desc="align", unit="step", disable=rank != 0 or args.no_progress)
    throughput = Throughput()
    batches = iter(loader)
    for step in range(start_step, steps):
        parts = {"loss": 0.0, "dice": 0.0, "pixel": 0.0}
        step_lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        for _ in range(accum):
            batch = next(batches)
            log_failed_samples(failed_log, step + 1, batch["failed"])
            if batch["size"]:
                losses = forward_loss(engine, batch, cfg, mllm_grad, device)
                loss = losses["loss"]
            else:
                losses, loss = {}, zero_loss(engine)
            stop_if_not_finite(loss, step + 1, rank, world, device, out, last_saved)
            engine.backward(loss)
            engine.step()
            for key in parts:
                parts[key] += float(losses[key].detach()) / accum if key in losses else 0.0
            throughput.add(batch["size"])
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
            values = {k: all_mean(v, world, device) for k, v in parts.items()}
            grad_norm = engine.get_global_grad_norm()
            values.update(lr=step_lr,
                          grad_norm=float(grad_norm) if grad_norm is not None else math.nan,
                          samples_per_s=all_mean(throughput.rate(), world, device) * world)
            throughput.reset()
            curves.log(done, values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", sps=f"{values['samples_per_s']:.1f}")
            if args.no_progress and rank == 0:
                log.info("step %d/%d loss %.4f (dice %.4f, %s %.4f) lr %.3g grad-norm %.3g %.1f samples/s", done, steps,
                         values["loss"], values["dice"], cfg.pixel_loss, values["pixel"], values["lr"],
                         values["grad_norm"], values["samples_per_s"])
        if val_set is not None and (done % cfg.eval_every == 0 or done == steps):
            val = validate(engine, val_set, collate, cfg, rank, world, device)
            curves.log(done, val, prefix="val")
            if rank == 0:
                log.info("step %d validation: gIoU %.4f cIoU %.4f P@0.5 %.4f (%d samples)", done, val["gIoU"],
                         val["cIoU"], val["P@0.5"], val["n"])
        if done % cfg.save_every == 0 and done != steps:
            save_checkpoint(engine, out, done, run_info, processor, rank, cfg.zero_stage, cfg.keep_last)
            last_saved = done
    bar.close()

    final_ckpt = save_checkpoint(engine, out, steps, run_info, processor, rank, cfg.zero_stage, cfg.keep_last)
    if rank == 0:
        shutil.copytree(final_ckpt / "model", out / "final", dirs_exist_ok=True)
        curves.close()
        plot_curves(out / "metrics.jsonl", out / "loss.png")
        log.info("done: model in %s (lens segment --model %s --image IMAGE --prompt PROMPT); curves in %s and %s", out / "final",
                 out / "final", out / "metrics.jsonl", out / "tensorboard")
    barrier(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
