"""Several objects in one command: split it into target phrases, segment them together, number them.

The splitting rule (docs/ros.md, "Several objects in one command"), applied to the command's words left to right:

* Separators are a comma, a semicolon and the words "and" and "then"; ", and", "and then", ", then" and ", and
  then" count as one. Any other run of them (",,", "and and", "then, and") leaves an empty phrase: an error.
* A separator splits only at the top level: not inside brackets or quotes, and not at the "and" of
  "between X and Y" (the first "and" after "between" belongs to it).
* It splits only where a new noun phrase starts: the word after it is an article, a demonstrative, a possessive or
  a quantifier (`NEW_PHRASE_WORDS`: the, a, an, this, my, one, another, ...). Otherwise the separator stays inside
  the phrase: "the red and white mug" and "the mug, left of the laptop" are one target, and so is "the cup and
  spoon" (repeat the article to name two objects: "the cup and the spoon").
* Relational phrases are never cut, since they continue without a new article: "the cup left of the plate and the
  spoon" gives "the cup left of the plate" and "the spoon".
* A separator with nothing after it (or only punctuation: "the cup and."), or nothing before it ("the cup and",
  ", the cup", "the cup,, the spoon"), is an error that names the empty place; so is a command with more than
  MAX_TARGETS targets.

Each phrase is the command's own text between two splitting separators, trimmed; a command that does not split is
returned unchanged (one target, segmented exactly as a single prompt). Target k (1-based, in the command's order) is
`targets[k - 1]` and paints the value k in the label image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PromptError

if TYPE_CHECKING:  # the pipeline imports torch; these helpers only read the results' attributes
    from .pipeline import SegmentationResult

MAX_TARGETS = 254  # label values 1..254 in a mono8 label image (0 = background; 255 left free)
SEPARATOR_WORDS = ("and", "then")
NEW_PHRASE_WORDS = frozenset(
    "the a an this that these those my your his her its our their one another each every some any both "
    "either neither no all".split()
)
OPENING, CLOSING = "([{", ")]}"
QUOTES = "\"“”'‘’"  # an apostrophe inside a word ("robot's") is not a quote: see _tokens
_WORD = re.compile(r"\w", re.UNICODE)
_TOKEN = re.compile(r"[,;]|[()\[\]{}]|[\"“”]|(?<![\w])['‘’]|['‘’](?![\w])|[^\s,;()\[\]{}\"“”]+", re.UNICODE)


class TargetError(PromptError):
    """A command that cannot be split into target phrases (an empty phrase, too many targets)."""


@dataclass
class _Token:
    text: str
    start: int
    end: int

    @property
    def word(self) -> str:
        return self.text.lower().strip("'‘’").rstrip(".!?:")  # "and." at the end of a sentence is still "and"


def _tokens(command: str) -> list[_Token]:
    return [_Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(command)]


def _is_separator(token: _Token) -> bool:
    return token.text in (",", ";") or token.word in SEPARATOR_WORDS


def split_targets(command: str, max_targets: int = MAX_TARGETS) -> list[str]:
    """The command's target phrases by the module's rule; [command] when it names one object."""
    if command is None or not str(command).strip():
        raise TargetError("the command is empty; give one or more target phrases, e.g. 'the cup and the spoon'")
    command = str(command)
    tokens = _tokens(command)
    cuts: list[tuple[int, int, str]] = []  # (end of the phrase before, start of the phrase after, separator text)
    depth, quoted, between_open = 0, False, False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.text in OPENING:
            depth += 1
        elif token.text in CLOSING:
            depth = max(0, depth - 1)
        elif token.text in QUOTES:
            quoted = not quoted
        elif token.word == "between":
            between_open = True
        if depth or quoted or not _is_separator(token):
            i += 1
            continue
        j = i
        while j < len(tokens) and _is_separator(tokens[j]):
            j += 1
        run = tokens[i:j]
        separator = command[run[0].start : run[-1].end]
        words = [t.word for t in run[1:]] if run[0].text in (",", ";") else [t.word for t in run]
        if words not in ([], ["and"], ["then"], ["and", "then"]):
            raise TargetError(f"empty target phrase inside {separator!r} in {command!r}")
        if between_open and any(t.word == "and" for t in run):
            between_open = False  # "between the plate and the bowl": one relational phrase
            i = j
            continue
        before = command[: run[0].start].strip() if not cuts else command[cuts[-1][1] : run[0].start].strip()
        if not any(_WORD.search(t.text) for t in tokens[j:]) and (cuts or before):  # only "." or "?" may follow
            raise TargetError(f"nothing after {separator!r} at the end of {command!r}: remove it or name the object")
        if not before:
            where = "at the start of" if not cuts else f"after {cuts[-1][2]!r} in"
            raise TargetError(f"empty target phrase before {separator!r} {where} {command!r}")
        if tokens[j].word in NEW_PHRASE_WORDS:
            cuts.append((run[0].start, tokens[j].start, separator))
        i = j
    if not cuts:
        return [command]
    starts = [0] + [after for _, after, _ in cuts]
    ends = [before for before, _, _ in cuts] + [len(command)]
    phrases = [command[a:b].strip().rstrip(",;").strip() for a, b in zip(starts, ends)]
    if len(phrases) > max_targets:
        raise TargetError(
            f"{len(phrases)} targets in one command; at most {max_targets} (label values 1..{max_targets} of the "
            "mono8 label image): send them as several commands"
        )
    return phrases


def command_targets(command: str, multi_target: bool = True, max_targets: int = MAX_TARGETS) -> list[str]:
    """The phrases a command is segmented as: split_targets with multi_target, else the command as one target."""
    if not multi_target:
        return [command]
    return split_targets(command, max_targets)


@dataclass
class CommandResult:
    """One command on one image: `targets[k - 1]` is target k's SegmentationResult (its `prompt` is the phrase)."""

    command: str
    targets: list[SegmentationResult]

    @property
    def ids(self) -> list[int]:
        return list(range(1, len(self.targets) + 1))

    @property
    def phrases(self) -> list[str]:
        return [t.prompt for t in self.targets]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.targets[0].mask.shape)

    def union_mask(self) -> np.ndarray:
        """(H, W) bool: any target."""
        return label_image([t.mask for t in self.targets]) > 0

    def label_image(self) -> np.ndarray:
        return label_image([t.mask for t in self.targets])


def label_image(masks: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W) uint8: 0 = background, k = target k (masks[k - 1]); where masks overlap, the lower id (the object
    named first) keeps the pixel."""
    if not masks:
        raise ValueError("label_image needs at least one mask")
    if len(masks) > MAX_TARGETS:
        raise TargetError(f"{len(masks)} masks; a mono8 label image holds at most {MAX_TARGETS}")
    labels = np.zeros(np.asarray(masks[0]).shape, np.uint8)
    for k in range(len(masks), 0, -1):  # the last painted wins: paint the first target last
        labels[np.asarray(masks[k - 1], bool)] = k
    return labels


def segment_command(pipe, image, command: str, multi_target: bool = True, **kwargs) -> CommandResult:
    """Every target of `command` in `image`, in one batched pipeline call (one image encoding for all of them)."""
    phrases = command_targets(command, multi_target)
    if len(phrases) == 1:
        return CommandResult(command, [pipe(image, phrases[0], **kwargs)])
    return CommandResult(command, list(pipe(image, phrases, **kwargs)))
