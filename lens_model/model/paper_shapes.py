"""The paper's models by shape, with random weights: reasoning-model configs and a LENS-3B-shaped builder, for the
size tests and the benchmarks that time LENS-3B's stages without its weights (benchmarks/tracking.py, gpu_check.py).

Values are those of the public `Qwen/Qwen2.5-VL-3B-Instruct` (LENS-3B) and `Qwen/Qwen2-VL-2B-Instruct`
(LENS-2B) config files, so sizes can be checked (and models built on the meta device) without a download.
"""

from __future__ import annotations

import torch

from .config import LensConfig

_QWEN_IDS = dict(
    bos_token_id=151643,
    eos_token_id=151645,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    image_token_id=151655,
    video_token_id=151656,
)


def qwen2_5_vl_3b_config():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
            tokens_per_second=2,
        ),
        tie_word_embeddings=True,
        **_QWEN_IDS,
    )


def qwen2_vl_2b_config():
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16),
        tie_word_embeddings=True,
        **_QWEN_IDS,
    )


def paper_lens_config() -> LensConfig:
    """The paper's context module and SAM2 (Hiera-L, SAM 2.0 config), 64 queries."""
    return LensConfig(num_queries=64, context_pass="cached")


def lens_3b_shape(
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.bfloat16,
    text_layers: int | None = None,
    vision_layers: int | None = None,
    tokenizer=None,
):
    """A LensModel of LENS-3B's shape with random weights: Qwen2.5-VL-3B, the paper's context module (64 queries)
    and SAM2 Hiera-L, built on `device` in `dtype` (SAM2 keeps float32 weights, as LensModel runs it under autocast).
    `text_layers` / `vision_layers` keep only that many of the 36 decoder / 32 vision layers (a timing of a few layers
    scales to all: every layer has the same shape). On the meta device nothing is allocated (sizes only).
    `tokenizer`: a tokenizer with Qwen's special tokens (e.g. the tiny one of `lens_model.model.tiny`) whose ids
    the model's special ids then follow, so that a pipeline can run it; the vocabulary keeps Qwen's 151,936 rows."""
    from .modeling import LensModel
    from .sam import build_sam

    mllm_config = qwen2_5_vl_3b_config()
    text = mllm_config.text_config
    if text_layers is not None:
        text.num_hidden_layers = text_layers
        text.layer_types = ["full_attention"] * text_layers
    if vision_layers is not None:
        vision = mllm_config.vision_config
        vision.depth = vision_layers
        vision.fullatt_block_indexes = [i for i in vision.fullatt_block_indexes if i < vision_layers]
    if tokenizer is not None:
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ):
            setattr(mllm_config, name, tokenizer.convert_tokens_to_ids(token))
        text.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        text.pad_token_id = text.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    lens_config = paper_lens_config()
    sam = build_sam(lens_config.sam, device="cpu" if torch.device(device).type == "meta" else device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: a float32 LENS-3B would need 15 GB first
    try:
        with torch.device(device):
            model = LensModel(mllm_config, lens_config, sam=sam)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()
