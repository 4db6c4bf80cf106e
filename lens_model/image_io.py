"""Turning user images and prompts into what the pipeline needs, with one-line errors for bad input.

Every accepted image becomes HxWx3 uint8 RGB (C-contiguous). Conversions, not rejections:
grayscale (L, 1) is repeated into three channels; alpha (LA, RGBA, PA, palette transparency) is dropped,
not composited, so the colour values the camera recorded are kept; 16-bit grayscale keeps its high byte;
CMYK/YCbCr/LAB/HSV go through PIL's RGB conversion; EXIF orientation is applied so that the mask lines up
with the picture the user sees.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, PromptError

# The markup of Qwen's chat and vision tokens, <|im_start|>, <|im_end|>, <|image_pad|>, <|box_start|>, ...: every
# added token of a Qwen2/Qwen2.5-VL tokenizer has this form.
CHAT_CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXPECTED = "expected HxWx3 uint8 RGB"


def _one_line(exc: BaseException) -> str:
    """Exception text squeezed onto one line (some decoders put newlines in their messages)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) grey -> (H, W, 3) RGB with the grey value in every channel."""
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def uint16_high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit (depth-camera style) values -> 8 bit; mode "I" is 32-bit signed, so clip to the 16-bit range first."""
    return (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _check_not_empty(height: int, width: int, source: str) -> None:
    if height == 0 or width == 0:
        raise ImageError(f"{source} is empty ({width}x{height} pixels); pass an image with at least one pixel")


def _from_pil(image: Image.Image, source: str) -> np.ndarray:
    _check_not_empty(image.height, image.width, source)
    image = ImageOps.exif_transpose(image)  # masks must align with what the user sees
    if image.mode in _SIXTEEN_BIT_MODES:
        return gray_to_rgb(uint16_high_byte(np.asarray(image)))
    if image.mode == "F":
        raise ImageError(
            f"{source} is a floating-point (mode F) image; expected 8-bit RGB or 8/16-bit grayscale "
            "(scale it to 0..255 and save as uint8)"
        )
    try:
        rgb = image.convert("RGB")  # L, 1, P, LA, RGBA, CMYK, YCbCr ... ; alpha is dropped
    except ValueError:
        raise ImageError(f"{source} has unsupported image mode {image.mode}; expected RGB, RGBA or grayscale") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _from_opened(image: Image.Image) -> np.ndarray:
    """A caller's PIL image may still be lazily backed by a file that turns out to be truncated."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"PIL image could not be decoded (corrupt or truncated: {_one_line(exc)})") from None
    return _from_pil(image, "image")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a directory; pass an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty (0 bytes): {path}")


def _from_path(path: Path) -> np.ndarray:
    _check_file(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode fully so that truncated files fail here, not inside the model
            return _from_pil(image, str(path))
    except PermissionError:
        raise ImageError(f"cannot read image file {path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path} is not a readable image (unknown or unsupported format; use JPEG, PNG, BMP, TIFF or WebP)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path} is too large to load safely: {_one_line(exc)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{path} is not a readable image (corrupt or truncated: {_one_line(exc)})") from None


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise ImageError(f"image array is empty (shape {array.shape}); {_EXPECTED}")
    if array.dtype == np.uint16:
        array = uint16_high_byte(array)
    if array.dtype != np.uint8:
        raise ImageError(
            f"image array has dtype {array.dtype} and shape {array.shape}; {_EXPECTED} "
            "(scale floats to 0..255 and cast with .astype(np.uint8))"
        )
    if array.ndim == 2:
        return gray_to_rgb(array)
    if array.ndim == 3 and array.shape[2] == 1:
        return gray_to_rgb(array[..., 0])
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # drop alpha, as for files
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"image array has shape {array.shape}; {_EXPECTED} (or HxW grayscale, HxWx4 RGBA)")
    return np.ascontiguousarray(array)


def load_image(image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """Path, PIL image or numpy array -> HxWx3 uint8 RGB (C-contiguous); ImageError names what is wrong."""
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image))
    if isinstance(image, Image.Image):
        return _from_opened(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise ImageError(
        f"unsupported image type {type(image).__name__}; pass a file path, a PIL image or an HxWx3 uint8 numpy array"
    )


def read_prompt(prompt: Any) -> str:
    """The text command, stripped; PromptError when there is none, when it is not text (bytes that are not UTF-8,
    e.g. a shell argument of random bytes, which Python keeps as lone surrogates), or when it holds a chat control
    token such as <|im_end|> or <|image_pad|>: the processor would read those as the conversation's own markup (a
    prompt could end the user turn and write a system turn, or ask for an image that was not given). Prompts are
    refused rather than escaped: see docs/design.md, "Prompts are text"."""
    if prompt is not None and not isinstance(prompt, str):
        raise PromptError(
            f"prompt must be text (str), got {type(prompt).__name__}; pass a text command such as 'the red cup'"
        )
    if prompt is None or not prompt.strip():
        raise PromptError("prompt is empty: pass a text command such as 'the red cup'")
    text = prompt.strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = os.fsencode(text[exc.start : exc.end]) if exc.reason == "surrogates not allowed" else b""
        got = f"byte(s) {raw.hex(' ')}" if raw else f"character {text[exc.start]!r}"
        raise PromptError(
            f"prompt is not valid UTF-8 text ({got} at character {exc.start}); pass a text command such as "
            "'the red cup'"
        ) from None
    unprintable = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n"), None)
    if unprintable is not None:
        raise PromptError(
            f"prompt holds the control character {unprintable!r} at character {text.index(unprintable)}; pass "
            "plain text such as 'the red cup'"
        )
    token = CHAT_CONTROL_TOKEN.search(text)
    if token is not None:
        raise PromptError(
            f"prompt holds the chat control token {token.group()!r} at character {token.start()}; prompts must be "
            "plain text (remove it)"
        )
    return text
