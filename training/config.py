"""Training configuration: YAML files + `key=value` overrides -> typed dataclasses.

The loader is generic (stage 1 `AlignConfig` now, the stage-2 GRPO config later): it walks the dataclass'
type hints, so a new field only needs a declaration. Every error is one `ConfigError` line naming the full
dotted key, what was expected, what was given and where it came from (file or override).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from lens_model.config import CONTEXT_PASS_MODES
from lens_model.data import DATASET_NAMES
from lens_model.errors import LensError

T = TypeVar("T")

TRAINABLE_PARTS = ("context", "sam_decoder", "sam_prompt_encoder", "mllm")
PIXEL_LOSSES = ("bce", "focal")
LR_SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class ConfigError(LensError):
    """A training config file or override that is unreadable, unknown or of the wrong type/value.

    `key` is the dotted key at fault when known (validation raises it with the field name; the loader
    prefixes where the dataclass sits, e.g. `name` -> `datasets.1.name`).
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------------------------------------
# YAML: PyYAML follows YAML 1.1, where `3e-5` (no dot) is a *string*; configs are full of such learning
# rates, so this loader also resolves YAML 1.2 floats. Used for files and override values alike.
class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    """Quotes strings such as '1e-4' that `_Loader` would otherwise read back as floats."""


_FLOAT_1_2 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def _parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:  # empty file: all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------------------
# Types
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`


def _union_args(tp: Any) -> tuple | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _strip_optional(tp: Any) -> Any:
    """`X | None` -> X (other unions unchanged)."""
    args = _union_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _type_name(tp: Any) -> str:
    args = _union_args(tp)
    if args:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    origin = typing.get_origin(tp)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{inner}]"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


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


def _unknown_key(key: str, full: str, valid: list[str], prefix: str) -> str:
    close = _close_matches(key, valid)
    if close:
        return f"unknown config key '{full}'; did you mean: {', '.join(_join(prefix, c) for c in close)}?"
    return f"unknown config key '{full}'; valid keys{' under ' + prefix if prefix else ''}: {', '.join(valid)}"


# --------------------------------------------------------------------------------------------------------
# Building dataclasses from plain data
class _BuildError(Exception):
    """Internal: carries the full dotted key so `load_config` can say where the bad value came from."""

    def __init__(self, key: str, message: str, mismatch: bool = False):
        super().__init__(message)
        self.key = key
        self.mismatch = mismatch  # a plain "expected type X" error (a union may try its next type)


def _build(tp: Any, value: Any, key: str) -> Any:
    """Plain YAML data -> a value of type `tp`; `key` is the dotted path for messages."""
    if tp is Any:
        return value
    args = _union_args(tp)
    if args is not None:
        return _build_union(tp, args, value, key)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, dict):
        return _build_container(tp, origin, value, key)
    return _build_scalar(tp, value, key)


def _build_union(tp: Any, args: tuple, value: Any, key: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _BuildError(key, f"{key}: expected {_type_name(tp)}, got null", mismatch=True)
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _build(arg, value, key)
        except _BuildError as e:
            errors.append(e)
    precise = [e for e in errors if not (e.mismatch and e.key == key)]
    if precise:  # e.g. a bad field inside an Optional[DatasetSpec]: its own message names the field
        raise precise[0]
    raise _BuildError(key, f"{key}: expected {_type_name(tp)}, got {_show(value)}", mismatch=True)


def _build_dataclass(cls: type, value: Any, key: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise _BuildError(key, f"{key or 'config'}: expected a mapping ({cls.__name__}), got {_show(value)}", mismatch=True)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in value:
        if k not in fields:
            full = _join(key, k)
            raise _BuildError(full, _unknown_key(str(k), full, list(fields), key))
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            # keyed on the dataclass, so an override that filled its other fields is blamed
            raise _BuildError(key, f"{_join(key, name)}: missing required value ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names the field; prefix where this dataclass sits
        full = _join(key, e.key) if e.key else key
        raise _BuildError(full, f"{key}.{e}" if key and e.key else f"{key}: {e}" if key else str(e)) from None


def _build_container(tp: Any, origin: type, value: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise _BuildError(key, f"{key}: expected {_type_name(tp)}, got {_show(value)}", mismatch=True)
        kt, vt = args or (Any, Any)
        return {_build(kt, k, _join(key, k)): _build(vt, v, _join(key, k)) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise _BuildError(key, f"{key}: expected {_type_name(tp)}, got {_show(value)}", mismatch=True)
    if origin is list:
        item = args[0] if args else Any
        return [_build(item, v, _join(key, i)) for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        return tuple(_build(args[0], v, _join(key, i)) for i, v in enumerate(value))
    if args and len(value) != len(args):
        raise _BuildError(key, f"{key}: expected {_type_name(tp)} ({len(args)} items), got {list(value)!r}", mismatch=True)
    return tuple(_build(a, v, _join(key, i)) for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)


def _build_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # `epochs: 25` means 25.0
    if tp is Path and isinstance(value, str):
        return Path(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))  # bool is an int subclass
    if not ok:
        raise _BuildError(key, f"{key}: expected {_type_name(tp)}, got {_show(value)}", mismatch=True)
    return value


# --------------------------------------------------------------------------------------------------------
# Overrides
def _to_plain(obj: Any) -> Any:
    """Dataclasses/tuples/Paths -> YAML-safe dicts/lists/strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return _to_plain(f.default_factory())
    return _to_plain(f.default) if f.default is not dataclasses.MISSING else None


def _child(container: Any, tp: Any, part: str, key: str, prefix: str) -> tuple[Any, Any, Any]:
    """One step of an override path: (type of the child, the container holding it, its index/name)."""
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if not isinstance(container, dict):
            raise ConfigError(f"{key}: '{prefix}' is not a mapping here; set it as a whole")
        if part not in names:
            raise ConfigError(_unknown_key(part, key, names, prefix))
        return _hints(tp)[part], container, part
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(container, list):
            raise ConfigError(f"{key}: '{prefix}' is not a list here; set it as a whole")
        if not re.fullmatch(r"\d+", part) or int(part) >= len(container):
            raise ConfigError(f"{key}: '{prefix}' has {len(container)} items; index must be 0..{len(container) - 1}"
                              f" (set '{prefix}=[...]' to change the length)")
        args = typing.get_args(tp)
        item = args[0] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else args[int(part)]
        return item, container, int(part)
    if origin is dict:
        return (typing.get_args(tp) or (Any, Any))[1], container, part
    raise ConfigError(f"{key}: '{prefix}' is a {_type_name(tp)}, it has no sub-key '{part}'")


def _apply_override(cls: type, raw: dict, text: str) -> str:
    """Set `dotted.key=value` in the plain data `raw` (in place); returns the dotted key."""
    if "=" not in text:
        raise ConfigError("not key=value (e.g. lr=1e-4 or datasets.0.root=/data)")
    key, _, value_text = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError("empty key (expected key=value, dotted for nested keys)")
    tp, node, prefix = cls, raw, ""
    for i, part in enumerate(parts):
        child_tp, node, slot = _child(node, tp, part, _join(prefix, part), prefix)
        if i == len(parts) - 1:
            node[slot] = _override_value(child_tp, value_text)
            break
        parent = _strip_optional(tp)
        if isinstance(node, dict) and slot not in node:  # descend into a default the file didn't set
            node[slot] = _field_default(parent, slot) if dataclasses.is_dataclass(parent) else None
        child = _strip_optional(child_tp)
        if node[slot] is None and (dataclasses.is_dataclass(child) or typing.get_origin(child) is dict):
            node[slot] = {}  # e.g. val_dataset.name=... on a null val_dataset: fill it field by field
        tp, node, prefix = child_tp, node[slot], _join(prefix, part)
    return key


def _override_value(tp: Any, text: str) -> Any:
    try:
        value = _parse_value(text)
    except yaml.YAMLError:
        value = text  # e.g. an unbalanced bracket: leave it to the type check to report
    # `output_dir=2024` or `split=val:1`: a str field keeps the text as typed
    if _strip_optional(tp) is str and value is not None and not isinstance(value, str):
        return text
    return value


# --------------------------------------------------------------------------------------------------------
# Public API
def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read `path` (YAML; None: defaults only), apply `key=value` overrides in order, build `cls`."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    origins: dict[str, str] = {}  # dotted key -> the override that set it (for error messages)
    for text in overrides:
        try:
            origins[_apply_override(cls, raw, text)] = f"override {text!r}"
        except ConfigError as e:
            raise ConfigError(f"override {text!r}: {e}") from None
    return _construct(cls, raw, source, origins)


def _construct(cls: type[T], raw: dict, source: str, origins: dict[str, str]) -> T:
    try:
        return _build(cls, raw, "")
    except _BuildError as e:
        where = next((o for k, o in reversed(origins.items()) if _same_branch(k, e.key)), source)
        raise ConfigError(f"{where}: {e}", key=e.key or None) from None


def _same_branch(a: str, b: str) -> bool:
    """Whether dotted keys `a` and `b` are equal or one lies under the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def dump_config(cfg: Any) -> str:
    """YAML text that `load_config(type(cfg), file, [])` reads back to an equal config."""
    return yaml.dump(_to_plain(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True)


def derive_batch(global_batch: int, world_size: int, per_device: int | None, max_per_device: int = 32) -> tuple[int, int]:
    """(per-device batch, gradient-accumulation steps) with global == per_device * world_size * accum.

    per_device None: the largest divisor of global/world_size that fits `max_per_device` (fewest accum steps).
    """
    for name, v in (("global_batch_size", global_batch), ("world size", world_size), ("max_per_device", max_per_device)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name}: expected a positive int, got {v!r}")
    if global_batch % world_size:
        lo, hi = (global_batch // world_size) * world_size, (global_batch // world_size + 1) * world_size
        near = " or ".join(str(n) for n in (lo, hi) if n > 0)
        raise ConfigError(f"global_batch_size {global_batch} is not divisible by the world size {world_size};"
                          f" use a multiple of {world_size} (e.g. {near})")
    per_rank = global_batch // world_size
    divisors = [d for d in range(1, per_rank + 1) if per_rank % d == 0]
    if per_device is None:
        per_device = max(d for d in divisors if d <= max_per_device)
    elif not isinstance(per_device, int) or isinstance(per_device, bool) or per_device < 1:
        raise ConfigError(f"per_device_batch_size: expected a positive int or null, got {per_device!r}")
    elif per_rank % per_device:
        raise ConfigError(f"global_batch_size {global_batch} over {world_size} ranks is {per_rank} samples per rank,"
                          f" not divisible by per_device_batch_size {per_device};"
                          f" valid per_device_batch_size: {', '.join(map(str, divisors))} (or null to choose)")
    return per_device, per_rank // per_device


def lr_at(step: int, cfg: Any, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based; the first update uses step 0).

    Linear warm-up 0 -> 1 over `cfg.warmup_steps` (as transformers' schedulers: step 0 gives 0), then decay
    from 1 to `cfg.min_lr_ratio` at `total_steps` along `cfg.lr_scheduler` (cosine | linear | constant).
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return step / warmup
    if cfg.lr_scheduler == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
    if cfg.lr_scheduler == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.lr_scheduler == "linear":
        decay = 1.0 - progress
    else:
        raise ConfigError(f"lr_scheduler: expected one of {', '.join(LR_SCHEDULERS)}, got {cfg.lr_scheduler!r}")
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


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
# Stage 1
@dataclass
class DatasetSpec:
    name: str  # one of lens_model.data.DATASET_NAMES
    root: str
    split: str = "train"
    ratio: float = 1.0  # relative sampling weight in the mixture
    image_dir: str | None = None

    def __post_init__(self):
        _choice(self.name, "name", DATASET_NAMES)
        _require(bool(self.root), "root", "expected a data folder, got an empty string")
        _positive(self, "ratio")


def _refcoco_train() -> list[DatasetSpec]:
    return [DatasetSpec(name, "datasets") for name in ("refcoco", "refcoco+", "refcocog")]


@dataclass
class AlignConfig:
    """Stage 1 (alignment): frozen MLLM and SAM2, train the context module (paper Table A1)."""

    # model: continue from a LENS checkpoint, or build one from the base MLLM + an official SAM2 checkpoint
    init_from: str | None = None
    base_mllm: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    sam_checkpoint: str | None = "checkpoints/sam2_hiera_large.pt"
    sam_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam_overrides: list[str] = field(default_factory=list)  # Hydra overrides for build_sam2 (lens SamConfig)
    sam_image_size: int = 1024
    num_queries: int = 64
    context_pass: str = "official"  # official (1-D positions, as released) | cached (M-RoPE)
    trainable: list[str] = field(default_factory=lambda: ["context"])  # subset of TRAINABLE_PARTS
    # data
    datasets: list[DatasetSpec] = field(default_factory=_refcoco_train)
    val_dataset: DatasetSpec | None = None
    val_samples: int = 200
    max_prompt_length: int = 2048
    max_completion_length: int = 768
    min_pixels: int = 3136
    max_pixels: int = 1_000_000
    num_workers: int = 2
    # optimisation (paper Table A1 / released stage-1 script)
    global_batch_size: int = 128
    per_device_batch_size: int | None = None
    epochs: float = 25.0
    max_steps: int | None = None  # overrides epochs when set
    lr: float = 3e-5
    min_lr_ratio: float = 0.0
    warmup_steps: int = 150
    lr_scheduler: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # 0 disables clipping (DeepSpeed's convention)
    seed: int = 42
    dice_weight: float = 1.0
    pixel_loss: str = "bce"  # bce (released) | focal (paper)
    pixel_weight: float = 1.0
    focal_alpha: float = 0.25  # < 0 disables the class weighting (torchvision's convention)
    focal_gamma: float = 2.0
    # engine
    zero_stage: int = 2  # 0..3; 3 for 3B models on small GPUs
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    gradient_checkpointing: bool = True
    # bookkeeping
    output_dir: str = "runs/align"
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    eval_every: int = 500

    def __post_init__(self):
        _choice(self.context_pass, "context_pass", CONTEXT_PASS_MODES)
        _require(len(self.trainable) > 0, "trainable", f"expected at least one of {', '.join(TRAINABLE_PARTS)}")
        for part in self.trainable:
            _choice(part, "trainable", TRAINABLE_PARTS)
        _require(len(set(self.trainable)) == len(self.trainable), "trainable", f"duplicate parts in {self.trainable}")
        _require(len(self.datasets) > 0, "datasets", "expected at least one dataset")
        _choice(self.pixel_loss, "pixel_loss", PIXEL_LOSSES)
        _choice(self.lr_scheduler, "lr_scheduler", LR_SCHEDULERS)
        _choice(self.precision, "precision", PRECISIONS)
        _choice(self.zero_stage, "zero_stage", (0, 1, 2, 3))
        _positive(self, "sam_image_size", "num_queries", "max_prompt_length", "max_completion_length", "min_pixels",
                  "global_batch_size", "epochs", "lr", "log_every", "save_every", "keep_last", "eval_every")
        _positive(self, "per_device_batch_size", "max_steps", allow_none=True)
        _require(self.max_pixels >= self.min_pixels, "max_pixels",
                 f"expected >= min_pixels ({self.min_pixels}), got {self.max_pixels}")
        _non_negative(self, "val_samples", "num_workers", "warmup_steps", "weight_decay", "grad_clip", "seed",
                      "dice_weight", "pixel_weight", "focal_gamma")
        _require(self.dice_weight + self.pixel_weight > 0, "dice_weight", "dice_weight and pixel_weight are both 0")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"expected 0..1, got {self.min_lr_ratio!r}")
        _require(self.focal_alpha <= 1.0, "focal_alpha",
                 f"expected <= 1 (< 0: no class weighting), got {self.focal_alpha!r}")
        _require(all(0.0 <= b < 1.0 for b in self.adam_betas), "adam_betas",
                 f"expected two values in [0, 1), got {self.adam_betas!r}")


# --------------------------------------------------------------------------------------------------------
# Stage 2
ROLLOUT_BACKENDS = ("generate", "vllm")
LOSS_AGGREGATIONS = ("sequence", "token", "constant")


def _grpo_trainable() -> list[str]:
    return ["mllm", "context", "sam_decoder", "sam_prompt_encoder"]


def _default_reward_weights() -> dict[str, float]:
    return {"format": 1.0, "box_iou": 1.0, "segment_iou": 1.0}


@dataclass
class GRPOConfig:
    """Stage 2 (GRPO, paper Table A2): sample G answers per prompt, reward format + box IoU² + mask IoU²,
    policy-gradient the MLLM and train the context module and SAM2 decoder with the mask loss."""

    # model: a stage-1 (or released) LENS checkpoint; the reference policy defaults to the same weights
    init_from: str = "runs/align/final"
    reference: str | None = None
    context_pass: str | None = None  # null: the checkpoint's own mode
    answer_format: str | None = None  # null: the checkpoint's own prompt format
    trainable: list[str] = field(default_factory=_grpo_trainable)
    # data
    datasets: list[DatasetSpec] = field(default_factory=_refcoco_train)
    val_dataset: DatasetSpec | None = None
    val_samples: int = 200
    max_prompt_length: int = 2048
    max_completion_length: int = 768
    num_workers: int = 2
    # rollouts
    num_generations: int = 8  # G completions per prompt (Table A2)
    temperature: float = 0.9
    top_p: float = 0.9
    top_k: int = 50
    rollout_backend: str = "generate"  # generate (in-process, KV cache) | vllm (GPU servers)
    vllm_gpu_memory_utilization: float = 0.3
    # rewards and objective
    reward_weights: dict[str, float] = field(default_factory=_default_reward_weights)
    beta: float = 0.04  # KL weight (k3 estimator) to the reference policy
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # null: = clip_eps
    loss_aggregation: str = "sequence"  # sequence (GRPO) | token (DAPO) | constant (Dr.GRPO)
    advantage_eps: float = 1e-4
    scale_advantages: bool = True  # divide by the group std (False: Dr.GRPO)
    num_iterations: int = 1  # policy updates per rollout (1: ratio = 1, as released)
    seg_loss_weight: float = 1.0
    dice_weight: float = 1.0
    pixel_loss: str = "bce"
    pixel_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # optimisation: global batch counts prompts (each brings G completions)
    global_batch_size: int = 64
    per_device_batch_size: int | None = None
    epochs: float = 16.0
    max_steps: int | None = None
    lr: float = 3e-6
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 42
    # engine
    zero_stage: int = 2
    precision: str = "auto"
    gradient_checkpointing: bool = True
    # bookkeeping
    output_dir: str = "runs/grpo"
    log_every: int = 1
    save_every: int = 200
    keep_last: int = 2
    eval_every: int = 200

    def __post_init__(self):
        if self.context_pass is not None:
            _choice(self.context_pass, "context_pass", CONTEXT_PASS_MODES)
        if self.answer_format is not None:
            _choice(self.answer_format, "answer_format", ("grounding", "think_answer"))
        _require(len(self.trainable) > 0, "trainable", f"expected at least one of {', '.join(TRAINABLE_PARTS)}")
        for part in self.trainable:
            _choice(part, "trainable", TRAINABLE_PARTS)
        _require(len(self.datasets) > 0, "datasets", "expected at least one dataset")
        _choice(self.rollout_backend, "rollout_backend", ROLLOUT_BACKENDS)
        _choice(self.loss_aggregation, "loss_aggregation", LOSS_AGGREGATIONS)
        _choice(self.pixel_loss, "pixel_loss", PIXEL_LOSSES)
        _choice(self.lr_scheduler, "lr_scheduler", LR_SCHEDULERS)
        _choice(self.precision, "precision", PRECISIONS)
        _choice(self.zero_stage, "zero_stage", (0, 1, 2, 3))
        _positive(self, "num_generations", "max_prompt_length", "max_completion_length", "temperature",
                  "global_batch_size", "epochs", "lr", "log_every", "save_every", "keep_last", "eval_every",
                  "num_iterations", "advantage_eps")
        _positive(self, "per_device_batch_size", "max_steps", allow_none=True)
        _non_negative(self, "val_samples", "num_workers", "warmup_steps", "weight_decay", "grad_clip", "seed",
                      "beta", "clip_eps", "seg_loss_weight", "dice_weight", "pixel_weight", "focal_gamma", "top_k")
        _require(0.0 < self.top_p <= 1.0, "top_p", f"expected in (0, 1], got {self.top_p!r}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"expected 0..1, got {self.min_lr_ratio!r}")
        _require(self.num_generations >= 2, "num_generations",
                 f"GRPO compares completions within a group: expected >= 2, got {self.num_generations}")
        _require(self.reward_weights != {}, "reward_weights", "expected at least one reward")
        _require(0.0 < self.vllm_gpu_memory_utilization < 1.0, "vllm_gpu_memory_utilization",
                 f"expected in (0, 1), got {self.vllm_gpu_memory_utilization!r}")


__all__ = [
    "AlignConfig", "ConfigError", "DatasetSpec", "GRPOConfig", "LOSS_AGGREGATIONS", "ROLLOUT_BACKENDS", "LR_SCHEDULERS", "PIXEL_LOSSES", "PRECISIONS", "TRAINABLE_PARTS",
    "derive_batch", "dump_config", "load_config", "lr_at", "total_steps",
]
