"""Configuration of a LENS model: the MLLM config (a transformers config) plus the `lens` section.

A LENS checkpoint's ``config.json`` is the reasoning model's own transformers config with one extra
key, ``"lens"``, holding :class:`LensConfig` as a dict. Tools that only know Qwen2.5-VL (vLLM,
transformers) can therefore still read the directory as a plain Qwen2.5-VL checkpoint.
Released checkpoints (hustvl/LENS) carry ``num_of_query`` / ``if_use_qwen_connector`` at the top level
instead; :meth:`LensConfig.from_released` maps them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from ..vocab import ANSWER_FORMATS, CONTEXT_PASS_MODES

DEFAULT_MODEL_ID = "OuyBin/LENS"  # the released LENS (Qwen2.5-VL-3B) on the Hugging Face Hub

# Prompt templates of the released checkpoints (docs/design.md, "Prompt and answer formats").
QWEN_SYSTEM_PROMPT = "You are a helpful assistant. "
GROUNDING_QUESTION = "Output the bounding box of the {question} in the image."
THINK_ANSWER_QUESTION = (  # sentences joined without spaces, exactly as the released template
    'Locate "{question}", report the bbox coordinates in JSON format.'
    "Compare the difference between objects and find the most closely matched one."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the one bbox inside the interested object in JSON format."
    "i.e., <think>thinking process here</think><answer>answer here</answer>"
)


def _describe(value: Any) -> str:
    return f"{value!r} ({'null' if value is None else type(value).__name__})"


def check_field_types(obj: Any, section: str) -> None:
    """Every field of dataclass `obj` holds a value of its declared type (int, float, bool, str, list[str]); a
    ValueError names the first that does not, as `section.field` (JSON gives strings and nulls where a number was
    meant: `"num_queries": "eight"` must be named, not fail later inside the model)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), hints[f.name]
        if kind is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif kind is int:
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif kind is float:
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif kind is str:
            ok, expected = isinstance(value, str), "a string"
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            ok, expected = (
                isinstance(value, list) and all(isinstance(v, item) for v in value),
                f"a list of {item.__name__}",
            )
        else:
            continue  # nested sections check themselves
        if not ok:
            raise ValueError(f"{section}.{f.name}: expected {expected}, got {_describe(value)}")


def _section(value: Any, cls: type, key: str) -> Any:
    """A nested config section given as a dict (config.json) -> `cls`; anything else but a `cls` is refused."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"{key}: expected a mapping with keys {names}, got {_describe(value)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown keys in the '{key}' config section: {unknown}; valid keys: {sorted(known)}")
    return cls(**value)


@dataclass
class PromptConfig:
    """How a referring expression becomes a chat prompt and how the answer is read back."""

    answer_format: str = "grounding"  # "grounding" (Qwen box tokens) or "think_answer"
    system_prompt: str = QWEN_SYSTEM_PROMPT
    question_template: str = GROUNDING_QUESTION

    @classmethod
    def for_format(cls, answer_format: str) -> PromptConfig:
        if answer_format == "grounding":
            return cls()
        if answer_format == "think_answer":
            return cls("think_answer", QWEN_SYSTEM_PROMPT, THINK_ANSWER_QUESTION)  # released CoT: "default" system
        raise ValueError(f"unknown answer format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")

    def __post_init__(self) -> None:
        check_field_types(self, "lens.prompt")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"lens.prompt.answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")


@dataclass
class SamConfig:
    """Which SAM2 to build with `sam2.build_sam.build_sam2` (Hydra config name + overrides)."""

    config_name: str = "configs/sam2/sam2_hiera_l.yaml"
    overrides: list[str] = field(default_factory=list)
    image_size: int = 1024
    # build_sam2's default post-processing (dynamic multimask via stability), as the released code.
    apply_postprocessing: bool = True

    def __post_init__(self) -> None:
        check_field_types(self, "lens.sam")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"lens.sam.image_size: expected a positive multiple of 32 (SAM2's Hiera downsamples by 32), "
                f"got {self.image_size}"
            )


@dataclass
class ConfidenceConfig:
    """When a result counts as `confident` (lens_model.inference.confidence): every check below must pass.

    Defaults calibrated on an earlier demo model (scripts/calibrate_confidence.py; docs/design.md, "When a result is
    meaningless"); a model directory's config.json may carry its own in `lens.confidence` (the bundled demo model
    does), and a pipeline's `confidence` attribute can be replaced at run time."""

    require_format: bool = True  # the answer followed its format's markup
    require_named: bool = True  # the answer names the asked-for object (confidence.names_prompt)
    min_mask_fraction: float = 0.0005  # below: the mask is (nearly) empty
    max_mask_fraction: float = 0.95  # above: the mask is (nearly) the whole image
    min_stability: float = 0.7  # SAM's stability score of the mask (confidence.stability_score)
    min_score: float | None = None  # SAM2's IoU prediction; None: not checked (it tells nothing on the demo model)
    # the words of the prompts the model was trained on (lower case); a prompt with another word is not confident.
    # Empty: not checked (released models read open vocabulary; the demo model knows a few dozen words)
    vocabulary: list[str] = field(default_factory=list)

    @classmethod
    def accept_all(cls) -> ConfidenceConfig:
        """Every check off: every result is confident (for plumbing tests on random tiny models)."""
        return cls(False, False, 0.0, 1.0, 0.0, None, [])

    def __post_init__(self) -> None:
        check_field_types(self, "lens.confidence")
        if not 0.0 <= self.min_mask_fraction <= self.max_mask_fraction <= 1.0:
            raise ValueError(
                "lens.confidence needs 0 <= min_mask_fraction <= max_mask_fraction <= 1, got "
                f"{self.min_mask_fraction} and {self.max_mask_fraction}"
            )


@dataclass
class LensConfig:
    num_queries: int = 64
    use_connector: bool = True
    connector_depth: int = 4
    connector_heads: int = 16
    connector_mlp_ratio: int = 4
    connector_act: str = "quick_gelu"
    sam_embed_dim: int = 256
    # "official": re-forward prompt + completion + queries with 1-D positions (released checkpoints);
    # "cached": reuse the generation KV cache, queries continue the M-RoPE positions.
    context_pass: str = "cached"
    # MLLM image size bounds (pixels) for the smart resize; the released scripts use max 1e6.
    min_pixels: int = 56 * 56
    max_pixels: int = 1_000_000
    # The image size the MLLM was trained for: every image is first resized so that its longest side is this many
    # pixels (aspect ratio kept), then smart-resized, so that its answers do not depend on the camera's resolution.
    # None: the released behaviour (the image as given, within min/max_pixels).
    mllm_longest_side: int | None = None
    # Add a fixed sinusoid of each patch's row and column to the vision encoder's patch embeddings (Qwen2-VL keeps
    # positions only in rotary attention): the demo model's tiny encoder needs it to say where things are
    # (model/vision_positions.py). False in the released checkpoints.
    mllm_absolute_positions: bool = False
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)

    def __post_init__(self) -> None:
        """Every value checked here, the one place a config (config.json's "lens" section, a training config, a
        caller) becomes a LensConfig: a ValueError names the key and what was expected."""
        self.prompt = _section(self.prompt, PromptConfig, "lens.prompt")
        self.sam = _section(self.sam, SamConfig, "lens.sam")
        self.confidence = _section(self.confidence, ConfidenceConfig, "lens.confidence")
        check_field_types(self, "lens")
        if self.context_pass not in CONTEXT_PASS_MODES:
            raise ValueError(f"lens.context_pass must be one of {CONTEXT_PASS_MODES}, got {self.context_pass!r}")
        for name in ("num_queries", "connector_depth", "connector_heads", "connector_mlp_ratio", "sam_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"lens.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            raise ValueError(
                f"lens.min_pixels and lens.max_pixels: expected 1 <= min_pixels <= max_pixels, got "
                f"{self.min_pixels} and {self.max_pixels}"
            )
        if self.mllm_longest_side is not None and self.mllm_longest_side < 28:
            raise ValueError(f"lens.mllm_longest_side must be null or >= 28 pixels, got {self.mllm_longest_side}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensConfig:
        return _section(data, cls, "lens")

    @classmethod
    def from_released(cls, mllm_config: dict[str, Any]) -> LensConfig:
        """Config of a released hustvl/LENS checkpoint: SAM2.0 Hiera-L, official context pass."""
        return cls(
            num_queries=int(mllm_config.get("num_of_query") or 64),
            use_connector=bool(mllm_config.get("if_use_qwen_connector", True)),
            context_pass="official",
        )


def is_released_config(config_dict: dict[str, Any]) -> bool:
    return "lens" not in config_dict and "num_of_query" in config_dict
