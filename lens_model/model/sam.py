"""SAM2 as LENS uses it: image encoder + prompt encoder + mask decoder, no memory modules.

The MLLM's context token replaces SAM2's point/box prompts: it is the single sparse prompt embedding,
the dense embedding is SAM2's "no mask" embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import SamConfig

# ImageNet statistics in 0-255 pixel units, as SAM2 and the released LENS code use.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# Modules of a full SAM2 that single-image segmentation never calls.
MEMORY_MODULES = ("maskmem_tpos_enc", "memory_attention", "memory_encoder")


def build_sam(config: SamConfig, device: str | torch.device = "cpu"):
    """Build SAM2Base from the `sam2` package's Hydra config, without memory modules, randomly initialised."""
    from sam2.build_sam import build_sam2

    model = build_sam2(
        config.config_name,
        ckpt_path=None,
        device=str(device),
        mode="eval",
        hydra_overrides_extra=list(config.overrides),
        apply_postprocessing=config.apply_postprocessing,
    )
    for name in MEMORY_MODULES:
        if hasattr(model, name):
            delattr(model, name)
    if model.image_size != config.image_size:
        raise ValueError(f"SAM2 config builds image_size {model.image_size}, lens config says {config.image_size}")
    return model


def preprocess_for_sam(image_rgb: np.ndarray, image_size: int) -> torch.Tensor:
    """HxWx3 uint8 -> (3, S, S) float32 normalised; resized without keeping the aspect ratio (as released)."""
    resized = Image.fromarray(image_rgb).resize((image_size, image_size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    return (x - mean) / std


@dataclass
class SamImageFeatures:
    """Output of the SAM2 image encoder for a batch of images (S = image size)."""

    image_embed: torch.Tensor  # (B, 256, S/16, S/16), with `no_mem_embed` added
    high_res_feats: list[torch.Tensor]  # [(B, 32, S/4, S/4), (B, 64, S/8, S/8)]

    def select(self, index: torch.Tensor) -> SamImageFeatures:
        """Features per prompt row: index (P,) holds the image of each row."""
        return SamImageFeatures(self.image_embed[index], [f[index] for f in self.high_res_feats])


def encode_image(sam, images: torch.Tensor) -> SamImageFeatures:
    """(B, 3, S, S) normalised images -> SAM2 features for the decoder."""
    backbone_out = sam.forward_image(images)
    _, vision_feats, _, feat_sizes = sam._prepare_backbone_features(backbone_out)
    if sam.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + sam.no_mem_embed
    b = images.shape[0]
    # (HW, B, C) -> (B, C, H, W) for each level, finest first
    feats = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes)]
    return SamImageFeatures(image_embed=feats[-1], high_res_feats=feats[:-1])


def decode_masks(sam, features: SamImageFeatures, prompt_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_embeds (B, 1, 256) + features for the same B -> low-res logits (B, 1, S/4, S/4), IoU score (B, 1)."""
    b = prompt_embeds.shape[0]
    if features.image_embed.shape[0] != b:
        raise ValueError(f"{features.image_embed.shape[0]} image embeddings for {b} prompt embeddings")
    empty_sparse, no_mask_dense = sam.sam_prompt_encoder(points=None, boxes=None, masks=None)
    prompt_embeds = prompt_embeds.to(no_mask_dense.dtype)
    sparse = torch.cat([empty_sparse.to(prompt_embeds).expand(b, -1, -1), prompt_embeds], dim=1)
    dense = no_mask_dense.expand(b, -1, -1, -1)
    low_res, iou, _, _ = sam.sam_mask_decoder(
        image_embeddings=features.image_embed,
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=features.high_res_feats,
    )
    return low_res, iou


def upsample_logits(low_res: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) logits -> (B, H, W) float32 logits at the original image size (bilinear, as released)."""
    return F.interpolate(low_res.float(), size=hw, mode="bilinear", align_corners=False)[:, 0]
