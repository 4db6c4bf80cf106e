"""The metadata JSON written next to exported graphs: what each graph takes and returns, how images are
prepared, which model the graphs came from (hash of its weight files), and the library versions.

Runtime backends read it back to feed the graphs and to refuse graphs or engines that do not belong to the
loaded model, or engines built for another TensorRT version or GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LensError

METADATA_FILE = "lens_export.json"
TIMING_CACHE = "timing.cache"  # TensorRT builder timing cache, reused when engines are rebuilt
FORMAT_VERSION = 1
GRAPH_NAMES = ("image_encoder", "context_head", "mask_decoder")
# SAM2's tracking graphs, exported when the model has its memory modules; always both or neither.
MEMORY_GRAPH_NAMES = ("memory_attention", "memory_encoder")
# SAM2's temporal position encoding of the memory slots (`maskmem_tpos_enc`, (num_maskmem, 1, 1, C)): a weight that
# `track_step` adds in torch between the two tracking graphs, exported beside them so an export tracks on its own.
MEMORY_TPOS_FILE = "maskmem_tpos_enc.safetensors"
BATCH = "batch"  # name of the dynamic batch dimension in shapes
MEMORY_TOKENS = "memory_tokens"  # name of the dynamic memory-length dimension of the memory attention


class ExportError(LensError):
    """An export directory, its metadata, graphs or engines that cannot be used as asked."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]  # names mark dynamic dimensions: BATCH, MEMORY_TOKENS
    dtype: str = "float32"  # or "int64"


@dataclass
class CpuChoice:
    """How `--backend onnxruntime` runs one graph on a CPU: the fastest of the ways `lens export` timed on the
    exporting machine (lens_model.export.cpu_choice)."""

    runtime: str  # "onnxruntime", or "torch" (the loaded model's own module: torch was faster here)
    onnx: str  # the file ONNX Runtime runs: NAME.onnx, or NAME.int8.onnx
    disabled_optimizers: list[str]  # ONNX Runtime graph fusions switched off for it (e.g. SkipLayerNormFusion)
    ms: dict[str, float]  # median wall milliseconds of every way timed, by name (cpu_choice.CANDIDATES)
    threads: int  # CPU threads of the timing (torch's and ONNX Runtime's)


@dataclass
class GraphSpec:
    """One exported graph: its ONNX file (plus `*.onnx.data` when over 2 GB) and, once built, its engine."""

    name: str
    onnx: str  # file name inside the export directory
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    engine: str | None = None  # TensorRT engine file name, when built
    # [min, opt, max] of each dynamic dimension other than BATCH (whose range is the engine build's batch profile)
    dynamic_dims: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    int8_onnx: str | None = None  # its dynamic int8 version for CPUs (`lens export --int8`)
    cpu: CpuChoice | None = None  # how to run it on a CPU, when timed at export; None: ONNX Runtime on `onnx`

    def __post_init__(self) -> None:
        self.inputs = [TensorSpec(**t) if isinstance(t, dict) else t for t in self.inputs]
        self.outputs = [TensorSpec(**t) if isinstance(t, dict) else t for t in self.outputs]
        if isinstance(self.cpu, dict):
            self.cpu = CpuChoice(**self.cpu)


@dataclass
class TensorRTInfo:
    """How the engines were built; an engine only runs on the same TensorRT version and GPU model."""

    version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    batch_profile: list[int]  # [min, opt, max] for every dynamic batch dimension
    workspace_bytes: int
    tf32: bool = True  # float32 matrix products on TF32 tensor cores (TensorRT's default)
    timing_cache: str | None = None


@dataclass
class ExportMetadata:
    source_model: str  # the model directory as given to the export
    model_hash: str  # sha256 over the model's weight files and the SAM2 memory weights exported (see `model_hash`)
    weight_files: dict[str, str]  # file name -> sha256
    image_size: int  # SAM2 input side S
    num_queries: int  # N
    hidden_size: int  # MLLM hidden size of the query states
    sam_embed_dim: int
    opset: int
    exporter: str
    precision: str  # "fp32", or "fp16": graphs compute in float16 except normalisation layers; I/O is float32
    graphs: dict[str, GraphSpec]
    preprocessing: dict[str, Any]  # how to turn an RGB image into the encoder's input
    postprocessing: dict[str, Any]  # how to turn low-res logits into the final mask
    decoder: dict[str, Any]  # SAM2 mask-decoder settings baked into the graph
    versions: dict[str, str]
    # SAM2 memory settings the tracking graphs were exported for (mem_dim, num_maskmem, max_obj_ptrs_in_encoder);
    # None when the export has no tracking graphs
    memory: dict[str, int] | None = None
    # the SAM2 memory weights file among `weight_files` (sam2_memory.safetensors, or an official SAM2 .pt);
    # None when the export has no tracking graphs
    memory_weights: str | None = None
    tensorrt: TensorRTInfo | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.graphs = {k: GraphSpec(**v) if isinstance(v, dict) else v for k, v in self.graphs.items()}
        if isinstance(self.tensorrt, dict):
            self.tensorrt = TensorRTInfo(**self.tensorrt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, out_dir: Path) -> Path:
        path = Path(out_dir) / METADATA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def read_metadata(export_dir: str | Path) -> ExportMetadata:
    """Read DIR/lens_export.json, with errors that say which file and what is wrong."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ExportError(
            f"export directory not found: {export_dir} (create it with `lens export --model M --out DIR`)"
        )
    path = export_dir / METADATA_FILE
    if not path.is_file():
        raise ExportError(
            f"{export_dir} has no {METADATA_FILE}: not a lens export directory "
            f"(create one with `lens export --model M --out {export_dir}`)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{path} has format_version {data.get('format_version')!r}; this lens reads {FORMAT_VERSION}: "
            "export the model again"
        )
    known = {f.name for f in dataclasses.fields(ExportMetadata)}
    try:
        meta = ExportMetadata(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise ExportError(f"{path} is incomplete or malformed ({exc}); export the model again") from None
    missing = [g for g in GRAPH_NAMES if g not in meta.graphs]
    if missing:
        raise ExportError(f"{path} lists no {', '.join(missing)} graph; export the model again")
    tracking = [g for g in MEMORY_GRAPH_NAMES if g in meta.graphs]
    if tracking and (len(tracking) != len(MEMORY_GRAPH_NAMES) or meta.memory is None):
        raise ExportError(
            f"{path} lists {', '.join(tracking)} without the rest of SAM2's tracking export "
            f"({', '.join(MEMORY_GRAPH_NAMES)} and the memory settings); export the model again"
        )
    return meta


def has_memory_graphs(meta: ExportMetadata) -> bool:
    """Whether the export holds SAM2's tracking graphs (memory attention and memory encoder)."""
    return all(g in meta.graphs for g in MEMORY_GRAPH_NAMES)


def require_memory_graphs(meta: ExportMetadata, export_dir: str | Path) -> None:
    """ExportError unless the export at `export_dir` can track: both tracking graphs and the memory slots' temporal
    position encoding."""
    again = (
        f"export the model again with SAM2 memory weights: lens export --model M --out {export_dir} --overwrite "
        "--sam-memory-checkpoint SAM2.pt (the official SAM2 checkpoint of the model's SAM2 size; tiny models carry "
        "sam2_memory.safetensors)"
    )
    if not has_memory_graphs(meta):
        raise ExportError(
            f"{export_dir} holds no tracking graphs ({', '.join(MEMORY_GRAPH_NAMES)}): it was exported without "
            f"SAM2 memory weights; {again}"
        )
    if not (Path(export_dir) / MEMORY_TPOS_FILE).is_file():
        raise ExportError(f"{export_dir} has tracking graphs but no {MEMORY_TPOS_FILE}; {again}")


# ---------------------------------------------------------------------------- model identity
def file_sha256(path: Path, chunk: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def combined_hash(files: dict[str, str]) -> str:
    """The model hash of {file name: sha256}: the sha256 of the lines "NAME SHA256\\n" sorted by name."""
    joined = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def model_hash(model_dir: str | Path, memory_weights: str | Path | None = None) -> tuple[str, dict[str, str]]:
    """sha256 of a checkpoint's weight files, and of the SAM2 memory weights file when one is exported with it
    -> (model hash, {file name: sha256}).

    The model hash (`combined_hash`) changes when any tensor the export was made from changes and does not depend
    on where the files live.
    """
    from ..model.checkpoint import weight_files

    files = {f.name: file_sha256(f) for f in weight_files(Path(model_dir))}
    if memory_weights is not None:
        memory_weights = Path(memory_weights)
        if memory_weights.name in files:
            raise ExportError(
                f"SAM2 memory weights {memory_weights} have the name of a checkpoint weight file; rename the file"
            )
        files[memory_weights.name] = file_sha256(memory_weights)
    return combined_hash(files), files


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of the libraries that shape the exported graphs (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for dist in ("lens_ros", "torch", "onnx", "onnxscript", "onnxruntime", "sam2", "transformers", *extra):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def default_preprocessing(image_size: int) -> dict[str, Any]:
    from ..model.sam import PIXEL_MEAN, PIXEL_STD

    return {
        "input": "RGB uint8 image, HxWx3",
        "resize": f"bilinear to {image_size}x{image_size}, aspect ratio not kept (PIL Image.BILINEAR)",
        "pixel_mean": list(PIXEL_MEAN),  # subtract, in 0-255 units
        "pixel_std": list(PIXEL_STD),  # then divide
        "layout": "NCHW float32",
    }


POSTPROCESSING = {
    "low_res_masks": "bilinear resize (align_corners=False) of the (B, 1, S/4, S/4) logits to the original HxW",
    "threshold": 0.0,  # foreground = logit > threshold
}


__all__ = [
    "BATCH",
    "CpuChoice",
    "ExportError",
    "ExportMetadata",
    "GRAPH_NAMES",
    "GraphSpec",
    "MEMORY_GRAPH_NAMES",
    "MEMORY_TOKENS",
    "MEMORY_TPOS_FILE",
    "METADATA_FILE",
    "TensorRTInfo",
    "TensorSpec",
    "POSTPROCESSING",
    "combined_hash",
    "default_preprocessing",
    "file_sha256",
    "has_memory_graphs",
    "library_versions",
    "model_hash",
    "read_metadata",
    "require_memory_graphs",
]
