"""A tiny base for the stage-1 tests: a plain Qwen2.5-VL directory and a SAM2 `.pt` (the library needs neither)."""

from pathlib import Path

import torch

from lens_model.model.config import LensConfig
from lens_model.model.modeling import mllm_class
from lens_model.model.tiny import build_tiny_processor, tiny_lens_config, tiny_mllm_config


def make_tiny_base(out_dir: str | Path, seed: int = 0, mllm_type: str = "qwen2_5_vl") -> tuple[Path, Path, LensConfig]:
    """What stage 1 starts from, in the official formats, tiny: a plain Qwen2.5-VL (or Qwen2-VL) directory as
    transformers saves it, and a SAM2 `.pt` checkpoint as Meta ships it ({"model": state dict} with the
    memory modules). -> (mllm dir, sam2 .pt path, LensConfig whose SAM2 config matches the .pt)."""
    from sam2.build_sam import build_sam2

    out = Path(out_dir)
    torch.manual_seed(seed)
    processor = build_tiny_processor()
    mllm_config = tiny_mllm_config(processor.tokenizer, mllm_type=mllm_type)
    mllm = mllm_class(mllm_config.model_type)(mllm_config)
    mllm_dir = out / "mllm"
    mllm.save_pretrained(mllm_dir)
    processor.save_pretrained(mllm_dir)
    lens_config = tiny_lens_config()
    sam = build_sam2(
        lens_config.sam.config_name,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=list(lens_config.sam.overrides),
    )
    sam_path = out / "sam2_tiny.pt"
    torch.save({"model": sam.state_dict()}, sam_path)
    return mllm_dir, sam_path, lens_config
