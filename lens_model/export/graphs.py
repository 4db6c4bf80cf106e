"""The three graphs LENS exports, as torch modules with plain tensor inputs and outputs.

    image_encoder  images (B, 3, S, S) normalised   -> image_embed (B, 256, S/16, S/16),
                                                       high_res_feat_s4 (B, 32, S/4, S/4),
                                                       high_res_feat_s8 (B, 64, S/8, S/8)
    context_head   query_states (B, N, hidden)      -> prompt_embed (B, 1, 256)
    mask_decoder   prompt_embed + the three features -> low_res_masks (B, 1, S/4, S/4), iou_scores (B, 1)

They compute exactly what `lens_model.model.sam.encode_image`, `ContextHead.forward` and
`lens_model.model.sam.decode_masks` compute in eval mode (the export tests compare them), including SAM2's dynamic
multimask fallback.

With fp16=True a graph computes in float16 except its normalisation layers (mean of squares overflows float16),
which stay float32; inputs and outputs stay float32. The precision is then part of the ONNX graph itself, which
is what TensorRT's strongly typed networks (the only kind in TensorRT 11) build from, and what ONNX Runtime runs.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from ..model.sam import encode_image
from .metadata import BATCH, TensorSpec

HIGH_RES_CHANNELS = (32, 64)  # SAM2's high-resolution features at strides 4 and 8


class Float32Norm(nn.Module):
    """A normalisation layer kept in float32 inside a float16 graph."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def float16_copy(module: nn.Module) -> nn.Module:
    """A float16 deep copy of `module` whose normalisation layers (nn.LayerNorm, SAM2's LayerNorm2d) run in float32."""
    from sam2.modeling.sam2_utils import LayerNorm2d

    half = copy.deepcopy(module).half()
    norms = [name for name, child in half.named_modules() if isinstance(child, (nn.LayerNorm, LayerNorm2d))]
    for name in norms:
        parent, _, attr = name.rpartition(".")
        owner = half.get_submodule(parent) if parent else half
        setattr(owner, attr, Float32Norm(getattr(owner, attr)))
    return half


def _dtype(fp16: bool) -> torch.dtype:
    return torch.float16 if fp16 else torch.float32


@contextmanager
def _fixed_position_embedding(trunk, pos_embed: torch.Tensor):
    """Hiera interpolates its position embedding (bicubic) to the patch grid on every call. For a fixed image
    size that is a constant: hand the precomputed tensor to the trunk instead, so the graph holds the values
    computed by torch rather than a bicubic Resize (which TensorRT does not support, and which the exporter only
    folds for small models)."""
    trunk._get_pos_embed = lambda hw: pos_embed  # instance attribute shadows the method
    try:
        yield
    finally:
        del trunk._get_pos_embed


class ImageEncoderGraph(nn.Module):
    def __init__(self, sam, image_size: int, fp16: bool = False) -> None:
        super().__init__()
        trunk = sam.image_encoder.trunk
        with torch.no_grad():  # computed in float32 from the original weights
            grid = trunk.patch_embed(torch.zeros(1, 3, image_size, image_size)).shape[1:3]  # (S/4, S/4)
            pos_embed = trunk._get_pos_embed(grid).detach().clone()  # (1, S/4, S/4, C)
        self.dtype = _dtype(fp16)
        self.sam = float16_copy(sam) if fp16 else sam
        self.register_buffer("pos_embed", pos_embed.to(self.dtype))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with _fixed_position_embedding(self.sam.image_encoder.trunk, self.pos_embed):
            features = encode_image(self.sam, images.to(self.dtype))
        return features.image_embed.float(), features.high_res_feats[0].float(), features.high_res_feats[1].float()


class ContextHeadGraph(nn.Module):
    def __init__(self, context, fp16: bool = False) -> None:
        super().__init__()
        self.dtype = _dtype(fp16)
        self.context = float16_copy(context) if fp16 else context

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:  # (B, N, hidden) -> (B, 1, 256)
        return self.context(query_states.to(self.dtype)).float()


class MaskDecoderGraph(nn.Module):
    """SAM2's mask decoder with LENS's prompt: the context token as the only sparse embedding, SAM2's "no mask"
    dense embedding. The prompt encoder's outputs do not depend on the input, so they are stored as constants
    (computed in float32 here rather than in the graph, where TensorRT fp16 would round the sin/cos encoding)."""

    def __init__(self, sam, fp16: bool = False) -> None:
        super().__init__()
        with torch.no_grad():
            empty_sparse, no_mask_dense = sam.sam_prompt_encoder(points=None, boxes=None, masks=None)
            image_pe = sam.sam_prompt_encoder.get_dense_pe()
        if empty_sparse.shape[1] != 0:
            raise ValueError(f"SAM2 prompt encoder returned {empty_sparse.shape[1]} sparse tokens for an empty prompt")
        self.dtype = _dtype(fp16)
        self.decoder = float16_copy(sam.sam_mask_decoder) if fp16 else sam.sam_mask_decoder
        self.register_buffer("image_pe", image_pe.detach().clone().to(self.dtype))  # (1, 256, S/16, S/16)
        self.register_buffer("no_mask_dense", no_mask_dense.detach().clone().to(self.dtype))  # (1, 256, S/16, S/16)

    def forward(
        self,
        prompt_embed: torch.Tensor,
        image_embed: torch.Tensor,
        high_res_feat_s4: torch.Tensor,
        high_res_feat_s8: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = prompt_embed.shape[0]
        low_res, iou, _, _ = self.decoder(
            image_embeddings=image_embed.to(self.dtype),
            image_pe=self.image_pe,
            sparse_prompt_embeddings=prompt_embed.to(self.dtype),
            dense_prompt_embeddings=self.no_mask_dense.expand(b, -1, -1, -1),
            multimask_output=False,
            repeat_image=False,
            high_res_features=[high_res_feat_s4.to(self.dtype), high_res_feat_s8.to(self.dtype)],
        )
        return low_res.float(), iou.float()


GraphIO = tuple[list[TensorSpec], list[TensorSpec]]  # (inputs, outputs)


def graph_widths(sam, context) -> dict[str, int]:
    """The `width` of each exported graph in the parity rule (lens_model.parity: the longest reduction of its linear
    layers), the tracking graphs included when `sam` has its memory modules."""
    from ..parity import linear_width

    modules = {"image_encoder": sam.image_encoder, "context_head": context, "mask_decoder": sam.sam_mask_decoder}
    if hasattr(sam, "memory_attention"):
        modules.update(memory_attention=sam.memory_attention, memory_encoder=sam.memory_encoder)
    return {name: linear_width(module) for name, module in modules.items()}


def graph_io(image_size: int, num_queries: int, hidden_size: int, embed_dim: int = 256) -> dict[str, GraphIO]:
    """Input and output specs of each graph (B = BATCH, dynamic)."""
    s = image_size
    features = [
        TensorSpec("image_embed", [BATCH, embed_dim, s // 16, s // 16]),
        TensorSpec("high_res_feat_s4", [BATCH, HIGH_RES_CHANNELS[0], s // 4, s // 4]),
        TensorSpec("high_res_feat_s8", [BATCH, HIGH_RES_CHANNELS[1], s // 8, s // 8]),
    ]
    prompt = TensorSpec("prompt_embed", [BATCH, 1, embed_dim])
    return {
        "image_encoder": ([TensorSpec("images", [BATCH, 3, s, s])], features),
        "context_head": ([TensorSpec("query_states", [BATCH, num_queries, hidden_size])], [prompt]),
        "mask_decoder": (
            [prompt, *features],
            [TensorSpec("low_res_masks", [BATCH, 1, s // 4, s // 4]), TensorSpec("iou_scores", [BATCH, 1])],
        ),
    }


def example_inputs(
    specs: list[TensorSpec], batch: int = 2, seed: int = 0, dims: dict[str, int] | None = None
) -> tuple[torch.Tensor, ...]:
    """Tensors shaped like `specs`: random float32, zeros for integer inputs; the batch dimension set to `batch`,
    other named dynamic dimensions to their size in `dims`."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {**(dims or {}), BATCH: batch}
    out = []
    for spec in specs:
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        is_float = spec.dtype.startswith("float")
        out.append(
            torch.randn(shape, generator=gen) if is_float else torch.zeros(shape, dtype=getattr(torch, spec.dtype))
        )
    return tuple(out)
