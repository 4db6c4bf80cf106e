"""Stage 1, alignment: train the context module (queries, connector, reduction, projection) with the MLLM and
SAM2 frozen, on teacher-forced answers, with dice + BCE (or focal) on the masks (paper Table A1; docs/design.md,
"Stage 1").

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
import sys
from contextlib import nullcontext

import torch

from lens_model.eval.metrics import score_sample
from lens_model.model.config import LensConfig, SamConfig
from lens_model.model.modeling import ContextInputs
from lens_model.model.sam import upsample_logits

from .config import AlignConfig
from .data import AlignExamples, Collator
from .engine import enable_activation_checkpointing, log_failed_samples, stage_main, zero_loss
from .grounding import NO_OBJECT, captured_attention, grounding_attention_loss, with_context_queries
from .losses import mask_loss
from .policy import sequence_logprobs
from .runner import Run, StepResult, TrainingStage, freeze_all_but, run_stage, sharded_validation
from .vocab import trains_language_model

log = logging.getLogger("training.align")


# ---------------------------------------------------------------------------- model
def build_model(cfg: AlignConfig, dtype: torch.dtype):
    """-> (LensModel, processor): continue from a LENS checkpoint, or base MLLM + SAM2 .pt + new context module."""
    from lens_model.model.checkpoint import build_from_base, load_model

    if cfg.init_from:
        model, processor = load_model(cfg.init_from, dtype=dtype)
        if model.context.num_queries != cfg.num_queries:
            log.info(
                "init_from has %d context queries (num_queries=%d applies only to new models)",
                model.context.num_queries,
                cfg.num_queries,
            )
        model.lens_config.context_pass = cfg.context_pass
    else:
        lens_config = LensConfig(
            num_queries=cfg.num_queries,
            context_pass=cfg.context_pass,
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            sam=SamConfig(config_name=cfg.sam_config, overrides=list(cfg.sam_overrides), image_size=cfg.sam_image_size),
        )
        model, processor = build_from_base(cfg.base_mllm, cfg.sam_checkpoint, lens_config, dtype=dtype)
    return model, processor


# ---------------------------------------------------------------------------- one micro-batch
def engine_forward(engine, batch: dict, device: torch.device, **options) -> tuple[torch.Tensor, ...]:
    """Teacher-forced forward of a collated batch through the engine (`LensModel.forward` with `options`): low-res
    mask logits (B, 1, S/4, S/4), IoU predictions (B, 1) [, query states (B, N, hidden)]. The query positions are
    the model's own (those of the context pass it is trained for)."""
    return engine(
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["mm_token_type_ids"].to(device),
        batch["pixel_values"].to(device),
        batch["image_grid_thw"].to(device),
        batch["sam_images"].to(device),
        **options,
    )


def mask_logits(engine, batch: dict, device: torch.device) -> torch.Tensor:
    """Teacher-forced low-res mask logits (B, 1, S/4, S/4) of a collated batch, without autograd through the MLLM
    and the SAM2 image encoder (validation, benchmarks)."""
    return engine_forward(engine, batch, device)[0]


def answer_lm_loss(lens, batch: dict, device: torch.device) -> torch.Tensor:
    """Mean next-token cross-entropy of the answer tokens (GT answer + end of turn) under the M-RoPE positions
    that generation uses: teaches an MLLM that cannot write the answer format yet (a tiny one from scratch) to
    write it. Not in the paper's stage 1, whose released base MLLM already writes it (AlignConfig.lm_weight).
    A second MLLM pass (the mask pass may use 1-D positions); ZeRO-3 gathers its weights through the submodules'
    own hooks (run here with ZeRO-2 in one process)."""
    ctx = ContextInputs(
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["mm_token_type_ids"].to(device),
        batch["image_grid_thw"].to(device),
    )
    image_outputs = lens.encode_mllm_images(batch["pixel_values"].to(device, lens.dtype), ctx.image_grid_thw)
    answer = batch["answer_mask"].to(device)  # (B, L) True on answer tokens; left padding puts them at row ends
    start = int(answer.float().argmax(dim=1).min())
    logp, _ = sequence_logprobs(lens.mllm, ctx, image_outputs, start, temperature=1.0)  # (B, L - start)
    weights = answer[:, start:].to(logp.dtype)
    return -(logp * weights).sum() / weights.sum()


def expression_token_loss(
    lm_head: torch.nn.Module, query_states: torch.Tensor, expression_ids: torch.Tensor, expression_mask: torch.Tensor
) -> torch.Tensor:
    """−mean log p(expression token | query state): every query state (B, N, hidden) through the MLLM's own
    lm_head -> log-softmax over the vocabulary, averaged over the sample's expression tokens (B, E; mask True on
    real ones) and the N queries, then over the batch. The target is spread over the expression's tokens, so the
    states must say which words were asked about. Not in the paper (AlignConfig.expression_weight)."""
    logp = torch.log_softmax(lm_head(query_states).float(), dim=-1)  # (B, N, V)
    b, n, _ = logp.shape
    picked = logp.gather(-1, expression_ids[:, None, :].expand(b, n, -1))  # (B, N, E)
    weights = expression_mask[:, None, :].to(picked.dtype)  # (B, 1, E)
    per_sample = -(picked * weights).sum(dim=(1, 2)) / (weights.sum(dim=(1, 2)) * n)  # (B,)
    return per_sample.mean()


def forward_loss(engine, lens, batch: dict, cfg: AlignConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Mask loss of a collated batch (+ lm_weight × the answer's language-modelling loss, + grounding_weight × the
    grounding-attention loss, + expression_weight × the expression-token loss of the query states, when those
    weights are > 0)."""
    grads = dict(mllm_grad=trains_language_model(cfg.trainable), sam_encoder_grad="sam_image_encoder" in cfg.trainable)
    grounding = cfg.grounding_weight > 0

    def attention_of_the_pass():  # the grounded layer's attention, captured only when grounding attention is on
        return captured_attention(lens.mllm, cfg.grounding_layer) if grounding else nullcontext({})

    with attention_of_the_pass() as mask_pass:
        low_res, _, states = engine_forward(engine, batch, device, return_query_states=True, **grads)
    losses = mask_loss(
        low_res,
        [m.to(device) for m in batch["gt_masks"]],
        dice_weight=cfg.dice_weight,
        pixel_weight=cfg.pixel_weight,
        pixel_loss=cfg.pixel_loss,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )
    if cfg.lm_weight > 0:
        with attention_of_the_pass() as attention:
            losses["lm"] = answer_lm_loss(lens, batch, device)
        losses["loss"] = losses["loss"] + cfg.lm_weight * losses["lm"]
    if grounding:  # the answer's tokens in the answer pass, the context queries in the mask pass
        queries, keys = batch["grounding_queries"].to(device), batch["grounding_keys"].to(device)
        answer = grounding_attention_loss(attention["weights"], queries, keys, cfg.grounding_heads)
        no_answer = torch.full_like(queries, NO_OBJECT)
        query_labels, query_keys = with_context_queries(no_answer, keys, states.shape[1])
        context = grounding_attention_loss(mask_pass["weights"], query_labels, query_keys, cfg.grounding_heads)
        losses["grounding"] = (answer + context) / 2
        losses["loss"] = losses["loss"] + cfg.grounding_weight * losses["grounding"]
    if cfg.expression_weight > 0:
        ids, words = batch["expression_ids"].to(device), batch["expression_mask"].to(device)
        losses["expression"] = expression_token_loss(lens.mllm.lm_head, states, ids, words)
        losses["loss"] = losses["loss"] + cfg.expression_weight * losses["expression"]
    return losses


# ---------------------------------------------------------------------------- the stage
class AlignStage(TrainingStage):
    name = "align"
    config_class = AlignConfig
    curves_file = "loss.png"
    log = log

    def build(self, run: Run):
        cfg = run.cfg
        self.lens, self.processor = build_model(cfg, run.dtype)
        counts = freeze_all_but(self.lens, cfg.trainable)
        if cfg.grounding_weight > 0:  # the grounding loss reads attention probabilities, which sdpa does not return
            self.lens.mllm.set_attn_implementation("eager")
        if trains_language_model(cfg.trainable) and cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.lens.mllm)
        self.lens.to(run.device)
        return self.lens, counts

    def init_info(self, cfg: AlignConfig) -> dict:
        return (
            {"init_from": cfg.init_from}
            if cfg.init_from
            else {"base_mllm": cfg.base_mllm, "sam_checkpoint": cfg.sam_checkpoint}
        )

    def describe(self, run: Run, counts: dict[str, int], num_samples: int) -> str:
        frozen = sum(p.numel() for p in self.lens.parameters() if not p.requires_grad)
        return (
            f"training {', '.join(f'{k} {v / 1e6:.2f}M' for k, v in counts.items())} "
            f"({sum(counts.values()) / 1e6:.2f}M trainable parameters), {frozen / 1e6:.2f}M frozen; {run.world} "
            f"ranks × {run.per_device} per device × {run.accum} accumulation = global batch "
            f"{run.cfg.global_batch_size}; {num_samples} samples, {run.steps} steps"
            + (f", resuming at step {run.start_step}" if run.start_step else "")
        )

    def train_mode(self, run: Run) -> None:
        """The context module trains; SAM2 stays in eval mode, as in the released stage 1 (its SAM2 is built in
        eval mode and never switched): the mask decoder's eval-time stability fallback (single-mask output
        replaced by the most stable multimask output) is on while the queries learn to prompt it."""
        super().train_mode(run)
        self.lens.sam.eval()

    def after_engine(self, run: Run, datasets: list, val_records: list) -> None:
        """This rank's samples for steps [start_step, steps), in order; the validation examples."""
        cfg = run.cfg
        max_length = cfg.max_prompt_length + cfg.max_completion_length
        train_set = AlignExamples(
            datasets,
            run.sample_positions(datasets),
            self.processor,
            self.lens.lens_config,
            max_length,
            rationales=[spec.rationale for spec in cfg.datasets],
            rationale_kinds=[spec.rationale_kinds for spec in cfg.datasets],
        )
        self.collate = Collator(self.processor.tokenizer.pad_token_id)
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=run.per_device,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        self.batches = iter(loader)
        self.val_set = (
            AlignExamples(
                [val_records],
                [(0, i) for i in range(len(val_records))],
                self.processor,
                self.lens.lens_config,
                max_length,
            )
            if val_records
            else None
        )

    def step(self, run: Run, step: int) -> StepResult:
        parts = {"loss": 0.0, "dice": 0.0, "pixel": 0.0}
        parts |= {"lm": 0.0} if run.cfg.lm_weight > 0 else {}
        parts |= {"expression": 0.0} if run.cfg.expression_weight > 0 else {}
        parts |= {"grounding": 0.0} if run.cfg.grounding_weight > 0 else {}
        samples = 0
        for _ in range(run.accum):
            batch = next(self.batches)
            log_failed_samples(run.failed_log, step + 1, batch["failed"])
            if batch["size"]:
                losses = forward_loss(run.engine, self.lens, batch, run.cfg, run.device)
                loss = losses["loss"]
            else:
                losses, loss = {}, zero_loss(run.engine)
            run.update(loss, step, batch["size"])
            for key in parts:
                parts[key] += float(losses[key].detach()) / run.accum if key in losses else 0.0
            samples += batch["size"]
        return StepResult(parts, samples)

    def report(self, run: Run, done: int, values: dict[str, float]) -> tuple[dict[str, str], str]:
        postfix = dict(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", sps=f"{values['samples_per_s']:.1f}")
        lm = f", answer lm {values['lm']:.4f}" if "lm" in values else ""
        lm += f", expression {values['expression']:.4f}" if "expression" in values else ""
        lm += f", grounding {values['grounding']:.4f}" if "grounding" in values else ""
        line = (
            f"step {done}/{run.steps} loss {values['loss']:.4f} (dice {values['dice']:.4f}, {run.cfg.pixel_loss} "
            f"{values['pixel']:.4f}{lm}) lr {values['lr']:.3g} grad-norm {values['grad_norm']:.3g} "
            f"{values['samples_per_s']:.1f} samples/s"
        )
        return postfix, line

    def has_validation(self) -> bool:
        return self.val_set is not None and len(self.val_set) > 0

    @torch.no_grad()
    def validate(self, run: Run) -> dict:
        """Teacher-forced validation (GT answer in context, as in training), sharded over ranks; samples whose
        example cannot be built count as failed."""
        val_set = self.val_set

        def score_one(index: int, real: bool):
            batch = self.collate([val_set[index]])
            failed = 0
            if batch["size"] == 0:
                failed = int(real)
                batch = self.collate([val_set[0]])  # something to forward so the collective calls line up
                real = False
            low_res = mask_logits(run.engine, batch, run.device)
            if not real:
                return None, [failed]
            gt = batch["gt_masks"][0].numpy()
            pred = (upsample_logits(low_res, gt.shape)[0] > 0).cpu().numpy()
            return score_sample(pred, gt), [failed]

        summary, (failed,) = sharded_validation(len(val_set), run, score_one, 1)
        return {
            "gIoU": summary["gIoU"],
            "cIoU": summary["cIoU"],
            "P@0.5": summary["P@0.5"],
            "n": summary["n"],
            "failed": int(failed),
        }

    def report_validation(self, done: int, val: dict) -> str:
        return (
            f"step {done} validation: gIoU {val['gIoU']:.4f} cIoU {val['cIoU']:.4f} P@0.5 {val['P@0.5']:.4f} "
            f"({int(val['n'])} samples)"
        )

    def done_message(self, run: Run) -> str:
        final = run.out / "final"
        return (
            f"done: model in {final} (lens segment --model {final} --image IMAGE --prompt PROMPT); curves in "
            f"{run.out / 'metrics.jsonl'} and {run.out / 'tensorboard'}"
        )


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    return stage_main(
        argv, "python -m training.align", __doc__, "training/configs/align.yaml", "lr=1e-4 datasets.0.root=/data", train
    )


def train(args) -> int:
    return run_stage(AlignStage(), args)


if __name__ == "__main__":
    sys.exit(main())
