"""Running serialised TensorRT engines from torch CUDA tensors (TensorRT 10 Python API), and the checks that an
engine may run here at all. Importing this module does not import tensorrt; `require_tensorrt` does."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import LensError
from .metadata import ExportError, TensorRTInfo

log = logging.getLogger(__name__)

INSTALL_HINT = "needs a CUDA GPU with TensorRT: pip install tensorrt"
MIN_MAJOR = 10


class TensorRTUnavailable(LensError):
    """No CUDA GPU or no (recent enough) tensorrt package on this machine."""


def require_tensorrt():
    """-> the `tensorrt` module, or TensorRTUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            f"TensorRT {INSTALL_HINT} (this machine has no CUDA GPU"
            f"{'' if trt is not None else ' and no tensorrt package'})"
        )
    if trt is None:
        raise TensorRTUnavailable(f"TensorRT {INSTALL_HINT} (the tensorrt package is not installed)")
    if int(trt.__version__.split(".")[0]) < MIN_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is installed; lens needs TensorRT {MIN_MAJOR} or newer: "
            f"pip install 'tensorrt>={MIN_MAJOR}'"
        )
    return trt


def tensorrt_available() -> bool:
    try:
        require_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def gpu_identity(device: torch.device | int | None = None) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device."""
    index = torch.device("cuda" if device is None else device).index
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def engine_mismatch(info: TensorRTInfo, trt_version: str, gpu_name: str, capability: str) -> str | None:
    """Why engines described by `info` cannot run with this TensorRT version on this GPU (None: they can).
    TensorRT engines are tied to the exact TensorRT version and to the GPU architecture they were built on."""
    if info.version != trt_version:
        return f"built with TensorRT {info.version}, but TensorRT {trt_version} is installed"
    if info.compute_capability != capability:
        return (
            f"built for {info.gpu_name} (compute capability {info.compute_capability}), but this GPU is "
            f"{gpu_name} (compute capability {capability})"
        )
    return None


def check_engines_runnable(
    info: TensorRTInfo | None, export_dir: Path, trt_version: str, gpu_name: str, capability: str
) -> None:
    if info is None:
        raise ExportError(
            f"{export_dir} holds no TensorRT engines; build them on this machine with "
            f"`lens export --model M --out DIR --format tensorrt`"
        )
    why = engine_mismatch(info, trt_version, gpu_name, capability)
    if why:
        raise ExportError(
            f"the TensorRT engines in {export_dir} were {why}; rebuild them on this machine with "
            f"`lens export --model M --out DIR --format tensorrt --overwrite`"
        )
    if info.gpu_name != gpu_name:
        log.warning(
            "TensorRT engines in %s were built on %s and run on %s (same architecture); rebuild them here "
            "for the best kernels",
            export_dir,
            info.gpu_name,
            gpu_name,
        )


class TensorRTEngine:
    """One deserialised engine with a dynamic batch dimension; inputs and outputs are torch CUDA tensors."""

    def __init__(self, path: Path, trt, logger, device: torch.device) -> None:
        self.path = path
        self.device = device
        self._trt = trt
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT {trt.__version__} could not load the engine {path} (built for another "
                "TensorRT version or GPU?); rebuild it with `lens export ... --format tensorrt --overwrite`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        # inputs with a dynamic batch dimension (all but the memory attention's pointer-token count)
        self.batched = [n for n in self.inputs if list(self.engine.get_tensor_shape(n))[:1] == [-1]]
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.batched[0], 0)
        self.max_batch = int(max_shape[0])
        self._dtypes = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int64: torch.int64,
            trt.bool: torch.bool,
        }

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs with batch B (any B: run in chunks of the profile's maximum) -> outputs with batch B."""
        b = next(v for k, v in feeds.items() if k in self.batched).shape[0]
        chunks = [
            self._run({k: v[i : i + self.max_batch] if k in self.batched else v for k, v in feeds.items()})
            for i in range(0, b, self.max_batch)
        ]
        return {name: torch.cat([c[name] for c in chunks]) for name in self.outputs}

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.cuda.device(self.device):
            keep = []  # the input buffers must live until the stream has run
            for name in self.inputs:
                dtype = self._dtypes[self.engine.get_tensor_dtype(name)]
                t = feeds[name].to(device=self.device, dtype=dtype).contiguous()
                keep.append(t)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self._dtypes[self.engine.get_tensor_dtype(name)], device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outs[name] = out
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.path.name} failed (see the TensorRT log)")
            stream.synchronize()
        return outs
