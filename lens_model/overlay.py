"""Picture of a result: tinted mask with its outline, the box, and the prompt as a caption; with several targets
(lens_model.inference.targets), each in its own colour (`target_colour`, which the node's RViz markers use too)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BOX_COLOR = (40, 220, 60)
CAPTION_BACKGROUND = (0, 0, 0)  # dark band + white text stays readable on any photo
CAPTION_TEXT = (255, 255, 255)
ELLIPSIS = "…"
# Target k's colour is TARGET_COLOURS[(k - 1) % 8]: the first is the single-target tint, the others far from it
# and from each other (red, blue, yellow, violet, teal, orange, green, pink).
TARGET_COLOURS = (
    (255, 64, 64),
    (64, 140, 255),
    (255, 210, 0),
    (170, 80, 255),
    (0, 200, 170),
    (255, 140, 0),
    (120, 220, 60),
    (255, 80, 190),
)


def target_colour(target_id: int) -> tuple[int, int, int]:
    """RGB 0..255 of target `target_id` (1-based) in overlays and markers."""
    if target_id < 1:
        raise ValueError(f"target ids start at 1, got {target_id}")
    return TARGET_COLOURS[(target_id - 1) % len(TARGET_COLOURS)]


def _scale(height: int, width: int) -> int:
    """Line widths and font size grow with the picture so that they stay visible on large frames."""
    return max(1, round(max(height, width) / 400))


def _check_image(image_rgb: np.ndarray) -> None:
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be HxWx3 uint8, got shape {image_rgb.shape} dtype {image_rgb.dtype}")


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; pixels on the image border count as having outside neighbours."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Mask pixels within `thickness` steps of the outside."""
    inner = mask
    for _ in range(thickness):
        inner = _erode(inner)
    return mask & ~inner


def _paint_mask(out: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float, scale: int) -> None:
    tint = np.asarray(color, np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out[_contour(mask, scale)] = tint


def _box_corners(box: Sequence[float], height: int, width: int) -> list[float]:
    """(x0, y0, x1, y1) in pixels, put in order and clipped so that PIL accepts any model output."""
    values = [float(v) for v in box]
    if len(values) != 4 or not np.isfinite(values).all():
        raise ValueError(f"box must be 4 finite pixel coordinates (x0, y0, x1, y1), got {tuple(box)}")
    x0, x1 = sorted(np.clip(values[0::2], 0, width - 1))
    y0, y1 = sorted(np.clip(values[1::2], 0, height - 1))
    return [x0, y0, x1, y1]


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> str:
    """Longest prefix (with an ellipsis) that fits; binary search keeps very long prompts cheap."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    low, high = 0, len(text)  # invariant: prefix of length `low` fits
    while low < high:
        mid = (low + high + 1) // 2
        if draw.textlength(text[:mid].rstrip() + ELLIPSIS, font=font) <= max_width:
            low = mid
        else:
            high = mid - 1
    return text[:low].rstrip() + ELLIPSIS if low else ""


def _draw_caption(canvas: Image.Image, prompt: str, scale: int) -> None:
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12 * scale)
    pad = 4 * scale
    band = 18 * scale
    draw.rectangle([0, 0, canvas.width, band - 1], fill=CAPTION_BACKGROUND)
    text = fit_text(draw, " ".join(prompt.split()), font, canvas.width - 2 * pad)  # newlines would leave the band
    top, bottom = draw.textbbox((0, 0), "Ag", font=font)[1::2]
    draw.text((pad, (band - (bottom - top)) / 2 - top), text, fill=CAPTION_TEXT, font=font)


def draw_overlay(
    image_rgb: np.ndarray,
    mask: np.ndarray | None,
    box: Sequence[float] | None = None,
    prompt: str | None = None,
    color: Sequence[int] = TARGET_COLOURS[0],
    alpha: float = 0.45,
) -> Image.Image:
    """Image with the mask tinted (`alpha` blend toward `color`) and outlined, the box in green and the prompt
    in a dark band along the top. Output has the input's size."""
    _check_image(image_rgb)
    h, w = image_rgb.shape[:2]
    scale = _scale(h, w)
    out = image_rgb.astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match image shape {(h, w)}")
        _paint_mask(out, mask.astype(bool), color, alpha, scale)
    canvas = Image.fromarray(out.round().astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(canvas).rectangle(_box_corners(box, h, w), outline=BOX_COLOR, width=2 * scale)
    if prompt:
        _draw_caption(canvas, prompt, scale)
    return canvas


def draw_targets_overlay(
    image_rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[float] | None],
    caption: str | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """Several targets: target k's mask (masks[k - 1]) tinted and outlined in `target_colour(k)`, its box in the
    same colour with the id in a tag at its corner, the command as the caption. One target draws exactly
    `draw_overlay`'s picture."""
    if len(masks) != len(boxes) or not masks:
        raise ValueError(f"need one box (or None) per mask and at least one mask, got {len(masks)} and {len(boxes)}")
    if len(masks) == 1:
        return draw_overlay(image_rgb, masks[0], boxes[0], caption, alpha=alpha)
    _check_image(image_rgb)
    h, w = image_rgb.shape[:2]
    scale = _scale(h, w)
    out = image_rgb.astype(np.float32)
    for k, mask in enumerate(masks, start=1):
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise ValueError(f"mask {k} has shape {mask.shape}, the image {(h, w)}")
        _paint_mask(out, mask.astype(bool), target_colour(k), alpha, scale)
    canvas = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=10 * scale)
    for k, box in enumerate(boxes, start=1):
        if box is None:
            continue
        x0, y0, x1, y1 = _box_corners(box, h, w)
        draw.rectangle([x0, y0, x1, y1], outline=target_colour(k), width=2 * scale)
        left, top, right, bottom = draw.textbbox((x0, y0), str(k), font=font)
        draw.rectangle([x0, y0, x0 + right - left + 2 * scale, y0 + bottom - top + 2 * scale], fill=target_colour(k))
        draw.text((x0 + scale - (left - x0), y0 + scale - (top - y0)), str(k), fill=CAPTION_BACKGROUND, font=font)
    if caption:
        _draw_caption(canvas, caption, scale)
    return canvas
