"""Saving and loading LENS checkpoints (ours, the released hustvl/LENS ones, official SAM2 `.pt`).

Directory layout (one Hugging Face model directory):
    config.json              the MLLM's transformers config + a "lens" section (LensConfig)
    model*.safetensors       MLLM tensors under transformers' own names (`model.language_model.*`,
                             `model.visual.*`, `lm_head.*`), plus `learnable_query`, `connector.*`,
                             `conv_1d.*`, `proj_to_sam.*` and `sam.*` (SAM2 without memory modules)
    tokenizer / processor / chat-template files, generation_config.json
    sam2_memory.safetensors  optional: SAM2's video-memory modules for tracking (lens_model.model.sam_memory)

Released checkpoints (OuyBin/LENS and siblings) use the same top-level names for the context module
and SAM2, transformers-4.51 names for Qwen (`model.*`, `visual.*`), which transformers renames on load,
and a config without "lens" but with `num_of_query` / `if_use_qwen_connector`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from .config import DEFAULT_MODEL_ID, LensConfig, PromptConfig, is_released_config
from .modeling import MLLM_CLASSES, LensModel, mllm_class
from .sam import MEMORY_MODULES, build_sam

log = logging.getLogger(__name__)

CONTEXT_PREFIXES = ("learnable_query", "connector.", "conv_1d.", "proj_to_sam.")
SAM_PREFIX = "sam."
# Keys a checkpoint may hold that this implementation deliberately does not load.
IGNORED_SAM2_KEY_PREFIXES = tuple(f"{name}" for name in MEMORY_MODULES)  # video memory, unused for single images
_COT_NAME = re.compile(r"(?:^|[_\-/])cot(?:$|[_\-/])", re.IGNORECASE)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
# Optional SAM2 memory weights in a model directory (lens_model.model.sam_memory reads and writes them); keys as in
# an official SAM2 .pt. Not part of the LENS weights: loading the model ignores the file.
MEMORY_WEIGHTS_FILE = "sam2_memory.safetensors"


# ---------------------------------------------------------------------------- saving
def _config_dict(model: LensModel) -> dict[str, Any]:
    data = model.mllm.config.to_dict()
    data.pop("_name_or_path", None)  # where this process loaded it from: a path of this machine, not the model's
    data["architectures"] = [MLLM_CLASSES[model.mllm.config.model_type]]
    data["lens"] = model.lens_config.to_dict()
    return data


def state_dict_for_saving(model: LensModel, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Checkpoint names from the model, or from `state` keyed like `model.state_dict()` (e.g. weights gathered
    from DeepSpeed ZeRO-3 partitions): `mllm.` and `context.` prefixes dropped, `sam.` kept."""
    if state is None:
        state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.startswith("mllm."):
            out[key[len("mllm.") :]] = value
        elif key.startswith("context."):
            out[key[len("context.") :]] = value
        elif key.startswith(SAM_PREFIX):
            out[key] = value
        else:
            raise CheckpointError(f"cannot place weight {key!r} in a LENS checkpoint (expected mllm./context./sam.)")
    return out


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """safetensors refuses views into a larger buffer (DeepSpeed keeps parameters in flat buffers): copy those."""
    t = t.contiguous()
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def save_model(
    model: LensModel,
    out_dir: str | os.PathLike,
    processor=None,
    max_shard_size: str = "5GB",
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    from huggingface_hub import save_torch_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # save_torch_state_dict drops tied duplicates (lm_head <-> embed_tokens) and shards large models.
    tensors = {k: _own_storage(v.detach().cpu()) for k, v in state_dict_for_saving(model, state).items()}
    save_torch_state_dict(tensors, out, max_shard_size=max_shard_size)
    (out / "config.json").write_text(json.dumps(_config_dict(model), indent=2, sort_keys=True))
    model.mllm.generation_config.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)


# ---------------------------------------------------------------------------- resolving
def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None and not text.startswith(".")


def check_model_path(name_or_path: str | os.PathLike, what: str) -> None:
    """A model named in a config, checked before anything heavy starts: an existing checkpoint directory (with
    config.json), or a Hub id (fetched when the model loads). CheckpointError naming `what` otherwise."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{what}: {path} is a file; pass the checkpoint directory that holds config.json")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{what}: {path} has no config.json; pass a model checkpoint directory")
    elif not _looks_like_hub_id(str(name_or_path)):
        raise CheckpointError(f"{what}: model directory not found: {path}")


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory, or a Hub id downloaded to the local cache. Errors say what to do."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"model path {path} is a file; pass the checkpoint directory that holds config.json")
        return path
    text = str(name_or_path)
    if not _looks_like_hub_id(text):
        raise CheckpointError(f"model directory not found: {path}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # network, auth, offline mode: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {text!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            f"download it where there is internet (`hf download {text} --local-dir DIR`) and pass the local "
            f"directory, e.g. --model DIR (or build a tiny test model with `lens make-tiny --out DIR`)"
        ) from None


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files (the shards its index lists, else every *.safetensors but the optional
    SAM2 memory weights for tracking, sam2_memory.safetensors), all present."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / n for n in names]
    else:
        files = sorted(f for f in model_dir.glob("*.safetensors") if f.name != MEMORY_WEIGHTS_FILE)
    missing = [f for f in files if not f.exists()]
    if not files or missing:
        raise CheckpointError(
            f"checkpoint {model_dir} has no weights: expected model.safetensors or the shards listed in "
            f"model.safetensors.index.json{' (missing: ' + ', '.join(m.name for m in missing) + ')' if missing else ''}"
        )
    return files


def _read_tensors(files: list[Path], keep) -> dict[str, torch.Tensor]:
    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    if keep(key):
                        out[key] = handle.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"cannot read weights file {f}: {exc}") from None
    return out


# ---------------------------------------------------------------------------- configs
def _detect_released_mllm_type(data: dict[str, Any]) -> str:
    # The released config class subclasses Qwen2VLConfig (model_type "qwen2_vl") even for the
    # Qwen2.5-VL model; the architecture name and the vision config tell them apart.
    archs = " ".join(data.get("architectures") or [])
    vision = data.get("vision_config") or {}
    if "qwen2p5" in archs or "Qwen2_5" in archs or "fullatt_block_indexes" in vision:
        return "qwen2_5_vl"
    return "qwen2_vl"


def read_configs(model_dir: Path) -> tuple[Any, LensConfig]:
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(
            f"checkpoint {model_dir} is missing config.json "
            f"(expected config.json, model*.safetensors and tokenizer files)"
        )
    try:
        data = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object (the model's config), got {type(data).__name__}")
    if "lens" in data:
        try:
            lens = LensConfig.from_dict(data.pop("lens"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{cfg_file}: invalid 'lens' section: {exc}") from None
        model_type = data.get("model_type")
    elif is_released_config(data):
        lens = LensConfig.from_released(data)
        if _COT_NAME.search(str(model_dir)):  # OuyBin/LENS_ReasonSeg_CoT answers in <think>/<answer> form
            lens.prompt = PromptConfig.for_format("think_answer")
        model_type = _detect_released_mllm_type(data)
        for key in ("num_of_query", "if_use_qwen_connector", "if_include_sam"):
            data.pop(key, None)
    else:
        raise CheckpointError(f"{cfg_file} has neither a 'lens' section nor 'num_of_query': not a LENS checkpoint")
    if model_type not in MLLM_CLASSES:
        raise CheckpointError(
            f"{cfg_file}: model_type {model_type!r} is not a supported reasoning model {sorted(MLLM_CLASSES)}"
        )
    data["model_type"] = model_type
    config_cls = mllm_class(model_type).config_class
    check_config_types(data, config_cls().to_dict(), cfg_file)
    return config_cls.from_dict(data), lens


def check_config_types(given: dict[str, Any], defaults: dict[str, Any], cfg_file: Path, prefix: str = "") -> None:
    """Each value of the MLLM's config.json whose key has a numeric or boolean default in its transformers config
    class must be of that kind (a mapping where the default is one): `text_config.hidden_size: "128"` is named here,
    instead of failing inside torch when the model is built. null is left to transformers."""
    for key, value in given.items():
        if key not in defaults or value is None:
            continue
        default, name = defaults[key], f"{prefix}{key}"
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise CheckpointError(f"{cfg_file}: {name}: expected a mapping, got {value!r}")
            check_config_types(value, default, cfg_file, f"{name}.")
            continue
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise CheckpointError(f"{cfg_file}: {name}: expected {expected}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------------------- loading
def _load_mllm(model_dir: Path, mllm_config, dtype: torch.dtype):
    import transformers

    cls = mllm_class(mllm_config.model_type)
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # we check the load report ourselves below
    try:
        # ignore_mismatched_sizes so that the report below (not a generic exception) names the tensors
        mllm, info = cls.from_pretrained(
            model_dir, config=mllm_config, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot load the reasoning model from {model_dir}: {str(exc).splitlines()[0][:300]}"
        ) from None
    finally:
        transformers.logging.set_verbosity(previous)
    if info["mismatched_keys"]:
        shown = [
            m if isinstance(m, str) else f"{m[0]}: checkpoint {tuple(m[1])} vs config {tuple(m[2])}"
            for m in sorted(info["mismatched_keys"], key=str)[:3]
        ]
        raise CheckpointError(f"{model_dir}: reasoning-model weights do not match config.json shapes: {shown}")
    if info["missing_keys"]:
        raise CheckpointError(f"{model_dir}: reasoning-model weights missing: {sorted(info['missing_keys'])[:5]}")
    strange = [k for k in info["unexpected_keys"] if not k.startswith(CONTEXT_PREFIXES + (SAM_PREFIX,))]
    if strange:
        raise CheckpointError(f"{model_dir}: unexpected tensors in the checkpoint: {sorted(strange)[:5]}")
    return mllm


def load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, source: Path, ignore=()) -> None:
    """Load `tensors` into `module`; missing, unexpected or mis-shaped tensors (keys starting with `ignore` aside)
    raise one CheckpointError naming them."""
    expected = module.state_dict()
    ignored = [k for k in tensors if k.startswith(ignore)]
    unexpected = sorted(k for k in tensors if k not in expected and k not in ignored)
    missing = sorted(k for k in expected if k not in tensors)
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or bad_shapes:
        details = "; ".join(
            filter(
                None,
                [
                    f"missing {missing[:5]}" if missing else "",
                    f"unexpected {unexpected[:5]}" if unexpected else "",
                    f"shape mismatch {bad_shapes[:3]}" if bad_shapes else "",
                ],
            )
        )
        raise CheckpointError(f"{source}: {what} weights do not match the model config: {details}")
    module.load_state_dict({k: v for k, v in tensors.items() if k not in ignored}, strict=True)


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL_ID,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    context_pass: str | None = None,
    answer_format: str | None = None,
    load_processor: bool = True,
):
    """Load a LENS checkpoint -> (LensModel in eval mode, processor or None)."""
    model_dir = resolve_model_dir(name_or_path)
    mllm_config, lens_config = read_configs(model_dir)
    if context_pass is not None:
        lens_config.context_pass = context_pass
    if answer_format is not None:
        lens_config.prompt = PromptConfig.for_format(answer_format)
    weight_files(model_dir)  # a directory without weights fails here, before the reasoning model loads
    if load_processor:
        check_processor_files(model_dir)  # likewise for the tokenizer, chat template and image processor
    mllm = _load_mllm(model_dir, mllm_config, dtype)
    sam = build_sam(lens_config.sam)
    model = LensModel(mllm.config, lens_config, mllm=mllm, sam=sam)
    load_segmentation_weights(model_dir, model.context, model.sam)
    model.to(device=device, dtype=dtype).eval()
    processor = load_processor_from(model_dir, lens_config) if load_processor else None
    return model, processor


def load_segmentation_weights(model_dir: Path, context: torch.nn.Module, sam: torch.nn.Module) -> None:
    """Load checkpoint `model_dir`'s context-module tensors (`learnable_query`, `connector.*`, ...) into `context`
    and its `sam.*` tensors into `sam` (SAM2 memory modules ignored). Strict: missing, unexpected or mis-shaped
    tensors raise CheckpointError naming them. Used by `load_model` and by the export, which loads no MLLM."""
    tensors = _read_tensors(weight_files(model_dir), lambda k: k.startswith(CONTEXT_PREFIXES + (SAM_PREFIX,)))
    load_strict(
        context, {k: v for k, v in tensors.items() if k.startswith(CONTEXT_PREFIXES)}, "context-module", model_dir
    )
    load_strict(
        sam,
        {k[len(SAM_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SAM_PREFIX)},
        "SAM2",
        model_dir,
        ignore=IGNORED_SAM2_KEY_PREFIXES,
    )


def build_from_base(
    base_mllm: str | os.PathLike,
    sam_checkpoint: str | os.PathLike | None,
    lens_config: LensConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """A new LENS model for stage-1 training: pretrained MLLM (Hub id or directory, e.g.
    Qwen/Qwen2.5-VL-3B-Instruct) + official SAM2 `.pt` weights + a freshly initialised context module.
    sam_checkpoint=None keeps SAM2 randomly initialised (tests and synthetic experiments only).
    -> (LensModel in train mode, processor)."""
    from transformers import AutoConfig

    model_dir = resolve_model_dir(base_mllm)
    try:
        mllm_config = AutoConfig.from_pretrained(model_dir)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the base model config in {model_dir}: {str(exc).splitlines()[0][:300]}"
        ) from None
    if mllm_config.model_type not in MLLM_CLASSES:
        raise CheckpointError(
            f"{model_dir} is a {mllm_config.model_type!r} model; LENS builds on {sorted(MLLM_CLASSES)}"
        )
    mllm = _load_mllm(model_dir, mllm_config, dtype)
    sam = build_sam(lens_config.sam)
    if sam_checkpoint is not None:
        load_sam2_checkpoint(sam, sam_checkpoint)
    else:
        log.warning("no SAM2 checkpoint given: SAM2 starts from random weights")
    model = LensModel(mllm.config, lens_config, mllm=mllm, sam=sam)
    model.to(device=device, dtype=dtype)
    return model, load_processor_from(model_dir, lens_config)


_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # fast tokenizer, or Qwen's BPE files
_PROCESSOR_CONFIG_FILES = ("preprocessor_config.json", "processor_config.json")
_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_CHAT_TEMPLATE_HOLDERS = ("tokenizer_config.json", "processor_config.json")  # may carry "chat_template" inline


def _holds_chat_template(config_file: Path) -> bool:
    try:
        return config_file.is_file() and "chat_template" in json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # AutoProcessor reports the broken file itself


def check_processor_files(model_dir: Path) -> None:
    """The tokenizer, image-processor and chat-template files a LENS/Qwen-VL directory must hold: a missing one is
    named here, before any weights load (transformers would fail later, or only at the first prompt)."""
    if not any(all((model_dir / name).is_file() for name in group) for group in _TOKENIZER_FILES):
        raise CheckpointError(
            f"checkpoint {model_dir} has no tokenizer: expected tokenizer.json (or vocab.json and merges.txt)"
        )
    if not any((model_dir / name).is_file() for name in _PROCESSOR_CONFIG_FILES):
        raise CheckpointError(
            f"checkpoint {model_dir} has no image-processor config: expected preprocessor_config.json "
            f"or processor_config.json"
        )
    if not any((model_dir / name).is_file() for name in _CHAT_TEMPLATE_FILES) and not any(
        _holds_chat_template(model_dir / name) for name in _CHAT_TEMPLATE_HOLDERS
    ):
        raise CheckpointError(
            f"checkpoint {model_dir} has no chat template: expected chat_template.jinja (or chat_template.json, "
            f"or a 'chat_template' entry in tokenizer_config.json)"
        )


def load_processor_from(model_dir: Path, lens_config: LensConfig):
    from transformers import AutoProcessor

    check_processor_files(model_dir)
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load the processor/tokenizer files from {model_dir}: {str(exc).splitlines()[0][:300]}"
        ) from None
    # The released scripts bound the MLLM image size by max_pixels; keep processor and config in agreement.
    processor.image_processor.size = {"shortest_edge": lens_config.min_pixels, "longest_edge": lens_config.max_pixels}
    return processor


def load_sam2_checkpoint(sam: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load an official SAM2 `.pt` checkpoint ({"model": state_dict}) into our SAM2 (memory modules ignored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SAM2 checkpoint not found: {path}")
    load_strict(sam, read_sam2_checkpoint(path), "SAM2", path, ignore=IGNORED_SAM2_KEY_PREFIXES)


def read_sam2_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM2 `.pt` checkpoint ({"model": state_dict}), on the CPU."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read SAM2 checkpoint {path}: {exc}") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a SAM2 checkpoint: expected a dict with a 'model' state dict")
    return state
