"""TensorRT: engines built from the tiny export run like torch (GPU with TensorRT only), and engines that cannot
run here are refused with a clear message (everywhere)."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SAMPLE_PHOTO
from export_helpers import MIN_MASK_AGREEMENT, exported

from lens_model.errors import LensError
from lens_model.export import ExportError, read_metadata
from lens_model.export.metadata import TensorRTInfo
from lens_model.export.tensorrt_runtime import check_engines_runnable, engine_mismatch, tensorrt_available
from lens_model.inference.backends import TensorRTBackend

needs_tensorrt = pytest.mark.skipif(
    not tensorrt_available(),
    reason="needs a CUDA GPU with TensorRT (pip install tensorrt); this machine has "
    + ("no CUDA GPU" if not torch.cuda.is_available() else "no tensorrt package"),
)
# TensorRT float32 engines may use TF32 tensor cores (TensorRT's default on Ampere and newer): 10-bit mantissa
# products, so looser than ONNX Runtime's float32. fp16 engines (from `lens export --fp16` graphs) are compared on
# the final binary mask.
TRT_FP32_TOLERANCE = (5e-3, 5e-3)
MIN_FP16_MASK_AGREEMENT = 0.99

INFO = TensorRTInfo(
    version="10.3.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    batch_profile=[1, 1, 8],
    workspace_bytes=1 << 32,
)


def test_engines_for_another_tensorrt_or_gpu_are_refused(tmp_path):
    assert engine_mismatch(INFO, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0") is None
    assert engine_mismatch(INFO, "10.3.0", "NVIDIA H100 PCIe", "9.0") is None  # same architecture: allowed
    assert (
        engine_mismatch(INFO, "10.7.0", "NVIDIA H100 80GB HBM3", "9.0")
        == "built with TensorRT 10.3.0, but TensorRT 10.7.0 is installed"
    )
    why = engine_mismatch(INFO, "10.3.0", "Orin (nvgpu)", "8.7")
    assert (
        "built for NVIDIA H100 80GB HBM3 (compute capability 9.0), "
        "but this GPU is Orin (nvgpu) (compute capability 8.7)" == why
    )
    with pytest.raises(ExportError, match="were built with TensorRT 10.3.0, but TensorRT 10.7.0 is installed; rebuild"):
        check_engines_runnable(INFO, tmp_path, "10.7.0", "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(ExportError, match="holds no TensorRT engines; build them on this machine"):
        check_engines_runnable(None, tmp_path, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.mark.skipif(tensorrt_available(), reason="checks the refusal on machines without a GPU or TensorRT")
def test_tensorrt_is_refused_without_gpu_or_tensorrt(tiny_dir, tmp_path_factory, tmp_path):
    from lens_cli import main

    export_dir = exported(tiny_dir, tmp_path_factory)
    with pytest.raises(LensError, match="needs a CUDA GPU with TensorRT: pip install tensorrt"):
        TensorRTBackend(export_dir)
    assert main(["export", "--model", str(tiny_dir), "--out", str(tmp_path / "trt"), "--format", "tensorrt"]) == 1
    assert not (tmp_path / "trt").exists()  # refused before exporting anything


# ---------------------------------------------------------------------------- on a GPU with TensorRT
@pytest.fixture(scope="module")
def engines(tiny_dir, tmp_path_factory):
    from lens_model.export.tensorrt_build import EngineOptions, build_engines

    out = tmp_path_factory.mktemp("trt")
    built = {}
    for precision in ("fp32", "fp16"):
        target = out / precision
        shutil.copytree(exported(tiny_dir, tmp_path_factory, fp16=precision == "fp16"), target)
        build_engines(target, EngineOptions(max_batch=4, workspace_gb=1))
        built[precision] = target
    return built


@needs_tensorrt
def test_engines_and_metadata_are_written(engines):
    import tensorrt as trt

    for precision, path in engines.items():
        meta = read_metadata(path)
        assert meta.tensorrt.version == trt.__version__ and meta.precision == precision
        assert meta.tensorrt.batch_profile == [1, 1, 4] and meta.versions["tensorrt"] == trt.__version__
        assert meta.tensorrt.gpu_name == torch.cuda.get_device_name()
        assert all((path / g.engine).is_file() for g in meta.graphs.values())
        assert (path / "timing.cache").stat().st_size > 0


@needs_tensorrt
@pytest.mark.parametrize("batch", [1, 6])  # 6 > max batch 4: runs in two chunks
def test_fp32_engines_match_torch(tiny_dir, engines, batch):
    from lens_model.export.parts import load_segmentation_parts
    from lens_model.model.sam import decode_masks, encode_image

    parts = load_segmentation_parts(tiny_dir)
    backend = TensorRTBackend(engines["fp32"], device="cuda")
    gen = torch.Generator().manual_seed(batch)
    images, states = torch.randn(batch, 3, 256, 256, generator=gen), torch.randn(batch, 8, 128, generator=gen)
    with torch.no_grad():
        want = encode_image(parts.sam, images)
        want_low, want_iou = decode_masks(parts.sam, want, parts.context(states))
    got = backend.encode_images(images.cuda())
    got_low, got_iou = backend.masks_from_query_states(states.cuda(), got)
    atol, rtol = TRT_FP32_TOLERANCE
    for g, w in zip(
        [got.image_embed, *got.high_res_feats, got_low, got_iou],
        [want.image_embed, *want.high_res_feats, want_low, want_iou],
    ):
        np.testing.assert_allclose(g.cpu().numpy(), w.numpy(), atol=atol, rtol=rtol)
    agreement = ((got_low.cpu() > 0) == (want_low > 0)).float().mean().item()
    assert agreement >= MIN_MASK_AGREEMENT, agreement


@needs_tensorrt
@pytest.mark.parametrize("precision, minimum", [("fp32", MIN_MASK_AGREEMENT), ("fp16", MIN_FP16_MASK_AGREEMENT)])
def test_pipeline_with_tensorrt_gives_the_torch_mask(tiny_dir, engines, precision, minimum):
    from lens_model.inference.pipeline import LensPipeline

    want = LensPipeline.from_pretrained(str(tiny_dir), device="cuda", dtype="float32", max_new_tokens=4)(
        SAMPLE_PHOTO, "the helmet"
    )
    pipe = LensPipeline.from_pretrained(
        str(tiny_dir),
        device="cuda",
        dtype="float32",
        max_new_tokens=4,
        backend="tensorrt",
        backend_dir=str(engines[precision]),
    )
    got = pipe(SAMPLE_PHOTO, "the helmet")
    agreement = float(np.mean(got.mask == want.mask))
    print(f"tensorrt {precision}: mask agreement {agreement:.6f}, score {got.score:.5f} vs torch {want.score:.5f}")
    assert agreement >= minimum


@needs_tensorrt
def test_engines_from_another_tensorrt_version_are_refused(engines, tmp_path):
    target = tmp_path / "old"
    shutil.copytree(engines["fp32"], target)
    meta = json.loads((target / "lens_export.json").read_text())
    meta["tensorrt"]["version"] = "9.0.0"
    (target / "lens_export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="built with TensorRT 9.0.0"):
        TensorRTBackend(target, device="cuda")
