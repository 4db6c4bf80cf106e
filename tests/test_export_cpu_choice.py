"""The per-graph CPU choice of an export (lens_model.export.cpu_choice): which ways are timed, how the fastest is
picked, what `lens export --int8` records, and that `--backend onnxruntime` on a CPU runs each graph the recorded way
— ONNX Runtime on the int8 or float32 file with the recorded fusions off, or the model's own torch module."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SAMPLE_PHOTO, run_cli
from export_helpers import exported

from lens_model.export import read_metadata
from lens_model.export.cpu_choice import CANDIDATES, SKIP_LAYER_NORM_FUSION, fastest, ways
from lens_model.export.metadata import CpuChoice, GraphSpec
from lens_model.image_io import load_image
from lens_model.inference.backends import OnnxRuntimeBackend
from lens_model.inference.pipeline import LensPipeline
from lens_model.model.sam import preprocess_for_sam

PROMPTS = ["the astronaut's helmet", "the flag on the left"]


def test_fastest_way_and_ties():
    assert fastest({"torch": 5.0, "onnxruntime": 3.0, "onnxruntime int8": 2.0}) == "onnxruntime int8"
    assert fastest({"torch": 2.0, "onnxruntime": 3.0}) == "torch"  # ONNX Runtime slower: torch runs it
    assert fastest({"onnxruntime int8": 2.0, "onnxruntime": 2.0, "torch": 2.0}) == "torch"  # a tie: the reference
    assert fastest({"onnxruntime int8": 2.0, "onnxruntime": 2.0}) == "onnxruntime"  # float32 before int8


def test_ways_of_each_graph():
    io = dict(inputs=[], outputs=[])
    decoder = GraphSpec("mask_decoder", "mask_decoder.onnx", **io, int8_onnx="mask_decoder.int8.onnx")
    assert [w.name for w in ways(decoder)] == list(CANDIDATES)
    assert [(w.onnx, w.disabled_optimizers) for w in ways(decoder)][1:3] == [
        ("mask_decoder.onnx", ()),
        ("mask_decoder.onnx", (SKIP_LAYER_NORM_FUSION,)),
    ]
    # no int8 file: float32 ways only; a tracking graph: no torch way (a LENS model has no torch memory modules)
    assert [w.name for w in ways(GraphSpec("context_head", "c.onnx", **io))] == list(CANDIDATES[:3])
    assert [w.runtime for w in ways(GraphSpec("memory_attention", "m.onnx", **io))] == ["onnxruntime"] * 2


@pytest.fixture(scope="module")
def model_dir(tiny_grounding_dir):
    return tiny_grounding_dir


@pytest.fixture(scope="module")
def torch_pipe(model_dir):
    return LensPipeline.from_pretrained(str(model_dir), device="cpu", max_new_tokens=40)


def test_lens_export_int8_times_every_way_and_records_the_fastest(model_dir, tmp_path):
    out = tmp_path / "onnx"
    code, stdout, stderr = run_cli("export", "--model", model_dir, "--out", out, "--int8")
    assert code == 0, stderr
    meta = read_metadata(out)
    for name, graph in meta.graphs.items():
        assert (out / graph.int8_onnx).is_file() and graph.int8_onnx == f"{name}.int8.onnx"
        choice = graph.cpu
        assert set(choice.ms) == {w.name for w in ways(graph)} and all(ms > 0 for ms in choice.ms.values())
        best = next(w for w in ways(graph) if w.name == fastest(choice.ms))
        assert (choice.runtime, choice.disabled_optimizers) == (best.runtime, list(best.disabled_optimizers))
        assert choice.onnx == (best.onnx or graph.onnx)
        assert f"runs: {'torch' if best.runtime == 'torch' else 'onnxruntime on ' + choice.onnx}" in stdout
    assert json.loads((out / "lens_export.json").read_text())["graphs"]["mask_decoder"]["cpu"]["threads"] >= 1
    code, stdout, _ = run_cli("export", "--model", model_dir, "--out", tmp_path / "untimed", "--no-cpu-timing")
    assert code == 0 and "on this CPU" not in stdout
    assert all(g.cpu is None and g.int8_onnx is None for g in read_metadata(tmp_path / "untimed").graphs.values())


def with_choices(export_dir, target, choices: dict[str, CpuChoice]):
    """A copy of `export_dir` whose metadata records `choices` (graph -> CpuChoice), as a timing could have."""
    shutil.copytree(export_dir, target)
    meta = read_metadata(target)
    for name, choice in choices.items():
        meta.graphs[name].cpu = choice
    meta.save(target)
    return target


def test_backend_runs_each_graph_the_recorded_way(model_dir, torch_pipe, tmp_path_factory):
    """Decoder recorded faster in torch, encoder in int8 with SkipLayerNorm fusion off, context head float32: the
    pipeline's decoder is the model's torch module (its ONNX session is never opened), the encoder session runs the
    int8 file, and the masks still agree with torch's."""
    source = exported(model_dir, tmp_path_factory, int8=True)
    choices = {
        "mask_decoder": CpuChoice("torch", "mask_decoder.onnx", [], {"torch": 1.0}, 2),
        "image_encoder": CpuChoice("onnxruntime", "image_encoder.int8.onnx", [SKIP_LAYER_NORM_FUSION], {}, 2),
        "context_head": CpuChoice("onnxruntime", "context_head.onnx", [], {}, 2),
    }
    export_dir = with_choices(source, tmp_path_factory.mktemp("choices") / "onnx", choices)
    pipe = LensPipeline.from_pretrained(
        str(model_dir), device="cpu", max_new_tokens=40, backend="onnxruntime", backend_dir=str(export_dir)
    )
    backend = pipe.backend
    assert backend.torch_graphs == {"mask_decoder"} and "mask_decoder" not in backend.sessions
    assert backend.files["image_encoder"].name == "image_encoder.int8.onnx"
    assert backend.files["context_head"].name == "context_head.onnx"
    assert backend.files["memory_attention"].name == "memory_attention.int8.onnx"  # --int8 untimed: int8
    torch_decoder_calls = []
    pipe.model.sam.sam_mask_decoder.register_forward_hook(lambda *_: torch_decoder_calls.append(1))
    got, want = pipe(SAMPLE_PHOTO, PROMPTS), torch_pipe(SAMPLE_PHOTO, PROMPTS)
    assert len(torch_decoder_calls) == 1  # one batched decoder call for both prompts, in torch
    assert "mask_decoder" not in backend.sessions
    for a, b in zip(got, want):
        assert a.text == b.text and np.mean(a.mask == b.mask) >= 0.99
    # Without the model (a backend opened on its own) or told not to follow the timings: ONNX Runtime on every graph
    alone = OnnxRuntimeBackend(export_dir)
    features = alone.encode_images(preprocess_for_sam(load_image(SAMPLE_PHOTO), alone.image_size)[None])
    states = torch.randn(1, alone.meta.num_queries, alone.meta.hidden_size)
    assert alone.decode(alone.prompt_embeddings(states), features)[0].shape[0] == 1
    assert "mask_decoder" in alone.sessions
    plain = OnnxRuntimeBackend(export_dir, follow_cpu_choice=False)
    assert not plain.torch_graphs and all(not p.name.endswith(".int8.onnx") for p in plain.files.values())


def test_cpu_choice_survives_the_json_round_trip():
    choice = CpuChoice("onnxruntime", "x.int8.onnx", [SKIP_LAYER_NORM_FUSION], {"onnxruntime": 1.5}, 2)
    spec = GraphSpec("context_head", "x.onnx", [], [], int8_onnx="x.int8.onnx", cpu=choice)
    again = GraphSpec(**json.loads(json.dumps(dataclasses.asdict(spec))))
    assert again == spec and isinstance(again.cpu, CpuChoice)
