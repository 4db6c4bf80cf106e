"""Device and dtype names (as the CLI, the ROS parameters and the training configs spell them) -> torch objects."""

from __future__ import annotations

import re

import torch

from .errors import LensError
from .vocab import canonical_dtype

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def resolve_device(device: str) -> torch.device:
    """auto (CUDA when available), cpu, cuda or cuda:N -> torch.device; LensError for anything else."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.match(device):
        raise LensError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LensError(f"--device {device} requested but no CUDA GPU is available; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise LensError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """A dtype name or alias (lens_model.vocab) -> torch dtype; auto = bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, canonical_dtype(dtype))
