"""Reasoning-model configs of the paper's models (for the size tests; moved here from the library, which needs them
nowhere).

Values are those of the public `Qwen/Qwen2.5-VL-3B-Instruct` (LENS-3B) and `Qwen/Qwen2-VL-2B-Instruct`
(LENS-2B) config files, so sizes can be checked (and models built on the meta device) without a download.
"""

from __future__ import annotations

from lens_model.model.config import LensConfig

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
