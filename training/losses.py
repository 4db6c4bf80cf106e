"""Segmentation losses of stage 1 (and the mask term of stage 2), on mask logits already at the GT's size.

As released (hustvl/LENS `sam_loss.py`): per sample, dice 1 − (2·Σσ(x)·y + 1)/(Σσ(x) + Σy + 1) over pixels and
the mean BCE-with-logits over pixels (named `sigmoid_bce_loss` there; the paper says focal, available here as
`pixel_loss="focal"`); each averaged over the batch, summed with weights 1.
All per-sample functions return (B,) so callers can weight or mask samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vocab import PIXEL_LOSSES


def _as_float(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16/fp16 logits -> float32 (sums over ~10⁶ pixels); float64 stays (gradient checks). Target -> same dtype."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
    if logits.dim() < 2:
        raise ValueError(f"expected (B, H, W) logits, got shape {tuple(logits.shape)}")
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return x, target.to(device=x.device, dtype=x.dtype)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target (B, H, W) -> (B,): 1 − (2·Σσ(x)·y + 1)/(Σσ(x) + Σy + 1), sums over each sample's pixels."""
    x, y = _as_float(logits, target)
    p = x.sigmoid().flatten(1)  # (B, H*W)
    y = y.flatten(1)
    return 1.0 - (2.0 * (p * y).sum(1) + 1.0) / (p.sum(1) + y.sum(1) + 1.0)


def sigmoid_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target (B, H, W) -> (B,): mean over pixels of BCE-with-logits."""
    x, y = _as_float(logits, target)
    return F.binary_cross_entropy_with_logits(x, y, reduction="none").flatten(1).mean(1)


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """logits, target (B, H, W) -> (B,): mean over pixels of the RetinaNet focal loss.

    FL = α_t·(1 − p_t)^γ·BCE, p_t = σ(x) for y=1 and 1 − σ(x) for y=0; α < 0 drops α_t (torchvision's convention).
    """
    x, y = _as_float(logits, target)
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss.flatten(1).mean(1)


def _resize_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) -> (H, W) in float32 (float64 kept), bilinear without corner alignment (as released)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    with torch.autocast(device_type=logits.device.type, enabled=False):  # bf16 autocast must not touch the resize
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0]


def _check_batch(low_res_logits: torch.Tensor, gt_masks) -> None:
    if low_res_logits.dim() != 4 or low_res_logits.shape[1] != 1 or low_res_logits.shape[0] == 0:
        raise ValueError(f"low_res_logits must be (B, 1, h, w) with B >= 1, got {tuple(low_res_logits.shape)}")
    if len(gt_masks) != low_res_logits.shape[0]:
        raise ValueError(
            f"{len(gt_masks)} GT masks for logits of batch {low_res_logits.shape[0]}"
            f" (shape {tuple(low_res_logits.shape)})"
        )
    for i, gt in enumerate(gt_masks):
        if gt.dim() != 2:
            raise ValueError(f"gt_masks[{i}] must be (H, W), got {tuple(gt.shape)}")


def mask_loss(
    low_res_logits: torch.Tensor,
    gt_masks,
    dice_weight: float = 1.0,
    pixel_weight: float = 1.0,
    pixel_loss: str = "bce",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """SAM2 low-res logits (B, 1, h, w) and B GT masks (H_i, W_i) (bool/float, sizes may differ) -> scalar losses.

    Each sample's logits are resized to its own GT size first (GT masks stay at full resolution, as released).
    Returns {"dice", "pixel", "loss"}: batch means, loss = dice_weight·dice + pixel_weight·pixel.
    """
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be one of {', '.join(PIXEL_LOSSES)}, got {pixel_loss!r}")
    _check_batch(low_res_logits, gt_masks)
    dice, pixel = [], []
    for i, gt in enumerate(gt_masks):
        x = _resize_to(low_res_logits[i : i + 1], tuple(gt.shape))[None]  # (1, H_i, W_i)
        y = gt.to(device=x.device, dtype=x.dtype)[None]  # (1, H_i, W_i)
        dice.append(dice_loss(x, y))
        if pixel_loss == "bce":
            pixel.append(sigmoid_bce_loss(x, y))
        else:
            pixel.append(sigmoid_focal_loss(x, y, focal_alpha, focal_gamma))
    dice_mean = torch.cat(dice).mean()  # (B,) -> ()
    pixel_mean = torch.cat(pixel).mean()
    return {"dice": dice_mean, "pixel": pixel_mean, "loss": dice_weight * dice_mean + pixel_weight * pixel_mean}


__all__ = ["PIXEL_LOSSES", "dice_loss", "mask_loss", "sigmoid_bce_loss", "sigmoid_focal_loss"]
