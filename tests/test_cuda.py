"""The CUDA subset (run by benchmarks/gpu_check.py on a GPU machine; skipped without a CUDA GPU): what runs on a GPU
gives what the CPU gives — the demo model's bf16 pipeline, the tracker, and an ONNX Runtime export beside a CUDA
model. TensorRT's engine tests are in test_export_tensorrt.py and test_track_export.py (they need tensorrt too)."""

import json

import numpy as np
import pytest
import torch
from conftest import BF16_BOX_TOLERANCE_PX, REPO, SAMPLE_PHOTO, assert_same_answer, photo_clip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEMO_MODEL = REPO / "assets" / "demo-model"
# bf16 on the GPU against float32 on the CPU: bf16 moves mask edges by a pixel here and there (98 % on the CPU's
# own bf16, test_demo_model.py); float32 on both: TF32 convolutions (cuDNN's default) move logits by ~1e-3.
MIN_BF16_AGREEMENT = 0.98
MIN_FP32_AGREEMENT = 0.99


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_demo_model_in_bf16_on_the_gpu_gives_the_cpu_answers():
    from lens_model.data.refer import decode_segmentation
    from lens_model.image_io import load_image
    from lens_model.inference.pipeline import LensPipeline
    from lens_model.parity import mask_agreement

    spec = json.loads((REPO / "assets" / "demo-scene.json").read_text())
    rgb = load_image(REPO / "assets" / spec["image"])
    h, w = rgb.shape[:2]
    cpu = LensPipeline.from_pretrained(str(DEMO_MODEL), device="cpu", dtype="float32")
    gpu = LensPipeline.from_pretrained(str(DEMO_MODEL), device="cuda", dtype="bfloat16")
    assert gpu.model.device.type == "cuda" and gpu.model.dtype == torch.bfloat16
    for obj in spec["objects"]:
        gt = decode_segmentation(obj["segmentation"], h, w)
        want, got = cpu(rgb, obj["expression"]), gpu(rgb, obj["expression"])
        assert_same_answer(got, want, cpu.config.prompt.answer_format, BF16_BOX_TOLERANCE_PX)
        assert mask_agreement(got.mask, want.mask) >= MIN_BF16_AGREEMENT
        assert iou(got.mask, gt) >= 0.5, obj["expression"]


def tracked(device: str, autocast_dtype=None) -> list:
    from lens_model.model.sam import build_sam
    from lens_model.model.sam_memory import attach_memory, load_sam_memory
    from lens_model.model.tiny import tiny_lens_config
    from lens_model.tracking.tracker import StreamingTracker

    config = tiny_lens_config(sam_image_size=128).sam
    torch.manual_seed(0)
    sam = build_sam(config, device=device)
    attach_memory(sam, load_sam_memory(config, allow_random=True))
    with torch.no_grad():  # random weights score every object absent: let the decoder's masks through
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
    tracker = StreamingTracker(sam, autocast_dtype=autocast_dtype)
    frames = photo_clip(8, (150, 200))
    mask = np.zeros((150, 200), bool)
    mask[30:100, 50:140] = True
    results = [tracker.start("target", mask, frames[0])]
    return results + [tracker.track(frame)["target"] for frame in frames[1:]]


def test_tracker_on_the_gpu_follows_the_cpu_tracker():
    cpu = tracked("cpu")
    assert all(r.present and 0 < r.mask.mean() < 1 for r in cpu)  # not vacuous
    for dtype, minimum in ((None, MIN_FP32_AGREEMENT), (torch.bfloat16, MIN_BF16_AGREEMENT)):
        gpu = tracked("cuda", dtype)
        for t, (a, b) in enumerate(zip(gpu, cpu)):
            assert np.mean(a.mask == b.mask) >= minimum, (dtype, t)
            assert a.low_res_logits.device.type == "cpu" and a.finite


def test_onnxruntime_export_beside_a_cuda_model(tiny_grounding_dir, tmp_path_factory):
    """`--backend onnxruntime` with the model on the GPU: ONNX Runtime's CUDA provider when onnxruntime-gpu is
    installed, its CPU provider otherwise; tensors cross devices both ways and the masks are the torch GPU's."""
    from export_helpers import exported

    from lens_model.inference.pipeline import LensPipeline

    export_dir = exported(tiny_grounding_dir, tmp_path_factory)
    prompts = ["the astronaut's helmet", "the flag on the left"]
    torch_pipe = LensPipeline.from_pretrained(str(tiny_grounding_dir), device="cuda", dtype="float32")
    ort_pipe = LensPipeline.from_pretrained(
        str(tiny_grounding_dir), device="cuda", dtype="float32", backend="onnxruntime", backend_dir=str(export_dir)
    )
    for want, got in zip(torch_pipe(SAMPLE_PHOTO, prompts), ort_pipe(SAMPLE_PHOTO, prompts)):
        assert got.text == want.text
        assert np.mean(got.mask == want.mask) >= MIN_FP32_AGREEMENT
