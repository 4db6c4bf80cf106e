"""lens_model: the LENS architecture (Qwen2.5-VL/Qwen2-VL + context queries + SAM2), inference and checkpoints.

The names below are imported on first use (PEP 562), so that `import lens_model.config` or `lens_model.errors`
(and the `lens` command's argument parser) do not pull in torch, transformers or sam2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "load_model": "checkpoint",
    "load_sam2_checkpoint": "checkpoint",
    "save_model": "checkpoint",
    "LensConfig": "config",
    "PromptConfig": "config",
    "SamConfig": "config",
    "CheckpointError": "errors",
    "ImageError": "errors",
    "LensError": "errors",
    "PromptError": "errors",
    "LensModel": "modeling",
    "LensPipeline": "pipeline",
    "SegmentationResult": "pipeline",
    "load_sam_memory": "sam_memory",
    "StreamingTracker": "tracking",
    "TrackedMask": "tracking",
    "TrackingPolicy": "tracking_state",
    "TrackingStateMachine": "tracking_state",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .checkpoint import load_model, load_sam2_checkpoint, save_model
    from .config import LensConfig, PromptConfig, SamConfig
    from .errors import CheckpointError, ImageError, LensError, PromptError
    from .modeling import LensModel
    from .pipeline import LensPipeline, SegmentationResult
    from .sam_memory import load_sam_memory
    from .tracking import StreamingTracker, TrackedMask
    from .tracking_state import TrackingPolicy, TrackingStateMachine


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
