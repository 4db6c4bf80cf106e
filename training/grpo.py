"""Stage 2, GRPO with unified rewards: sample G answers per prompt, reward each with format + box IoU² +
mask IoU² (weights configurable, custom rewards by name), group-normalise, and update the MLLM with the clipped
policy-gradient objective + β·KL(k3) to a frozen reference, plus λ·(dice + BCE/focal) on every answer's mask
(which trains the context module and SAM2's decoder) — paper Table A2, SPEC.md.

    python -m training.grpo --config training/configs/grpo.yaml [key=value ...]
    torchrun --nproc_per_node 8 -m training.grpo --config ...        # or: deepspeed [--hostfile H] --module training.grpo
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m training.grpo ...   # CPU (tests)
    python -m training.grpo --config ... --resume                    # continue OUT/checkpoints/latest

Token log-probs are computed under the M-RoPE positions used when sampling (the released code used 1-D
positions there); the context pass follows the checkpoint's mode. All G answers of a prompt stay on one rank,
so group statistics need no communication. Outputs as stage 1: config.yaml, metrics.jsonl, tensorboard/
(every reward component, KL, clip fraction, completion length, box/mask IoU, timings), curves.png,
checkpoints/step-*/, final/.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lens_model.answer import box_iou, parse_answer
from lens_model.metrics import SplitMetrics, score_sample
from lens_model.modeling import ContextInputs, image_features_per_row
from lens_model.pipeline import special_token_ids

from .align import freeze_all_but, model_signature
from .config import GRPOConfig, derive_batch, dump_config, load_config, total_steps
from .data import Schedule, load_mixture
from .engine import (MetricLog, Throughput, all_mean, all_sum, barrier, build_engine, enable_activation_checkpointing,
                     init_distributed, log_failed_samples, resolve_precision, save_checkpoint, stage_main, start_run,
                     stop_if_not_finite, zero_loss)
from .grpo_loss import group_advantages, grpo_loss
from .losses import mask_loss
from .plots import plot_curves
from .policy import PolicyModel, sequence_logprobs
from .rewards import RolloutSample, resolve_reward, score
from .rollout import PromptBatch, Rollout, generate_rollouts, prepare_prompts

log = logging.getLogger("training.grpo")


# ---------------------------------------------------------------------------- models
def load_policy(cfg: GRPOConfig, dtype: torch.dtype):
    from lens_model.checkpoint import load_model

    lens, processor = load_model(cfg.init_from, dtype=dtype, context_pass=cfg.context_pass,
                                 answer_format=cfg.answer_format)
    return lens, processor


def load_reference(cfg: GRPOConfig, dtype: torch.dtype, device: torch.device, zero_stage: int):
    """The frozen reference policy: only its Qwen-VL part (the KL term needs token log-probs, not masks).
    No optimizer state; under ZeRO-3 its weights are partitioned across ranks like the policy's."""
    if cfg.beta == 0:
        return None
    from lens_model.checkpoint import load_model

    reference, _ = load_model(cfg.reference or cfg.init_from, dtype=dtype, load_processor=False)
    mllm = reference.mllm.requires_grad_(False).eval()
    del reference
    if zero_stage == 3:
        import deepspeed

        ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
              "bf16": {"enabled": dtype == torch.bfloat16}, "fp16": {"enabled": dtype == torch.float16}}
        return deepspeed.initialize(model=mllm, config=ds)[0].module
    return mllm.to(device)


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


# ---------------------------------------------------------------------------- one micro-batch
@dataclass
class ScoredRollout:
    prompts: PromptBatch
    rollout: Rollout
    rewards: torch.Tensor  # (K·G,)
    components: dict[str, np.ndarray]
    advantages: torch.Tensor  # (K·G,)
    mask_iou: np.ndarray
    box_iou: np.ndarray
    old_logp: torch.Tensor | None = None  # (K·G, T) when the rollout feeds several updates
    ref_logp: torch.Tensor | None = None


def rollout_samples(prompts: PromptBatch, rollout: Rollout, answer_format: str) -> list[RolloutSample]:
    rows = rollout.rows.tolist()
    return [RolloutSample(text=rollout.texts[r], answer_format=answer_format, gt_box=prompts.gt_boxes_llm[i],
                          gt_mask=prompts.gt_masks[i], pred_mask=rollout.pred_masks[r],
                          expression=prompts.records[i].expression) for r, i in enumerate(rows)]


def rollout_ious(samples: list[RolloutSample]) -> tuple[np.ndarray, np.ndarray]:
    """Plain mask IoU and box IoU of each answer (logged; the rewards are their squares by default)."""
    masks, boxes = [], []
    for s in samples:
        masks.append(score_sample(s.pred_mask, s.gt_mask).iou)
        box = parse_answer(s.text, s.answer_format).box
        boxes.append(box_iou(box, s.gt_box) if box is not None and s.gt_box is not None else 0.0)
    return np.asarray(masks), np.asarray(boxes)


def reference_logp(reference, ro: Rollout, prompts: PromptBatch, temperature: float) -> torch.Tensor:
    device = ro.sequences.device
    grid = prompts.image_grid_thw.to(device)
    with torch.no_grad():
        images = image_features_per_row(reference, prompts.pixel_values.to(device, reference.dtype), grid, ro.rows)
        ctx = ContextInputs(ro.sequences, ro.attention_mask, ro.mm_token_type_ids, grid[ro.rows])
        return sequence_logprobs(reference, ctx, images, ro.prompt_length, temperature)[0]


def policy_forward(engine, item: ScoredRollout, context_pass: str, temperature: float, vision_grad: bool):
    ro, prompts, device = item.rollout, item.prompts, item.rollout.sequences.device
    return engine(ro.sequences, ro.attention_mask, ro.mm_token_type_ids, prompts.pixel_values.to(device),
                  prompts.image_grid_thw.to(device), ro.rows, ro.prompt_length, ro.sam_features, context_pass,
                  temperature, vision_grad=vision_grad)


def micro_loss(engine, item: ScoredRollout, cfg: GRPOConfig, context_pass: str, vision_grad: bool) -> dict:
    logp, low_res = policy_forward(engine, item, context_pass, cfg.temperature, vision_grad)
    ro = item.rollout
    mask = ro.completion_mask.to(logp.dtype)
    old = item.old_logp if item.old_logp is not None else logp.detach()
    policy = grpo_loss(logp, old, item.ref_logp, item.advantages.to(logp.device), mask, clip_eps=cfg.clip_eps,
                       clip_eps_high=cfg.clip_eps_high, beta=cfg.beta, aggregation=cfg.loss_aggregation)
    gt = [torch.from_numpy(item.prompts.gt_masks[i]).to(logp.device) for i in ro.rows.tolist()]
    seg = mask_loss(low_res, gt, dice_weight=cfg.dice_weight, pixel_weight=cfg.pixel_weight,
                    pixel_loss=cfg.pixel_loss, focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
    total = policy["loss"] + cfg.seg_loss_weight * seg["loss"]
    return {"loss": total, "policy": policy["policy"], "kl": policy["kl"], "clip_fraction": policy["clip_fraction"],
            "seg": seg["loss"], "dice": seg["dice"], "pixel": seg["pixel"]}


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    return stage_main(argv, "python -m training.grpo", __doc__, "training/configs/grpo.yaml", "beta=0 num_generations=4", train)


def train(args) -> int:
    cfg = load_config(GRPOConfig, args.config, args.overrides)
    for name in cfg.reward_weights:  # unknown reward names fail before anything heavy starts
        resolve_reward(name)
    datasets = load_mixture(cfg.datasets)
    val_records = load_mixture([cfg.val_dataset])[0][:cfg.val_samples] if cfg.val_dataset and cfg.val_samples else []
    dist_info = init_distributed()
    rank, world, device = dist_info.rank, dist_info.world, dist_info.device
    out = Path(cfg.output_dir)
    per_device, accum = derive_batch(cfg.global_batch_size, world, cfg.per_device_batch_size)
    steps = total_steps(cfg, sum(len(d) for d in datasets))
    dtype = resolve_precision(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    lens, processor = load_policy(cfg, dtype)
    context_pass = lens.lens_config.context_pass
    answer_format = lens.lens_config.prompt.answer_format
    counts = freeze_all_but(lens, cfg.trainable)
    lens.sam.image_encoder.requires_grad_(False)  # never trained: its embeddings come from the rollout
    mllm_trained = "mllm" in cfg.trainable
    if mllm_trained and cfg.gradient_checkpointing:
        enable_activation_checkpointing(lens.mllm)
    lens.to(device)
    model = PolicyModel(lens)
    run_info = {"model_signature": model_signature(lens), "trainable": sorted(cfg.trainable),
                "init": {"init_from": cfg.init_from}}
    start_step, resume_from = start_run(args.resume, out, run_info, dump_config(cfg), rank)
    if rank == 0:
        log.info("GRPO on %s (%s; context pass %s, answers %s); %d ranks × %d prompts × %d accumulation = %d prompts "
                 "× G=%d answers per step; %d steps%s", ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()),
                 cfg.init_from, context_pass, answer_format, world, per_device, accum, cfg.global_batch_size,
                 cfg.num_generations, steps, f", resuming at step {start_step}" if start_step else "")
    if cfg.rollout_backend == "vllm":
        from .vllm_rollout import VLLMRollouts

        vllm_rollouts = VLLMRollouts(cfg, lens, processor, device)
    else:
        vllm_rollouts = None

    # num_iterations optimizer updates per step: the schedule counts updates
    engine, scheduler = build_engine(model, cfg, per_device, accum, world, dtype, steps * cfg.num_iterations,
                                     resume_from)
    reference = load_reference(cfg, dtype, device, cfg.zero_stage)
    engine.train()
    lens.sam.image_encoder.eval()

    schedule = Schedule(tuple(len(d) for d in datasets), tuple(s.ratio for s in cfg.datasets), cfg.seed,
                        cfg.global_batch_size, per_device, world, accum)
    positions = schedule.rank_positions(rank, start_step, steps)
    pad, eos = special_token_ids(processor.tokenizer)
    sampling = dict(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                    top_k=cfg.top_k, eos_token_ids=eos, pad_token_id=pad, context_pass=context_pass)

    def rollout(prompts: PromptBatch) -> Rollout:
        if vllm_rollouts is not None:
            return vllm_rollouts.generate(prompts, cfg.num_generations)
        with gathered(engine.module, cfg.zero_stage):
            return generate_rollouts(lens, processor, prompts, cfg.num_generations, **sampling)

    curves = MetricLog(out, enabled=rank == 0, resume_step=start_step)
    failed_log = out / f"failed_samples-rank{rank}.jsonl"
    weights = dict(cfg.reward_weights)
    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start_step, desc="grpo", unit="step", disable=rank != 0 or args.no_progress)
    throughput = Throughput()
    cursor = 0
    last_saved = start_step or None
    for step in range(start_step, steps):
        # Sampling randomness is a function of (seed, step, rank): a resumed run draws the same answers.
        torch.manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        step_lr = scheduler.get_last_lr()[0]
        if vllm_rollouts is not None:
            vllm_rollouts.policy_version = step  # weights change once per step: sync them into vLLM once
        timings = {"generate": 0.0, "context_sam": 0.0, "rewards": 0.0, "train": 0.0}
        items: list[ScoredRollout | None] = []
        for _ in range(accum):  # ---- rollouts of every micro-batch of this step
            records = [datasets[k][i] for k, i in positions[cursor:cursor + per_device]]
            cursor += per_device
            prompts, failed = prepare_prompts(records, processor, lens.lens_config, cfg.max_prompt_length)
            log_failed_samples(failed_log, step + 1, failed)
            if prompts is None:
                items.append(None)
                continue
            # generate in eval mode (activation checkpointing would switch the KV cache off), but keep SAM2's
            # decoder in train mode so the rewarded masks are the ones the mask loss trains (single-mask token,
            # no eval-time stability fallback), as in the released training
            engine.eval()
            lens.sam.sam_mask_decoder.train()
            ro = rollout(prompts)
            engine.train()
            lens.sam.image_encoder.eval()
            timings["generate"] += ro.timings.get("generate", 0.0)
            timings["context_sam"] += ro.timings.get("context_sam", 0.0)
            start = time.perf_counter()
            samples = rollout_samples(prompts, ro, answer_format)
            total, components = score(samples, weights)
            rewards = torch.as_tensor(total, dtype=torch.float32)
            advantages = group_advantages(rewards, cfg.num_generations, eps=cfg.advantage_eps,
                                          scale=cfg.scale_advantages)
            mask_ious, box_ious = rollout_ious(samples)
            item = ScoredRollout(prompts, ro, rewards, components, advantages, mask_ious, box_ious)
            if reference is not None:
                item.ref_logp = reference_logp(reference, ro, prompts, cfg.temperature)
            if cfg.num_iterations > 1:
                with torch.no_grad():
                    item.old_logp = policy_forward(engine, item, context_pass, cfg.temperature, False)[0].detach()
            timings["rewards"] += time.perf_counter() - start
            items.append(item)
        start = time.perf_counter()
        parts: dict[str, float] = {}
        for _ in range(cfg.num_iterations):  # ---- updates (one optimizer step per pass over the micro-batches)
            for item in items:
                if item is None:
                    losses = {"loss": zero_loss(engine)}
                else:
                    losses = micro_loss(engine, item, cfg, context_pass, vision_grad=mllm_trained)
                loss = losses["loss"]
                stop_if_not_finite(loss, step + 1, rank, world, device, out, last_saved)
                engine.backward(loss)
                engine.step()
                for key, value in losses.items():
                    parts[key] = parts.get(key, 0.0) + float(value.detach()) / (len(items) * cfg.num_iterations)
        timings["train"] = time.perf_counter() - start
        done = step + 1
        bar.update(1)
        scored = [it for it in items if it is not None]
        throughput.add(sum(len(it.rewards) for it in scored))
        if done % cfg.log_every == 0 or done == steps:
            values = step_statistics(scored, world, device)
            values.update({k: all_mean(v, world, device) for k, v in parts.items()})
            grad_norm = engine.get_global_grad_norm()
            values.update(lr=step_lr, grad_norm=float(grad_norm) if grad_norm is not None else math.nan,
                          samples_per_s=all_mean(throughput.rate(), world, device) * world,
                          **{f"time_{k}": all_mean(v, world, device) for k, v in timings.items()})
            throughput.reset()
            curves.log(done, values)
            bar.set_postfix(reward=f"{values['reward']:.3f}", kl=f"{values.get('kl', 0.0):.4f}")
            if args.no_progress and rank == 0:
                log.info("step %d/%d reward %.4f (%s) mask IoU %.3f box IoU %.3f kl %.4g clip %.3f len %.1f "
                         "loss %.4f seg %.4f", done, steps, values["reward"],
                         ", ".join(f"{k} {values['reward_' + k]:.3f}" for k in weights), values["mask_iou"],
                         values["box_iou"], values.get("kl", 0.0), values.get("clip_fraction", 0.0),
                         values["completion_length"], values["loss"], values.get("seg", 0.0))
        if val_records and (done % cfg.eval_every == 0 or done == steps):
            val = validate(lens, processor, val_records, cfg, rank, world, device, sampling, answer_format, engine)
            curves.log(done, val, prefix="val")
            if rank == 0:
                log.info("step %d validation (greedy): gIoU %.4f cIoU %.4f reward %.4f (%d samples)", done,
                         val["gIoU"], val["cIoU"], val["reward"], val["n"])
        if done % cfg.save_every == 0 and done != steps:
            save_checkpoint(engine, out, done, run_info, processor, rank, cfg.zero_stage, cfg.keep_last, "lens")
            last_saved = done
    bar.close()

    final_ckpt = save_checkpoint(engine, out, steps, run_info, processor, rank, cfg.zero_stage, cfg.keep_last, "lens")
    if rank == 0:
        shutil.copytree(final_ckpt / "model", out / "final", dirs_exist_ok=True)
        curves.close()
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        log.info("done: model in %s; curves in %s (lens plot-run %s)", out / "final", out / "curves.png", out)
    barrier(world)
    return 0


def step_statistics(items: list[ScoredRollout], world: int, device: torch.device) -> dict[str, float]:
    """Means over every answer of the step on all ranks (sums and counts are all-reduced)."""
    names = sorted({k for it in items for k in it.components})
    rows = [np.concatenate([it.rewards.numpy()[:, None]]
                           + [it.components[k][:, None] for k in names]
                           + [it.mask_iou[:, None], it.box_iou[:, None],
                              it.rollout.completion_mask.sum(1).cpu().numpy()[:, None],
                              it.rollout.truncated.cpu().numpy()[:, None],
                              it.rewards.view(-1, it.rollout.group_size).std(1).repeat_interleave(
                                  it.rollout.group_size).numpy()[:, None]], axis=1) for it in items]
    width = 1 + len(names) + 5
    block = np.concatenate(rows) if rows else np.zeros((0, width))
    sums = torch.tensor(np.append(block.sum(0), len(block)), dtype=torch.float64, device=device)
    sums = all_sum(sums, world)
    n = max(float(sums[-1]), 1.0)
    means = (sums[:-1] / n).tolist()
    keys = ["reward"] + [f"reward_{k}" for k in names] + ["mask_iou", "box_iou", "completion_length",
                                                          "truncated_fraction", "reward_group_std"]
    return dict(zip(keys, means))


@torch.no_grad()
def validate(lens, processor, records, cfg: GRPOConfig, rank: int, world: int, device, sampling: dict,
             answer_format: str, engine) -> dict:
    """Greedy answers on the validation prompts (one per prompt), sharded over ranks with equal forward
    counts; gIoU/cIoU from intersections and unions summed over ranks, and the mean reward."""
    mine = list(range(rank, len(records), world))
    rounds = math.ceil(len(records) / world)
    metrics, reward_sum, n_reward = SplitMetrics(), 0.0, 0
    greedy = dict(sampling, temperature=1.0, top_p=1.0, top_k=0)
    engine.eval()
    for k in range(rounds):
        real = k < len(mine)
        record = records[mine[k] if real else (mine[-1] if mine else 0)]
        prompts, _ = prepare_prompts([record], processor, lens.lens_config, cfg.max_prompt_length)
        if prompts is None:
            prompts, _ = prepare_prompts([records[0]], processor, lens.lens_config, cfg.max_prompt_length)
            real = False
        with gathered(engine.module, cfg.zero_stage):
            ro = generate_rollouts(lens, processor, prompts, 1, do_sample=False, **greedy)
        if real:
            sample = rollout_samples(prompts, ro, answer_format)
            metrics.add(score_sample(sample[0].pred_mask, sample[0].gt_mask))
            reward_sum += float(score(sample, dict(cfg.reward_weights))[0][0])
            n_reward += 1
    engine.train()
    lens.sam.image_encoder.eval()
    totals = all_sum(torch.tensor(np.append(metrics.to_array(), [reward_sum, n_reward]), dtype=torch.float64,
                                  device=device), world)
    summary = SplitMetrics.from_array(totals[:-2].cpu().numpy()).summary()
    return {"gIoU": summary["gIoU"], "cIoU": summary["cIoU"], "n": summary["n"],
            "reward": float(totals[-2] / max(float(totals[-1]), 1.0))}


if __name__ == "__main__":
    sys.exit(main())
