"""SAM2's two tracking modules as export graphs: memory attention and memory encoder (S = image size,
HW = (S/16)^2 tokens of the current frame, L = memory tokens, C = SAM2's memory width, 64 in every SAM2).

    memory_attention  curr (B, HW, 256), curr_pos (B, HW, 256),
                      memory (B, L, C), memory_pos (B, L, C), num_obj_ptr_tokens (1,) int64
                                                            -> pix_feat_with_mem (B, HW, 256)
    memory_encoder    pix_feat (B, 256, S/16, S/16), masks (B, 1, S, S) (after SAM2's sigmoid)
                                                            -> vision_features (B, C, S/16, S/16),
                                                               vision_pos_enc (B, C, S/16, S/16)

Tokens are batch-first here (sam2 passes them sequence-first); the drop-in modules in `memory_runtime` transpose.
The memory length L is a dynamic dimension: SAM2 concatenates up to `num_maskmem` frames of HW spatial memory
tokens, then the object-pointer tokens. Only the spatial tokens get rotary position encoding (RoPE); the number
of trailing pointer tokens is a graph input, so one graph serves every memory size.

SAM2 applies RoPE with complex numbers (torch.polar, view_as_complex), which ONNX cannot express. The graph
rotates the same pairs of channels with cos/sin instead: for the pair (a, b) and angle t,
(a + ib)(cos t + i sin t) = (a cos t - b sin t) + i(a sin t + b cos t). The angles are SAM2's own
(`RoPEAttention.compute_cis` on the S/16 grid), stored as cos/sin constants; memory token j takes the angle of
spatial position j mod HW, which is what sam2's `rope_k_repeat` does for a stack of frames.
"""

from __future__ import annotations

import torch
from torch import nn

from .graphs import float16_copy
from .metadata import BATCH, MEMORY_TOKENS, TensorSpec


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, D) -> x with each channel pair (2i, 2i+1) rotated by the angle whose cos/sin are (T, D/2);
    the real-valued form of sam2's `apply_rotary_enc`, computed in float32 like it."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


class RotaryTable(nn.Module):
    """cos/sin of the RoPE angles of one `RoPEAttention` on a (side, side) token grid: (side*side, head_dim/2)."""

    def __init__(self, attention: nn.Module, side: int) -> None:
        super().__init__()
        from sam2.modeling.sam.transformer import RoPEAttention

        if not isinstance(attention, RoPEAttention):
            raise ValueError(f"SAM2 memory attention layers use RoPEAttention, got {type(attention).__name__}")
        angles = attention.compute_cis(end_x=side, end_y=side)  # complex (HW, head_dim/2), |z| = 1
        self.register_buffer("cos", angles.real.float().contiguous())
        self.register_buffer("sin", angles.imag.float().contiguous())

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        """(B, heads, HW, d) queries of the current frame, one angle per grid position."""
        return rotate_pairs(q, self.cos, self.sin)

    def keys(self, k: torch.Tensor, num_exclude: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, d) keys: token j < L - num_exclude takes the angle of grid position j mod HW (frames
        stacked one after another); the last `num_exclude` tokens (object pointers) are not rotated."""
        length = k.shape[-2]
        index = torch.arange(length, device=k.device)
        position = index % self.cos.shape[0]
        rotated = rotate_pairs(k, self.cos[position], self.sin[position])
        keep_rope = (index < length - num_exclude).unsqueeze(-1)  # (L, 1)
        return torch.where(keep_rope, rotated, k)


def rope_attention(attention: nn.Module, rope: RotaryTable, q, k, v, num_exclude: torch.Tensor) -> torch.Tensor:
    """sam2's `RoPEAttention.forward` (eval mode) with the real-valued rotation; q (B, Tq, E), k/v (B, L, Ekv)."""
    q = attention._separate_heads(attention.q_proj(q), attention.num_heads)
    k = attention._separate_heads(attention.k_proj(k), attention.num_heads)
    v = attention._separate_heads(attention.v_proj(v), attention.num_heads)
    out = nn.functional.scaled_dot_product_attention(rope.queries(q), rope.keys(k, num_exclude), v)
    return attention.out_proj(attention._recombine_heads(out))


class MemoryAttentionGraph(nn.Module):
    """`MemoryAttention.forward` of sam2 (eval mode) on batch-first tokens, with the pointer-token count as a
    tensor input. Layer by layer: self-attention, cross-attention to the memory, MLP, each pre-normalised."""

    def __init__(self, memory_attention: nn.Module, image_size: int, fp16: bool = False) -> None:
        super().__init__()
        if not memory_attention.batch_first:
            raise ValueError("SAM2 memory attention with batch_first=False is not supported by the export")
        side = image_size // 16
        self.dtype = torch.float16 if fp16 else torch.float32
        self.attention = float16_copy(memory_attention) if fp16 else memory_attention
        self.self_rope = nn.ModuleList(RotaryTable(layer.self_attn, side) for layer in memory_attention.layers)
        self.cross_rope = nn.ModuleList(RotaryTable(layer.cross_attn_image, side) for layer in memory_attention.layers)

    def forward(
        self,
        curr: torch.Tensor,  # (B, HW, 256)
        curr_pos: torch.Tensor,  # (B, HW, 256)
        memory: torch.Tensor,  # (B, L, C)
        memory_pos: torch.Tensor,  # (B, L, C)
        num_obj_ptr_tokens: torch.Tensor,  # (1,) int64: the last ones of the L memory tokens
    ) -> torch.Tensor:  # (B, HW, 256)
        curr, curr_pos, memory, memory_pos = (t.to(self.dtype) for t in (curr, curr_pos, memory, memory_pos))
        no_exclusion = torch.zeros_like(num_obj_ptr_tokens)
        out = curr + 0.1 * curr_pos if self.attention.pos_enc_at_input else curr
        for layer, self_rope, cross_rope in zip(self.attention.layers, self.self_rope, self.cross_rope):
            x = layer.norm1(out)
            qk = x + curr_pos if layer.pos_enc_at_attn else x
            out = out + rope_attention(layer.self_attn, self_rope, qk, qk, x, no_exclusion)
            x = layer.norm2(out)
            q = x + curr_pos if layer.pos_enc_at_cross_attn_queries else x
            k = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
            out = out + rope_attention(layer.cross_attn_image, cross_rope, q, k, memory, num_obj_ptr_tokens)
            x = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(x)))
        return self.attention.norm(out).float()


class MemoryEncoderGraph(nn.Module):
    """sam2's `MemoryEncoder.forward(pix_feat, masks, skip_mask_sigmoid=True)`: the caller applies SAM2's
    sigmoid/scale/bias to the mask logits, as `SAM2Base._encode_new_memory` does."""

    def __init__(self, memory_encoder: nn.Module, fp16: bool = False) -> None:
        super().__init__()
        self.dtype = torch.float16 if fp16 else torch.float32
        self.encoder = float16_copy(memory_encoder) if fp16 else memory_encoder

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(pix_feat.to(self.dtype), masks.to(self.dtype), skip_mask_sigmoid=True)
        return out["vision_features"].float(), out["vision_pos_enc"][0].float()


def memory_graph_io(image_size: int, mem_dim: int, embed_dim: int = 256) -> dict[str, tuple[list, list]]:
    """Input and output specs of the two tracking graphs (B = BATCH, L = MEMORY_TOKENS, both dynamic)."""
    side = image_size // 16
    hw = side * side
    tokens = [TensorSpec("curr", [BATCH, hw, embed_dim]), TensorSpec("curr_pos", [BATCH, hw, embed_dim])]
    memory = [
        TensorSpec("memory", [BATCH, MEMORY_TOKENS, mem_dim]),
        TensorSpec("memory_pos", [BATCH, MEMORY_TOKENS, mem_dim]),
    ]
    return {
        "memory_attention": (
            [*tokens, *memory, TensorSpec("num_obj_ptr_tokens", [1], "int64")],
            [TensorSpec("pix_feat_with_mem", [BATCH, hw, embed_dim])],
        ),
        "memory_encoder": (
            [
                TensorSpec("pix_feat", [BATCH, embed_dim, side, side]),
                TensorSpec("masks", [BATCH, 1, image_size, image_size]),
            ],
            [
                TensorSpec("vision_features", [BATCH, mem_dim, side, side]),
                TensorSpec("vision_pos_enc", [BATCH, mem_dim, side, side]),
            ],
        ),
    }


def memory_token_profile(image_size: int, num_maskmem: int, max_obj_ptrs: int, mem_dim: int, embed_dim: int = 256):
    """[min, opt, max] memory length for a TensorRT profile: from one token up to `num_maskmem` frames of
    spatial memory plus `max_obj_ptrs` pointers (each split into embed_dim / mem_dim tokens)."""
    hw = (image_size // 16) ** 2
    largest = num_maskmem * hw + max_obj_ptrs * max(1, embed_dim // mem_dim)
    return [1, largest, largest]  # a long stream runs with a full memory bank
