"""SAM2's video-memory modules for tracking: memory encoder, memory attention and the memory's temporal encoding.

LENS segments single images and its checkpoints carry SAM2 without these modules (`sam.MEMORY_MODULES`), so a
tracker gets them separately, from one of (in this order):
  1. an explicit weights file: an official SAM2 `.pt` ({"model": state dict}) of the same SAM2 config as the LENS
     model (e.g. sam2_hiera_large.pt for the released LENS, built on SAM2 Hiera-L), or a `sam2_memory.safetensors`;
  2. `sam2_memory.safetensors` in the LENS model directory (tiny models from `make_tiny` write one);
  3. seeded random weights, only when the caller opts in (tests and demos with untrained tiny models).
Anything else is a CheckpointError that says what to pass. The modules are built from the same Hydra config as
the LENS model's SAM2, so shapes always agree with its image encoder and mask decoder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import MEMORY_WEIGHTS_FILE, load_strict, read_configs, read_sam2_checkpoint, resolve_model_dir
from .config import SamConfig
from .sam import MEMORY_MODULES

log = logging.getLogger(__name__)

# Official SAM2 checkpoint file of each Hydra config (what to pass for a released LENS model).
OFFICIAL_CHECKPOINTS = {
    "sam2_hiera_t": "sam2_hiera_tiny.pt",
    "sam2_hiera_s": "sam2_hiera_small.pt",
    "sam2_hiera_b+": "sam2_hiera_base_plus.pt",
    "sam2_hiera_l": "sam2_hiera_large.pt",
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
}


class SamMemory(nn.Module):
    """The three memory parts of a SAM2Base, under the names an official SAM2 `.pt` uses for them."""

    def __init__(self, memory_attention: nn.Module, memory_encoder: nn.Module, num_maskmem: int, mem_dim: int):
        super().__init__()
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        # (num_maskmem, 1, 1, mem_dim): temporal position of each memory slot, as SAM2Base initialises it
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        nn.init.trunc_normal_(self.maskmem_tpos_enc, std=0.02)

    @property
    def num_maskmem(self) -> int:
        return self.maskmem_tpos_enc.shape[0]


def official_checkpoint_name(config: SamConfig) -> str:
    stem = Path(config.config_name).stem
    return OFFICIAL_CHECKPOINTS.get(stem, f"the official SAM2 checkpoint built with {config.config_name}")


def custom_sam2_note(config: SamConfig) -> str:
    """Why an official checkpoint's memory modules are no answer for a SAM2 built with overrides (tiny and demo
    models: narrower Hiera, smaller input, weights random or trained here), and what tracks offline; "" for a
    SAM2 built as Meta's (the released LENS). The memory modules' shapes do not depend on those overrides, so
    Meta's load; but they were trained on the features of Meta's image encoder, which this SAM2 does not have."""
    if not config.overrides:
        return ""
    return (
        f" — but this model's SAM2 is a custom build ({Path(config.config_name).name} with {len(config.overrides)} "
        f"overrides, {config.image_size}-px input), not Meta's: that checkpoint's memory modules would load (same "
        f"shapes) but were trained on Meta's image features, not this model's, so it cannot track. Offline, "
        f"`lens make-tiny --out DIR` builds a tiny model with its own {MEMORY_WEIGHTS_FILE} that tracks (random "
        f"weights: meaningless masks)"
    )


def build_sam_memory(config: SamConfig) -> SamMemory:
    """Memory attention + memory encoder from the SAM2 Hydra config (with the LENS model's overrides), random."""
    import sam2  # noqa: F401  (registers the sam2 config module with Hydra)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name=config.config_name, overrides=list(config.overrides))
    OmegaConf.resolve(cfg)
    memory_attention = instantiate(cfg.model.memory_attention, _recursive_=True)
    memory_encoder = instantiate(cfg.model.memory_encoder, _recursive_=True)
    out_proj = getattr(memory_encoder, "out_proj", None)
    mem_dim = out_proj.weight.shape[0] if hasattr(out_proj, "weight") else cfg.model.image_encoder.neck.d_model
    return SamMemory(memory_attention, memory_encoder, int(cfg.model.get("num_maskmem", 7)), mem_dim).eval()


def _memory_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The memory-module tensors of an official SAM2 `.pt` or of a sam2_memory.safetensors file."""
    if not path.is_file():
        raise CheckpointError(f"SAM2 memory weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"cannot read SAM2 memory weights {path}: {exc}") from None
    else:
        state = read_sam2_checkpoint(path)
    tensors = {k: v for k, v in state.items() if k.startswith(MEMORY_MODULES)}
    if not tensors:
        raise CheckpointError(
            f"{path} holds no SAM2 memory weights (no {', '.join(MEMORY_MODULES)} tensors); pass the official "
            f"SAM2 checkpoint, which keeps them"
        )
    return tensors


def load_sam_memory(
    config: SamConfig,
    model_dir: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    allow_random: bool = False,
    seed: int = 0,
) -> SamMemory:
    """SamMemory for a LENS model with SAM2 config `config`, from `weights`, else `model_dir`/sam2_memory.safetensors,
    else (only with allow_random) seeded random weights. See the module docstring."""
    source = Path(weights) if weights is not None else None
    if source is None and model_dir is not None and (Path(model_dir) / MEMORY_WEIGHTS_FILE).is_file():
        source = Path(model_dir) / MEMORY_WEIGHTS_FILE
    if source is None and not allow_random:
        where = f"model {model_dir}" if model_dir is not None else "this model"
        raise CheckpointError(
            f"{where} has no SAM2 memory weights (LENS checkpoints keep SAM2 without its video-memory modules); "
            f"pass the official SAM2 checkpoint of the same size, e.g. --sam-memory-checkpoint "
            f"{official_checkpoint_name(config)}{custom_sam2_note(config)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        memory = build_sam_memory(config)
    if source is None:
        log.warning("SAM2 memory modules are randomly initialised (seed %d): untrained tracking, tests only", seed)
        return memory
    load_strict(memory, _memory_tensors(source), "SAM2 memory", source)
    return memory


def load_model_sam_memory(model: str | os.PathLike, weights: str | os.PathLike | None = None) -> SamMemory:
    """SamMemory for the LENS checkpoint `model` (directory or Hub id), from its config alone: the model itself is
    not loaded, so missing or bad memory weights are reported before it is."""
    model_dir = resolve_model_dir(model)
    _, lens_config = read_configs(model_dir)
    return load_sam_memory(lens_config.sam, model_dir=model_dir, weights=weights)


def save_sam_memory(memory: SamMemory, model_dir: str | os.PathLike) -> Path:
    """Write `memory` as model_dir/sam2_memory.safetensors (the file `load_sam_memory` looks for)."""
    from safetensors.torch import save_file

    path = Path(model_dir) / MEMORY_WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in memory.state_dict().items()}, str(path))
    return path


def attach_memory(sam: nn.Module, memory: SamMemory) -> None:
    """Give a LENS SAM2Base (built without memory modules) the modules of `memory`, so that SAM2's own tracking
    code (`track_step`) runs on it. The single-image path never calls them."""
    if memory.num_maskmem != sam.num_maskmem:
        raise CheckpointError(
            f"SAM2 memory has {memory.num_maskmem} memory slots, the model's SAM2 config {sam.num_maskmem}: "
            f"memory weights of another SAM2 config"
        )
    memory.to(device=sam.no_mem_embed.device, dtype=torch.float32)  # SAM2 keeps float32 weights (LensModel.to)
    for name in MEMORY_MODULES:
        setattr(sam, name, getattr(memory, name))
