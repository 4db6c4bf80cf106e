"""The onnxruntime backend inside the pipeline and `lens segment`: the same masks as torch, and refusals of exports
that do not belong to the model or cannot run here."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SAMPLE_PHOTO, run_cli
from export_helpers import MIN_MASK_AGREEMENT, assert_close, exported
from PIL import Image

from lens_cli import main
from lens_model.errors import LensError
from lens_model.export import ExportError, read_metadata
from lens_model.export.tensorrt_runtime import tensorrt_available
from lens_model.image_io import load_image
from lens_model.inference.backends import (
    OnnxRuntimeBackend,
    TorchBackend,
    check_backend_args,
    load_backend,
    open_backend,
)
from lens_model.inference.pipeline import LensPipeline
from lens_model.model.sam import preprocess_for_sam

PROMPTS = ["the astronaut's helmet", "the flag on the left"]


@pytest.fixture(scope="module")
def model_dir(tiny_grounding_dir):
    """Answers that differ by prompt and hold boxes, so equal texts and boxes across backends are not constants."""
    return tiny_grounding_dir


@pytest.fixture(scope="module")
def export_dir(model_dir, tmp_path_factory):
    return exported(model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def torch_pipe(model_dir):
    return LensPipeline.from_pretrained(str(model_dir), device="cpu", max_new_tokens=40)


@pytest.fixture(scope="module")
def ort_pipe(model_dir, export_dir):
    return LensPipeline.from_pretrained(
        str(model_dir), device="cpu", max_new_tokens=40, backend="onnxruntime", backend_dir=str(export_dir)
    )


def test_onnxruntime_pipeline_gives_the_torch_masks(torch_pipe, ort_pipe):
    assert isinstance(torch_pipe.backend, TorchBackend) and isinstance(ort_pipe.backend, OnnxRuntimeBackend)
    want = torch_pipe(SAMPLE_PHOTO, PROMPTS)
    got = ort_pipe(SAMPLE_PHOTO, PROMPTS)
    assert want[0].text != want[1].text and all(a.box is not None for a in want), [a.text for a in want]
    for a, b in zip(want, got):
        assert a.text == b.text and a.box == b.box  # the MLLM runs in torch either way
        assert b.mask.shape == a.mask.shape
        assert np.mean(a.mask == b.mask) >= MIN_MASK_AGREEMENT
        assert 0 < a.mask.mean() < 1
        assert b.score == pytest.approx(a.score, abs=1e-5)


def test_backend_stages_match_torch_on_the_photo(torch_pipe, ort_pipe):
    images = preprocess_for_sam(load_image(SAMPLE_PHOTO), 256)[None]
    with torch.no_grad():
        want = torch_pipe.backend.encode_images(images)
        got = ort_pipe.backend.encode_images(images)
        assert_close("image_encoder", got.image_embed.numpy(), want.image_embed)
        states = torch.randn(3, 8, 128, generator=torch.Generator().manual_seed(3))
        rows = torch.tensor([0, 0, 0])
        want_low, want_iou = torch_pipe.backend.masks_from_query_states(states, want.select(rows))
        got_low, got_iou = ort_pipe.backend.masks_from_query_states(states, got.select(rows))
    assert_close("mask_decoder", got_low.numpy(), want_low)
    assert_close("mask_decoder", got_iou.numpy(), want_iou)


def test_backend_exported_at_another_image_size_still_gives_full_size_masks(model_dir, tmp_path_factory, torch_pipe):
    other = exported(model_dir, tmp_path_factory, image_size=512)
    pipe = LensPipeline(
        torch_pipe.model,
        torch_pipe.processor,
        max_new_tokens=40,
        backend=load_backend("onnxruntime", torch_pipe.model, other, model_dir=model_dir),
    )
    assert pipe.backend.image_size == 512
    result = pipe(SAMPLE_PHOTO, PROMPTS[0])
    photo = Image.open(SAMPLE_PHOTO)
    assert result.mask.shape == (photo.height, photo.width)
    # the box is read in the MLLM's image, whatever size SAM2 runs at
    want = torch_pipe(SAMPLE_PHOTO, PROMPTS[0])
    assert want.box is not None and (result.text, result.box) == (want.text, want.box)


def test_lens_segment_with_onnxruntime_gives_the_torch_mask(model_dir, export_dir, tmp_path):
    masks = {}
    for backend in ("torch", "onnxruntime"):
        extra = ["--backend-dir", export_dir] if backend != "torch" else []
        code, out, err = run_cli(
            "segment",
            "--model",
            model_dir,
            "--image",
            SAMPLE_PHOTO,
            "--prompt",
            PROMPTS[0],
            "--device",
            "cpu",
            "--max-new-tokens",
            "40",
            "--backend",
            backend,
            *extra,
            "--out-mask",
            tmp_path / f"{backend}.png",
        )
        assert code == 0, err
        data = json.loads(out)
        assert data["backend"] == backend
        masks[backend] = (np.asarray(Image.open(tmp_path / f"{backend}.png")), data)
    (a, da), (b, db) = masks["torch"], masks["onnxruntime"]
    assert a.shape == b.shape and np.mean(a == b) >= MIN_MASK_AGREEMENT
    assert da["mask_pixels"] > 0 and da["text"] == db["text"]
    assert da["box"] is not None and da["box"] == db["box"] and da["score"] == pytest.approx(db["score"], abs=1e-5)


def test_lens_export_cli_writes_an_export_the_backend_runs(model_dir, tmp_path):
    code, out, err = run_cli("export", "--model", model_dir, "--out", tmp_path / "onnx")
    assert code == 0, err
    assert "image_encoder" in out and "mask_decoder" in out and "warning" not in err
    # the tiny model carries SAM2 memory weights (sam2_memory.safetensors): the tracking graphs are exported too
    assert "tracking: memory_attention + memory_encoder (SAM2 memory: up to 7 frames and 16 object pointers)" in out
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "context_head.onnx",
        "image_encoder.onnx",
        "lens_export.json",
        "mask_decoder.onnx",
        "maskmem_tpos_enc.safetensors",
        "memory_attention.onnx",
        "memory_encoder.onnx",
    ]
    code, _, err = run_cli("export", "--model", model_dir, "--out", tmp_path / "onnx")
    assert code == 1 and "pass --overwrite" in err and "Traceback" not in err


def _expect_user_error(capsys, argv, pattern):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("lens ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert pattern in errors[0], err


def test_export_of_other_weights_is_refused(capsys, tiny_official_dir, export_dir):
    seg = ["segment", "--model", tiny_official_dir, "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cpu"]
    _expect_user_error(
        capsys, seg + ["--backend", "onnxruntime", "--backend-dir", export_dir], "was exported from other weights"
    )


def test_bad_backend_options(capsys, model_dir, tmp_path, export_dir):
    seg = ["segment", "--model", model_dir, "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cpu"]
    _expect_user_error(capsys, seg + ["--backend", "onnxruntime"], "--backend onnxruntime needs --backend-dir DIR")
    _expect_user_error(capsys, seg + ["--backend-dir", export_dir], "--backend-dir is only used with --backend")
    _expect_user_error(capsys, seg + ["--backend", "onnxruntime", "--backend-dir", tmp_path], "has no lens_export.json")
    _expect_user_error(
        capsys, seg + ["--backend", "onnxruntime", "--backend-dir", tmp_path / "nope"], "export directory not found"
    )
    if not tensorrt_available():
        _expect_user_error(
            capsys,
            seg + ["--backend", "tensorrt", "--backend-dir", export_dir],
            "needs a CUDA GPU with TensorRT: pip install tensorrt",
        )
    _expect_user_error(
        capsys,
        ["export", "--model", model_dir, "--out", tmp_path / "x", "--opset", "13"],
        "--opset must be one of [17, 18, 19, 20]",
    )
    _expect_user_error(
        capsys, ["export", "--model", tmp_path / "no-model", "--out", tmp_path / "x"], "model directory not found"
    )


def test_incomplete_export_and_other_model_shapes_are_refused(tmp_path, export_dir, torch_pipe):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    (broken / "mask_decoder.onnx").unlink()
    with pytest.raises(ExportError, match="mask_decoder.onnx is missing"):
        OnnxRuntimeBackend(broken)
    meta = json.loads((export_dir / "lens_export.json").read_text())
    meta["num_queries"] = 64
    shutil.copytree(export_dir, tmp_path / "other")
    (tmp_path / "other" / "lens_export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="exported for 64 queries of width 128; the loaded model has 8"):
        load_backend("onnxruntime", torch_pipe.model, tmp_path / "other")
    with pytest.raises(LensError, match="unknown backend 'openvino'"):
        load_backend("openvino", torch_pipe.model)


def test_backend_choice_is_checked_once_and_carries_the_export_metadata(model_dir, export_dir, torch_pipe):
    choice = check_backend_args("onnxruntime", export_dir)
    assert (choice.name, choice.export_dir) == ("onnxruntime", export_dir)
    assert choice.meta == read_metadata(export_dir)
    backend = open_backend(choice, torch_pipe.model, model_dir=model_dir)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.meta is choice.meta  # not read a second time
    torch_choice = check_backend_args("torch", None)
    assert torch_choice.meta is None and isinstance(open_backend(torch_choice, torch_pipe.model), TorchBackend)


def test_export_script_runs_from_a_checkout_without_the_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_lens.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and "--format {onnx,tensorrt}" in proc.stdout and "--fp16" in proc.stdout
