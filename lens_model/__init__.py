"""lens_model: the LENS library (Qwen2.5-VL/Qwen2-VL + context queries + SAM2), one subpackage per stage:

    data/       dataset readers -> Records           model/      config, LensModel, SAM2, checkpoints, tiny models
    inference/  prompt -> answer -> mask (pipeline)  tracking/   SAM2 memory between LENS queries, video in and out
    geometry/   mask + depth -> 3D target            eval/       metrics and the evaluation loop
    export/     ONNX graphs, TensorRT engines        (top)       errors, vocab, image_io, overlay, devices, distributed

The names below are imported on first use (PEP 562), so that `import lens_model.model.config` or `lens_model.errors`
(and the `lens` command's argument parser) do not pull in torch, transformers or sam2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "load_model": "model.checkpoint",
    "load_sam2_checkpoint": "model.checkpoint",
    "save_model": "model.checkpoint",
    "LensConfig": "model.config",
    "PromptConfig": "model.config",
    "SamConfig": "model.config",
    "CheckpointError": "errors",
    "ImageError": "errors",
    "LensError": "errors",
    "PromptError": "errors",
    "LensModel": "model.modeling",
    "LensPipeline": "inference.pipeline",
    "SegmentationResult": "inference.pipeline",
    "load_sam_memory": "model.sam_memory",
    "StreamingTracker": "tracking.tracker",
    "TrackedMask": "tracking.tracker",
    "TrackingPolicy": "tracking.state",
    "TrackingStateMachine": "tracking.state",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .errors import CheckpointError, ImageError, LensError, PromptError
    from .inference.pipeline import LensPipeline, SegmentationResult
    from .model.checkpoint import load_model, load_sam2_checkpoint, save_model
    from .model.config import LensConfig, PromptConfig, SamConfig
    from .model.modeling import LensModel
    from .model.sam_memory import load_sam_memory
    from .tracking.state import TrackingPolicy, TrackingStateMachine
    from .tracking.tracker import StreamingTracker, TrackedMask


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
