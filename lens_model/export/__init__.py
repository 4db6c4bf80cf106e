"""Export of the per-frame part of LENS (SAM2 image encoder, context head, mask decoder) to ONNX and TensorRT.

    lens export --model M --out DIR [--format onnx|tensorrt] [--fp16] [--opset N] [--image-size S]

The MLLM is not exported: it reasons once per command in transformers; the exported graphs run on every frame
(`lens_model.backends` runs them inside the pipeline).
"""
from .metadata import METADATA_FILE, ExportError, ExportMetadata, read_metadata
from .onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS, ExportOptions, export_model, export_parts

__all__ = ["DEFAULT_OPSET", "METADATA_FILE", "SUPPORTED_OPSETS", "ExportError", "ExportMetadata", "ExportOptions",
           "export_model", "export_parts", "read_metadata"]
