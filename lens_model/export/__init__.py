"""Export of the per-frame part of LENS (SAM2 image encoder, context head, mask decoder; with SAM2's memory
attention and memory encoder for tracking when SAM2 memory weights are given or in the model directory) to ONNX
and TensorRT.

    lens export --model M --out DIR [--format onnx|tensorrt] [--fp16] [--opset N] [--image-size S]
                [--sam-memory-checkpoint SAM2.pt]

The MLLM is not exported: it reasons once per command in transformers; the exported graphs run on every frame
(`lens_model.inference.backends` runs them inside the pipeline). The names below are imported on first use (PEP 562):
reading an export's metadata or the opset constants does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "METADATA_FILE": "metadata",
    "ExportError": "metadata",
    "ExportMetadata": "metadata",
    "read_metadata": "metadata",
    "DEFAULT_OPSET": "op_support",
    "SUPPORTED_OPSETS": "op_support",
    "ExportOptions": "onnx_export",
    "export_model": "onnx_export",
    "export_parts": "onnx_export",
    "OnnxMemoryAttention": "memory_runtime",
    "OnnxMemoryEncoder": "memory_runtime",
    "use_exported_memory_modules": "memory_runtime",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .memory_runtime import OnnxMemoryAttention, OnnxMemoryEncoder, use_exported_memory_modules
    from .metadata import METADATA_FILE, ExportError, ExportMetadata, read_metadata
    from .onnx_export import ExportOptions, export_model, export_parts
    from .op_support import DEFAULT_OPSET, SUPPORTED_OPSETS


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
