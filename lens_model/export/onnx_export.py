"""Export a LENS checkpoint's segmentation part to three ONNX graphs plus `lens_export.json`, and SAM2's two
tracking graphs (memory attention, memory encoder; see memory_graphs.py) with the memory slots' temporal position
encoding (`maskmem_tpos_enc.safetensors`) when SAM2 memory weights are given or in the model directory.

Exporter: torch.onnx.export with dynamo=True (the torch.export-based exporter, torch's default since 2.9; the
TorchScript exporter is deprecated). Opset 18 by default; 17-20 accepted, the range TensorRT 10's ONNX parser
reads that still has LayerNormalization. Every input and output has a dynamic batch dimension (except the
memory attention's pointer-token count); the memory attention's memory length is dynamic too; all other
dimensions are fixed by the model (image size S, N queries, hidden size). Weights go inside each .onnx file,
or into NAME.onnx.data next to it when a graph is over 2 GB (the LENS-3B context head is close).
`fp16` exports graphs that compute in float16 with float32 normalisation layers (see graphs.py); their inputs
and outputs stay float32, so every runtime feeds them the same way. `int8` adds NAME.int8.onnx, a dynamic int8
version of each graph for CPUs (quantize.py). `cpu_timing` times every way of running each graph on this CPU and
records the fastest in the metadata, which `--backend onnxruntime` follows on a CPU (cpu_choice.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LensError
from ..outputs import check_output_dir, check_writable_folder
from .graphs import ContextHeadGraph, ImageEncoderGraph, MaskDecoderGraph, example_inputs, graph_io
from .memory_graphs import MemoryAttentionGraph, MemoryEncoderGraph, memory_graph_io, memory_token_profile
from .metadata import (
    GRAPH_NAMES,
    MEMORY_GRAPH_NAMES,
    MEMORY_TOKENS,
    MEMORY_TPOS_FILE,
    METADATA_FILE,
    POSTPROCESSING,
    TIMING_CACHE,
    CpuChoice,
    ExportError,
    ExportMetadata,
    GraphSpec,
    TensorSpec,
    default_preprocessing,
    library_versions,
    model_hash,
)
from .op_support import DEFAULT_OPSET, SUPPORTED_OPSETS, main_opset
from .parts import SegmentationParts, load_segmentation_parts, sam_at_image_size
from .quantize import int8_name

log = logging.getLogger(__name__)

EXPORTER = "torch.onnx.export(dynamo=True)"


def owned_files() -> frozenset[str]:
    """The names of the files `lens export` writes (graphs, their external data, engines, SAM2's memory encoding,
    the TensorRT timing cache, lens_export.json): the only files --overwrite replaces or removes in an existing
    folder; any other file there (a user's own .onnx too) is left alone."""
    names = {METADATA_FILE, MEMORY_TPOS_FILE, TIMING_CACHE}
    for graph in (*GRAPH_NAMES, *MEMORY_GRAPH_NAMES):
        int8 = int8_name(f"{graph}.onnx")  # --int8
        names |= {f"{graph}.onnx", f"{graph}.onnx.data", f"{graph}.engine", int8, f"{int8}.data"}
    return frozenset(names)


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    image_size: int | None = None  # SAM2 input side; None keeps the model's
    fp16: bool = False  # compute in float16, normalisation layers in float32 (inputs and outputs stay float32)
    overwrite: bool = False
    int8: bool = False  # also write NAME.int8.onnx: dynamic int8 quantisation for CPUs
    # time torch / ONNX Runtime (/ int8) per graph on this CPU and record the fastest (lens export does by default;
    # off here so that library callers and tests get ONNX Runtime on every graph, whatever the machine's load)
    cpu_timing: bool = False

    def validate(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise ExportError(
                f"--opset must be one of {list(SUPPORTED_OPSETS)} (TensorRT 10 parses opsets 9-20; "
                f"LayerNormalization needs 17), got {self.opset}"
            )
        if self.int8 and self.fp16:
            raise ExportError("--int8 quantises the float32 graphs for CPUs; --fp16 graphs are for GPUs: pass one")
        if self.image_size is not None and (self.image_size < 64 or self.image_size % 32):
            raise ExportError(
                f"--image-size must be a multiple of 32 and at least 64 (SAM2's Hiera downsamples by 32), "
                f"got {self.image_size}"
            )


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """An existing non-empty output directory is refused unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} is a file; pass a directory to --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(
            f"output directory {out_dir} already exists and is not empty; pass --overwrite to replace the export in it"
        )


@contextlib.contextmanager
def staged_export(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `out_dir` to build an export in; when the block completes, its files are swapped
    into `out_dir` (`_swap_in`), and on an error (or an interruption) `out_dir` is left as it was and the temporary
    folder removed. A process killed outright leaves the folder `.NAME.*.partial` beside `out_dir`, never a
    half-written export in it."""
    check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    check_writable_folder(out_dir.parent, f"--out {out_dir}")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield staging
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move a complete export from `staging` into `out_dir`. A new folder is one rename. Into an existing one: the
    old lens_export.json goes first (so that no moment shows metadata describing graphs being replaced; backends
    refuse a folder without it), then the new files one rename each, the old export's files the new one lacks are
    removed, and the new lens_export.json comes last. Files the export does not own are not touched."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    new = {path.name for path in staging.iterdir()}
    (out_dir / METADATA_FILE).unlink(missing_ok=True)
    for name in sorted(new - {METADATA_FILE}):
        os.replace(staging / name, out_dir / name)
    for name in sorted(owned_files() - new):
        (out_dir / name).unlink(missing_ok=True)
    os.replace(staging / METADATA_FILE, out_dir / METADATA_FILE)


def _check_saved_graph(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], opset: int) -> None:
    """The saved graph has the promised names, static dimensions and opset (export bugs surface here, not at
    runtime)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    version = main_opset(model)
    if version != opset:
        raise ExportError(f"{path.name}: the exporter wrote opset {version}, not the requested {opset}; try --opset 18")
    for kind, values, specs in (("input", model.graph.input, inputs), ("output", model.graph.output, outputs)):
        got = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]
        want = [(s.name, s.shape) for s in specs]
        if got != want:
            raise ExportError(f"{path.name}: graph {kind}s {got} do not match the expected {want}")


def export_graph(
    module: torch.nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path, opset: int
) -> None:
    """One module -> one ONNX file; the dimensions named in the specs (the batch, the memory length) are dynamic."""
    module = module.eval()
    # batch 2: torch.export specialises dimensions of size 1; the memory length an odd size no fixed dimension has
    args = example_inputs(inputs, batch=2, dims={MEMORY_TOKENS: 37})
    with torch.no_grad():
        module(*args)  # fills SAM2's position-encoding caches, so the export sees constants
    dims = {name: torch.export.Dim(name, min=1) for spec in inputs for name in spec.shape if isinstance(name, str)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dimension renaming notes, deprecation notes of dependencies
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_shapes=tuple({i: dims[d] for i, d in enumerate(s.shape) if isinstance(d, str)} for s in inputs),
        )
    program.save(str(path))
    _check_saved_graph(path, inputs, outputs, opset)


def export_parts(
    parts: SegmentationParts,
    out_dir: str | Path,
    options: ExportOptions,
    source_model: str = "",
    weights: tuple[str, dict[str, str]] = ("", {}),
    engines=None,
) -> ExportMetadata:
    """SAM2 + context head -> DIR/{image_encoder,context_head,mask_decoder}.onnx + DIR/lens_export.json, and
    DIR/memory_{attention,encoder}.onnx + DIR/maskmem_tpos_enc.safetensors when SAM2 has its memory modules
    (tracking); with `engines` (lens_model.export.tensorrt_build.EngineOptions) the TensorRT engines too. Built in a
    temporary folder and swapped into DIR when complete (`staged_export`). `weights` = (model hash, {file: sha256})
    of the checkpoint (and memory weights) the parts came from."""
    options.validate()
    with staged_export(Path(out_dir), options.overwrite) as staging:
        meta = _write_export(parts, staging, options, source_model, weights)
        if engines is not None:
            from .tensorrt_build import build_engines

            meta = build_engines(staging, engines)
    return meta


def _write_export(
    parts: SegmentationParts, out_dir: Path, options: ExportOptions, source_model: str, weights: tuple[str, dict]
) -> ExportMetadata:
    image_size = options.image_size or parts.config.sam.image_size
    sam = sam_at_image_size(parts.sam, parts.config, image_size)
    io = graph_io(image_size, parts.config.num_queries, parts.hidden_size, parts.config.sam_embed_dim)
    fp16 = options.fp16
    modules = {
        "image_encoder": ImageEncoderGraph(sam, image_size, fp16),
        "context_head": ContextHeadGraph(parts.context, fp16),
        "mask_decoder": MaskDecoderGraph(sam, fp16),
    }
    graphs = {}
    for name in GRAPH_NAMES:
        inputs, outputs = io[name]
        log.info("exporting %s", name)
        export_graph(modules[name], inputs, outputs, out_dir / f"{name}.onnx", options.opset)
        graphs[name] = GraphSpec(name, f"{name}.onnx", inputs, outputs)
    memory = None
    if hasattr(parts.sam, "memory_attention"):  # SAM2 with its memory modules: the tracking graphs too
        memory_graphs, memory = export_memory_graphs(parts.sam, image_size, out_dir, options)
        graphs.update(memory_graphs)
    if options.int8:
        from .quantize import quantize_graph

        for name, graph in graphs.items():
            log.info("quantising %s to int8", name)
            graph.int8_onnx = int8_name(graph.onnx)
            quantize_graph(out_dir / graph.onnx, out_dir / graph.int8_onnx)
    if options.cpu_timing and not fp16:  # float16 graphs are for GPUs: not timed on the CPU
        from .cpu_choice import measure_cpu_choices

        log.info("timing every graph on this CPU: torch, ONNX Runtime%s", " and int8" if options.int8 else "")
        for name, choice in measure_cpu_choices(graphs, out_dir, modules).items():
            graphs[name].cpu = choice
    elif options.int8:  # asked for int8 without timing it: the int8 graphs are what runs on a CPU
        for graph in graphs.values():
            graph.cpu = CpuChoice(runtime="onnxruntime", onnx=graph.int8_onnx, disabled_optimizers=[], ms={}, threads=0)
    decoder = sam.sam_mask_decoder
    meta = ExportMetadata(
        source_model=source_model,
        model_hash=weights[0],
        weight_files=weights[1],
        image_size=image_size,
        num_queries=parts.config.num_queries,
        hidden_size=parts.hidden_size,
        sam_embed_dim=parts.config.sam_embed_dim,
        opset=options.opset,
        exporter=EXPORTER,
        precision="fp16" if fp16 else "fp32",
        graphs=graphs,
        preprocessing=default_preprocessing(image_size),
        postprocessing=dict(POSTPROCESSING),
        decoder={
            "multimask_output": False,
            "dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
            "stability_delta": float(decoder.dynamic_multimask_stability_delta),
            "stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
        },
        versions=library_versions(),
        memory=memory,
        memory_weights=parts.memory_weights.name if memory is not None and parts.memory_weights else None,
    )
    meta.save(out_dir)
    return meta


def export_memory_graphs(
    sam: torch.nn.Module, image_size: int, out_dir: Path, options: ExportOptions
) -> tuple[dict[str, GraphSpec], dict[str, int]]:
    """SAM2's memory attention and memory encoder -> DIR/memory_{attention,encoder}.onnx, for `image_size` (no
    weight of theirs depends on it; their position encodings do), and SAM2's `maskmem_tpos_enc` -> DIR/
    maskmem_tpos_enc.safetensors (float32). -> (graph specs, memory settings)."""
    from safetensors.torch import save_file

    mem_dim = int(sam.mem_dim)
    max_obj_ptrs = int(sam.max_obj_ptrs_in_encoder) if sam.use_obj_ptrs_in_encoder else 0
    io = memory_graph_io(image_size, mem_dim, int(sam.hidden_dim))
    modules = {
        "memory_attention": MemoryAttentionGraph(sam.memory_attention, image_size, options.fp16),
        "memory_encoder": MemoryEncoderGraph(sam.memory_encoder, options.fp16),
    }
    tokens = memory_token_profile(image_size, int(sam.num_maskmem), max_obj_ptrs, mem_dim, int(sam.hidden_dim))
    graphs = {}
    for name in MEMORY_GRAPH_NAMES:
        inputs, outputs = io[name]
        log.info("exporting %s", name)
        export_graph(modules[name], inputs, outputs, out_dir / f"{name}.onnx", options.opset)
        dynamic = {MEMORY_TOKENS: tokens} if name == "memory_attention" else {}
        graphs[name] = GraphSpec(name, f"{name}.onnx", inputs, outputs, dynamic_dims=dynamic)
    tpos = {"maskmem_tpos_enc": sam.maskmem_tpos_enc.detach().float().cpu().contiguous()}
    save_file(tpos, str(out_dir / MEMORY_TPOS_FILE))
    settings = {"mem_dim": mem_dim, "num_maskmem": int(sam.num_maskmem), "max_obj_ptrs_in_encoder": max_obj_ptrs}
    return graphs, settings


def export_model(
    model: str | Path,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    sam_memory_checkpoint: str | Path | None = None,
    engines=None,
) -> ExportMetadata:
    """LENS checkpoint (directory or Hub id) -> ONNX export directory (and TensorRT engines with `engines`). See
    `export_parts`. The tracking graphs are exported from `sam_memory_checkpoint` (official SAM2 .pt of the model's
    SAM2 config, or sam2_memory.safetensors), else from the model directory's sam2_memory.safetensors, else not at
    all."""
    from ..model.checkpoint import resolve_model_dir

    options = options or ExportOptions()
    options.validate()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, options.overwrite)  # refuse early, before loading weights
    check_output_dir(out_dir, "--out", {"--model": model})
    model_dir = resolve_model_dir(model)
    parts = load_segmentation_parts(model_dir, sam_memory_checkpoint)
    weights = model_hash(model_dir, parts.memory_weights)
    try:
        return export_parts(parts, out_dir, options, source_model=str(model), weights=weights, engines=engines)
    except LensError:
        raise
    except Exception as exc:  # an exporter failure: the temporary folder is gone, the output folder untouched
        raise ExportError(
            f"ONNX export of {model} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
