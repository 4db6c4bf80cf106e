"""SAM2's tracking graphs (memory attention, memory encoder): the real-valued RoPE against sam2's complex one,
ONNX Runtime against the torch modules over memory sizes, TensorRT's operator table, the metadata, and
`SAM2Base.track_step` over a clip with the drop-in modules against torch."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from export_helpers import FP16_TOLERANCE, ort_run

from lens_model.export import (
    ExportError,
    ExportOptions,
    OnnxMemoryAttention,
    export_parts,
    read_metadata,
    use_exported_memory_modules,
)
from lens_model.export.memory_graphs import MemoryAttentionGraph, RotaryTable
from lens_model.export.onnx_export import export_memory_graphs
from lens_model.export.op_support import check_file, load_operator_table
from lens_model.export.parts import SegmentationParts
from lens_model.export.tensorrt_runtime import tensorrt_available
from lens_model.inference.backends import OnnxRuntimeBackend
from lens_model.model.context import ContextHead
from lens_model.model.tiny import tiny_lens_config

IMAGE_SIZE = 128  # small: 8x8 = 64 tokens per frame
HW = (IMAGE_SIZE // 16) ** 2
HIDDEN = 64  # width of the (unused here) query states of the context head
# ONNX Runtime (CPU, float32) against torch (CPU, float32): observed max abs diff ~2e-6 (memory attention, outputs
# of magnitude ~4) and ~1e-6 (memory encoder).
TOLERANCE = (1e-4, 1e-4)
# track_step over the clip with the drop-in modules against torch: every output, max abs diff. Observed ~3e-7
# (mask logits), ~1e-6 (memory features). Tight on purpose: with random weights, feeding the pointer tokens through
# RoPE changes the mask logits by only ~1e-4.
TRACK_TOLERANCE = 1e-5
# Memory sizes: (spatial memory frames, object-pointer tokens), as SAM2 builds them (7 frames, 16 pointers x 4).
MEMORY_SIZES = [(1, 0), (1, 4), (3, 4), (7, 16), (7, 64)]


def build_tracking_sam(seed: int = 0):
    """A seeded random tiny SAM2 (Hiera-T layout) with its memory modules, as sam2 builds it for video."""
    from sam2.build_sam import build_sam2

    config = tiny_lens_config(sam_image_size=IMAGE_SIZE)
    torch.manual_seed(seed)
    sam = build_sam2(
        config.sam.config_name,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=list(config.sam.overrides),
    )
    return sam.float().eval(), config


@pytest.fixture(scope="module")
def tracking_sam():
    return build_tracking_sam()[0]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    sam, config = build_tracking_sam()
    torch.manual_seed(1)
    parts = SegmentationParts(sam, ContextHead(HIDDEN, config).float().eval(), config, HIDDEN)
    out = tmp_path_factory.mktemp("export") / "tracking"
    export_parts(parts, out, ExportOptions())
    return out


def random_memory(frames: int, pointers: int, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """sam2's sequence-first inputs of the memory attention."""
    gen = torch.Generator().manual_seed(seed)
    length = frames * HW + pointers
    return {
        "curr": torch.randn(HW, batch, 256, generator=gen),
        "curr_pos": torch.randn(HW, batch, 256, generator=gen),
        "memory": torch.randn(length, batch, 64, generator=gen),
        "memory_pos": torch.randn(length, batch, 64, generator=gen),
    }


def batch_first(inputs: dict[str, torch.Tensor], pointers: int) -> dict[str, torch.Tensor]:
    feeds = {k: v.transpose(0, 1).contiguous() for k, v in inputs.items()}
    return {**feeds, "num_obj_ptr_tokens": torch.tensor([pointers])}


# ---------------------------------------------------------------------------- RoPE without complex numbers
def test_real_valued_rope_equals_sam2_complex_rope(tracking_sam):
    """The cos/sin rotation is sam2's complex multiplication, for queries, for keys of stacked frames
    (rope_k_repeat) and with the trailing pointer tokens left unrotated. Closed form: only float32 rounding,
    observed 0; tolerance 1e-6."""
    from sam2.modeling.position_encoding import apply_rotary_enc

    attention = tracking_sam.memory_attention.layers[0].cross_attn_image
    rope = RotaryTable(attention, IMAGE_SIZE // 16)
    freqs = attention.compute_cis(end_x=IMAGE_SIZE // 16, end_y=IMAGE_SIZE // 16)  # complex (HW, d/2)
    assert torch.allclose(torch.complex(rope.cos, rope.sin), freqs) and torch.allclose(freqs.abs(), torch.ones(1))
    gen = torch.Generator().manual_seed(0)
    d = attention.internal_dim // attention.num_heads
    q = torch.randn(2, attention.num_heads, HW, d, generator=gen)
    spatial = torch.randn(2, attention.num_heads, 3 * HW, d, generator=gen)
    pointers = torch.randn(2, attention.num_heads, 8, d, generator=gen)
    want_q, want_k = apply_rotary_enc(q, spatial, freqs_cis=freqs, repeat_freqs_k=True)
    got_k = rope.keys(torch.cat([spatial, pointers], dim=2), torch.tensor([8]))
    assert (rope.queries(q) - want_q).abs().max() <= 1e-6
    assert (got_k[:, :, : 3 * HW] - want_k).abs().max() <= 1e-6
    assert torch.equal(got_k[:, :, 3 * HW :], pointers)  # pointer tokens: no RoPE
    assert (want_q - q).abs().max() > 0.1  # the rotation does something


@pytest.mark.parametrize("frames, pointers", MEMORY_SIZES)
def test_memory_attention_graph_module_equals_sam2(tracking_sam, frames, pointers):
    """The export wrapper in torch (tensor pointer count, batch-first) against sam2's MemoryAttention."""
    inputs = random_memory(frames, pointers, batch=2, seed=frames + pointers)
    graph = MemoryAttentionGraph(tracking_sam.memory_attention, IMAGE_SIZE).eval()
    with torch.no_grad():
        want = tracking_sam.memory_attention(**inputs, num_obj_ptr_tokens=pointers)
        got = graph(**batch_first(inputs, pointers)).transpose(0, 1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- ONNX Runtime against torch
@pytest.mark.parametrize("frames, pointers", MEMORY_SIZES)
@pytest.mark.parametrize("batch", [1, 2])
def test_memory_attention_onnx_matches_torch(export_dir, tracking_sam, frames, pointers, batch):
    inputs = random_memory(frames, pointers, batch, seed=10 * frames + pointers)
    with torch.no_grad():
        want = tracking_sam.memory_attention(**inputs, num_obj_ptr_tokens=pointers).transpose(0, 1)
    (got,) = ort_run(export_dir / "memory_attention.onnx", **batch_first(inputs, pointers))
    assert got.shape == (batch, HW, 256)
    np.testing.assert_allclose(got, want.numpy(), atol=TOLERANCE[0], rtol=TOLERANCE[1])
    if pointers:  # the pointer count is honoured: treating the pointers as spatial memory changes the output
        (wrong,) = ort_run(export_dir / "memory_attention.onnx", **batch_first(inputs, 0))
        assert np.abs(wrong - want.numpy()).max() > 100 * TOLERANCE[0]


@pytest.mark.parametrize("batch", [1, 3])
def test_memory_encoder_onnx_matches_torch(export_dir, tracking_sam, batch):
    gen = torch.Generator().manual_seed(batch)
    pix_feat = torch.randn(batch, 256, IMAGE_SIZE // 16, IMAGE_SIZE // 16, generator=gen)
    masks = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    with torch.no_grad():
        want = tracking_sam.memory_encoder(pix_feat, masks, skip_mask_sigmoid=True)
    features, pos = ort_run(export_dir / "memory_encoder.onnx", pix_feat=pix_feat, masks=masks)
    np.testing.assert_allclose(features, want["vision_features"].numpy(), atol=TOLERANCE[0], rtol=TOLERANCE[1])
    np.testing.assert_allclose(pos, want["vision_pos_enc"][0].numpy(), atol=TOLERANCE[0], rtol=TOLERANCE[1])


def test_fp16_tracking_graphs_stay_close_to_torch(tracking_sam, tmp_path):
    """`lens export --fp16`: float16 compute (RoPE rotation and normalisation layers in float32). Observed max abs
    diff ~1.6e-3 (memory attention, outputs of magnitude ~4.5) and ~6e-4 (memory encoder)."""
    graphs, _ = export_memory_graphs(tracking_sam, IMAGE_SIZE, tmp_path, ExportOptions(fp16=True))
    assert all(check_file(tmp_path / g.onnx)[1] == [] for g in graphs.values())
    for frames, pointers in [(1, 4), (7, 64)]:
        inputs = random_memory(frames, pointers, batch=2, seed=frames)
        with torch.no_grad():
            want = tracking_sam.memory_attention(**inputs, num_obj_ptr_tokens=pointers).transpose(0, 1)
        (got,) = ort_run(tmp_path / "memory_attention.onnx", **batch_first(inputs, pointers))
        np.testing.assert_allclose(got, want.numpy(), atol=FP16_TOLERANCE[0], rtol=FP16_TOLERANCE[1])
    pix_feat, masks = torch.randn(2, 256, 8, 8), torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        want = tracking_sam.memory_encoder(pix_feat, masks, skip_mask_sigmoid=True)
    features, pos = ort_run(tmp_path / "memory_encoder.onnx", pix_feat=pix_feat, masks=masks)
    np.testing.assert_allclose(
        features, want["vision_features"].numpy(), atol=FP16_TOLERANCE[0], rtol=FP16_TOLERANCE[1]
    )
    np.testing.assert_allclose(pos, want["vision_pos_enc"][0].numpy(), atol=FP16_TOLERANCE[0], rtol=FP16_TOLERANCE[1])


# ---------------------------------------------------------------------------- files, metadata, TensorRT table
def test_export_writes_tracking_graphs_and_metadata(export_dir, tracking_sam):
    meta = read_metadata(export_dir)
    assert list(meta.graphs) == ["image_encoder", "context_head", "mask_decoder", "memory_attention", "memory_encoder"]
    assert meta.memory == {"mem_dim": 64, "num_maskmem": 7, "max_obj_ptrs_in_encoder": 16}
    attention = meta.graphs["memory_attention"]
    assert attention.dynamic_dims == {"memory_tokens": [1, 7 * HW + 64, 7 * HW + 64]}
    assert [(t.name, t.shape, t.dtype) for t in attention.inputs] == [
        ("curr", ["batch", HW, 256], "float32"),
        ("curr_pos", ["batch", HW, 256], "float32"),
        ("memory", ["batch", "memory_tokens", 64], "float32"),
        ("memory_pos", ["batch", "memory_tokens", 64], "float32"),
        ("num_obj_ptr_tokens", [1], "int64"),
    ]
    assert meta.graphs["memory_encoder"].dynamic_dims == {}
    assert [t.shape for t in meta.graphs["memory_encoder"].outputs] == [["batch", 64, 8, 8]] * 2
    for name in ("memory_attention", "memory_encoder"):
        model = onnx.load(str(export_dir / f"{name}.onnx"))
        onnx.checker.check_model(model)
        got = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in model.graph.input]
        assert got == [(t.name, t.shape) for t in meta.graphs[name].inputs]


@pytest.mark.parametrize("graph", ["memory_attention", "memory_encoder"])
def test_tracking_graphs_use_only_operators_tensorrt_parses(export_dir, graph):
    counts, problems = check_file(export_dir / f"{graph}.onnx")
    print(f"{graph}: {dict(sorted(counts.items()))}")
    assert counts and all(load_operator_table()[op].supported for op in counts)
    assert problems == []


def test_tracking_graphs_come_in_pairs(export_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    data = json.loads((broken / "lens_export.json").read_text())
    del data["graphs"]["memory_encoder"]
    (broken / "lens_export.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="lists memory_attention without the rest of SAM2's tracking export"):
        read_metadata(broken)
    del data["graphs"]["memory_attention"]
    data["memory"] = None
    (broken / "lens_export.json").write_text(json.dumps(data))
    backend = OnnxRuntimeBackend(broken)  # a valid export without tracking graphs
    with pytest.raises(ExportError, match="holds no tracking graphs"):
        OnnxMemoryAttention(backend)


# ---------------------------------------------------------------------------- track_step with the drop-in modules
def clip(frames: int = 8) -> torch.Tensor:
    """(T, 3, S, S): a smooth random scene with a bright square moving right and down."""
    gen = torch.Generator().manual_seed(3)
    scene = torch.nn.functional.interpolate(torch.randn(1, 3, 16, 16, generator=gen), size=IMAGE_SIZE, mode="bilinear")
    out = scene.repeat(frames, 1, 1, 1)
    for t in range(frames):
        y, x = 30 + 4 * t, 20 + 6 * t
        out[t, :, y : y + 40, x : x + 40] += 3.0
    return out


def track(sam, images: torch.Tensor, first_mask: torch.Tensor) -> list[dict]:
    """SAM2's video tracking loop: frame 0 conditioned on `first_mask`, the others on the memory bank."""
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    with torch.no_grad():
        for t in range(images.shape[0]):
            backbone = sam.forward_image(images[t : t + 1])
            _, feats, pos, sizes = sam._prepare_backbone_features(backbone)
            out = sam.track_step(
                frame_idx=t,
                is_init_cond_frame=t == 0,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=first_mask if t == 0 else None,
                output_dict=output_dict,
                num_frames=images.shape[0],
            )
            output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
            outputs.append(out)
    return outputs


def test_track_step_with_exported_memory_modules_matches_torch(export_dir):
    images = clip()
    first_mask = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    first_mask[..., 30:70, 20:60] = 1.0
    sam, _ = build_tracking_sam()
    want = track(sam, images, first_mask)
    use_exported_memory_modules(sam, OnnxRuntimeBackend(export_dir))
    got = track(sam, images, first_mask)
    masks = [o["pred_masks"] > 0 for o in want]
    # Not vacuous: the masks change from frame to frame and are neither empty nor full.
    assert all(0 < m.float().mean() < 1 for m in masks)
    assert all((a != b).any() for a, b in zip(masks, masks[1:]))
    for t, (w, g) in enumerate(zip(want, got)):
        assert torch.equal(g["pred_masks"] > 0, w["pred_masks"] > 0), t
        for key in ("pred_masks", "object_score_logits", "obj_ptr", "maskmem_features"):
            assert (g[key] - w[key]).abs().max() <= TRACK_TOLERANCE, (t, key)
        assert torch.equal(g["maskmem_pos_enc"][0], w["maskmem_pos_enc"][0]), t


@pytest.mark.parametrize("frames, pointers", [(3, 4), (7, 64)])
def test_drop_in_memory_attention_takes_sam2_arguments(export_dir, tracking_sam, frames, pointers):
    """The drop-in module called as SAM2Base calls memory attention (sequence-first, lists, an int count)."""
    inputs = random_memory(frames, pointers, batch=2, seed=frames)
    module = OnnxMemoryAttention(OnnxRuntimeBackend(export_dir))
    call = {**inputs, "curr": [inputs["curr"]], "curr_pos": [inputs["curr_pos"]], "num_obj_ptr_tokens": pointers}
    with torch.no_grad():
        want = tracking_sam.memory_attention(**call)
    got = module(**call)
    assert got.shape == want.shape == (HW, 2, 256)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=TOLERANCE[0], rtol=TOLERANCE[1])
    with pytest.raises(ValueError, match="takes curr \\(64, B, 256\\) \\(the image size 128"):
        module(**{**call, "curr": [inputs["curr"][:16]]})


# ---------------------------------------------------------------------------- TensorRT
def test_tensorrt_profile_covers_every_memory_size(export_dir):
    from lens_model.export.tensorrt_build import _profile_dims

    meta = read_metadata(export_dir)
    graph = meta.graphs["memory_attention"]
    memory = next(t for t in graph.inputs if t.name == "memory")
    full = 7 * HW + 64  # 7 frames of spatial memory + 16 pointers of 4 tokens
    assert [_profile_dims(graph, memory.shape, b, i) for i, b in enumerate((1, 2, 4))] == [
        (1, 1, 64),
        (2, full, 64),
        (4, full, 64),
    ]
    assert _profile_dims(graph, [1], 4, 2) == (1,)  # the pointer count has no batch dimension
    graph.dynamic_dims = {}
    with pytest.raises(ExportError, match="dynamic dimension 'memory_tokens' has no range in lens_export.json"):
        _profile_dims(graph, memory.shape, 1, 0)


needs_tensorrt = pytest.mark.skipif(not tensorrt_available(), reason="needs a CUDA GPU with TensorRT")
TRT_FP32_TOLERANCE = 5e-3  # TF32 matrix products (see test_export_tensorrt.py)


@pytest.fixture(scope="module")
def tracking_engines(export_dir, tmp_path_factory):
    from lens_model.export.tensorrt_build import EngineOptions, build_engines

    target = tmp_path_factory.mktemp("trt") / "tracking"
    shutil.copytree(export_dir, target)
    build_engines(target, EngineOptions(max_batch=4, workspace_gb=1))
    return target


@needs_tensorrt
@pytest.mark.parametrize("frames, pointers", [(1, 4), (7, 64)])
@pytest.mark.parametrize("batch", [1, 6])  # 6 > max batch 4: two chunks, the pointer count fed to both
def test_tracking_engines_match_torch(tracking_engines, tracking_sam, frames, pointers, batch):
    from lens_model.inference.backends import TensorRTBackend

    meta = read_metadata(tracking_engines)
    assert all((tracking_engines / g.engine).is_file() for g in meta.graphs.values()) and len(meta.graphs) == 5
    backend = TensorRTBackend(tracking_engines, device="cuda")
    inputs = random_memory(frames, pointers, batch, seed=frames)
    with torch.no_grad():
        want = tracking_sam.memory_attention(**inputs, num_obj_ptr_tokens=pointers)
    got = OnnxMemoryAttention(backend)(**{k: v.cuda() for k, v in inputs.items()}, num_obj_ptr_tokens=pointers)
    np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), atol=TRT_FP32_TOLERANCE, rtol=TRT_FP32_TOLERANCE)
