"""Build TensorRT engines from an ONNX export directory (TensorRT 10 and 11 Python API).

For each graph: parse NAME.onnx into a strongly typed network (each layer runs in the precision its ONNX tensors
have: float32 graphs stay float32, `lens export --fp16` graphs run in float16 with their normalisation layers in
float32 -- the precision is decided at export, where it is tested, not by the builder; TensorRT 11 only builds
strongly typed networks), one optimisation profile over the dynamic batch dimension (min 1, opt, max), a workspace
limit, and a timing cache shared by the builds and kept in DIR/timing.cache so that later builds on the same
GPU reuse its kernel timings. Engines are written as DIR/NAME.engine and described in lens_export.json (TensorRT
version, GPU, profile). Engines only run on the TensorRT version and GPU architecture they were built with: build
them on the target machine (e.g. the robot's Jetson) from the ONNX export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .metadata import BATCH, TIMING_CACHE, ExportError, ExportMetadata, GraphSpec, TensorRTInfo, read_metadata
from .tensorrt_runtime import gpu_identity, require_tensorrt

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    max_batch: int = 8  # largest batch (images for the encoder, prompts for the head and decoder) per engine call
    opt_batch: int = 1  # the batch TensorRT tunes kernels for
    workspace_gb: float = 4.0
    tf32: bool = True  # let float32 matrix products use TF32 tensor cores (TensorRT's default)

    def validate(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ExportError(f"batch sizes must satisfy 1 <= opt ({self.opt_batch}) <= max ({self.max_batch})")
        if self.workspace_gb <= 0:
            raise ExportError(f"--workspace-gb must be positive, got {self.workspace_gb}")


def _profile_dims(graph: GraphSpec, shape: list[int | str], batch: int, which: int) -> tuple[int, ...]:
    """Dimensions of one profile point (which: 0 min, 1 opt, 2 max): the batch, the graph's other dynamic
    dimensions from its metadata (the memory length of the memory attention), the fixed ones."""

    def size(d: int | str) -> int:
        if d == BATCH:
            return batch
        if isinstance(d, str):
            if d not in graph.dynamic_dims:
                raise ExportError(f"graph {graph.name}: dynamic dimension {d!r} has no range in lens_export.json")
            return int(graph.dynamic_dims[d][which])
        return int(d)

    return tuple(size(d) for d in shape)


def _strongly_typed_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 11: always on, flag ignored
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    trt, logger, onnx_path: Path, graph: GraphSpec, options: EngineOptions, timing_cache: bytes
) -> tuple[bytes, bytes]:
    """One ONNX graph -> (serialised engine, updated timing cache)."""
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads NAME.onnx.data next to it when present
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for spec in graph.inputs:
        profile.set_shape(
            spec.name,
            _profile_dims(graph, spec.shape, 1, 0),
            _profile_dims(graph, spec.shape, options.opt_batch, 1),
            _profile_dims(graph, spec.shape, options.max_batch, 2),
        )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def build_engines(export_dir: str | Path, options: EngineOptions | None = None) -> ExportMetadata:
    """ONNX export directory -> DIR/NAME.engine for every graph (the three, plus the two tracking graphs when
    exported); lens_export.json updated."""
    options = options or EngineOptions()
    options.validate()
    trt = require_tensorrt()
    import torch

    export_dir = Path(export_dir)
    meta = read_metadata(export_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = export_dir / TIMING_CACHE
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    for name, graph in meta.graphs.items():
        log.info("building the TensorRT engine of %s (%s)", name, meta.precision)
        engine, cache = build_engine(trt, logger, export_dir / graph.onnx, graph, options, cache)
        (export_dir / f"{name}.engine").write_bytes(engine)
        graph.engine = f"{name}.engine"
    cache_path.write_bytes(cache)
    gpu_name, capability = gpu_identity(torch.cuda.current_device())
    meta.tensorrt = TensorRTInfo(
        version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        batch_profile=[1, options.opt_batch, options.max_batch],
        workspace_bytes=int(options.workspace_gb * (1 << 30)),
        tf32=options.tf32,
        timing_cache=TIMING_CACHE,
    )
    meta.versions["tensorrt"] = trt.__version__
    meta.save(export_dir)
    return meta
