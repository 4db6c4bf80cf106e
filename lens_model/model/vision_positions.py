"""Absolute 2-D patch positions for the MLLM's vision encoder (an option of the demo model, off in released ones).

Qwen2-VL / Qwen2.5-VL keep where a patch is only in rotary attention (2-D RoPE in the vision encoder, M-RoPE in the
language model): q·k sees relative positions, but no hidden state carries "this is the top left of the image". A
pretrained 3B model still learns to write absolute box coordinates; a tiny one trained from scratch on 2 CPU cores
did not (docs/design.md, "The demo model's vision encoder"). With `LensConfig.mllm_absolute_positions` the patch
embeddings get a fixed sinusoid of the patch's row and column, normalised to the image (0..1), before the first
vision block, as ViT and CLIP add theirs. It holds no weights: a checkpoint's tensors are the same either way.

Patch order: the Qwen2-VL image processor emits each image's patches as (T, H/m, W/m, m, m) — merge blocks of
m × m patches in row-major order, row-major inside each block (m = spatial_merge_size); `patch_positions` follows it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(num_images, 3) [T, H, W] patch grids -> (sum T·H·W, 2) [y, x] patch centres, each in (0, 1) of its image,
    in the image processor's patch order (module docstring)."""
    rows = []
    for t, h, w in grid_thw.tolist():
        by, bx, iy, ix = torch.meshgrid(
            torch.arange(h // merge), torch.arange(w // merge), torch.arange(merge), torch.arange(merge), indexing="ij"
        )
        y = ((by * merge + iy).flatten().float() + 0.5) / h
        x = ((bx * merge + ix).flatten().float() + 0.5) / w
        rows.append(torch.stack([y, x], dim=1).repeat(t, 1))
    return torch.cat(rows)


def sinusoid_2d(yx: torch.Tensor, dim: int) -> torch.Tensor:
    """(P, 2) positions in (0, 1) -> (P, dim) [sin y·f, cos y·f, sin x·f, cos x·f] with f_k = k·π/2, k = 1..dim/4:
    the lowest frequency turns a quarter circle across the image, so that every position has its own phase."""
    if dim % 4:
        raise ValueError(f"absolute 2-D positions need a vision width divisible by 4, got {dim}")
    freqs = torch.arange(1, dim // 4 + 1, dtype=torch.float32) * (math.pi / 2)  # (dim/4,)
    y, x = yx[:, :1] * freqs, yx[:, 1:] * freqs  # (P, dim/4) each
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)


def add_absolute_positions(visual: nn.Module) -> None:
    """Make `visual` (a Qwen2-VL / Qwen2.5-VL vision encoder) add `sinusoid_2d` of each patch's position to its patch
    embeddings. Two hooks on the module itself: one keeps the call's `grid_thw`, one adds the positions to
    `patch_embed`'s output (P, width)."""
    merge = visual.spatial_merge_size
    call: dict[str, torch.Tensor] = {}

    def keep_grid(module, args, kwargs):
        call["grid_thw"] = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    def add(module, args, embeddings):
        yx = patch_positions(call["grid_thw"], merge)
        if yx.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} patch embeddings for grids {call['grid_thw'].tolist()}")
        return embeddings + sinusoid_2d(yx, embeddings.shape[-1]).to(embeddings)

    visual.register_forward_pre_hook(keep_grid, with_kwargs=True)
    visual.patch_embed.register_forward_hook(add)
