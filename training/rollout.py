"""GRPO rollouts: G sampled answers per prompt in one batched `generate`, and the mask of each answer.

For K prompts (one image each) of a micro-batch, each prompt repeated G times (K·G rows), the shared step
`lens_model.inference.generation.generate_and_segment` runs: vision encoder once per image, sampling with a KV cache,
the checkpoint's context pass, SAM2 image encoder once per image, masks at each image's original size.
Everything here runs without autograd; the training forward recomputes what needs gradients.

A sampler is anything with `generate(prompts: PromptBatch, group_size: int) -> Rollout` (`RolloutSampler`):
`InProcessRollouts` here (transformers' `generate`) and `training.vllm_rollout.VLLMRollouts`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from lens_model.data import Record
from lens_model.errors import LensError
from lens_model.inference.answer import ParsedAnswer, rescale_box
from lens_model.inference.generation import (
    Completions,
    GenerationOutput,
    PromptRows,
    check_context_pass,
    generate_and_segment,
)
from lens_model.inference.prompting import build_chat, mllm_image, special_token_ids
from lens_model.inference.timing import StageTimer
from lens_model.model.config import LensConfig
from lens_model.model.modeling import LensModel
from lens_model.model.sam import SamImageFeatures, preprocess_for_sam

from .data import load_sample


@dataclass
class PromptBatch:
    """K prompts with their images and targets (prompt ids left-padded to P)."""

    records: list[Record]
    input_ids: torch.Tensor  # (K, P)
    attention_mask: torch.Tensor  # (K, P)
    mm_token_type_ids: torch.Tensor  # (K, P)
    pixel_values: torch.Tensor  # (patches of all K images, C·T·p·p)
    image_grid_thw: torch.Tensor  # (K, 3)
    sam_images: torch.Tensor  # (K, 3, S, S)
    gt_masks: list[np.ndarray]  # K × (H_k, W_k) bool
    gt_boxes_llm: list[tuple[float, float, float, float] | None]  # GT boxes in each MLLM image's pixels
    mllm_sizes: list[tuple[int, int]]  # (h, w) of each MLLM image

    def __len__(self) -> int:
        return len(self.records)


def prepare_prompts(
    records: list[Record], processor, lens_config: LensConfig, max_prompt_length: int
) -> tuple[PromptBatch | None, list[tuple[str, str]]]:
    """Records -> PromptBatch of the usable ones, and (sample_id, error) for the others."""
    chats, images, rgbs, masks, boxes, sizes, kept, failed = [], [], [], [], [], [], [], []
    for record in records:
        try:
            rgb, mask = load_sample(record)
            llm = mllm_image(rgb, lens_config)
        except (LensError, ValueError, OSError) as exc:
            failed.append((record.sample_id, f"{record.dataset}/{record.sample_id}: {exc}"))
            continue
        chats.append(build_chat(processor, lens_config.prompt, record.expression))
        images.append(llm)
        rgbs.append(rgb)
        masks.append(mask)
        boxes.append(None if record.box is None else rescale_box(record.box, rgb.shape[:2], (llm.height, llm.width)))
        sizes.append((llm.height, llm.width))
        kept.append(record)
    if not kept:
        return None, failed
    processor.tokenizer.padding_side = "left"  # generation continues every row from its last column
    enc = processor(text=chats, images=images, padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    too_long = [i for i, n in enumerate(lengths.tolist()) if n > max_prompt_length]
    if too_long:  # rare: drop them and re-encode the rest
        for i in too_long:
            failed.append(
                (
                    kept[i].sample_id,
                    f"{kept[i].sample_id}: prompt of {int(lengths[i])} tokens exceeds "
                    f"max_prompt_length={max_prompt_length}",
                )
            )
        keep = [i for i in range(len(kept)) if i not in too_long]
        batch, more = prepare_prompts([kept[i] for i in keep], processor, lens_config, max_prompt_length)
        return batch, failed + more
    sam_size = lens_config.sam.image_size
    return PromptBatch(
        kept,
        enc["input_ids"],
        enc["attention_mask"],
        enc["mm_token_type_ids"],
        enc["pixel_values"],
        enc["image_grid_thw"],
        torch.stack([preprocess_for_sam(r, sam_size) for r in rgbs]),
        masks,
        boxes,
        sizes,
    ), failed


@dataclass
class Rollout:
    """K·G sampled completions; row r belongs to prompt r // G."""

    group_size: int
    sequences: torch.Tensor  # (K·G, P + T) prompt + completion ids
    attention_mask: torch.Tensor  # (K·G, P + T): prompt padding and post-EOS tokens 0
    mm_token_type_ids: torch.Tensor  # (K·G, P + T)
    completion_mask: torch.Tensor  # (K·G, T)
    prompt_length: int  # P
    texts: list[str]  # K·G decoded completions
    answers: list[ParsedAnswer]  # K·G answers parsed once with the model's answer format
    pred_masks: list[np.ndarray]  # K·G masks at the original image sizes
    sam_features: SamImageFeatures  # per image (K), detached
    rows: torch.Tensor  # (K·G,) image (prompt) index of each row
    truncated: torch.Tensor  # (K·G,) bool: hit max_completion_length without an end token
    timings: dict[str, float] = field(default_factory=dict)  # seconds: generate, context_sam (+ vLLM's sync_weights)

    @property
    def completion_ids(self) -> torch.Tensor:  # (K·G, T)
        return self.sequences[:, self.prompt_length :]


def completion_end_for(compat: str) -> str:
    """GRPO's `compat` setting -> how its rollouts read the end of an answer (lens_model.vocab.COMPLETION_ENDS):
    the released trainer ends answers only at <|im_end|> and attends their <|endoftext|> padding."""
    return "im_end_only" if compat == "released" else "first_end"


class RolloutSampler(Protocol):
    """What the GRPO trainer samples with; `policy_version` changes when the policy's weights do."""

    policy_version: int | None

    def generate(self, prompts: PromptBatch, group_size: int) -> Rollout: ...


def prompt_rows(prompts: PromptBatch, group_size: int) -> PromptRows:
    """K prompts -> K·G generation rows (each prompt repeated G times, images kept once each)."""
    rows = torch.arange(len(prompts)).repeat_interleave(group_size)  # (K·G,)
    return PromptRows(
        prompts.input_ids[rows],
        prompts.attention_mask[rows],
        prompts.mm_token_type_ids[rows],
        prompts.pixel_values,
        prompts.image_grid_thw,
        rows,
        prompts.sam_images,
        [mask.shape for mask in prompts.gt_masks],
    )


def rollout_from_output(
    out: GenerationOutput, group_size: int, rows: torch.Tensor, timings: dict[str, float]
) -> Rollout:
    sam = out.sam_features
    features = SamImageFeatures(sam.image_embed.detach(), [f.detach() for f in sam.high_res_feats])
    return Rollout(
        group_size,
        out.sequences,
        out.attention_mask,
        out.mm_token_type_ids,
        out.completion_mask,
        out.prompt_length,
        out.texts,
        out.answers,
        out.masks,
        features,
        rows.to(out.sequences.device),
        ~out.ended,
        timings,
    )


@torch.no_grad()
def generate_rollouts(
    model: LensModel,
    processor,
    prompts: PromptBatch,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    context_pass: str | None = None,
    do_sample: bool = True,
    completion_end: str = "first_end",
) -> Rollout:
    """K prompts -> K·G answers sampled by the model itself (greedy with do_sample=False), with their masks.
    `context_pass`, when given, must be the model's own (the model decides: `LensModel.query_states`);
    `completion_end`: where answers end and what their context pass attends (lens_model.vocab.COMPLETION_ENDS)."""
    check_context_pass(model, context_pass)
    timer = StageTimer(model.device)
    rows = prompt_rows(prompts, group_size)
    sampling = (
        dict(temperature=temperature, top_p=top_p, top_k=top_k or None)
        if do_sample
        else dict(temperature=None, top_p=None, top_k=None)
    )
    out = generate_and_segment(
        model,
        processor.tokenizer,
        rows,
        pad_token_id,
        eos_token_ids,
        timer=timer,
        generation_kwargs=dict(max_new_tokens=max_new_tokens, do_sample=do_sample, **sampling),
        completion_end=completion_end,
    )
    timings = {
        "generate": timer.total(("mllm_vision", "generate")),
        "context_sam": timer.total(("context", "sam_encode", "sam_decode")),
    }
    return rollout_from_output(out, group_size, rows.rows, timings)


@torch.no_grad()
def rollout_from_completions(
    lens: LensModel,
    processor,
    prompts: PromptBatch,
    completions: list[list[list[int]]],
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
    context_pass: str | None = None,
    max_new_tokens: int | None = None,
    timings: dict[str, float] | None = None,
    completion_end: str = "first_end",
) -> Rollout:
    """Completion token ids from any sampler -> the `Rollout` the in-process sampler would have built.

    completions[k][g] is the g-th answer to prompt k (plain ints; anything after its first end token is
    dropped, so padding may be left on). The result: sequences = our left-padded prompt ids (each prompt
    repeated G times) + completions right-padded with pad_token_id to the longest one; completion_mask 1 up to
    and including the first end token and never on padding (`completion_end="im_end_only"`: the released
    trainer's rule, see `lens_model.inference.generation.completion_masks`); truncated = no end token; masks from a full
    context pass at the model's positions (no KV cache to reuse).
    """
    check_context_pass(lens, context_pass)
    k = len(prompts)
    if len(completions) != k:
        raise ValueError(f"{len(completions)} completion groups for {k} prompts")
    group_size = len(completions[0]) if completions else 0
    if group_size == 0 or any(len(group) != group_size for group in completions):
        raise ValueError(
            f"every prompt needs the same number (>= 1) of completions; got {[len(group) for group in completions]}"
        )
    timer = StageTimer(lens.device)
    eos = set(eos_token_ids)
    answers = [cut_completion(ids, eos, max_new_tokens) for group in completions for ids in group]
    width = max(len(a) for a in answers)
    ids = torch.full((len(answers), width), pad_token_id, dtype=torch.long)  # (K·G, T)
    for r, answer in enumerate(answers):
        ids[r, : len(answer)] = torch.tensor(answer, dtype=torch.long)
    rows = prompt_rows(prompts, group_size)
    out = generate_and_segment(
        lens,
        processor.tokenizer,
        rows,
        pad_token_id,
        eos_token_ids,
        timer=timer,
        completions=Completions(ids, torch.tensor([len(a) for a in answers])),
        completion_end=completion_end,
    )
    times = dict(timings or {})
    times["context_sam"] = timer.total(("mllm_vision", "context", "sam_encode", "sam_decode"))
    return rollout_from_output(out, group_size, rows.rows, times)


def cut_completion(ids: list[int], eos: set[int], max_new_tokens: int | None) -> list[int]:
    """Up to and including the first end token, at most max_new_tokens tokens."""
    ids = [int(t) for t in ids]
    if max_new_tokens is not None:
        ids = ids[:max_new_tokens]
    for j, token in enumerate(ids):
        if token in eos:
            return ids[: j + 1]
    return ids


class InProcessRollouts:
    """`RolloutSampler` over the policy itself (transformers' `generate`). `gather`: a context-manager factory
    that makes the full weights available while sampling (ZeRO-3), e.g. `training.engine.gathered`."""

    def __init__(
        self,
        model: LensModel,
        processor,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        do_sample: bool = True,
        gather: Callable[[], AbstractContextManager] | None = None,
        completion_end: str = "first_end",
    ) -> None:
        self.model, self.processor = model, processor
        self.pad_token_id, self.eos_token_ids = special_token_ids(processor.tokenizer)
        self.options = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            do_sample=do_sample,
            completion_end=completion_end,
        )
        self.gather = gather or contextlib.nullcontext
        self.policy_version: int | None = None  # the weights are the policy's own: nothing to sync

    def generate(self, prompts: PromptBatch, group_size: int) -> Rollout:
        with self.gather():
            return generate_rollouts(
                self.model,
                self.processor,
                prompts,
                group_size,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                **self.options,
            )


def sequential_rollouts(model: LensModel, processor, prompts: PromptBatch, group_size: int, **kwargs) -> list[Rollout]:
    """The per-sample loop a naive implementation would run (one prompt, one completion per call) — for
    benchmarks/grpo_step.py to compare against the batched rollout."""
    out = []
    for i in range(len(prompts)):
        single = PromptBatch(
            [prompts.records[i]],
            prompts.input_ids[i : i + 1],
            prompts.attention_mask[i : i + 1],
            prompts.mm_token_type_ids[i : i + 1],
            _image_patches(prompts, i),
            prompts.image_grid_thw[i : i + 1],
            prompts.sam_images[i : i + 1],
            [prompts.gt_masks[i]],
            [prompts.gt_boxes_llm[i]],
            [prompts.mllm_sizes[i]],
        )
        for _ in range(group_size):
            out.append(generate_rollouts(model, processor, single, 1, **kwargs))
    return out


def _image_patches(prompts: PromptBatch, i: int) -> torch.Tensor:
    counts = prompts.image_grid_thw.prod(-1).tolist()
    start = sum(counts[:i])
    return prompts.pixel_values[start : start + counts[i]]
