"""Runtime backends for the per-frame part of LENS: SAM2 image encoder, context head and mask decoder.

The MLLM always runs in transformers; the pipeline hands the SAM2-sized images and the query states to a
backend behind this small interface:

    encode_images(images (B, 3, S, S) float32, normalised)  -> SamImageFeatures
    masks_from_query_states(states (P, N, hidden), features for the same P rows)
                                                             -> low-res logits (P, 1, S/4, S/4), IoU scores (P, 1)

`torch` (default) runs the loaded model; `onnxruntime` and `tensorrt` run the graphs (engines) that
`lens export` wrote to a directory, after checking they were exported from the same weights.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LensError
from ..export.metadata import ExportError, ExportMetadata, combined_hash, model_hash, read_metadata
from ..model.sam import SamImageFeatures, decode_masks
from ..vocab import BACKENDS

log = logging.getLogger(__name__)


class SegmentationBackend(ABC):
    name: str
    image_size: int  # side S of the square SAM2 input

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> SamImageFeatures:
        """(B, 3, S, S) normalised float32 images -> SAM2 features."""

    @abstractmethod
    def prompt_embeddings(self, query_states: torch.Tensor) -> torch.Tensor:
        """(P, N, hidden) last-layer query states -> (P, 1, 256) SAM2 sparse prompt embeddings."""

    @abstractmethod
    def decode(self, prompt_embed: torch.Tensor, features: SamImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 1, 256) prompts + features of the same P rows -> logits (P, 1, S/4, S/4), IoU scores (P, 1)."""

    def masks_from_query_states(
        self, query_states: torch.Tensor, features: SamImageFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.prompt_embeddings(query_states), features)


class TorchBackend(SegmentationBackend):
    """The loaded LensModel itself (SAM2 under autocast when the model is bf16/fp16)."""

    name = "torch"

    def __init__(self, model) -> None:
        self.model = model
        self.image_size = model.lens_config.sam.image_size

    def encode_images(self, images: torch.Tensor) -> SamImageFeatures:
        return self.model.encode_sam_images(images)

    def prompt_embeddings(self, query_states: torch.Tensor) -> torch.Tensor:
        return self.model.context(query_states)

    def decode(self, prompt_embed: torch.Tensor, features: SamImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        with self.model.sam_autocast():
            return decode_masks(self.model.sam, features, prompt_embed)

    def masks_from_query_states(
        self, query_states: torch.Tensor, features: SamImageFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.masks_from_query_states(query_states, features)


class ExportedBackend(SegmentationBackend):
    """Shared by the backends that run `lens export` graphs: named feeds in, named outputs out."""

    def __init__(self, export_dir: str | Path, device: torch.device, meta: ExportMetadata | None = None) -> None:
        """`meta`: the export's lens_export.json when the caller has read it already (`check_backend_args`)."""
        self.export_dir = Path(export_dir)
        self.meta: ExportMetadata = meta if meta is not None else read_metadata(self.export_dir)
        self.image_size = self.meta.image_size
        self.device = torch.device(device)

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run one graph; outputs in the metadata's order, on self.device."""

    def check_model(self, model, model_dir: str | Path | None = None) -> None:
        """Refuse graphs that were not exported from `model` (shapes always; weights hash when `model_dir` is known)."""
        ours = (model.context.num_queries, model.hidden_size)
        theirs = (self.meta.num_queries, self.meta.hidden_size)
        if ours != theirs:
            raise ExportError(
                f"{self.export_dir} was exported for {theirs[0]} queries of width {theirs[1]}; the loaded "
                f"model has {ours[0]} of width {ours[1]}: export this model with `lens export`"
            )
        if model_dir is None:
            return
        # The export's hash covers the SAM2 memory weights it was made with too; the model directory need not hold
        # them (an official SAM2 .pt may have been passed), so their recorded digest stands in for the file.
        _, files = model_hash(model_dir)
        memory = self.meta.memory_weights
        if memory is not None and memory in self.meta.weight_files:
            files[memory] = self.meta.weight_files[memory]
        digest = combined_hash(files)
        if digest != self.meta.model_hash:
            raise ExportError(
                f"{self.export_dir} was exported from other weights ({self.meta.source_model}, sha256 "
                f"{self.meta.model_hash[:12]}) than {model_dir} (sha256 {digest[:12]}); export this model again: "
                f"lens export --model {model_dir} --out {self.export_dir} --overwrite"
            )

    def encode_images(self, images: torch.Tensor) -> SamImageFeatures:
        s = self.image_size
        if tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.name} backend takes images (B, 3, {s}, {s}), got {tuple(images.shape)}")
        image_embed, feat_s4, feat_s8 = self.run("image_encoder", {"images": images})
        return SamImageFeatures(image_embed=image_embed, high_res_feats=[feat_s4, feat_s8])

    def prompt_embeddings(self, query_states: torch.Tensor) -> torch.Tensor:
        return self.run("context_head", {"query_states": query_states})[0]

    def decode(self, prompt_embed: torch.Tensor, features: SamImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if features.image_embed.shape[0] != prompt_embed.shape[0]:
            raise ValueError(
                f"{features.image_embed.shape[0]} image embeddings for {prompt_embed.shape[0]} prompt embeddings"
            )
        low_res, iou = self.run("mask_decoder", mask_decoder_feeds(prompt_embed, features))
        return low_res, iou


def mask_decoder_feeds(prompt_embed: torch.Tensor, features: SamImageFeatures) -> dict[str, torch.Tensor]:
    """The named inputs of the exported mask decoder."""
    return {
        "prompt_embed": prompt_embed,
        "image_embed": features.image_embed,
        "high_res_feat_s4": features.high_res_feats[0],
        "high_res_feat_s8": features.high_res_feats[1],
    }


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise LensError(
            "the onnxruntime backend needs onnxruntime: pip install onnxruntime "
            "(or onnxruntime-gpu), or install lens with the 'export' extra"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend(ExportedBackend):
    """The exported ONNX graphs in ONNX Runtime: CUDA execution provider when the pipeline runs on a GPU and
    onnxruntime-gpu is installed, else CPU. Tensors cross the boundary as float32 numpy arrays.

    On a CPU each graph runs the way `lens export` measured fastest there (`CpuChoice` in the metadata: the float32
    or int8 graph, with or without a fusion, or the model's own torch module once `use_model` gave it the model);
    `follow_cpu_choice=False`, or an export without timings, runs every graph's float32 file in ONNX Runtime."""

    name = "onnxruntime"

    def __init__(
        self,
        export_dir: str | Path,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        meta: ExportMetadata | None = None,
        follow_cpu_choice: bool = True,
    ) -> None:
        super().__init__(export_dir, device, meta)
        self._ort = _import_onnxruntime()
        self.providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in self._ort.get_available_providers():
            self.providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        self.threads = threads
        on_cpu = len(self.providers) == 1
        self.cpu_choices = {
            name: graph.cpu for name, graph in self.meta.graphs.items() if on_cpu and follow_cpu_choice and graph.cpu
        }
        # graphs that run in torch once a model is given (use_model); their sessions open only if run() asks
        self.torch_graphs = {name for name, choice in self.cpu_choices.items() if choice.runtime == "torch"}
        self._torch: TorchBackend | None = None
        self.files: dict[str, Path] = {}  # graph -> the ONNX file its session runs
        self.sessions = {name: self._open(name) for name in self.meta.graphs if name not in self.torch_graphs}

    def _open(self, name: str):
        from ..export.cpu_choice import session_options

        graph, choice = self.meta.graphs[name], self.cpu_choices.get(name)
        path = self.export_dir / (choice.onnx if choice else graph.onnx)
        if not path.is_file():
            raise ExportError(f"{path} is missing: the export in {self.export_dir} is incomplete; export again")
        try:
            session = self._ort.InferenceSession(
                str(path),
                session_options(self.threads),
                providers=self.providers,
                disabled_optimizers=(choice.disabled_optimizers or None) if choice else None,
            )
        except Exception as exc:  # onnxruntime's InvalidProtobuf, InvalidArgument, Fail ... derive from Exception
            reason = " ".join(str(exc).split())[:300]
            raise ExportError(
                f"{path} is not a loadable ONNX graph ({reason}); export the model again: "
                f"lens export --model M --out {self.export_dir} --overwrite"
            ) from None
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        want = ([t.name for t in graph.inputs], [t.name for t in graph.outputs])
        if sorted(names[0]) != sorted(want[0]) or sorted(names[1]) != sorted(want[1]):
            raise ExportError(f"{path} has inputs/outputs {names}, but {self.export_dir}/lens_export.json says {want}")
        self.files[name] = path
        return session

    def use_model(self, model) -> None:
        """Run the graphs that the export's CPU timings found faster in torch with `model`'s own modules (the
        model the export was checked against: `check_model`)."""
        self._torch = TorchBackend(model) if self.torch_graphs else None

    def _in_torch(self, graph: str) -> bool:
        return self._torch is not None and graph in self.torch_graphs

    def encode_images(self, images: torch.Tensor) -> SamImageFeatures:
        return self._torch.encode_images(images) if self._in_torch("image_encoder") else super().encode_images(images)

    def prompt_embeddings(self, query_states: torch.Tensor) -> torch.Tensor:
        if self._in_torch("context_head"):
            return self._torch.prompt_embeddings(query_states)
        return super().prompt_embeddings(query_states)

    def decode(self, prompt_embed: torch.Tensor, features: SamImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if self._in_torch("mask_decoder"):
            return self._torch.decode(prompt_embed, features)
        return super().decode(prompt_embed, features)

    def run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        spec = self.meta.graphs[graph]
        if graph not in self.sessions:
            self.sessions[graph] = self._open(graph)
        dtypes = {t.name: getattr(torch, t.dtype) for t in spec.inputs}  # float32, int64
        arrays = {k: v.detach().to("cpu", dtypes[k]).contiguous().numpy() for k, v in feeds.items()}
        outs = self.sessions[graph].run([t.name for t in spec.outputs], arrays)
        return [torch.from_numpy(o).to(self.device) for o in outs]


class TensorRTBackend(ExportedBackend):
    """The engines `lens export --format tensorrt` built, run on the pipeline's CUDA device."""

    name = "tensorrt"

    def __init__(
        self, export_dir: str | Path, device: torch.device | str = "cuda", meta: ExportMetadata | None = None
    ) -> None:
        from ..export.tensorrt_runtime import TensorRTEngine, check_engines_runnable, gpu_identity, require_tensorrt

        trt = require_tensorrt()
        super().__init__(export_dir, device, meta)
        if self.device.type != "cuda":
            raise LensError(
                f"the tensorrt backend runs on a CUDA device, but the pipeline runs on {self.device}; use --device cuda"
            )
        check_engines_runnable(self.meta.tensorrt, self.export_dir, trt.__version__, *gpu_identity(self.device))
        logger = trt.Logger(trt.Logger.WARNING)
        self.engines = {}
        for name, graph in self.meta.graphs.items():
            path = self.export_dir / (graph.engine or f"{name}.engine")
            if graph.engine is None or not path.is_file():
                raise ExportError(f"{path} is missing: build the engines with `lens export ... --format tensorrt`")
            self.engines[name] = TensorRTEngine(path, trt, logger, self.device)

    def run(self, graph: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        outs = self.engines[graph](feeds)
        return [outs[t.name] for t in self.meta.graphs[graph].outputs]


@dataclass(frozen=True)
class BackendChoice:
    """A checked backend choice (`check_backend_args`): what `open_backend` builds once the model is loaded."""

    name: str  # one of BACKENDS
    export_dir: Path | None = None  # the `lens export` directory (onnxruntime, tensorrt)
    meta: ExportMetadata | None = None  # its lens_export.json, read once


def check_backend_args(name: str, backend_dir: str | Path | None) -> BackendChoice:
    """The cheap checks of a backend choice, to run before loading a model; reads the export's metadata."""
    if name not in BACKENDS:
        raise LensError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "torch" and backend_dir is not None:
        raise LensError("--backend-dir is only used with --backend onnxruntime or tensorrt")
    if name != "torch" and backend_dir is None:
        raise LensError(f"--backend {name} needs --backend-dir DIR, a directory written by `lens export`")
    if name == "tensorrt":
        from ..export.tensorrt_runtime import require_tensorrt

        require_tensorrt()
    if backend_dir is None:
        return BackendChoice(name)
    return BackendChoice(name, Path(backend_dir), read_metadata(backend_dir))


def open_backend(choice: BackendChoice, model, model_dir: str | Path | None = None) -> SegmentationBackend:
    """The checked backend `choice` for `model`. With `model_dir` the export's weights hash must match that
    checkpoint's."""
    if choice.name == "torch":
        return TorchBackend(model)
    cls = OnnxRuntimeBackend if choice.name == "onnxruntime" else TensorRTBackend
    backend = cls(choice.export_dir, device=model.device, meta=choice.meta)
    backend.check_model(model, model_dir)
    if isinstance(backend, OnnxRuntimeBackend):
        backend.use_model(model)
    log.info("segmentation backend: %s from %s", choice.name, choice.export_dir)
    return backend


def load_backend(
    name: str, model, backend_dir: str | Path | None = None, model_dir: str | Path | None = None
) -> SegmentationBackend:
    """Backend `name` for `model`; `backend_dir` is a `lens export` directory (onnxruntime, tensorrt).
    With `model_dir` the export's weights hash must match that checkpoint's."""
    return open_backend(check_backend_args(name, backend_dir), model, model_dir)
