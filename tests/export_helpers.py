"""Shared by the export tests: one ONNX export of a tiny checkpoint per test session (exports take seconds)."""

import functools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lens_model.export import ExportOptions, export_model
from lens_model.export.graphs import graph_widths
from lens_model.parity import compare

_EXPORTS: dict[tuple, Path] = {}

MIN_MASK_AGREEMENT = 0.999  # chained result: fraction of pixels of the final binary mask that must agree
# `lens export --fp16` graphs (float16, normalisation layers float32) against torch float32, for the tracking graphs'
# np.testing.assert_allclose. Observed on the tiny model: features ~1.5e-3, logits ~5e-4 max absolute difference.
FP16_TOLERANCE = (1e-2, 1e-2)
MIN_FP16_MASK_AGREEMENT = 0.995


@functools.cache
def tiny_graph_widths() -> dict[str, int]:
    """The parity rule's width of each graph of the tiny test models (`make_tiny`: tiny_lens_config, hidden 128)."""
    from lens_model.model.context import ContextHead
    from lens_model.model.sam import build_sam
    from lens_model.model.tiny import tiny_lens_config

    config = tiny_lens_config()
    return graph_widths(build_sam(config.sam), ContextHead(128, config))


def exported(model_dir: Path, tmp_path_factory, **options) -> Path:
    """`lens export` of `model_dir` with `options`, written once per session."""
    key = (str(model_dir), tuple(sorted(options.items())))
    if key not in _EXPORTS:
        out = tmp_path_factory.mktemp("export") / "onnx"
        export_model(model_dir, out, ExportOptions(**options))
        _EXPORTS[key] = out
    return _EXPORTS[key]


def ort_run(path: Path, **feeds: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.detach().numpy() for k, v in feeds.items()})


def assert_close(name: str, got: np.ndarray, want: torch.Tensor, fp16: bool = False) -> float:
    """ONNX Runtime output of graph `name` of a tiny model vs torch, within the parity rule's tolerance
    (lens_model.parity); returns the max absolute difference."""
    assert tuple(got.shape) == tuple(want.shape), (name, got.shape, want.shape)
    parity = compare(got, want, tiny_graph_widths()[name], torch.float16 if fp16 else torch.float32)
    assert parity.ok, f"{name}: {parity}"
    return parity.max_diff
