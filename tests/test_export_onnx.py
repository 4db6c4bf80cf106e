"""`lens export` to ONNX: files and metadata, ONNX Runtime vs torch per graph (random inputs and the sample
photo) and chained, SAM2's dynamic multimask fallback inside the decoder graph, image-size override, bad input."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import onnx
import pytest
import torch
from conftest import REPO, SAMPLE_PHOTO, file_states, run_cli
from export_helpers import MIN_FP16_MASK_AGREEMENT, MIN_MASK_AGREEMENT, assert_close, exported, ort_run

from lens_model.errors import CheckpointError
from lens_model.export import ExportError, ExportOptions, export_model, read_metadata
from lens_model.export.graphs import MaskDecoderGraph, graph_io
from lens_model.export.metadata import GRAPH_NAMES
from lens_model.export.onnx_export import export_graph, owned_files
from lens_model.export.op_support import check_file
from lens_model.export.parts import load_segmentation_parts, sam_at_image_size
from lens_model.image_io import load_image
from lens_model.model.sam import PIXEL_MEAN, PIXEL_STD, decode_masks, encode_image, preprocess_for_sam, upsample_logits


@pytest.fixture(scope="module")
def export_dir(tiny_dir, tmp_path_factory):
    return exported(tiny_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def parts(tiny_dir):
    return load_segmentation_parts(tiny_dir)


def test_export_writes_three_graphs_and_metadata(tiny_dir, export_dir, parts):
    meta = read_metadata(export_dir)
    # the tiny model carries SAM2 memory weights (sam2_memory.safetensors): the tracking graphs are exported too
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "context_head.onnx",
        "image_encoder.onnx",
        "lens_export.json",
        "mask_decoder.onnx",
        "maskmem_tpos_enc.safetensors",
        "memory_attention.onnx",
        "memory_encoder.onnx",
    ]
    file_digest = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    memory_digest = hashlib.sha256((tiny_dir / "sam2_memory.safetensors").read_bytes()).hexdigest()
    assert meta.weight_files == {"model.safetensors": file_digest, "sam2_memory.safetensors": memory_digest}
    lines = f"model.safetensors {file_digest}\nsam2_memory.safetensors {memory_digest}\n"
    assert meta.model_hash == hashlib.sha256(lines.encode()).hexdigest()
    assert (meta.image_size, meta.num_queries, meta.hidden_size, meta.opset, meta.precision) == (
        256,
        8,
        128,
        18,
        "fp32",
    )
    assert meta.preprocessing["pixel_mean"] == list(PIXEL_MEAN) and meta.preprocessing["pixel_std"] == list(PIXEL_STD)
    assert meta.postprocessing["threshold"] == 0.0
    assert meta.decoder == {
        "multimask_output": False,
        "dynamic_multimask_via_stability": True,
        "stability_delta": 0.05,
        "stability_thresh": 0.98,
    }
    assert {"torch", "onnx", "onnxruntime", "sam2", "transformers", "python"} <= set(meta.versions)
    assert meta.tensorrt is None and "dynamo=True" in meta.exporter
    raw = json.loads((export_dir / "lens_export.json").read_text())
    assert raw["graphs"]["mask_decoder"]["outputs"][0] == {
        "name": "low_res_masks",
        "shape": ["batch", 1, 64, 64],
        "dtype": "float32",
    }
    # Every graph's inputs/outputs are what the metadata says, with a dynamic batch dimension.
    for name, graph in meta.graphs.items():
        model = onnx.load(str(export_dir / graph.onnx), load_external_data=False)
        onnx.checker.check_model(model)
        for values, specs in ((model.graph.input, graph.inputs), (model.graph.output, graph.outputs)):
            got = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]
            assert got == [(s.name, s.shape) for s in specs], name
            # float32, but the memory attention's int64 pointer-token count
            elem_types = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}
            assert [v.type.tensor_type.elem_type for v in values] == [elem_types[s.dtype] for s in specs], name


@pytest.mark.parametrize("batch", [1, 3])
def test_each_graph_matches_torch_on_random_inputs(export_dir, parts, batch):
    torch.manual_seed(batch)
    images = torch.randn(batch, 3, 256, 256)
    states = torch.randn(batch, 8, 128)
    with torch.no_grad():
        features = encode_image(parts.sam, images)
        prompt = parts.context(states)
        low_res, iou = decode_masks(parts.sam, features, prompt)
    got = ort_run(export_dir / "image_encoder.onnx", images=images)
    for out, want in zip(got, [features.image_embed, *features.high_res_feats]):
        assert_close("image_encoder", out, want)
    (got_prompt,) = ort_run(export_dir / "context_head.onnx", query_states=states)
    assert_close("context_head", got_prompt, prompt)
    got_low, got_iou = ort_run(
        export_dir / "mask_decoder.onnx",
        prompt_embed=prompt,
        image_embed=features.image_embed,
        high_res_feat_s4=features.high_res_feats[0],
        high_res_feat_s8=features.high_res_feats[1],
    )
    assert_close("mask_decoder", got_low, low_res)
    assert_close("mask_decoder", got_iou, iou)


def test_graphs_match_torch_on_the_sample_photo_and_chained(export_dir, parts):
    rgb = load_image(SAMPLE_PHOTO)
    images = preprocess_for_sam(rgb, 256)[None]  # (1, 3, 256, 256)
    states = torch.randn(2, 8, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = encode_image(parts.sam, images).select(torch.tensor([0, 0]))  # two prompts on the photo
        low_res, iou = decode_masks(parts.sam, features, parts.context(states))
    embed, s4, s8 = ort_run(export_dir / "image_encoder.onnx", images=images)
    for out, want in zip((embed, s4, s8), [features.image_embed[:1], *(f[:1] for f in features.high_res_feats)]):
        assert_close("image_encoder", out, want)
    # Chained through ONNX Runtime only: encoder -> context head -> decoder.
    (prompt,) = ort_run(export_dir / "context_head.onnx", query_states=states)
    rows = [0, 0]
    got_low, got_iou = ort_run(
        export_dir / "mask_decoder.onnx",
        prompt_embed=torch.from_numpy(prompt),
        image_embed=torch.from_numpy(embed[rows]),
        high_res_feat_s4=torch.from_numpy(s4[rows]),
        high_res_feat_s8=torch.from_numpy(s8[rows]),
    )
    assert_close("mask_decoder", got_low, low_res)
    assert_close("mask_decoder", got_iou, iou)
    hw = rgb.shape[:2]
    want_mask = upsample_logits(low_res, hw) > 0
    got_mask = upsample_logits(torch.from_numpy(got_low), hw) > 0
    agreement = (want_mask == got_mask).float().mean().item()
    assert agreement >= MIN_MASK_AGREEMENT, agreement
    assert 0 < want_mask.float().mean() < 1  # a non-trivial mask, so agreement means something


def test_fp16_export_keeps_normalisation_in_float32_and_matches_torch(tiny_dir, tmp_path_factory, parts):
    export_dir = exported(tiny_dir, tmp_path_factory, fp16=True)
    meta = read_metadata(export_dir)
    assert meta.precision == "fp16"
    for name in GRAPH_NAMES:  # the tracking graphs in fp16: tests/test_export_memory.py
        model = onnx.shape_inference.infer_shapes(onnx.load(str(export_dir / meta.graphs[name].onnx)))
        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
        types.update({i.name: i.data_type for i in model.graph.initializer})
        ops = {(n.op_type, types.get(n.input[0])) for n in model.graph.node}
        assert ("MatMul", onnx.TensorProto.FLOAT16) in ops and ("MatMul", onnx.TensorProto.FLOAT) not in ops
        assert {t for op, t in ops if op == "LayerNormalization"} == {onnx.TensorProto.FLOAT}
        io = [*model.graph.input, *model.graph.output]
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)  # callers feed float32
    rgb = load_image(SAMPLE_PHOTO)
    images = preprocess_for_sam(rgb, 256)[None]
    states = torch.randn(2, 8, 128, generator=torch.Generator().manual_seed(0))
    rows = [0, 0]
    with torch.no_grad():
        features = encode_image(parts.sam, images)
        prompt = parts.context(states)
        low_res, iou = decode_masks(parts.sam, features.select(torch.tensor(rows)), prompt)
    embed, s4, s8 = ort_run(export_dir / "image_encoder.onnx", images=images)
    for out, want in zip((embed, s4, s8), [features.image_embed, *features.high_res_feats]):
        assert_close("image_encoder", out, want, fp16=True)
    (got_prompt,) = ort_run(export_dir / "context_head.onnx", query_states=states)
    assert_close("context_head", got_prompt, prompt, fp16=True)
    got_low, got_iou = ort_run(
        export_dir / "mask_decoder.onnx",
        prompt_embed=torch.from_numpy(got_prompt),
        image_embed=torch.from_numpy(embed[rows]),
        high_res_feat_s4=torch.from_numpy(s4[rows]),
        high_res_feat_s8=torch.from_numpy(s8[rows]),
    )
    assert_close("mask_decoder", got_low, low_res, fp16=True)
    assert_close("mask_decoder", got_iou, iou, fp16=True)
    hw = rgb.shape[:2]
    agreement = (
        ((upsample_logits(low_res, hw) > 0) == (upsample_logits(torch.from_numpy(got_low), hw) > 0)).float().mean()
    )
    assert agreement.item() >= MIN_FP16_MASK_AGREEMENT, agreement


def test_decoder_graph_reproduces_the_dynamic_multimask_fallback(tiny_dir, tmp_path):
    """In eval mode SAM2 replaces an unstable single mask by the best multimask output. With the threshold set
    between the rows' stability scores, some rows fall back and some do not; the graph must do the same."""
    parts = load_segmentation_parts(tiny_dir)  # own copy: the threshold is changed below
    decoder = parts.sam.sam_mask_decoder
    gen = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.1, 20, 8).view(8, 1, 1)  # varied prompt norms give varied stability scores
    with torch.no_grad():
        features = encode_image(parts.sam, torch.randn(8, 3, 256, 256, generator=gen))
        prompt = parts.context(torch.randn(8, 8, 128, generator=gen)) * scale
        decoder.dynamic_multimask_via_stability = False
        single, _ = decode_masks(parts.sam, features, prompt)
        stability = decoder._get_stability_scores(single).flatten()
        decoder.dynamic_multimask_via_stability = True
        decoder.dynamic_multimask_stability_thresh = float(stability.median())
        low_res, iou = decode_masks(parts.sam, features, prompt)
    stable = stability >= decoder.dynamic_multimask_stability_thresh
    assert 0 < int(stable.sum()) < 8
    fell_back = (low_res - single).flatten(1).abs().amax(1) > 0
    assert torch.equal(fell_back, ~stable)  # torch: exactly the unstable rows took a multimask output
    graph = MaskDecoderGraph(parts.sam)
    inputs, outputs = graph_io(256, 8, 128)["mask_decoder"]
    export_graph(graph, inputs, outputs, tmp_path / "mask_decoder.onnx", opset=18)
    got_low, got_iou = ort_run(
        tmp_path / "mask_decoder.onnx",
        prompt_embed=prompt,
        image_embed=features.image_embed,
        high_res_feat_s4=features.high_res_feats[0],
        high_res_feat_s8=features.high_res_feats[1],
    )
    assert_close("mask_decoder", got_low, low_res)
    assert_close("mask_decoder", got_iou, iou)


def test_export_at_another_image_size(tiny_dir, tmp_path_factory, parts):
    """512 px also makes Hiera's position embedding (32 x 128 x 128) too large for the exporter's constant folding:
    the graph must hold the precomputed values, not the bicubic Resize TensorRT cannot parse."""
    export_dir = exported(tiny_dir, tmp_path_factory, image_size=512)
    meta = read_metadata(export_dir)
    assert meta.image_size == 512
    assert meta.graphs["mask_decoder"].outputs[0].shape == ["batch", 1, 128, 128]
    counts, problems = check_file(export_dir / "image_encoder.onnx")
    assert problems == [] and counts["Resize"] == 1  # the FPN's nearest-neighbour upsampling only
    sam = sam_at_image_size(parts.sam, parts.config, 512)
    images = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = encode_image(sam, images)
        prompt = parts.context(torch.randn(2, 8, 128))
        low_res, iou = decode_masks(sam, features, prompt)
    embed, s4, s8 = ort_run(export_dir / "image_encoder.onnx", images=images)
    assert embed.shape == (2, 256, 32, 32)
    for out, want in zip((embed, s4, s8), [features.image_embed, *features.high_res_feats]):
        assert_close("image_encoder", out, want)
    got_low, got_iou = ort_run(
        export_dir / "mask_decoder.onnx",
        prompt_embed=prompt,
        image_embed=features.image_embed,
        high_res_feat_s4=features.high_res_feats[0],
        high_res_feat_s8=features.high_res_feats[1],
    )
    assert got_low.shape == (2, 1, 128, 128)
    assert_close("mask_decoder", got_low, low_res)
    assert_close("mask_decoder", got_iou, iou)


def test_bad_export_requests(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        export_model(tmp_path / "no-such-model", tmp_path / "out")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists and is not empty; pass --overwrite"):
        export_model(tiny_dir, occupied)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_model(tiny_dir, a_file)
    with pytest.raises(ExportError, match="--opset must be one of"):
        export_model(tiny_dir, tmp_path / "o1", ExportOptions(opset=16))
    with pytest.raises(ExportError, match="multiple of 32"):
        export_model(tiny_dir, tmp_path / "o2", ExportOptions(image_size=200))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def _stale_export(export_dir, out):
    """An earlier export in `out` plus a user's own files, and an engine and an int8 graph of the earlier export
    that the new one (float32 ONNX only) does not write."""
    shutil.copytree(export_dir, out)
    (out / "mine.onnx").write_bytes(b"a user's own graph")
    (out / "notes.txt").write_text("mine")
    (out / "image_encoder.engine").write_bytes(b"an engine of the earlier export")
    (out / "mask_decoder.int8.onnx").write_bytes(b"an int8 graph of the earlier export")


def test_overwrite_swaps_in_the_new_export_and_keeps_the_users_files(tiny_official_dir, export_dir, tmp_path):
    out = tmp_path / "out"
    _stale_export(export_dir, out)
    users = file_states(out, exclude=[out / name for name in owned_files()])
    code, stdout, err = run_cli("export", "--model", tiny_official_dir, "--out", out, "--overwrite")
    assert code == 0, err
    assert (
        file_states(out, exclude=[out / name for name in owned_files()]) == users
    )  # mine.onnx, notes.txt as they were
    assert not (out / "image_encoder.engine").exists()  # the earlier export's engine: removed with it
    assert not (out / "mask_decoder.int8.onnx").exists()  # and its int8 graph (never read as the user's)
    assert read_metadata(out).source_model == str(tiny_official_dir)  # the new export, complete
    assert (out / "mask_decoder.onnx").read_bytes() != (export_dir / "mask_decoder.onnx").read_bytes()
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left


def test_an_interrupted_overwrite_leaves_the_earlier_export_as_it_was(tiny_dir, export_dir, tmp_path):
    """SIGKILL once the new export has written its first graph: the output folder is byte for byte the earlier
    export (and the user's files); the new files are only in the temporary folder beside it."""
    out = tmp_path / "out"
    _stale_export(export_dir, out)
    before = file_states(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "lens_cli", "export", "--model", str(tiny_dir), "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".out.*.partial/*.onnx")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-export, not finished
    assert file_states(out) == before
    assert [p.name for p in tmp_path.glob(".out.*.partial")], "the partial export is in its temporary folder"


def test_read_metadata_errors(tmp_path, export_dir):
    with pytest.raises(ExportError, match="export directory not found"):
        read_metadata(tmp_path / "missing")
    with pytest.raises(ExportError, match="has no lens_export.json"):
        read_metadata(tmp_path)
    (tmp_path / "lens_export.json").write_text("{not json")
    with pytest.raises(ExportError, match="is not valid JSON"):
        read_metadata(tmp_path)
    data = json.loads((export_dir / "lens_export.json").read_text())
    del data["graphs"]["mask_decoder"]
    (tmp_path / "lens_export.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="lists no mask_decoder graph"):
        read_metadata(tmp_path)
    data["format_version"] = 99
    (tmp_path / "lens_export.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="format_version 99"):
        read_metadata(tmp_path)
