"""Tracking with an exported model: `lens export` writes SAM2's tracking graphs when memory weights are available,
`StreamingTracker` over a LENS model runs them (ONNX Runtime; TensorRT on a GPU) and gives the torch tracker's
masks, `lens track --backend onnxruntime` end to end, and an export without tracking graphs is refused clearly."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import photo_clip, run_cli
from export_helpers import MIN_MASK_AGREEMENT, exported
from PIL import Image
from safetensors.torch import load_file

from lens_model.export import ExportError, OnnxMemoryAttention, export_model, read_metadata
from lens_model.export.metadata import MEMORY_TPOS_FILE, combined_hash, file_sha256
from lens_model.export.tensorrt_runtime import tensorrt_available
from lens_model.inference.pipeline import LensPipeline
from lens_model.model.checkpoint import read_configs
from lens_model.model.sam_memory import MEMORY_WEIGHTS_FILE, build_sam_memory, load_sam_memory, save_sam_memory
from lens_model.tracking.tracker import StreamingTracker

CLIP_HW = (150, 200)
# Exported image encoder and memory graphs (ONNX Runtime, CPU, float32) against torch over the clip: low-res mask
# logits and object scores, max abs diff. Observed ~4e-7 on the tiny model (logits of magnitude ~0.4).
ORT_TOLERANCE = 1e-5
# TensorRT float32 engines may use TF32 matrix products (see test_export_tensorrt.py): compared on logits with this
# bound and on the binary mask.
TRT_TOLERANCE = 5e-3
MIN_TRT_MASK_AGREEMENT = 0.99
needs_tensorrt = pytest.mark.skipif(not tensorrt_available(), reason="needs a CUDA GPU with TensorRT")


def clip(n: int) -> list[np.ndarray]:
    return photo_clip(n, CLIP_HW)


def start_mask() -> np.ndarray:
    mask = np.zeros(CLIP_HW, bool)
    mask[30:100, 50:140] = True
    return mask


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocess' tiny models run faster on one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def export_dir(tiny_dir, tmp_path_factory):
    return exported(tiny_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def no_memory_export(tiny_dir, tmp_path_factory):
    """`lens export` of the tiny model without its sam2_memory.safetensors: the three single-image graphs only."""
    root = tmp_path_factory.mktemp("no_memory")
    model = root / "model"
    shutil.copytree(tiny_dir, model, ignore=shutil.ignore_patterns(MEMORY_WEIGHTS_FILE))
    code, stdout, stderr = run_cli("export", "--model", model, "--out", root / "onnx")
    assert code == 0, stderr
    assert "tracking: not exported (no SAM2 memory weights: pass the official SAM2 checkpoint" in stdout
    return root / "onnx"


def track_clip(tracker: StreamingTracker, frames: list[np.ndarray]) -> list:
    results = [tracker.start("target", start_mask(), frames[0])]
    results += [tracker.track(frame)["target"] for frame in frames[1:]]
    return results


def compare_trackers(tiny_dir, backend: str, backend_dir, device: str) -> tuple[list, list]:
    """The torch tracker and the tracker on the export's memory graphs over the same clip, same LENS weights."""
    frames = clip(6)
    reference = LensPipeline.from_pretrained(str(tiny_dir), device=device, dtype="float32")
    memory = load_sam_memory(reference.config.sam, model_dir=tiny_dir)
    want = track_clip(StreamingTracker.from_lens_model(reference.model, memory), frames)
    pipe = LensPipeline.from_pretrained(
        str(tiny_dir), device=device, dtype="float32", backend=backend, backend_dir=str(backend_dir)
    )
    assert not hasattr(pipe.model.sam, "memory_attention")  # a LENS model's SAM2: memory comes from the export only
    tracker = StreamingTracker.from_lens_model(pipe.model, pipe.backend)
    assert isinstance(tracker.sam.memory_attention, OnnxMemoryAttention)
    assert tracker.image_encoder is pipe.backend  # the frame features come from the export too
    torch_encoder_calls = []
    pipe.model.sam.image_encoder.register_forward_hook(lambda *_: torch_encoder_calls.append(1))
    got = track_clip(tracker, frames)
    assert not torch_encoder_calls
    # Not vacuous: the object is present, the masks are neither empty nor full and change from frame to frame.
    masks = [r.mask for r in want]
    assert all(r.present and 0 < r.mask.mean() < 1 for r in want)
    assert all((a != b).any() for a, b in zip(masks, masks[1:]))
    return want, got


def test_export_with_memory_weights_writes_the_tracking_files(tiny_dir, export_dir):
    meta = read_metadata(export_dir)
    assert list(meta.graphs)[3:] == ["memory_attention", "memory_encoder"]
    assert meta.memory_weights == MEMORY_WEIGHTS_FILE
    assert meta.weight_files[MEMORY_WEIGHTS_FILE] == file_sha256(tiny_dir / MEMORY_WEIGHTS_FILE)
    tpos = load_file(str(export_dir / MEMORY_TPOS_FILE))["maskmem_tpos_enc"]
    memory = load_sam_memory(read_configs(tiny_dir)[1].sam, model_dir=tiny_dir)
    assert tpos.shape == (7, 1, 1, 64) and torch.equal(tpos, memory.maskmem_tpos_enc.detach())


def test_tracking_with_onnxruntime_memory_graphs_gives_the_torch_masks(tiny_dir, export_dir):
    want, got = compare_trackers(tiny_dir, "onnxruntime", export_dir, "cpu")
    for t, (w, g) in enumerate(zip(want, got)):
        assert np.array_equal(g.mask, w.mask), t
        assert (g.low_res_logits - w.low_res_logits).abs().max() <= ORT_TOLERANCE, t
        assert abs(g.object_score - w.object_score) <= ORT_TOLERANCE, t


@needs_tensorrt
def test_tracking_with_tensorrt_memory_engines_gives_the_torch_masks(tiny_dir, export_dir, tmp_path):
    from lens_model.export.tensorrt_build import EngineOptions, build_engines

    engines = tmp_path / "trt"
    shutil.copytree(export_dir, engines)
    build_engines(engines, EngineOptions(max_batch=4, workspace_gb=1))
    want, got = compare_trackers(tiny_dir, "tensorrt", engines, "cuda")
    for t, (w, g) in enumerate(zip(want, got)):
        assert np.mean(g.mask == w.mask) >= MIN_TRT_MASK_AGREEMENT, t
        assert (g.low_res_logits - w.low_res_logits).abs().max() <= TRT_TOLERANCE, t


def read_masks(out) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) > 0 for p in sorted((out / "masks").iterdir())]


def test_lens_track_with_onnxruntime_gives_the_torch_tracks(tiny_dir, export_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip(5)):
        Image.fromarray(frame).save(frames / f"{i}.png")
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        extra = ["--backend-dir", export_dir] if backend != "torch" else []
        code, stdout, stderr = run_cli(
            "track", "--model", tiny_dir, "--video", frames, "--prompt", "the cup", "--out-dir", out,
            "--no-progress", "--backend", backend, *extra,
        )  # fmt: skip
        assert code == 0, stderr
        assert stdout.startswith("5 frames, ") and f"(SAM2 memory on {backend})" in stdout
        records = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
        outputs[backend] = read_masks(out), [(r["source"], r["state"]) for r in records]
    (want, want_states), (got, got_states) = outputs["torch"], outputs["onnxruntime"]
    assert got_states == want_states and [s for s, _ in want_states] == ["lens"] + ["tracker"] * 4
    assert all(0 < m.mean() < 1 for m in want) and all((a != b).any() for a, b in zip(want, want[1:]))
    for t, (w, g) in enumerate(zip(want, got)):
        # frame 0 is LENS's mask (exported decoder, see test_export_backends); the rest follow it with the exported
        # memory graphs
        assert np.mean(w == g) >= MIN_MASK_AGREEMENT, t


def test_export_without_tracking_graphs_is_refused_for_tracking(tiny_dir, no_memory_export, export_dir, tmp_path):
    meta = read_metadata(no_memory_export)
    assert list(meta.graphs) == ["image_encoder", "context_head", "mask_decoder"]
    assert meta.memory is None and meta.memory_weights is None and not (no_memory_export / MEMORY_TPOS_FILE).exists()
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(clip(1)[0]).save(frames / "0.png")
    base = ["track", "--model", tiny_dir, "--video", frames, "--prompt", "x", "--out-dir", tmp_path / "out"]
    no_graphs = f"{no_memory_export} holds no tracking graphs (memory_attention, memory_encoder): it was exported "
    again = "export the model again with SAM2 memory weights: lens export --model M --out"
    cases = [
        (
            ["--backend", "onnxruntime", "--backend-dir", no_memory_export],
            [no_graphs, again, "--sam-memory-checkpoint"],
        ),
        (
            ["--backend", "onnxruntime", "--backend-dir", export_dir, "--sam-memory-checkpoint", tiny_dir / "x.pt"],
            ["--sam-memory-checkpoint is not used with --backend onnxruntime: the memory graphs come from the export"],
        ),
    ]
    for extra, expected in cases:
        code, _, stderr = run_cli(*base, *extra)
        lines = stderr.strip().splitlines()
        assert code != 0 and len(lines) == 1 and all(e in lines[0] for e in expected), stderr
    assert not (tmp_path / "out").exists()


def test_sam_memory_checkpoint_option_and_the_model_hash(tiny_dir, no_memory_export, tmp_path):
    """Memory weights passed explicitly (the released LENS has none in its directory): the export tracks, its hash
    covers them, and the model directory without them still matches the export."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model, ignore=shutil.ignore_patterns(MEMORY_WEIGHTS_FILE))
    config = LensPipeline.from_pretrained(str(model), device="cpu").config.sam
    torch.manual_seed(5)
    other = tmp_path / "weights"
    other.mkdir()
    memory_file = save_sam_memory(build_sam_memory(config), other).rename(other / "sam2_other.safetensors")
    code, stdout, stderr = run_cli(
        "export", "--model", model, "--out", tmp_path / "onnx", "--sam-memory-checkpoint", memory_file
    )
    assert code == 0, stderr
    assert "tracking: memory_attention + memory_encoder" in stdout and "lens track --model" in stdout
    meta = read_metadata(tmp_path / "onnx")
    lens_files = read_metadata(no_memory_export).weight_files
    assert meta.memory_weights == "sam2_other.safetensors"
    assert meta.weight_files == {**lens_files, "sam2_other.safetensors": file_sha256(memory_file)}
    assert meta.model_hash == combined_hash(meta.weight_files) != read_metadata(no_memory_export).model_hash
    # the checkpoint directory (without the memory file) is accepted by the backend's weights check
    pipe = LensPipeline.from_pretrained(
        str(model), device="cpu", backend="onnxruntime", backend_dir=str(tmp_path / "onnx")
    )
    tracker = StreamingTracker.from_lens_model(pipe.model, pipe.backend)
    assert torch.equal(
        tracker.sam.maskmem_tpos_enc.detach(), load_sam_memory(config, weights=memory_file).maskmem_tpos_enc
    )
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(memory_file, clash / "model.safetensors")
    with pytest.raises(ExportError, match="have the name of a checkpoint weight file; rename the file"):
        export_model(model, tmp_path / "clash_out", sam_memory_checkpoint=clash / "model.safetensors")
