"""Training configuration: YAML files + `key=value` overrides -> typed dataclasses, through OmegaConf.

`load_config(cls, path, overrides)` starts from `OmegaConf.structured(cls)` (the types and defaults), sets the
file's keys and then each override on it (OmegaConf converts and checks every value against its declared type),
and turns it back into the dataclass with `OmegaConf.to_object`, whose `__post_init__` checks the values.
This module only adds what OmegaConf's own errors lack: one `ConfigError` line naming the full dotted key, what
was expected, what was given and where it came from (file or override), and close matches for an unknown key.

A key set by the file or an override replaces the value before it as a whole: a mapping such as `reward_weights`
is not merged into the default one, a list is not merged item by item, and `seed=1` also replaces a bad `seed`
in the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import BooleanNode, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from lens_model.data import DATASET_NAMES
from lens_model.errors import LensError
from lens_model.vocab import ANSWER_FORMATS, CONTEXT_PASS_MODES, DTYPE_ALIASES, DTYPES, EXPRESSION_KINDS

from .rewards import DEFAULT_REWARD_WEIGHTS
from .vocab import (
    COMPAT_MODES,
    LOSS_AGGREGATIONS,
    LR_SCHEDULERS,
    PIXEL_LOSSES,
    ROLLOUT_BACKENDS,
    SEG_LOSS_ANSWERS,
    TRAINABLE_PARTS,
    ZERO_STAGES,
    trains_language_model,
)

T = TypeVar("T")

# `precision` takes a dtype by the recipes' short name (bf16, as the released scripts' --bf16) or by torch's name.
PRECISIONS = ("auto", *DTYPE_ALIASES, *DTYPES[1:])


class ConfigError(LensError):
    """A training config file or override that is unreadable, unknown or of the wrong type/value.

    `key` is the dotted key at fault when known (validation raises it with the field name; the loader
    prefixes where the dataclass sits, e.g. `name` -> `datasets.1.name`).
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------------------------------------
# Messages
def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _type_name(tp: Any, optional: bool = False) -> str:
    """A declared type as the messages say it: float, int or null, list[str], mapping (DatasetSpec)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        name = "any value"
    elif origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        name = f"{origin.__name__}[{inner}]"
    elif dataclasses.is_dataclass(tp):
        name = f"mapping ({tp.__name__})"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} or null" if optional else name


def _expected(parent: DictConfig | ListConfig, name: Any) -> str:
    node = parent._get_node(name)
    if node is None:  # a new key of a plain mapping (reward_weights.box_iou): the mapping's value type
        return _type_name(parent._metadata.element_type)
    return _type_name(node._metadata.ref_type, node._metadata.optional)


def _initials(name: str) -> str:
    return "".join(w[0] for w in name.split("_") if w)


def _close_matches(key: str, valid: list[str]) -> list[str]:
    """difflib's spelling matches, plus abbreviations (learning_rate -> lr) and containment (batch -> ...)."""
    close = difflib.get_close_matches(key, valid, n=3)
    for v in valid:
        abbrev = "_" in key and _initials(key) == v or "_" in v and _initials(v) == key
        contains = min(len(key), len(v)) >= 4 and (key in v or v in key)
        if (abbrev or contains) and v not in close:
            close.append(v)
    return close[:5]


def _unknown_key(key: str, prefix: str, valid: list[str]) -> ConfigError:
    full = _join(prefix, key)
    close = _close_matches(key, valid)
    if close:
        return ConfigError(
            f"unknown config key '{full}'; did you mean: {', '.join(_join(prefix, c) for c in close)}?", key=full
        )
    return ConfigError(
        f"unknown config key '{full}'; valid keys{' under ' + prefix if prefix else ''}: {', '.join(valid)}", key=full
    )


def _dotted(omegaconf_key: str) -> str:
    """OmegaConf's `datasets[1].root` -> our `datasets.1.root`."""
    return re.sub(r"\[(\d+)\]", r".\1", omegaconf_key).lstrip(".")


# --------------------------------------------------------------------------------------------------------
# Setting values on the structured config
def _dataclass_of(node: Any) -> type | None:
    """The dataclass a DictConfig node is typed with (also when it is null), else None."""
    if not isinstance(node, DictConfig):
        return None
    return next((t for t in (node._metadata.object_type, node._metadata.ref_type) if dataclasses.is_dataclass(t)), None)


def _set_fields(node: DictConfig, data: dict, prefix: str) -> None:
    """Set every key of the plain mapping `data` on `node` (the config itself or a nested mapping)."""
    for key, value in data.items():
        if _dataclass_of(node) is not None and key not in node.keys():  # (`in node` is False for a missing value)
            raise _unknown_key(str(key), prefix, list(node.keys()))
        _assign(node, key, value, _join(prefix, key))


def _assign(parent: DictConfig | ListConfig, name: Any, value: Any, key: str) -> None:
    """parent[name] = value (plain YAML data), replacing what was there; `key` is the full dotted key."""
    node = parent._get_node(name)
    if isinstance(node, DictConfig) and isinstance(value, dict):
        cls = _dataclass_of(node)
        parent[name] = OmegaConf.structured(cls) if cls is not None else {}  # its defaults, not the old values
        _set_fields(parent._get_node(name), value, key)
        return
    if isinstance(node, ListConfig) and isinstance(value, (list, tuple)):
        item_cls = node._metadata.element_type
        if dataclasses.is_dataclass(item_cls):  # item by item, so that errors name e.g. datasets.1.ratio
            parent[name] = [OmegaConf.structured(item_cls) for _ in value]
            for i, item in enumerate(value):
                _assign(parent._get_node(name), i, item, _join(key, i))
            return
        ref = node._metadata.ref_type
        args = typing.get_args(ref)
        if typing.get_origin(ref) is tuple and args and Ellipsis not in args and len(value) != len(args):
            raise ConfigError(f"{key}: expected {_type_name(ref)} ({len(args)} items), got {list(value)!r}", key=key)
    if isinstance(node, BooleanNode) and value is not None and not isinstance(value, bool):
        # OmegaConf would read 1, "yes" or "on" as true; a config takes true or false only
        raise ConfigError(f"{key}: expected {_expected(parent, name)}, got {_show(value)}", key=key)
    try:
        parent[name] = value
    except OmegaConfBaseException:
        raise ConfigError(f"{key}: expected {_expected(parent, name)}, got {_show(value)}", key=key) from None


# --------------------------------------------------------------------------------------------------------
# Overrides
def _split_override(text: str) -> tuple[str, str]:
    """'dotted.key=value' -> (key, value text)."""
    if "=" not in text:
        raise ConfigError("not key=value (e.g. lr=1e-4 or datasets.0.root=/data)")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("empty key (expected key=value, dotted for nested keys)")
    return key, value


def _slot(node: Any, part: str, prefix: str) -> Any:
    """The name or index that `part` of a dotted key stands for in `node` (the container at `prefix`)."""
    full = _join(prefix, part)
    if isinstance(node, ListConfig):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(
                f"{full}: '{prefix}' has {len(node)} items; index must be 0..{len(node) - 1}"
                f" (set '{prefix}=[...]' to change the length)",
                key=full,
            )
        return int(part)
    if isinstance(node, DictConfig):
        if _dataclass_of(node) is not None and part not in node.keys():
            raise _unknown_key(part, prefix, list(node.keys()))
        return part
    what = _type_name(node._metadata.ref_type) if node is not None else "value that is not set"
    raise ConfigError(f"{full}: '{prefix}' is a {what}, it has no sub-key '{part}'", key=full)


def _locate(cfg: DictConfig, key: str) -> tuple[DictConfig | ListConfig, Any]:
    """(the container holding dotted `key`, its name or index there). A null mapping on the way (e.g.
    val_dataset) gets its defaults, so `val_dataset.name=... val_dataset.root=...` fill it field by field."""
    *path, last = key.split(".")
    node: Any = cfg
    prefix = ""
    for part in path:
        name = _slot(node, part, prefix)
        child = node._get_node(name)
        if isinstance(child, DictConfig) and child._is_none() and _dataclass_of(child) is not None:
            node[name] = OmegaConf.structured(_dataclass_of(child))
            child = node._get_node(name)
        node, prefix = child, _join(prefix, part)
    return node, _slot(node, last, prefix)


def _parse_value(text: str) -> Any:
    """An override's value, read as OmegaConf's dotlist reads it (YAML 1.2 floats such as 3e-5 included)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
    except yaml.YAMLError:
        return text  # e.g. an unbalanced bracket: the type check reports it


def _override_value(parent: DictConfig | ListConfig, name: Any, text: str) -> Any:
    value = _parse_value(text)
    node = parent._get_node(name)
    # `output_dir=2024` or `output_dir=1e-4`: a str field keeps the text as typed
    if node is not None and node._metadata.ref_type is str and value is not None and not isinstance(value, str):
        return text
    return value


# --------------------------------------------------------------------------------------------------------
# Back to dataclasses
def _instantiate_nested(node: DictConfig | ListConfig, prefix: str) -> None:
    """Build every nested dataclass first, innermost first, so that its failing `__post_init__` or missing
    value is reported under its full dotted key (OmegaConf.to_object of the whole config only says `name`)."""
    names = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for name in names:
        child = node._get_node(name)
        if not isinstance(child, (DictConfig, ListConfig)) or child._is_none():
            continue
        key = _join(prefix, name)
        _instantiate_nested(child, key)
        if _dataclass_of(child) is not None:
            try:
                OmegaConf.to_object(child)
            except ConfigError as e:
                full = _join(key, e.key) if e.key else key
                raise ConfigError(f"{key}.{e}" if e.key else f"{key}: {e}", key=full) from None


def _restore_tuples(obj: Any) -> None:
    """OmegaConf gives lists for tuple fields (adam_betas); give the dataclasses their declared tuples."""
    if dataclasses.is_dataclass(obj):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
                setattr(obj, f.name, tuple(value))
            else:
                _restore_tuples(value)
    elif isinstance(obj, (list, dict)):
        for value in obj.values() if isinstance(obj, dict) else obj:
            _restore_tuples(value)


def _to_object(cfg: DictConfig) -> Any:
    try:
        _instantiate_nested(cfg, "")
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        key = _dotted(e.full_key)
        # keyed on the mapping that lacks it, so an override that filled its other fields is blamed
        raise ConfigError(f"{key}: missing required value", key=key.rpartition(".")[0] or key) from None
    except OmegaConfBaseException as e:  # e.g. an ${interpolation} that does not resolve
        key = _dotted(e.full_key or "")
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}", key=key or None) from None
    _restore_tuples(obj)
    return obj


# --------------------------------------------------------------------------------------------------------
# Public API
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except OSError:  # OmegaConf refuses a document that is a single value
        data = None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return OmegaConf.to_container(data)


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read `path` (YAML; None: defaults only), apply `key=value` overrides in order, build `cls`."""
    cfg = OmegaConf.structured(cls)
    parsed = []
    for text in overrides:
        try:
            parsed.append(_split_override(text))
        except ConfigError as e:
            raise ConfigError(f"override {text!r}: {e}") from None
    if path is not None:
        data = _read_yaml(Path(path))
        replaced = {key for key, _ in parsed}  # an override of a whole key replaces the file's value
        try:
            _set_fields(cfg, {k: v for k, v in data.items() if k not in replaced}, "")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}", key=e.key) from None
    origins: dict[str, str] = {}  # dotted key -> the override that set it (for error messages)
    for text, (key, value_text) in zip(overrides, parsed):
        try:
            parent, name = _locate(cfg, key)
            _assign(parent, name, _override_value(parent, name, value_text), key)
        except ConfigError as e:
            raise ConfigError(f"override {text!r}: {e}", key=e.key) from None
        origins[key] = f"override {text!r}"
    try:
        return _to_object(cfg)
    except ConfigError as e:
        source = str(path) if path is not None else "defaults"
        where = next((o for k, o in reversed(origins.items()) if e.key and _same_branch(k, e.key)), source)
        raise ConfigError(f"{where}: {e}", key=e.key) from None


def _same_branch(a: str, b: str) -> bool:
    """Whether dotted keys `a` and `b` are equal or one lies under the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def dump_config(cfg: Any) -> str:
    """YAML text that `load_config(type(cfg), file, [])` reads back to an equal config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def derive_batch(
    global_batch: int, world_size: int, per_device: int | None, max_per_device: int = 32
) -> tuple[int, int]:
    """(per-device batch, gradient-accumulation steps) with global == per_device * world_size * accum.

    per_device None: the largest divisor of global/world_size that fits `max_per_device` (fewest accum steps).
    """
    checked = (("global_batch_size", global_batch), ("world size", world_size), ("max_per_device", max_per_device))
    for name, v in checked:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name}: expected a positive int, got {v!r}")
    if global_batch % world_size:
        lo, hi = (global_batch // world_size) * world_size, (global_batch // world_size + 1) * world_size
        near = " or ".join(str(n) for n in (lo, hi) if n > 0)
        raise ConfigError(
            f"global_batch_size {global_batch} is not divisible by the world size {world_size};"
            f" use a multiple of {world_size} (e.g. {near})"
        )
    per_rank = global_batch // world_size
    divisors = [d for d in range(1, per_rank + 1) if per_rank % d == 0]
    if per_device is None:
        per_device = max(d for d in divisors if d <= max_per_device)
    elif not isinstance(per_device, int) or isinstance(per_device, bool) or per_device < 1:
        raise ConfigError(f"per_device_batch_size: expected a positive int or null, got {per_device!r}")
    elif per_rank % per_device:
        raise ConfigError(
            f"global_batch_size {global_batch} over {world_size} ranks is {per_rank} samples per rank,"
            f" not divisible by per_device_batch_size {per_device};"
            f" valid per_device_batch_size: {', '.join(map(str, divisors))} (or null to choose)"
        )
    return per_device, per_rank // per_device


def total_steps(cfg: Any, num_samples: int) -> int:
    """Optimizer steps of a run: `cfg.max_steps`, else ceil(epochs * samples / global batch)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * num_samples / cfg.global_batch_size))


# --------------------------------------------------------------------------------------------------------
# Validation helpers for __post_init__ (messages start with the field name; the loader prefixes its path)
def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}", key=key)


def _choice(value: Any, key: str, valid: tuple) -> None:
    _require(value in valid, key, f"expected one of {', '.join(map(str, valid))}, got {_show(value)}")


def _positive(obj: Any, *keys: str, allow_none: bool = False) -> None:
    for key in keys:
        v = getattr(obj, key)
        if v is None and allow_none:
            continue
        _require(v is not None and v > 0, key, f"expected > 0{' or null' if allow_none else ''}, got {v!r}")


def _non_negative(obj: Any, *keys: str) -> None:
    for key in keys:
        v = getattr(obj, key)
        _require(v >= 0, key, f"expected >= 0, got {v!r}")


# --------------------------------------------------------------------------------------------------------
# The configs
@dataclass
class DatasetSpec:
    name: str  # one of lens_model.data.DATASET_NAMES
    root: str
    split: str = "train"
    ratio: float = 1.0  # relative sampling weight in the mixture
    image_dir: str | None = None
    # stage 1, think_answer format: teach the dataset's own rationales (synthetic reasoning scenes) in the think
    # block of the teacher-forced answer; false: an empty think block
    rationale: bool = False
    # with rationale on, only the expressions of these kinds carry it (the sentence's `kind`: attribute, relational;
    # the others get an empty think block); null: every expression
    rationale_kinds: list[str] | None = None

    def __post_init__(self):
        _choice(self.name, "name", DATASET_NAMES)
        for kind in self.rationale_kinds or ():
            _choice(kind, "rationale_kinds", EXPRESSION_KINDS)
        _require(bool(self.root), "root", "expected a data folder, got an empty string")
        _positive(self, "ratio")


def _refcoco_train() -> list[DatasetSpec]:
    return [DatasetSpec(name, "datasets") for name in ("refcoco", "refcoco+", "refcocog")]


@dataclass(kw_only=True)
class StageConfig:
    """What both training stages configure: model, data, mask loss, optimisation, engine, bookkeeping.

    Fields without a default here differ per stage: each stage declares its own (AlignConfig: paper Table A1,
    GRPOConfig: Table A2).
    """

    # model
    init_from: str | None  # a LENS checkpoint to continue from
    context_pass: str | None  # one of CONTEXT_PASS_MODES; null: the checkpoint's own
    trainable: list[str]  # subset of TRAINABLE_PARTS
    # data
    datasets: list[DatasetSpec] = field(default_factory=_refcoco_train)
    val_dataset: DatasetSpec | None = None
    val_samples: int = 200
    max_prompt_length: int = 2048
    max_completion_length: int = 768
    # mask loss (released: mean BCE + dice, weight 1 each; the paper says focal)
    dice_weight: float = 1.0
    pixel_loss: str = "bce"  # one of PIXEL_LOSSES
    pixel_weight: float = 1.0
    focal_alpha: float = 0.25  # < 0 disables the class weighting (torchvision's convention)
    focal_gamma: float = 2.0
    # optimisation
    global_batch_size: int
    per_device_batch_size: int | None = None
    epochs: float
    max_steps: int | None = None  # overrides epochs when set
    lr: float
    min_lr_ratio: float = 0.0
    warmup_steps: int
    lr_scheduler: str  # one of LR_SCHEDULERS
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # 0 disables clipping (DeepSpeed's convention)
    seed: int = 42
    # engine
    zero_stage: int = 2  # 0..3; 3 for 3B models on small GPUs
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) or a dtype: bf16 | fp16 | fp32 (or torch's names)
    gradient_checkpointing: bool = True
    # bookkeeping
    output_dir: str
    log_every: int
    save_every: int
    keep_last: int = 2
    eval_every: int

    def __post_init__(self):
        if self.context_pass is not None:
            _choice(self.context_pass, "context_pass", CONTEXT_PASS_MODES)
        _require(len(self.trainable) > 0, "trainable", f"expected at least one of {', '.join(TRAINABLE_PARTS)}")
        for part in self.trainable:
            _choice(part, "trainable", TRAINABLE_PARTS)
        _require(len(set(self.trainable)) == len(self.trainable), "trainable", f"duplicate parts in {self.trainable}")
        _require(len(self.datasets) > 0, "datasets", "expected at least one dataset")
        _choice(self.pixel_loss, "pixel_loss", PIXEL_LOSSES)
        _choice(self.lr_scheduler, "lr_scheduler", LR_SCHEDULERS)
        _choice(self.precision, "precision", PRECISIONS)
        _choice(self.zero_stage, "zero_stage", ZERO_STAGES)
        _positive(
            self,
            "max_prompt_length",
            "max_completion_length",
            "global_batch_size",
            "epochs",
            "lr",
            "log_every",
            "save_every",
            "keep_last",
            "eval_every",
        )
        _positive(self, "per_device_batch_size", "max_steps", allow_none=True)
        _non_negative(
            self,
            "val_samples",
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "seed",
            "dice_weight",
            "pixel_weight",
            "focal_gamma",
        )
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"expected 0..1, got {self.min_lr_ratio!r}")
        _require(
            self.focal_alpha <= 1.0, "focal_alpha", f"expected <= 1 (< 0: no class weighting), got {self.focal_alpha!r}"
        )
        _require(
            all(0.0 <= b < 1.0 for b in self.adam_betas),
            "adam_betas",
            f"expected two values in [0, 1), got {self.adam_betas!r}",
        )


@dataclass(kw_only=True)
class AlignConfig(StageConfig):
    """Stage 1 (alignment): frozen MLLM and SAM2, train the context module (paper Table A1)."""

    # model: continue from a LENS checkpoint, or build one from the base MLLM + an official SAM2 checkpoint
    init_from: str | None = None
    context_pass: str = "official"  # official (1-D positions, as released) | cached (M-RoPE)
    trainable: list[str] = field(default_factory=lambda: ["context"])
    base_mllm: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    sam_checkpoint: str | None = "checkpoints/sam2_hiera_large.pt"
    sam_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam_overrides: list[str] = field(default_factory=list)  # Hydra overrides for build_sam2 (lens SamConfig)
    sam_image_size: int = 1024
    num_queries: int = 64
    # Not in the paper: weight of a language-modelling loss on the answer tokens, added to the mask loss. For an
    # MLLM that cannot write the answer format yet (a tiny one trained from scratch); needs "mllm" in trainable.
    lm_weight: float = 0.0
    # Not in the paper: weight of an expression-token loss on the query states (through the MLLM's own lm_head
    # they must predict the expression's tokens). Makes a small model trained from scratch route the expression
    # into SAM2's prompt, which the mask loss alone does not (docs/design.md, "Stage 1").
    expression_weight: float = 0.0
    # Not in the paper: weight of the grounding-attention loss (training/grounding.py): the first grounding_heads
    # heads of the language model's decoder layer grounding_layer are trained to attend, from the state predicting
    # each answer token, to the image tokens of the object that token is about, and from each context query to the
    # target's. Rides on the answer LM pass (needs lm_weight > 0); the MLLM runs eager attention while it is on.
    grounding_weight: float = 0.0
    grounding_layer: int = -1
    grounding_heads: int = 1
    # data
    min_pixels: int = 3136
    max_pixels: int = 1_000_000
    num_workers: int = 2
    # optimisation (paper Table A1 / released stage-1 script)
    global_batch_size: int = 128
    epochs: float = 25.0
    lr: float = 3e-5
    warmup_steps: int = 150
    lr_scheduler: str = "cosine"
    # bookkeeping
    output_dir: str = "runs/align"
    log_every: int = 10
    save_every: int = 500
    eval_every: int = 500

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "sam_image_size", "num_queries", "min_pixels")
        _require(
            self.max_pixels >= self.min_pixels,
            "max_pixels",
            f"expected >= min_pixels ({self.min_pixels}), got {self.max_pixels}",
        )
        _non_negative(self, "num_workers", "lm_weight", "expression_weight", "grounding_weight")
        _require(
            self.lm_weight == 0 or trains_language_model(self.trainable),
            "lm_weight",
            f"a language-modelling loss trains the MLLM: add mllm or mllm_language to trainable (got {self.trainable})",
        )
        _require(
            self.grounding_weight == 0 or self.lm_weight > 0,
            "grounding_weight",
            "the grounding-attention loss rides on the answer's language-modelling pass: set lm_weight > 0",
        )
        _positive(self, "grounding_heads")
        _require(self.dice_weight + self.pixel_weight > 0, "dice_weight", "dice_weight and pixel_weight are both 0")


@dataclass(kw_only=True)
class GRPOConfig(StageConfig):
    """Stage 2 (GRPO, paper Table A2): sample G answers per prompt, reward format + box IoU² + mask IoU²,
    policy-gradient the MLLM and train the context module and SAM2 decoder with the mask loss."""

    # model: a stage-1 (or released) LENS checkpoint; the reference policy defaults to the same weights
    init_from: str = "runs/align/final"
    context_pass: str | None = None  # null: the checkpoint's own mode
    # the released script's parts: all but SAM2's image encoder (stage 2 reuses the rollout's image features)
    trainable: list[str] = field(default_factory=lambda: ["context", "sam_decoder", "sam_prompt_encoder", "mllm"])
    reference: str | None = None
    answer_format: str | None = None  # one of ANSWER_FORMATS; null: the checkpoint's own prompt format
    # rollouts
    num_generations: int = 8  # G completions per prompt (Table A2)
    temperature: float = 0.9
    top_p: float = 0.9
    top_k: int = 50
    rollout_backend: str = "generate"  # one of ROLLOUT_BACKENDS
    vllm_gpu_memory_utilization: float = 0.3
    # rewards and objective
    reward_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))
    beta: float = 0.04  # KL weight (k3 estimator) to the reference policy
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # null: = clip_eps
    loss_aggregation: str = "sequence"  # one of LOSS_AGGREGATIONS
    advantage_eps: float = 1e-4
    scale_advantages: bool = True  # divide by the group std (False: Dr.GRPO)
    num_iterations: int = 1  # policy updates per rollout (1: ratio = 1, as released)
    seg_loss_weight: float = 1.0
    seg_loss_answers: str = "all"  # one of SEG_LOSS_ANSWERS: all (paper) | grounded (answers whose box hits the GT)
    # lens: log-probs under the sampling distribution (M-RoPE, / temperature), answers end at their first end
    # token, float GT boxes; released: the released trainer's objective exactly (docs/design.md, "Stage 2")
    compat: str = "lens"  # one of COMPAT_MODES
    # optimisation: global batch counts prompts (each brings G completions)
    global_batch_size: int = 64
    epochs: float = 16.0
    lr: float = 3e-6
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    # bookkeeping
    output_dir: str = "runs/grpo"
    log_every: int = 1
    save_every: int = 200
    eval_every: int = 200

    def __post_init__(self):
        super().__post_init__()
        if self.answer_format is not None:
            _choice(self.answer_format, "answer_format", ANSWER_FORMATS)
        _choice(self.rollout_backend, "rollout_backend", ROLLOUT_BACKENDS)
        _choice(self.loss_aggregation, "loss_aggregation", LOSS_AGGREGATIONS)
        _choice(self.compat, "compat", COMPAT_MODES)
        _choice(self.seg_loss_answers, "seg_loss_answers", SEG_LOSS_ANSWERS)
        _require(
            "sam_image_encoder" not in self.trainable,
            "trainable",
            "stage 2 cannot train sam_image_encoder: its masks come from the SAM2 image features computed once per "
            "rollout (train the encoder in stage 1)",
        )
        _require(
            self.compat != "released" or self.context_pass in (None, "official"),
            "compat",
            f"compat: released reproduces the released trainer, whose query states use 1-D positions: it needs "
            f"context_pass official (or null with an official checkpoint), got {self.context_pass!r}",
        )
        _positive(self, "num_generations", "temperature", "num_iterations", "advantage_eps")
        _non_negative(self, "beta", "clip_eps", "seg_loss_weight", "top_k")
        _require(0.0 < self.top_p <= 1.0, "top_p", f"expected in (0, 1], got {self.top_p!r}")
        _require(
            self.num_generations >= 2,
            "num_generations",
            f"GRPO compares completions within a group: expected >= 2, got {self.num_generations}",
        )
        _require(self.reward_weights != {}, "reward_weights", "expected at least one reward")
        _require(
            0.0 < self.vllm_gpu_memory_utilization < 1.0,
            "vllm_gpu_memory_utilization",
            f"expected in (0, 1), got {self.vllm_gpu_memory_utilization!r}",
        )


__all__ = [
    "AlignConfig",
    "ConfigError",
    "DatasetSpec",
    "GRPOConfig",
    "PRECISIONS",
    "StageConfig",
    "derive_batch",
    "dump_config",
    "load_config",
    "total_steps",
]
