"""Picture of a result: tinted mask with its outline, the box, and the prompt as a caption."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BOX_COLOR = (40, 220, 60)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with at least one 4-neighbour outside the mask."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_overlay(image_rgb: np.ndarray, mask: np.ndarray | None, box=None, prompt: str | None = None,
                 color=(255, 64, 64), alpha: float = 0.45) -> Image.Image:
    h, w = image_rgb.shape[:2]
    out = image_rgb.astype(np.float32).copy()
    if mask is not None:
        if mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match image shape {(h, w)}")
        m = mask.astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
        out[_outline(m)] = color
    canvas = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    scale = max(1, round(max(h, w) / 400))
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=BOX_COLOR, width=2 * scale)
    if prompt:
        font = ImageFont.load_default(size=12 * scale)
        band = 18 * scale
        text = prompt
        while len(text) > 1 and draw.textlength(text, font=font) > w - 8 * scale:
            text = text[:-2].rstrip() + "…" if not text.endswith("…") else text[:-2] + "…"
        draw.rectangle([0, 0, w, band], fill=(0, 0, 0))
        draw.text((4 * scale, 3 * scale), text, fill=(255, 255, 255), font=font)
    return canvas
