"""Stage 2, GRPO with unified rewards: sample G answers per prompt, reward each with format + box IoU² +
mask IoU² (weights configurable, custom rewards by name), group-normalise, and update the MLLM with the clipped
policy-gradient objective + β·KL(k3) to a frozen reference, plus λ·(dice + BCE/focal) on every answer's mask
(which trains the context module and SAM2's decoder) — paper Table A2; docs/design.md, "Stage 2".

    python -m training.grpo --config training/configs/grpo.yaml [key=value ...]
    torchrun --nproc_per_node 8 -m training.grpo --config ...   # or: deepspeed [--hostfile H] --module training.grpo
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m training.grpo ...   # CPU (tests)
    python -m training.grpo --config ... --resume                    # continue OUT/checkpoints/latest

Token log-probs are computed under the M-RoPE positions used when sampling, divided by the sampling temperature
(the released code used 1-D positions and no temperature; `compat: released` reproduces its objective exactly);
the context pass follows the checkpoint's mode. All G answers of a prompt stay on one rank,
so group statistics need no communication. Outputs as stage 1: config.yaml, metrics.jsonl, tensorboard/
(every reward component, KL, clip fraction, completion length, box/mask IoU, timings), curves.png,
checkpoints/step-*/, final/.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from lens_model.distributed import all_sum
from lens_model.errors import LensError
from lens_model.eval.metrics import score_sample
from lens_model.inference.generation import check_context_pass
from lens_model.model.modeling import ContextInputs, image_features_per_row

from .config import GRPOConfig
from .engine import enable_activation_checkpointing, gathered, log_failed_samples, stage_main, zero_loss
from .grpo_loss import group_advantages, grpo_loss
from .losses import mask_loss
from .policy import PolicyModel, sequence_logprobs
from .rewards import RolloutSample, resolve_reward, score
from .rollout import InProcessRollouts, PromptBatch, Rollout, RolloutSampler, completion_end_for, prepare_prompts
from .runner import Run, StepResult, TrainingStage, freeze_all_but, run_stage, sharded_validation
from .vocab import GROUNDED_BOX_IOU, trains_language_model

log = logging.getLogger("training.grpo")


# ---------------------------------------------------------------------------- models
def load_policy(cfg: GRPOConfig, dtype: torch.dtype):
    from lens_model.model.checkpoint import load_model

    lens, processor = load_model(
        cfg.init_from, dtype=dtype, context_pass=cfg.context_pass, answer_format=cfg.answer_format
    )
    return lens, processor


def load_reference(cfg: GRPOConfig, dtype: torch.dtype, device: torch.device, zero_stage: int):
    """The frozen reference policy: only its Qwen-VL part (the KL term needs token log-probs, not masks).
    No optimizer state; under ZeRO-3 its weights are partitioned across ranks like the policy's."""
    if cfg.beta == 0:
        return None
    from lens_model.model.checkpoint import load_model

    reference, _ = load_model(cfg.reference or cfg.init_from, dtype=dtype, load_processor=False)
    mllm = reference.mllm.requires_grad_(False).eval()
    del reference
    if zero_stage == 3:
        import deepspeed

        ds = {
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": 3},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
        }
        return deepspeed.initialize(model=mllm, config=ds)[0].module
    return mllm.to(device)


# ---------------------------------------------------------------------------- released-compatible objective
@dataclass(frozen=True)
class LogprobSetup:
    """How the GRPO step takes token log-probs (docs/design.md, "Stage 2")."""

    policy_positions: str  # "mrope" (the sampling positions) | "1d"
    reference_positions: str
    temperature: float  # logits are divided by it (1.0: not divided)


def logprob_setup(cfg: GRPOConfig) -> LogprobSetup:
    """lens: the sampling distribution for both policies. released: the policy's pass gets only embeddings (1-D
    positions), the reference (a plain Qwen-VL called with token ids) gets M-RoPE, and neither divides by the
    temperature — so the KL is not 0 at step 1 even with identical weights."""
    if cfg.compat == "released":
        return LogprobSetup("1d", "mrope", 1.0)
    return LogprobSetup("mrope", "mrope", cfg.temperature)


def released_gt_box(box):
    """The released dataset writes the GT box in the MLLM image's pixels rounded to integers (Python's round)."""
    return None if box is None else tuple(float(round(v)) for v in box)


# ---------------------------------------------------------------------------- one micro-batch
@dataclass
class ScoredRollout:
    prompts: PromptBatch
    rollout: Rollout
    rewards: torch.Tensor  # (K·G,)
    components: dict[str, np.ndarray]  # reward name -> (K·G,)
    advantages: torch.Tensor  # (K·G,)
    mask_iou: np.ndarray  # (K·G,)
    box_iou: np.ndarray  # (K·G,)
    old_logp: torch.Tensor | None = None  # (K·G, T) when the rollout feeds several updates
    ref_logp: torch.Tensor | None = None


def rollout_samples(
    prompts: PromptBatch, rollout: Rollout, answer_format: str, round_gt_boxes: bool = False
) -> list[RolloutSample]:
    """One RolloutSample per answer, carrying the rollout's parsed answer (parsed once, when sampled).
    `round_gt_boxes`: GT boxes rounded to integers, as the released dataset wrote them (`compat: released`)."""
    rows = rollout.rows.tolist()
    return [
        RolloutSample(
            text=rollout.texts[r],
            answer_format=answer_format,
            gt_box=released_gt_box(prompts.gt_boxes_llm[i]) if round_gt_boxes else prompts.gt_boxes_llm[i],
            gt_mask=prompts.gt_masks[i],
            pred_mask=rollout.pred_masks[r],
            expression=prompts.records[i].expression,
            answer=rollout.answers[r],
        )
        for r, i in enumerate(rows)
    ]


def rollout_ious(samples: list[RolloutSample]) -> tuple[np.ndarray, np.ndarray]:
    """Plain mask IoU and box IoU of each answer (logged; the rewards are their squares by default)."""
    boxes = [0.0 if s.box_iou is None else s.box_iou for s in samples]
    return np.asarray([s.mask_iou for s in samples]), np.asarray(boxes)


def reference_logp(
    reference, ro: Rollout, prompts: PromptBatch, temperature: float, positions: str = "mrope"
) -> torch.Tensor:
    """(K·G, T) log-probs of the sampled tokens under the frozen reference policy (`LogprobSetup`'s
    temperature and reference positions)."""
    device = ro.sequences.device
    grid = prompts.image_grid_thw.to(device)
    with torch.no_grad():
        images = image_features_per_row(reference, prompts.pixel_values.to(device, reference.dtype), grid, ro.rows)
        ctx = ContextInputs(ro.sequences, ro.attention_mask, ro.mm_token_type_ids, grid[ro.rows])
        return sequence_logprobs(reference, ctx, images, ro.prompt_length, temperature, positions=positions)[0]


def policy_forward(engine, item: ScoredRollout, setup: LogprobSetup, vision_grad: bool):
    ro, prompts, device = item.rollout, item.prompts, item.rollout.sequences.device
    return engine(
        ro.sequences,
        ro.attention_mask,
        ro.mm_token_type_ids,
        prompts.pixel_values.to(device),
        prompts.image_grid_thw.to(device),
        ro.rows,
        ro.prompt_length,
        ro.sam_features,
        setup.temperature,
        vision_grad=vision_grad,
        logp_positions=setup.policy_positions,
    )


def seg_loss_answers(item: ScoredRollout, rule: str) -> list[int]:
    """Indices of the answers whose masks the segmentation loss trains on: every answer (`all`) or those whose
    box hits the GT box (`grounded`, box IoU >= GROUNDED_BOX_IOU)."""
    if rule == "all":
        return list(range(len(item.box_iou)))
    return np.flatnonzero(item.box_iou >= GROUNDED_BOX_IOU).tolist()


def segmentation_loss(low_res: torch.Tensor, item: ScoredRollout, cfg: GRPOConfig) -> dict:
    """The mask loss of the chosen answers' low-res logits (K·G, 1, h, w) against their prompts' GT masks; zero
    (still attached to the graph, so every rank's backward matches) when no answer is chosen."""
    chosen = seg_loss_answers(item, cfg.seg_loss_answers)
    if not chosen:
        zero = low_res.sum() * 0.0
        return {"loss": zero, "dice": zero.detach(), "pixel": zero.detach()}
    rows = item.rollout.rows.tolist()
    gt = [torch.from_numpy(item.prompts.gt_masks[rows[r]]).to(low_res.device) for r in chosen]
    return mask_loss(
        low_res[chosen],
        gt,
        dice_weight=cfg.dice_weight,
        pixel_weight=cfg.pixel_weight,
        pixel_loss=cfg.pixel_loss,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )


def micro_loss(
    engine, item: ScoredRollout, cfg: GRPOConfig, context_pass: str | None = None, vision_grad: bool = True
) -> dict:
    """One scored micro-batch -> GRPO + segmentation losses. `context_pass`, when given, must be the policy's
    own (the model decides its context pass)."""
    check_context_pass(getattr(engine, "module", engine).lens, context_pass)
    logp, low_res = policy_forward(engine, item, logprob_setup(cfg), vision_grad)
    ro = item.rollout
    mask = ro.completion_mask.to(logp.dtype)
    old = item.old_logp if item.old_logp is not None else logp.detach()
    policy = grpo_loss(
        logp,
        old,
        item.ref_logp,
        item.advantages.to(logp.device),
        mask,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        beta=cfg.beta,
        aggregation=cfg.loss_aggregation,
    )
    seg = segmentation_loss(low_res, item, cfg)
    total = policy["loss"] + cfg.seg_loss_weight * seg["loss"]
    return {
        "loss": total,
        "policy": policy["policy"],
        "kl": policy["kl"],
        "clip_fraction": policy["clip_fraction"],
        "seg": seg["loss"],
        "dice": seg["dice"],
        "pixel": seg["pixel"],
    }


def score_rollout(prompts: PromptBatch, ro: Rollout, cfg: GRPOConfig, answer_format: str) -> ScoredRollout:
    """Rewards, group-normalised advantages and the logged IoUs of one micro-batch's answers."""
    samples = rollout_samples(prompts, ro, answer_format, round_gt_boxes=cfg.compat == "released")
    total, components = score(samples, dict(cfg.reward_weights))
    rewards = torch.as_tensor(total, dtype=torch.float32)
    advantages = group_advantages(rewards, cfg.num_generations, eps=cfg.advantage_eps, scale=cfg.scale_advantages)
    mask_ious, box_ious = rollout_ious(samples)
    return ScoredRollout(prompts, ro, rewards, components, advantages, mask_ious, box_ious)


def group_signal(rewards: torch.Tensor, advantages: torch.Tensor, group_size: int) -> np.ndarray:
    """(K·G, 3) per answer: its group's reward std (unbiased), 1 when every reward of its group is the same (the
    group carries no preference: its advantages are 0), and |advantage|. Averaged over answers these are the mean
    within-group spread, the fraction of such groups (all groups have G answers) and the mean advantage size."""
    grouped = rewards.view(-1, group_size)  # (K, G)
    spread = grouped.std(1).repeat_interleave(group_size)  # (K·G,)
    equal = (grouped == grouped[:, :1]).all(1).to(rewards.dtype).repeat_interleave(group_size)
    return torch.stack([spread, equal, advantages.abs().to(rewards.dtype)], 1).numpy()


def step_statistics(items: list[ScoredRollout], world: int, device: torch.device) -> dict[str, float]:
    """Means over every answer of the step on all ranks (sums and counts are all-reduced): rewards and each
    component, IoUs, lengths, and how much preference the groups carry (`group_signal`)."""
    names = sorted({k for it in items for k in it.components})
    rows = [
        np.concatenate(
            [it.rewards.numpy()[:, None]]
            + [it.components[k][:, None] for k in names]
            + [
                it.mask_iou[:, None],
                it.box_iou[:, None],
                it.rollout.completion_mask.sum(1).cpu().numpy()[:, None],
                it.rollout.truncated.cpu().numpy()[:, None],
                group_signal(it.rewards, it.advantages, it.rollout.group_size),
            ],
            axis=1,
        )
        for it in items
    ]
    width = 1 + len(names) + 7
    block = np.concatenate(rows) if rows else np.zeros((0, width))
    sums = torch.tensor(np.append(block.sum(0), len(block)), dtype=torch.float64, device=device)
    sums = all_sum(sums, world)
    n = max(float(sums[-1]), 1.0)
    means = (sums[:-1] / n).tolist()
    keys = (
        ["reward"]
        + [f"reward_{k}" for k in names]
        + ["mask_iou", "box_iou", "completion_length", "truncated_fraction"]
        + ["reward_group_std", "equal_reward_groups", "advantage_abs"]
    )
    return dict(zip(keys, means))


# ---------------------------------------------------------------------------- the stage
class GRPOStage(TrainingStage):
    name = "grpo"
    config_class = GRPOConfig
    curves_file = "curves.png"
    lens_attr = "lens"
    log = log

    def check(self, cfg: GRPOConfig) -> None:
        for name in cfg.reward_weights:  # unknown reward names fail before anything heavy starts
            resolve_reward(name)

    def build(self, run: Run):
        cfg = run.cfg
        self.lens, self.processor = load_policy(cfg, run.dtype)
        if cfg.compat == "released" and self.lens.lens_config.context_pass != "official":
            raise LensError(
                f"compat: released needs an official-mode model (1-D query positions, as the released trainer); "
                f"{cfg.init_from} runs context_pass {self.lens.lens_config.context_pass!r} (set context_pass=official)"
            )
        counts = freeze_all_but(self.lens, cfg.trainable)
        self.lens.sam.image_encoder.requires_grad_(False)  # never trained: its embeddings come from the rollout
        self.mllm_trained = trains_language_model(cfg.trainable)
        self.vision_trained = "mllm" in cfg.trainable  # mllm_language leaves the vision encoder as it is
        if self.mllm_trained and cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.lens.mllm)
        self.lens.to(run.device)
        return PolicyModel(self.lens), counts

    def init_info(self, cfg: GRPOConfig) -> dict:
        return {"init_from": cfg.init_from}

    def describe(self, run: Run, counts: dict[str, int], num_samples: int) -> str:
        cfg, config = run.cfg, self.lens.lens_config
        return (
            f"GRPO on {', '.join(f'{k} {v / 1e6:.2f}M' for k, v in counts.items())} ({cfg.init_from}; context pass "
            f"{config.context_pass}, answers {config.prompt.answer_format}); {run.world} ranks × {run.per_device} "
            f"prompts × {run.accum} accumulation = {cfg.global_batch_size} prompts × G={cfg.num_generations} "
            f"answers per step; {run.steps} steps" + (f", resuming at step {run.start_step}" if run.start_step else "")
        )

    def updates_per_step(self, cfg: GRPOConfig) -> int:
        return cfg.num_iterations  # num_iterations optimizer updates per step: the schedule counts updates

    def before_engine(self, run: Run) -> None:
        if run.cfg.rollout_backend == "vllm":  # the engine takes the full weights before ZeRO-3 partitions them
            from .vllm_rollout import VLLMRollouts

            self.sampler: RolloutSampler = VLLMRollouts(run.cfg, self.lens, self.processor, run.device)

    def after_engine(self, run: Run, datasets: list, val_records: list) -> None:
        cfg = run.cfg
        self.reference = load_reference(cfg, run.dtype, run.device, cfg.zero_stage)

        def gather():
            return gathered(run.engine.module, cfg.zero_stage)

        if cfg.rollout_backend != "vllm":
            self.sampler = InProcessRollouts(
                self.lens,
                self.processor,
                max_new_tokens=cfg.max_completion_length,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                gather=gather,
                completion_end=completion_end_for(cfg.compat),
            )
        self.greedy = InProcessRollouts(
            self.lens, self.processor, max_new_tokens=cfg.max_completion_length, do_sample=False, gather=gather
        )
        self.datasets, self.val_records = datasets, val_records
        self.positions = run.sample_positions(datasets)
        self.cursor = 0

    def rollout(self, run: Run, step: int) -> tuple[ScoredRollout | None, dict[str, float]]:
        """The next micro-batch's prompts -> sampled, scored answers (None when none of its samples loads)."""
        cfg, times = run.cfg, {"generate": 0.0, "context_sam": 0.0, "rewards": 0.0}
        records = [self.datasets[k][i] for k, i in self.positions[self.cursor : self.cursor + run.per_device]]
        self.cursor += run.per_device
        prompts, failed = prepare_prompts(records, self.processor, self.lens.lens_config, cfg.max_prompt_length)
        log_failed_samples(run.failed_log, step + 1, failed)
        if prompts is None:
            return None, times
        # generate in eval mode (activation checkpointing would switch the KV cache off), but keep SAM2's
        # decoder in train mode so the rewarded masks are the ones the mask loss trains (single-mask token,
        # no eval-time stability fallback), as in the released training
        run.engine.eval()
        self.lens.sam.sam_mask_decoder.train()
        ro = self.sampler.generate(prompts, cfg.num_generations)
        self.train_mode(run)
        times["generate"] += ro.timings.get("generate", 0.0)
        times["context_sam"] += ro.timings.get("context_sam", 0.0)
        start = time.perf_counter()
        item = score_rollout(prompts, ro, cfg, self.lens.lens_config.prompt.answer_format)
        if self.reference is not None:
            setup = logprob_setup(cfg)
            item.ref_logp = reference_logp(self.reference, ro, prompts, setup.temperature, setup.reference_positions)
        if cfg.num_iterations > 1:
            with torch.no_grad():
                item.old_logp = policy_forward(run.engine, item, logprob_setup(cfg), False)[0].detach()
        times["rewards"] += time.perf_counter() - start
        return item, times

    def step(self, run: Run, step: int) -> StepResult:
        cfg = run.cfg
        # Sampling randomness is a function of (seed, step, rank): a resumed run draws the same answers.
        torch.manual_seed(cfg.seed * 1_000_003 + step * run.world + run.rank)
        self.sampler.policy_version = step  # weights change once per step (vLLM syncs them once)
        timings = {"generate": 0.0, "context_sam": 0.0, "rewards": 0.0, "train": 0.0}
        items: list[ScoredRollout | None] = []
        for _ in range(run.accum):  # ---- rollouts of every micro-batch of this step
            item, times = self.rollout(run, step)
            for key, value in times.items():
                timings[key] += value
            items.append(item)
        start = time.perf_counter()
        parts: dict[str, float] = {}
        for _ in range(cfg.num_iterations):  # ---- updates (one optimizer step per pass over the micro-batches)
            for item in items:
                if item is None:
                    losses = {"loss": zero_loss(run.engine)}
                else:
                    losses = micro_loss(run.engine, item, cfg, vision_grad=self.vision_trained)
                run.update(losses["loss"], step, 0 if item is None else len(item.rewards))
                for key, value in losses.items():
                    parts[key] = parts.get(key, 0.0) + float(value.detach()) / (len(items) * cfg.num_iterations)
        timings["train"] = time.perf_counter() - start
        self.scored = [it for it in items if it is not None]
        return StepResult(parts, sum(len(it.rewards) for it in self.scored), timings)

    def statistics(self, run: Run, result: StepResult) -> dict[str, float]:
        return step_statistics(self.scored, run.world, run.device)

    def report(self, run: Run, done: int, values: dict[str, float]) -> tuple[dict[str, str], str]:
        postfix = dict(reward=f"{values['reward']:.3f}", kl=f"{values.get('kl', 0.0):.4f}")
        names = ", ".join(f"{k} {values['reward_' + k]:.3f}" for k in run.cfg.reward_weights)
        line = (
            f"step {done}/{run.steps} reward {values['reward']:.4f} ({names}) mask IoU {values['mask_iou']:.3f} "
            f"box IoU {values['box_iou']:.3f} kl {values.get('kl', 0.0):.4g} clip "
            f"{values.get('clip_fraction', 0.0):.3f} len {values['completion_length']:.1f} loss "
            f"{values['loss']:.4f} seg {values.get('seg', 0.0):.4f} group spread {values['reward_group_std']:.3f} "
            f"equal groups {values['equal_reward_groups']:.2f} |adv| {values['advantage_abs']:.3f}"
        )
        return postfix, line

    def has_validation(self) -> bool:
        return bool(self.val_records)

    @torch.no_grad()
    def validate(self, run: Run) -> dict:
        """Greedy answers on the validation prompts (one per prompt), sharded over ranks; gIoU/cIoU from
        intersections and unions summed over ranks, and the mean reward."""
        cfg, records = run.cfg, self.val_records
        answer_format = self.lens.lens_config.prompt.answer_format

        def score_one(index: int, real: bool):
            prompts, _ = prepare_prompts([records[index]], self.processor, self.lens.lens_config, cfg.max_prompt_length)
            if prompts is None:
                prompts, _ = prepare_prompts([records[0]], self.processor, self.lens.lens_config, cfg.max_prompt_length)
                real = False
            ro = self.greedy.generate(prompts, 1)
            if not real:
                return None, [0.0, 0.0]
            sample = rollout_samples(prompts, ro, answer_format)
            reward = float(score(sample, dict(cfg.reward_weights))[0][0])
            return score_sample(sample[0].pred_mask, sample[0].gt_mask), [reward, 1.0]

        summary, (reward_sum, n_reward) = sharded_validation(len(records), run, score_one, 2)
        return {
            "gIoU": summary["gIoU"],
            "cIoU": summary["cIoU"],
            "n": summary["n"],
            "reward": float(reward_sum / max(float(n_reward), 1.0)),
        }

    def report_validation(self, done: int, val: dict) -> str:
        return (
            f"step {done} validation (greedy): gIoU {val['gIoU']:.4f} cIoU {val['cIoU']:.4f} reward "
            f"{val['reward']:.4f} ({int(val['n'])} samples)"
        )

    def done_message(self, run: Run) -> str:
        return f"done: model in {run.out / 'final'}; curves in {run.out / 'curves.png'} (lens plot-run {run.out})"


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    return stage_main(
        argv, "python -m training.grpo", __doc__, "training/configs/grpo.yaml", "beta=0 num_generations=4", train
    )


def train(args) -> int:
    return run_stage(GRPOStage(), args)


if __name__ == "__main__":
    sys.exit(main())
