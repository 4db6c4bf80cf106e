"""How far two computations of the same thing may differ: the one tolerance rule of the export tests and the parity
checks of the benchmarks.

Two float32 implementations of one graph (torch eager and ONNX Runtime, a fused and an unfused kernel) sum the same
products in different orders. For a dot product of `width` terms the rounding differences behave like a random walk:
about eps · sqrt(width) relative to the result. So the allowed difference is

    max |got - want| <= SAFETY · eps(dtype) · sqrt(width) · rms(want)

with eps the machine epsilon of the lower precision of the two sides (float32 1.2e-7), `width` the longest reduction
of the graph's linear layers (`linear_width`: the largest `in_features`, e.g. 4 × 2048 in the MLP of LENS-3B's
context head, 4 × 768 in Hiera-T's last stage) and rms(want) the root mean square of the reference output (the scale
of the values, which a few outliers do not set). Measured on the context head (ONNX Runtime against torch, float32):
the difference is 0.3-0.9 × eps · sqrt(width) · rms at hidden sizes 64, 128, 512 and 2048 (1.3e-5 at 2048, where the
fixed atol of 1e-5 it replaces failed); SAFETY = 16 leaves a margin of twenty over that. A real bug is far above it:
swapping two neighbouring elements of one weight matrix of a 512-wide head moves the output 12× (deep in the
connector's MLP) to 600× (the last projection) beyond the tolerance (tests/test_parity.py breaks a graph so).

When one side computes in 16 bits (bf16 autocast, float16 graphs), rounding the stored activations to 8 or 11
mantissa bits dominates, once per layer rather than per summed term: the allowed difference is LOW_PRECISION_SAFETY
· eps(dtype) · rms(want), independent of width. Measured on the tiny SAM2 and context head (float32 ONNX Runtime
against bf16-autocast torch, and float16 graphs against float32 torch): 1.3-5 × eps · rms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SAFETY = 16.0
LOW_PRECISION_SAFETY = 16.0


@dataclass(frozen=True)
class Parity:
    """One comparison: the largest difference, what was allowed, and whether it is within."""

    max_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance

    def __str__(self) -> str:
        return f"max |diff| {self.max_diff:.2e} (tolerance {self.tolerance:.2e}): {'ok' if self.ok else 'EXCEEDED'}"


def tolerance(want: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> float:
    """The largest |got - want| allowed for an output `want` of a graph whose widest reduction is `width` terms, when
    the lower precision of the two computations is `dtype` (see the module docstring)."""
    rms = float(want.detach().float().pow(2).mean().sqrt()) if want.numel() else 0.0
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32 or dtype == torch.float64:
        return SAFETY * eps * math.sqrt(width) * rms
    return LOW_PRECISION_SAFETY * eps * rms


def linear_width(module: torch.nn.Module) -> int:
    """The longest reduction of `module`'s linear layers (largest `in_features`): the `width` of its outputs' rule."""
    return max((m.in_features for m in module.modules() if isinstance(m, torch.nn.Linear)), default=1)


def compare(got, want: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> Parity:
    """`got` (a tensor or numpy array) against the reference `want`, same shape."""
    got = torch.as_tensor(got).detach().float().cpu()
    ref = want.detach().float().cpu()
    if got.shape != ref.shape:
        raise ValueError(f"shapes differ: got {tuple(got.shape)}, want {tuple(ref.shape)}")
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    return Parity(diff, tolerance(ref, width, dtype))


def mask_agreement(got_logits, want_logits) -> float:
    """Share of pixels on which two mask-logit maps agree about the foreground (logit > 0)."""
    got = torch.as_tensor(got_logits).float().cpu() > 0
    want = torch.as_tensor(want_logits).float().cpu() > 0
    return float((got == want).float().mean())
