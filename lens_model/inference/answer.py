"""Reading boxes out of the MLLM's answer, and the coordinate transforms around it (pure Python)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ..vocab import ANSWER_FORMATS

Box = tuple[float, float, float, float]

_NUM = r"[-+]?\d+(?:\.\d+)?"
_GROUNDING_BOX = re.compile(
    rf"<\|box_start\|>\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*<\|box_end\|>"
)
_OBJECT_REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.S)
# The released parser's fallback: the first [a,b,c,d], (a,b,c,d) or (a,b),(c,d) anywhere in the text.
_ANY_BOX = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)
_THINK_ANSWER = re.compile(r"\s*<(think|thinking)>(.*?)</\1>\s*<answer>(.*?)</answer>\s*", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_BOX_START = re.compile(r"[\[{(]")  # where a box begins inside <answer>: [x1, ...], {"bbox_2d": ...} or (x1, ...)
_TRAILING_SPECIAL = re.compile(r"(?:<\|im_end\|>|<\|endoftext\|>)+\s*$")
# The released format rewards' templates (docs/design.md, "Prompt and answer formats"). grounding: the answer is
# exactly object ref + box tokens, from its first character to its end token, each part on one line (any box text:
# the box reward judges the box); think_answer: it starts with <think>…</think>, then <answer>…</answer>, and
# anything may follow.
_GROUNDING_TEMPLATE = re.compile(
    r"<\|object_ref_start\|>[^\n]*?<\|object_ref_end\|><\|box_start\|>[^\n]*?<\|box_end\|>"
)
_THINK_TEMPLATE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.S)


@dataclass
class ParsedAnswer:
    box: Box | None  # in the MLLM's (resized) image pixels
    format_ok: bool  # the box was read from the format's own markup (box tokens / <think>…<answer> blocks)
    reasoning: str | None = None
    answer_text: str | None = None
    # the object the answer names: grounding, the text between the object-ref tokens; think_answer, the answer's
    # words before its box ("<answer>the large red circle {"bbox_2d": ...}</answer>"), None when it has none
    object_ref: str | None = None
    error: str | None = None  # why `box` is None
    template_ok: bool = False  # the text follows the format's template as the released format reward checks it


def _validate(numbers) -> tuple[Box | None, str | None]:
    try:
        x1, y1, x2, y2 = (float(v) for v in numbers)
    except (TypeError, ValueError):
        return None, "box does not hold four numbers"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, "box has non-finite coordinates"
    if x2 <= x1:
        return None, f"box has x2 <= x1 ({x2:g} <= {x1:g})"
    if y2 <= y1:
        return None, f"box has y2 <= y1 ({y2:g} <= {y1:g})"
    return (x1, y1, x2, y2), None


def _first_box_anywhere(text: str) -> tuple[Box | None, str | None]:
    match = _ANY_BOX.search(text)
    if match is None:
        return None, "no box found in model output"
    return _validate([g for g in match.groups() if g is not None])


def _box_from_json(text: str) -> tuple[Box | None, str | None]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, "answer is not valid JSON"
    # Accept [x1,y1,x2,y2], {"bbox_2d": [...]}, [{"bbox_2d": [...]}, ...]: the first box found wins.
    stack = [data]
    while stack:
        item = stack.pop(0)
        if (
            isinstance(item, list)
            and len(item) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)
        ):
            return _validate(item)
        if isinstance(item, dict):
            stack = (
                [item[k] for k in ("bbox_2d", "bbox", "box") if k in item]
                + [v for v in item.values() if isinstance(v, (list, dict))]
                + stack
            )
        elif isinstance(item, list):
            stack = list(item) + stack
    return None, "no box in the JSON answer"


def parse_answer(text: str, answer_format: str) -> ParsedAnswer:
    """Never raises on model text: an unusable box gives box=None with `error` set."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; valid: {', '.join(ANSWER_FORMATS)}")
    text = _TRAILING_SPECIAL.sub("", text or "")
    ref = _OBJECT_REF.search(text)
    object_ref = ref.group(1).strip() if ref else None
    if answer_format == "grounding":
        match = _GROUNDING_BOX.search(text)
        box, error = _validate(match.groups()) if match else _first_box_anywhere(text)
        template_ok = _GROUNDING_TEMPLATE.fullmatch(text) is not None
        return ParsedAnswer(box, match is not None, object_ref=object_ref, error=error, template_ok=template_ok)
    full = _THINK_ANSWER.fullmatch(text)
    answer = full.group(3) if full else (m.group(1) if (m := _ANSWER.search(text)) else None)
    reasoning = full.group(2).strip() if full else None
    if answer is None:
        box, error = None, "no <answer>...</answer> block in model output"
    else:
        box, error = _box_from_json(answer.strip())
        if box is None and error != "no box in the JSON answer":
            fallback, fallback_error = _first_box_anywhere(answer)
            if fallback is not None:
                box, error = fallback, None
            elif fallback_error != "no box found in model output":  # a box was there, but unusable: say why
                error = fallback_error
    template_ok = _THINK_TEMPLATE.match(text) is not None
    if answer is not None:
        object_ref = _BOX_START.split(answer, maxsplit=1)[0].strip() or object_ref
    return ParsedAnswer(
        box, full is not None, reasoning, answer.strip() if answer else None, object_ref, error, template_ok
    )


def answer_parts(text: str) -> list[tuple[str, str | None]]:
    """`text` cut into consecutive pieces, each labelled with what the parser reads from it: "phrase" (the object
    reference), "box" (the grounding box tokens), "answer" (a <answer> block's content), None for the rest. The
    pieces join back to `text`; for showing an answer with what counts highlighted."""
    spans = [(m.start(1), m.end(1), "phrase") for m in _OBJECT_REF.finditer(text)]
    spans += [(m.start(), m.end(), "box") for m in _GROUNDING_BOX.finditer(text)]
    spans += [(m.start(1), m.end(1), "answer") for m in _ANSWER.finditer(text)]
    parts, at = [], 0
    for start, end, label in sorted(spans):
        if start < at:  # inside a piece already labelled (a box written inside the answer block)
            continue
        parts += [(text[at:start], None)] if start > at else []
        parts.append((text[start:end], label))
        at = end
    return parts + ([(text[at:], None)] if at < len(text) else [])


def format_answer(
    expression: str, box_llm: Box, answer_format: str = "grounding", reasoning: str = "", name: str | None = None
) -> str:
    """The target answer for teacher forcing: `box_llm` in the MLLM image's pixels, rounded to integers.

    grounding (released stage-1 data):
        <|object_ref_start|>EXPRESSION.<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
    think_answer: `reasoning` in the think block (empty by default: stage 1 on public data has none to imitate),
    then the answer: `name` (the object found, e.g. "the large red circle"; none by default) and the JSON box:
        <think>REASONING</think><answer>NAME {"bbox_2d": [x1, y1, x2, y2]}</answer>
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box_llm)
    if answer_format == "grounding":
        phrase = expression.strip().rstrip(".")
        return f"<|object_ref_start|>{phrase}.<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    if answer_format == "think_answer":
        named = f"{name} " if name else ""
        return f'<think>{reasoning}</think><answer>{named}{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}]}}</answer>'
    raise ValueError(f"unknown answer format {answer_format!r}; valid: {', '.join(ANSWER_FORMATS)}")


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's image size rule: sides multiples of `factor`, pixel count within [min_pixels, max_pixels]."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be at most 200, got {max(height, width) / min(height, width):.1f}")
    # as transformers' Qwen2-VL image processor (no lower clamp here: tiny sides are fixed by min_pixels)
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def rescale_box(box: Box, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Box:
    """Box in pixels of an image of size from_hw -> pixels of the same image at size to_hw."""
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def clip_box(box: Box, hw: tuple[int, int]) -> Box | None:
    """Clip to [0, W] x [0, H]; None when nothing of the box is inside the image."""
    h, w = hw
    x1, y1, x2, y2 = (
        min(max(box[0], 0.0), w),
        min(max(box[1], 0.0), h),
        min(max(box[2], 0.0), w),
        min(max(box[3], 0.0), h),
    )
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def box_iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
