"""The one inference step every caller shares: answer -> context pass -> masks.

For R prompt rows over I distinct images (row r shows image rows[r]; prompts left-padded to P tokens):

    MLLM vision encoder: once per image (I)          -> reused by generation and the context pass
    completion (R, T): sampled/greedy `generate` here, or token ids from another sampler (vLLM)
    context pass: the model's own mode (`LensModel.query_states`: cached KV reuse or 1-D full re-pass)
    SAM2 image encoder: once per image (I)            -> each row decodes with its image's features
    masks upsampled to each image's original size (logit > 0), with their stability scores; texts decoded and
    answers parsed once

`LensPipeline.segment_batch` (inference), `training.rollout` (in-process GRPO sampling) and
`training.vllm_rollout` (completions from vLLM) all call `generate_and_segment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.modeling import ContextInputs, LensModel
from ..model.sam import SamImageFeatures, upsample_logits
from ..vocab import COMPLETION_ENDS, CONTEXT_PASS_MODES
from .answer import ParsedAnswer, parse_answer
from .backends import SegmentationBackend, TorchBackend
from .confidence import stability_score
from .prompting import EndTokenIds, decode_completions, end_token_ids
from .timing import StageTimer


@dataclass
class PromptRows:
    """R tokenised prompts over I distinct images, ready for generation."""

    input_ids: torch.Tensor  # (R, P) left-padded
    attention_mask: torch.Tensor  # (R, P)
    mm_token_type_ids: torch.Tensor  # (R, P) 1 on image tokens
    pixel_values: torch.Tensor  # (patches of the I images, C·T·p·p)
    image_grid_thw: torch.Tensor  # (I, 3)
    rows: torch.Tensor  # (R,) long: the image of each row
    sam_images: torch.Tensor  # (I, 3, S, S) normalised SAM2 inputs
    image_sizes: list[tuple[int, int]]  # I × (H, W): the masks come back at these sizes


@dataclass
class Completions:
    """Answers produced by another sampler: ids right-padded to T, and each answer's length."""

    ids: torch.Tensor  # (R, T) long, padded with the padding id
    lengths: torch.Tensor  # (R,) long: tokens of each answer (up to and including its end token, if any)


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (R, P + T) prompt + completion ids
    attention_mask: torch.Tensor  # (R, P + T): what the context pass attended (`CompletionMasks.attended`)
    mm_token_type_ids: torch.Tensor  # (R, P + T)
    completion_mask: torch.Tensor  # (R, T) long: the answer's tokens (`CompletionMasks.valid`)
    prompt_length: int  # P
    ended: torch.Tensor  # (R,) bool: the answer has an end token (else it hit the length limit)
    texts: list[str]  # R decoded completions (padding and end tokens dropped)
    answers: list[ParsedAnswer]  # R answers parsed with the model's answer format
    masks: list[np.ndarray]  # R × (H, W) bool at the row's original image size
    scores: torch.Tensor  # (R, 1) SAM2's predicted IoU of each mask
    stabilities: list[float]  # R stability scores of the masks (confidence.stability_score, at the masks' size)
    sam_features: SamImageFeatures  # of the I images
    finite: torch.Tensor  # (R,) bool: the row's mask logits and score are finite (False: NaN/inf weights or inputs)


def check_context_pass(model: LensModel, context_pass: str | None) -> None:
    """The model decides its context pass (`LensModel.query_states`); a caller that names the mode it expects
    (None: no expectation) must name the model's own."""
    if context_pass is None:
        return
    if context_pass not in CONTEXT_PASS_MODES:
        raise ValueError(f"context_pass must be one of {CONTEXT_PASS_MODES}, got {context_pass!r}")
    if context_pass != model.lens_config.context_pass:
        raise ValueError(
            f"context_pass {context_pass!r} was asked for, but the model runs its own "
            f"({model.lens_config.context_pass!r}, lens_config.context_pass)"
        )


@dataclass
class CompletionMasks:
    """How the generated part of R rows is read (T completion columns)."""

    valid: torch.Tensor  # (R, T) long: the answer's tokens (what GRPO's loss counts)
    attended: torch.Tensor  # (R, T) long: what the context pass attends (valid without <|endoftext|> for first_end)
    ended: torch.Tensor  # (R,) bool: the answer has an end token (else it hit the length limit)


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """(B, T) generated ids -> (B, T) long mask: 1 up to and including the first EOS, 0 for the padding after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


def completion_masks(
    completion: torch.Tensor,
    end_ids: EndTokenIds,
    lengths: torch.Tensor | None = None,
    completion_end: str = "first_end",
) -> CompletionMasks:
    """(R, T) ids -> `CompletionMasks` by the `completion_end` rule (lens_model.vocab.COMPLETION_ENDS).

    first_end: valid up to and including the first end token; attended = valid minus every <|endoftext|> (the
    released evaluation/demo set the mask to 0 on that token before appending the queries). `lengths` (R,): only
    the first lengths[r] tokens are the answer; the rest is padding, which must not count as an end token even
    when the padding id is one (Qwen's <|endoftext|>).
    im_end_only (released stage 2): valid = attended = up to and including the first <|im_end|>, else the whole
    row — padding after an answer that stopped at <|endoftext|> is counted and attended, as released."""
    if completion_end not in COMPLETION_ENDS:
        raise ValueError(f"completion_end must be one of {COMPLETION_ENDS}, got {completion_end!r}")
    eos = list(end_ids.eos)
    within = torch.ones_like(completion, dtype=torch.bool)
    if lengths is not None:
        within = torch.arange(completion.shape[1], device=completion.device)[None] < lengths[:, None]
    ended = (torch.isin(completion, torch.tensor(eos, device=completion.device)) & within).any(1)
    if completion_end == "im_end_only":
        valid = completion_mask(completion, [end_ids.im_end])
        return CompletionMasks(valid, valid, ended)
    valid = completion_mask(completion, eos) * within.long()
    attended = valid * (completion != end_ids.endoftext).long()
    return CompletionMasks(valid, attended, ended)


@torch.no_grad()
def generate_and_segment(
    model: LensModel,
    tokenizer,
    prompts: PromptRows,
    pad_token_id: int,
    eos_token_ids: list[int],
    *,
    generation_kwargs: dict | None = None,
    completions: Completions | None = None,
    segmenter: SegmentationBackend | None = None,
    streamer=None,
    timer: StageTimer | None = None,
    completion_end: str = "first_end",
) -> GenerationOutput:
    """Prompts -> answers, their masks and parsed boxes (see the module docstring).

    Without `completions` the MLLM generates with `generation_kwargs` (max_new_tokens or max_length, do_sample,
    temperature, ...); with them, their ids are the answers and the context pass re-runs the whole sequence.
    `segmenter` runs SAM2 + the context head (default: the model itself). Stages are timed into `timer`:
    mllm_vision, generate, context, sam_encode, sam_decode, postprocess. `completion_end` (COMPLETION_ENDS) says
    where an answer ends and what the context pass attends (`completion_masks`): this is the one place the context
    inputs are built, for both context-pass modes."""
    device = model.device
    timer = timer if timer is not None else StageTimer(device)
    segmenter = segmenter if segmenter is not None else TorchBackend(model)
    rows = prompts.rows.to(device)
    grid = prompts.image_grid_thw.to(device)
    ids = prompts.input_ids.to(device)
    attention = prompts.attention_mask.to(device)
    types = prompts.mm_token_type_ids.to(device)
    with timer.stage("mllm_vision"):  # once per distinct image, one shared entry per prompt row
        image_outputs = model.encode_mllm_images(prompts.pixel_values.to(device, model.dtype), grid, rows)
    cache, lengths = None, None
    if completions is None:
        with timer.stage("generate"):
            gen = model.mllm.generate(
                input_ids=ids,
                attention_mask=attention,
                mm_token_type_ids=types,
                image_grid_thw=grid[rows],
                mm_encoder_outputs={"image": image_outputs},
                **(generation_kwargs or {}),
                eos_token_id=eos_token_ids,
                pad_token_id=pad_token_id,
                return_dict_in_generate=True,
                use_cache=True,
                **({"streamer": streamer} if streamer is not None else {}),
            )
        sequences, cache = gen.sequences, gen.cache
    else:
        sequences = torch.cat([ids, completions.ids.to(device)], 1)
        lengths = completions.lengths.to(device)
    prompt_length = ids.shape[1]
    completion = sequences[:, prompt_length:]
    with timer.stage("context"):
        read = completion_masks(completion, end_token_ids(tokenizer, eos_token_ids), lengths, completion_end)
        ctx = ContextInputs(
            sequences,
            torch.cat([attention, read.attended], 1),
            torch.cat([types, torch.zeros_like(completion)], 1),
            grid[rows],
        )
        states = model.query_states(ctx, image_outputs, cache)  # (R, N, hidden)
    with timer.stage("sam_encode"):
        features = segmenter.encode_images(prompts.sam_images.to(device))
    with timer.stage("sam_decode"):
        low_res, scores = segmenter.masks_from_query_states(states, features.select(rows))  # (R, 1, S/4, S/4)
        masks, stabilities = [], []
        for r, i in enumerate(rows.tolist()):
            logits = upsample_logits(low_res[r : r + 1], prompts.image_sizes[i])[0]  # (H, W)
            masks.append((logits > 0).cpu().numpy())
            stabilities.append(stability_score(logits))
    with timer.stage("postprocess"):
        texts = decode_completions(tokenizer, completion, pad_token_id, eos_token_ids)
        answers = [parse_answer(t, model.lens_config.prompt.answer_format) for t in texts]
    return GenerationOutput(
        sequences,
        ctx.attention_mask,
        ctx.mm_token_type_ids,
        read.valid,
        prompt_length,
        read.ended,
        texts,
        answers,
        masks,
        scores,
        stabilities,
        features,
        torch.isfinite(low_res).flatten(1).all(1) & torch.isfinite(scores).flatten(1).all(1),
    )
