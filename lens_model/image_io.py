"""Turning user images and prompts into what the pipeline needs, with one-line errors for bad input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, PromptError


def _from_pil(image: Image.Image, source: str) -> np.ndarray:
    image = ImageOps.exif_transpose(image)  # masks must align with what the user sees
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{source} is empty ({image.width}x{image.height} pixels)")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (e.g. depth-camera style) grayscale: keep the high byte
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        gray = values.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if image.mode == "F":
        raise ImageError(f"{source} is a floating-point image; expected 8- or 16-bit RGB or grayscale")
    # L, LA, P, RGBA, CMYK, YCbCr, 1 ... -> RGB; alpha is dropped (not composited)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _from_path(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a directory; pass an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode fully so that truncated files fail here, not later
            return _from_pil(image, str(path))
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not a readable image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} is not a readable image (corrupt or truncated: {exc})") from None


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise ImageError(f"image array is empty (shape {array.shape})")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ImageError(f"image array has dtype {array.dtype} and shape {array.shape}; expected HxWx3 uint8 RGB")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"image array has shape {array.shape}; expected HxWx3 uint8 RGB")
    return np.ascontiguousarray(array)


def load_image(image) -> np.ndarray:
    """Path, PIL image or numpy array -> HxWx3 uint8 RGB (C-contiguous)."""
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image))
    if isinstance(image, Image.Image):
        return _from_pil(image, "image")
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a file path, a PIL image or an HxWx3 uint8 array")


def read_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("prompt is empty: pass a text command such as 'the red cup'")
    return prompt.strip()
