"""Is a segmentation result meaningful? `confident` and, when not, the `reason`, from signals the model has.

LENS always returns a mask: asked about an object that is not in the picture, or shown a picture unlike anything it
was trained on, it still masks something, with a score (SAM2's IoU prediction) that looks like its right answers'.
What the pipeline does know, per result:

    format      the answer followed its format's markup (the box was read from box tokens / the answer block)
    named       the answer names the asked-for object: grounding answers write the expression back between object
                reference tokens (the released stage-1 answers, `format_answer`); think_answer answers name the
                object they found before the box (`<answer>the blue square {"bbox_2d": [...]}</answer>`), which
                for a relational prompt is not the prompt's wording, so there it must only name something
    mask area   the mask's share of the image: empty, or (nearly) the whole image
    stability   SAM's stability score of the mask: the IoU of the masks at logit > +1 and logit > -1 (the offset of
                SAM's automatic mask generator). A mask whose edges the decoder is unsure about changes between the
                two; on the demo model it is the signal that tells real photos from its scenes
    score       SAM2's IoU prediction (uninformative on the demo model: 0.47-0.53 on right and wrong answers alike)
    vocabulary  the prompt's words against the words of the model's training prompts, where the model's config lists
                them (a model that knows a few dozen words answers any other prompt with one of its objects,
                confidently drawn)

`judge(signals, thresholds)` applies `ConfidenceConfig` (lens_model.model.config: the model's config.json
`lens.confidence` section; defaults calibrated on the demo model by scripts/calibrate_confidence.py, table in
docs/design.md, "When a result is meaningless").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..model.config import ConfidenceConfig
from .answer import ParsedAnswer

STABILITY_OFFSET = 1.0  # logit offset of the stability score, as SAM's automatic mask generator


def stability_score(logits: torch.Tensor, offset: float = STABILITY_OFFSET) -> float:
    """(H, W) mask logits -> |logits > offset| / |logits > -offset|; 0 for a mask empty at -offset."""
    outer = int((logits > -offset).sum())
    return float(int((logits > offset).sum()) / outer) if outer else 0.0


def _normalise(text: str | None) -> str:
    return " ".join((text or "").lower().strip().rstrip(".").split())


_BOX_START = re.compile(r"[\[{(]")


def answer_name(parsed: ParsedAnswer, answer_format: str) -> str | None:
    """What the answer calls the object: grounding: its object reference; think_answer: the answer block's text
    before the box (`the blue square` in `<answer>the blue square {"bbox_2d": [...]}</answer>`), else its object
    reference. None when the answer names nothing."""
    if answer_format == "think_answer" and parsed.answer_text:
        match = _BOX_START.search(parsed.answer_text)
        name = parsed.answer_text[: match.start()] if match else parsed.answer_text
        if _normalise(name):
            return name.strip()
    return parsed.object_ref if _normalise(parsed.object_ref) else None


def names_prompt(parsed: ParsedAnswer, prompt: str, answer_format: str) -> bool:
    """Does the answer name the asked-for object? grounding: its object reference is the prompt (case, spacing and
    a final period aside); think_answer: it names an object (the name of the object found need not be the prompt's
    wording)."""
    name = answer_name(parsed, answer_format)
    if answer_format == "grounding":
        return name is not None and _normalise(name) == _normalise(prompt)
    return name is not None


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as the vocabulary check reads them: lower case, punctuation dropped."""
    return _WORD.findall(text.lower())


def unknown_words(prompt: str, vocabulary: list[str]) -> tuple[str, ...]:
    """The prompt's words (in order, once each) that are not in `vocabulary`; none when it is empty."""
    if not vocabulary:
        return ()
    known = set(vocabulary)
    return tuple(dict.fromkeys(w for w in prompt_words(prompt) if w not in known))


@dataclass
class ConfidenceSignals:
    """What one result's confidence is judged on."""

    format_ok: bool
    named: bool
    answer_name: str | None  # what the answer calls the object (for the reason)
    mask_fraction: float  # mask pixels / image pixels
    stability: float
    score: float  # SAM2's IoU prediction
    unknown_words: tuple[str, ...] = ()  # the prompt's words outside the model's vocabulary (unknown_words)


def judge(signals: ConfidenceSignals, thresholds: ConfidenceConfig) -> tuple[bool, str | None]:
    """-> (confident, reason): every failed check, joined by '; ', as the reason; None when confident."""
    t, s = thresholds, signals
    failed = []
    if s.unknown_words:
        failed.append(f"the model was not trained on the word(s) {', '.join(map(repr, s.unknown_words))}")
    if t.require_format and not s.format_ok:
        failed.append("the answer does not follow the model's answer format")
    if t.require_named and not s.named:
        called = "nothing" if s.answer_name is None else repr(s.answer_name.strip().rstrip("."))
        failed.append(f"the answer names {called}, not the asked-for object")
    if s.mask_fraction < t.min_mask_fraction:
        failed.append(f"the mask is (nearly) empty ({100 * s.mask_fraction:.2f} % of the image)")
    if s.mask_fraction > t.max_mask_fraction:
        failed.append(f"the mask covers {100 * s.mask_fraction:.0f} % of the image")
    if s.stability < t.min_stability:
        failed.append(f"the mask is unstable (stability {s.stability:.2f} < {t.min_stability:g})")
    if t.min_score is not None and s.score < t.min_score:
        failed.append(f"SAM2's IoU prediction {s.score:.2f} < {t.min_score:g}")
    return (not failed), ("; ".join(failed) or None)
