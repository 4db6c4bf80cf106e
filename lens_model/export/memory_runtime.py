"""Drop-in replacements for SAM2's memory attention and memory encoder that run the exported tracking graphs.

    use_exported_memory_modules(sam, backend)   # both modules and the memory slots' temporal position encoding

`backend` is an `OnnxRuntimeBackend` (or `TensorRTBackend`) opened on a `lens export` directory that holds the
tracking graphs. The modules take and return exactly what sam2's modules do (sequence-first tokens, the
`num_obj_ptr_tokens` int, the `{"vision_features", "vision_pos_enc"}` dict), so `SAM2Base.track_step` and
everything built on it run unchanged; tensors come back on the device and in the dtype they came in.
"""

from __future__ import annotations

import torch
from torch import nn

from .metadata import MEMORY_TPOS_FILE, ExportError, require_memory_graphs


class OnnxMemoryAttention(nn.Module):
    """sam2's `MemoryAttention` (eval mode) computed by the exported `memory_attention` graph."""

    def __init__(self, backend) -> None:
        super().__init__()
        require_memory_graphs(backend.meta, backend.export_dir)
        self.backend = backend
        curr = next(t for t in backend.meta.graphs["memory_attention"].inputs if t.name == "curr")
        self.num_tokens, self.d_model = int(curr.shape[1]), int(curr.shape[2])  # HW, 256

    def forward(
        self,
        curr: torch.Tensor | list[torch.Tensor],  # (HW, B, 256), or a one-element list of it
        memory: torch.Tensor,  # (L, B, C)
        curr_pos: torch.Tensor | list[torch.Tensor] | None = None,  # like curr
        memory_pos: torch.Tensor | None = None,  # like memory
        num_obj_ptr_tokens: int = 0,  # the last tokens of memory that are object pointers (no RoPE)
    ) -> torch.Tensor:  # (HW, B, 256)
        if isinstance(curr, list):
            (curr,), (curr_pos,) = curr, curr_pos
        if curr_pos is None or memory_pos is None:
            raise ValueError("the exported memory attention needs curr_pos and memory_pos (SAM2 always passes them)")
        if tuple(curr.shape[::2]) != (self.num_tokens, self.d_model):
            raise ValueError(
                f"the exported memory attention takes curr ({self.num_tokens}, B, {self.d_model}) (the image size "
                f"{self.backend.image_size} it was exported for), got {tuple(curr.shape)}"
            )
        if not 0 <= num_obj_ptr_tokens <= memory.shape[0]:
            raise ValueError(f"num_obj_ptr_tokens {num_obj_ptr_tokens} is outside 0..{memory.shape[0]} memory tokens")
        feeds = {
            "curr": curr.transpose(0, 1),
            "curr_pos": curr_pos.transpose(0, 1),
            "memory": memory.transpose(0, 1),
            "memory_pos": memory_pos.transpose(0, 1),
            "num_obj_ptr_tokens": torch.tensor([num_obj_ptr_tokens], dtype=torch.int64),
        }
        (out,) = self.backend.run("memory_attention", feeds)  # (B, HW, 256)
        return out.transpose(0, 1).to(device=curr.device, dtype=curr.dtype)


class OnnxMemoryEncoder(nn.Module):
    """sam2's `MemoryEncoder` computed by the exported `memory_encoder` graph."""

    def __init__(self, backend) -> None:
        super().__init__()
        require_memory_graphs(backend.meta, backend.export_dir)
        self.backend = backend

    def forward(
        self,
        pix_feat: torch.Tensor,  # (B, 256, S/16, S/16)
        masks: torch.Tensor,  # (B, 1, S, S)
        skip_mask_sigmoid: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if not skip_mask_sigmoid:  # the graph takes masks after the sigmoid, as SAM2's tracking passes them
            masks = torch.sigmoid(masks)
        features, pos = self.backend.run("memory_encoder", {"pix_feat": pix_feat, "masks": masks})
        like = {"device": masks.device, "dtype": pix_feat.dtype}
        return {"vision_features": features.to(**like), "vision_pos_enc": [pos.to(**like)]}


def exported_maskmem_tpos_enc(backend) -> torch.Tensor:
    """(num_maskmem, 1, 1, C) float32: SAM2's temporal position encoding of the memory slots, from the export."""
    from safetensors.torch import load_file

    require_memory_graphs(backend.meta, backend.export_dir)
    path = backend.export_dir / MEMORY_TPOS_FILE
    try:
        tpos = load_file(str(path))["maskmem_tpos_enc"]
    except Exception as exc:
        raise ExportError(f"cannot read {path} ({exc}); export the model again") from None
    want = (backend.meta.memory["num_maskmem"], 1, 1, backend.meta.memory["mem_dim"])
    if tuple(tpos.shape) != want:
        raise ExportError(f"{path} holds maskmem_tpos_enc of shape {tuple(tpos.shape)}, the metadata says {want}")
    return tpos


def use_exported_memory_modules(sam: nn.Module, backend) -> nn.Module:
    """Give `sam` (a SAM2Base, with or without its own memory modules: a LENS model's SAM2 has none) SAM2's memory
    parts from the export of `backend`: the two tracking graphs as drop-in modules and the memory slots' temporal
    position encoding. `SAM2Base.track_step` then runs on them; image encoder and mask decoder stay `sam`'s own.
    Returns `sam`."""
    tpos = exported_maskmem_tpos_enc(backend)
    if tpos.shape[0] != sam.num_maskmem:
        raise ExportError(
            f"{backend.export_dir} was exported for {tpos.shape[0]} memory slots, this SAM2 has {sam.num_maskmem}"
        )
    sam.memory_attention = OnnxMemoryAttention(backend)
    sam.memory_encoder = OnnxMemoryEncoder(backend)
    sam.maskmem_tpos_enc = nn.Parameter(tpos.to(sam.no_mem_embed.device), requires_grad=False)
    return sam
