"""Shared by the export tests: one ONNX export of a tiny checkpoint per test session (exports take seconds)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lens_model.export import ExportOptions, export_model

_EXPORTS: dict[tuple, Path] = {}

# ONNX Runtime (CPU, float32) against torch (CPU, float32), per graph: (atol, rtol) for np.testing.assert_allclose.
# Observed maximum absolute differences on the tiny model are ~2e-6 (features) and ~5e-7 (logits).
TOLERANCE = {
    "image_encoder": (1e-4, 1e-4),
    "context_head": (1e-5, 1e-4),
    "mask_decoder": (1e-4, 1e-4),
}
MIN_MASK_AGREEMENT = 0.999  # chained result: fraction of pixels of the final binary mask that must agree
# `lens export --fp16` graphs (float16, normalisation layers float32) against torch float32: every output.
# Observed on the tiny model: features ~1.5e-3, logits ~5e-4 max absolute difference, mask agreement 99.96%.
FP16_TOLERANCE = (1e-2, 1e-2)
MIN_FP16_MASK_AGREEMENT = 0.995


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
    """ONNX Runtime output vs torch within the graph's tolerance; returns the max absolute difference."""
    atol, rtol = FP16_TOLERANCE if fp16 else TOLERANCE[name]
    want = want.detach().float().numpy()
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=name)
    return float(np.abs(got - want).max())
