"""What goes into the MLLM and how its answer is read: the chat prompt, the image it sees, its special tokens,
the decoded completion and the box in the original image.

Shared by inference (`LensPipeline`), the training data (teacher-forced answers) and the GRPO rollouts, so that
every caller builds exactly the prompt the released models were trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, ImageError
from ..model.config import LensConfig, PromptConfig
from .answer import Box, ParsedAnswer, clip_box, parse_answer, rescale_box, smart_resize

# Qwen2-VL's image processor refuses images whose long side exceeds 200 times the short side.
MAX_MLLM_ASPECT_RATIO = 200
# The MLLM's vision encoder cuts images into 14 x 14-pixel patches; an image with fewer pixels than one patch holds
# less than one patch of picture (a 1x1 or 8x8 image gave an empty or arbitrary mask), whatever the resize makes of it.
MLLM_PATCH_PIXELS = 14
MIN_MLLM_IMAGE_PIXELS = MLLM_PATCH_PIXELS * MLLM_PATCH_PIXELS


def special_token_ids(tok) -> tuple[int, list[int]]:
    """(padding id, end-of-answer ids) of a Qwen tokenizer: generation stops at <|im_end|> or <|endoftext|>."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
    eos = sorted({tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None, tok.unk_token_id})
    return pad, eos


@dataclass(frozen=True)
class EndTokenIds:
    """The end-of-answer tokens of a Qwen tokenizer: <|im_end|> closes the assistant turn, <|endoftext|> ends a
    document (and pads); `eos` are the ids generation stops at."""

    im_end: int
    endoftext: int
    eos: tuple[int, ...]


def end_token_ids(tok, eos_token_ids: Sequence[int] | None = None) -> EndTokenIds:
    """`eos_token_ids`: the ids generation stops at (default: both end tokens, as `special_token_ids`)."""
    eos = special_token_ids(tok)[1] if eos_token_ids is None else eos_token_ids
    return EndTokenIds(
        tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"), tuple(int(t) for t in eos)
    )


def build_chat(processor, prompt_config: PromptConfig, question_text: str) -> str:
    """System + user turn (image, templated question) + the assistant header, as the released models saw it."""
    question = prompt_config.question_template.format(question=question_text)
    if not question.endswith("."):  # the released data pipeline ends every question with a period
        question += "."
    if getattr(processor, "chat_template", None) is None:
        raise CheckpointError(
            "the processor has no chat template: the model directory needs chat_template.jinja (or "
            "chat_template.json), as `lens make-tiny` and the released checkpoints have"
        )
    messages = [
        {"role": "system", "content": prompt_config.system_prompt},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_mllm_image_size(hw: tuple[int, int], source: str = "image") -> None:
    """Refuse an (H, W) image the MLLM cannot take: fewer pixels than one of its image patches, or an aspect ratio
    above MAX_MLLM_ASPECT_RATIO. Refused rather than padded or upscaled: either would change the picture the model
    reasons about and the box coordinates it answers in; that is the user's choice."""
    h, w = hw
    if h * w < MIN_MLLM_IMAGE_PIXELS:
        raise ImageError(
            f"{source} is {w}x{h} pixels, smaller than one image patch of the MLLM ({MLLM_PATCH_PIXELS}x"
            f"{MLLM_PATCH_PIXELS} = {MIN_MLLM_IMAGE_PIXELS} pixels): it would see a blur upscaled from "
            f"{h * w} pixel(s) and SAM2 one stretched to its input size; pass a larger image"
        )
    ratio = max(h, w) / min(h, w)
    if ratio > MAX_MLLM_ASPECT_RATIO:
        short = "height" if h < w else "width"
        raise ImageError(
            f"{source} is {w}x{h} pixels (aspect ratio {ratio:.0f}:1); the MLLM (Qwen2.5-VL) takes at most "
            f"{MAX_MLLM_ASPECT_RATIO}:1: crop it, or pad its {short} to at least "
            f"{math.ceil(max(h, w) / MAX_MLLM_ASPECT_RATIO)} pixels"
        )


def mllm_image(rgb: np.ndarray, config: LensConfig, longest_side: int | None = None) -> Image.Image:
    """HxWx3 uint8 -> the PIL image the MLLM sees: resized so that its longest side is `longest_side` (default: the
    model's `mllm_longest_side`, the size it was trained for; None for both: as given), then smart-resized
    (multiples of 28 within the config's pixel bounds), so that box coordinates are pixels of this image.
    ImageError for an image `check_mllm_image_size` refuses."""
    check_mllm_image_size(rgb.shape[:2])
    image = Image.fromarray(rgb)
    longest_side = longest_side or config.mllm_longest_side
    if longest_side and max(image.size) != longest_side:
        scale = longest_side / max(image.size)
        image = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
    h, w = smart_resize(image.height, image.width, 28, config.min_pixels, config.max_pixels)
    return image.resize((w, h), Image.BICUBIC)


def decode_completion(tokenizer, ids: Sequence[int], pad_token_id: int, eos_token_ids: Sequence[int]) -> str:
    """One completion's ids (all of them, or those generated so far) -> its text without padding and end tokens
    (other special tokens kept: the answer format is written in them)."""
    drop = {pad_token_id, *eos_token_ids}
    return tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)


def decode_completions(tokenizer, completion: torch.Tensor, pad_token_id: int, eos_token_ids: list[int]) -> list[str]:
    """(R, T) completion ids -> R texts (`decode_completion` of each row)."""
    return [decode_completion(tokenizer, row.tolist(), pad_token_id, eos_token_ids) for row in completion]


def box_in_image(
    parsed: ParsedAnswer, mllm_hw: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[Box | None, str | None]:
    """A parsed answer's box (MLLM image pixels) -> (box in original-image pixels or None, why None)."""
    if parsed.box is None:
        return None, parsed.error
    box = clip_box(rescale_box(parsed.box, mllm_hw, image_hw), image_hw)
    return box, (None if box is not None else "box lies outside the image")


def box_from_answer(text: str, answer_format: str, mllm_hw: tuple[int, int], image_hw: tuple[int, int]):
    """Generated text -> (box in original-image pixels or None, why None, format followed)."""
    parsed = parse_answer(text, answer_format)
    box, error = box_in_image(parsed, mllm_hw, image_hw)
    return box, error, parsed.format_ok
