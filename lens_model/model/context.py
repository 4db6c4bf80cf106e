"""Context module: N learnable queries -> connector -> one SAM2 prompt token.

Parameter names match the released hustvl/LENS checkpoints (`learnable_query`, `connector.*`,
`conv_1d.*`, `proj_to_sam.*`) so their tensors load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .config import LensConfig


class ConnectorAttention(nn.Module):
    """Bidirectional multi-head self-attention over the N query states (fused qkv, no RoPE)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"connector width {dim} is not divisible by connector_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ConnectorMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConnectorBlock(nn.Module):
    """Pre-norm transformer block (Qwen2-VL vision block without rotary embeddings)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ConnectorAttention(dim, num_heads)
        self.mlp = ConnectorMLP(dim, dim * mlp_ratio, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Connector(nn.Module):
    """Learned positions + `depth` blocks over the N query states; no final norm (as released)."""

    def __init__(self, dim: int, num_queries: int, depth: int, num_heads: int, mlp_ratio: int, act: str) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.blocks = nn.ModuleList(ConnectorBlock(dim, num_heads, mlp_ratio, act) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class ContextHead(nn.Module):
    """Owns the learnable queries and maps their last-layer MLLM states to SAM2's sparse prompt token."""

    def __init__(self, hidden_size: int, config: LensConfig) -> None:
        super().__init__()
        n = config.num_queries
        self.num_queries = n
        self.learnable_query = nn.Parameter(torch.empty(1, n, hidden_size).normal_(0.0, 0.02))
        self.connector = (
            Connector(
                hidden_size,
                n,
                config.connector_depth,
                config.connector_heads,
                config.connector_mlp_ratio,
                config.connector_act,
            )
            if config.use_connector
            else None
        )
        # Collapses the N states to one token (kernel spans the whole query sequence).
        self.conv_1d = nn.Conv1d(hidden_size, hidden_size, kernel_size=n)
        nn.init.normal_(self.conv_1d.weight, 0.0, 0.02)
        nn.init.zeros_(self.conv_1d.bias)
        self.proj_to_sam = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, config.sam_embed_dim)
        )

    def query_embeds(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:  # (B, N, hidden)
        return self.learnable_query.to(dtype).expand(batch_size, -1, -1)

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) last-layer states of the queries -> (B, 1, 256) SAM2 sparse prompt embedding."""
        if query_states.shape[1:] != self.learnable_query.shape[1:]:
            raise ValueError(
                f"context head expects query states of shape "
                f"(B, {self.num_queries}, {self.learnable_query.shape[-1]}), "
                f"got {tuple(query_states.shape)}"
            )
        x = query_states.to(self.conv_1d.weight.dtype)
        if self.connector is not None:
            x = self.connector(x)
        x = self.conv_1d(x.transpose(1, 2)).transpose(1, 2)  # (B, 1, hidden)
        return self.proj_to_sam(x)
