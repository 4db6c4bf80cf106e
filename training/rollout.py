"""GRPO rollouts: G sampled answers per prompt in one batched `generate`, and the mask of each answer.

For K prompts (one image each) of a micro-batch:
    MLLM vision encoder: once per image (K)        -> reused by generate and the context pass
    generate: K·G rows (each prompt repeated G times), sampling, KV cache
    context pass per row: the checkpoint's mode (cached: reuses the generation cache; official: 1-D re-pass)
    SAM2 image encoder: once per image (K)          -> selected per row for the decoder
Everything here runs without autograd; the training forward recomputes what needs gradients.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lens_model.answer import rescale_box
from lens_model.config import LensConfig
from lens_model.data import Record
from lens_model.errors import LensError
from lens_model.modeling import ContextInputs, LensModel, completion_mask
from lens_model.pipeline import build_chat, mllm_image
from lens_model.sam import SamImageFeatures, preprocess_for_sam, upsample_logits

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


def prepare_prompts(records: list[Record], processor, lens_config: LensConfig, max_prompt_length: int) -> tuple[PromptBatch | None, list[tuple[str, str]]]:
    """Records -> PromptBatch of the usable ones, and (sample_id, error) for the others."""
    chats, images, rgbs, masks, boxes, sizes, kept, failed = [], [], [], [], [], [], [], []
    for record in records:
        try:
            rgb, mask = load_sample(record)
        except (LensError, ValueError, OSError) as exc:
            failed.append((record.sample_id, f"{record.dataset}/{record.sample_id}: {exc}"))
            continue
        llm = mllm_image(rgb, lens_config)
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
            failed.append((kept[i].sample_id, f"{kept[i].sample_id}: prompt of {int(lengths[i])} tokens exceeds "
                                              f"max_prompt_length={max_prompt_length}"))
        keep = [i for i in range(len(kept)) if i not in too_long]
        batch, more = prepare_prompts([kept[i] for i in keep], processor, lens_config, max_prompt_length)
        return batch, failed + more
    sam_size = lens_config.sam.image_size
    return PromptBatch(kept, enc["input_ids"], enc["attention_mask"], enc["mm_token_type_ids"], enc["pixel_values"],
                       enc["image_grid_thw"], torch.stack([preprocess_for_sam(r, sam_size) for r in rgbs]),
                       masks, boxes, sizes), failed


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
    pred_masks: list[np.ndarray]  # K·G masks at the original image sizes
    sam_features: SamImageFeatures  # per image (K), detached
    rows: torch.Tensor  # (K·G,) image (prompt) index of each row
    truncated: torch.Tensor  # (K·G,) bool: hit max_completion_length without an end token
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def completion_ids(self) -> torch.Tensor:  # (K·G, T)
        return self.sequences[:, self.prompt_length:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def answer_masks(model: LensModel, states: torch.Tensor, prompts: PromptBatch,
                 rows: torch.Tensor) -> tuple[list[np.ndarray], SamImageFeatures]:
    """Query states (K·G, N, hidden) -> each answer's mask at its image's original size, and the SAM2 features
    of the K images (the image encoder runs once per image; rows select their image's features)."""
    features = model.encode_sam_images(prompts.sam_images.to(model.device))
    low_res, _ = model.masks_from_query_states(states, features.select(rows))
    masks = [(upsample_logits(low_res[r:r + 1], prompts.gt_masks[i].shape)[0] > 0).cpu().numpy()
             for r, i in enumerate(rows.tolist())]
    return masks, features


@torch.no_grad()
def generate_rollouts(model: LensModel, processor, prompts: PromptBatch, group_size: int, max_new_tokens: int,
                      temperature: float, top_p: float, top_k: int, eos_token_ids: list[int], pad_token_id: int,
                      context_pass: str, do_sample: bool = True) -> Rollout:
    device = model.device
    times: dict[str, float] = {}
    start = time.perf_counter()
    k = len(prompts)
    rows = torch.arange(k, device=device).repeat_interleave(group_size)  # (K·G,)
    grid = prompts.image_grid_thw.to(device)
    image_outputs = model.encode_mllm_images(prompts.pixel_values.to(device, model.dtype), grid, rows)
    ids = prompts.input_ids.to(device)[rows]
    attention = prompts.attention_mask.to(device)[rows]
    types = prompts.mm_token_type_ids.to(device)[rows]
    gen = model.mllm.generate(
        input_ids=ids, attention_mask=attention, mm_token_type_ids=types, image_grid_thw=grid[rows],
        mm_encoder_outputs={"image": image_outputs}, max_new_tokens=max_new_tokens, do_sample=do_sample,
        **(dict(temperature=temperature, top_p=top_p, top_k=top_k or None) if do_sample else
           dict(temperature=None, top_p=None, top_k=None)), eos_token_id=eos_token_ids,
        pad_token_id=pad_token_id, return_dict_in_generate=True, use_cache=True,
    )
    _sync(device)
    times["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    prompt_length = ids.shape[1]
    completion = gen.sequences[:, prompt_length:]
    valid = completion_mask(completion, eos_token_ids)
    ended = torch.isin(completion, torch.tensor(eos_token_ids, device=device)).any(1)
    ctx = ContextInputs(gen.sequences, torch.cat([attention, valid], 1),
                        torch.cat([types, torch.zeros_like(completion)], 1), grid[rows])
    if context_pass == "cached":
        states = model.query_states_cached(ctx, gen.cache)
    else:
        states = model.query_states_full(ctx, image_outputs, positions="1d")
    masks, features = answer_masks(model, states, prompts, rows)
    _sync(device)
    times["context_sam"] = time.perf_counter() - start
    drop = {pad_token_id, *eos_token_ids}
    texts = [processor.tokenizer.decode([t for t in row.tolist() if t not in drop], skip_special_tokens=False)
             for row in completion]
    return Rollout(group_size, gen.sequences, ctx.attention_mask, ctx.mm_token_type_ids, valid, prompt_length, texts,
                   masks, SamImageFeatures(features.image_embed.detach(), [f.detach() for f in features.high_res_feats]),
                   rows, ~ended, times)


def sequential_rollouts(model: LensModel, processor, prompts: PromptBatch, group_size: int, **kwargs) -> list[Rollout]:
    """The per-sample loop a naive implementation would run (one prompt, one completion per call) — for
    benchmarks/grpo_step.py to compare against the batched rollout."""
    out = []
    for i in range(len(prompts)):
        single = PromptBatch(
            [prompts.records[i]], prompts.input_ids[i:i + 1], prompts.attention_mask[i:i + 1],
            prompts.mm_token_type_ids[i:i + 1], _image_patches(prompts, i), prompts.image_grid_thw[i:i + 1],
            prompts.sam_images[i:i + 1], [prompts.gt_masks[i]], [prompts.gt_boxes_llm[i]], [prompts.mllm_sizes[i]])
        for _ in range(group_size):
            out.append(generate_rollouts(model, processor, single, 1, **kwargs))
    return out


def _image_patches(prompts: PromptBatch, i: int) -> torch.Tensor:
    counts = prompts.image_grid_thw.prod(-1).tolist()
    start = sum(counts[:i])
    return prompts.pixel_values[start:start + counts[i]]


