"""Loading a checkpoint in the released hustvl/LENS key layout.

The fixture writes random tensors under exactly the key names and shapes of the released model class
(`tests/data/released-lens-state-dict-tiny.tsv`: tiny Qwen2.5-VL, real SAM2 Hiera-L), a config.json
in the transformers-4.51 style that class saved, and tokenizer files; `load_model` must load it with
no missing/unexpected keys and every tensor equal to its source.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file

from lens_model.errors import CheckpointError
from lens_model.model.checkpoint import load_model, state_dict_for_saving
from lens_model.model.tiny import QWEN_SPECIAL_TOKENS, build_tiny_processor

TSV = REPO / "tests" / "data" / "released-lens-state-dict-tiny.tsv"  # copy of shared/reference
# Where each released name lives in our model (`state_dict_for_saving` names). Qwen keys are renamed
# from transformers 4.51 to 5.x layout; the context module and SAM2 keep their released names.
QWEN_RENAMES = (("visual.", "model.visual."), ("model.", "model.language_model."))


def released_to_ours(key: str) -> str:
    for old, new in QWEN_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        rows[key] = tuple(int(s) for s in shape.split("x"))
    return rows


def released_config(tokenizer) -> dict:
    """config.json as the released SAMR1Config (a Qwen2VLConfig subclass, transformers 4.51) writes it."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return {
        "architectures": ["SAMR1ForConditionalGeneration_qwen2p5"],
        "model_type": "qwen2_vl",
        "vocab_size": 1000,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "vision_config": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "in_chans": 3,
            "hidden_act": "silu",
            "tokens_per_second": 2,
        },
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3",
        "num_of_query": 64,
        "if_use_qwen_connector": True,
    }


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    shapes = read_tsv(TSV)
    out = tmp_path_factory.mktemp("released") / "LENS"
    out.mkdir()
    gen = torch.Generator().manual_seed(0)
    # bf16 like the released files; values distinct per tensor so a swapped key cannot go unnoticed
    tensors = {k: torch.randn(shape, generator=gen).to(torch.bfloat16) for k, shape in shapes.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    processor = build_tiny_processor()
    processor.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(released_config(processor.tokenizer)))
    return out, tensors


def test_reference_table_is_present_and_complete():
    shapes = read_tsv(TSV)
    assert len(shapes) > 800
    assert {
        "learnable_query",
        "conv_1d.weight",
        "connector.pos_embed",
        "proj_to_sam.2.weight",
        "lm_head.weight",
    } <= set(shapes)
    assert not any(k.startswith(("sam.memory_attention", "sam.memory_encoder", "sam.maskmem_tpos_enc")) for k in shapes)


def test_released_layout_loads_every_tensor(released_dir):
    path, tensors = released_dir
    model, processor = load_model(path)
    assert model.lens_config.context_pass == "official"  # released checkpoints were trained with 1-D positions
    assert model.lens_config.num_queries == 64 and model.context.connector is not None
    assert model.lens_config.sam.config_name.endswith("sam2_hiera_l.yaml")
    # the transformers-4.51 flat config is read into today's nested Qwen2.5-VL config
    text = model.mllm.config.get_text_config()
    assert type(model.mllm).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (128, 2, 2, 1000)
    assert text.rope_parameters["rope_theta"] == 1000000.0 and list(text.rope_parameters["mrope_section"]) == [4, 6, 6]
    assert model.mllm.config.vision_config.fullatt_block_indexes == [1]
    ours = state_dict_for_saving(model)
    mapped = {released_to_ours(k): k for k in tensors}
    assert set(ours) == set(mapped), (sorted(set(ours) - set(mapped))[:5], sorted(set(mapped) - set(ours))[:5])
    for our_key, released_key in mapped.items():
        assert torch.equal(ours[our_key], tensors[released_key].float()), our_key
    assert processor.tokenizer.convert_tokens_to_ids("<|box_start|>") is not None


def test_released_weights_with_wrong_shapes_are_rejected(released_dir, tmp_path):
    path, tensors = released_dir
    bad = dict(tensors)
    bad["conv_1d.weight"] = torch.zeros(128, 128, 32, dtype=torch.bfloat16)  # 32 queries in a 64-query config
    target = tmp_path / "bad"
    target.mkdir()
    for f in path.iterdir():
        if f.name != "model.safetensors":
            (target / f.name).write_bytes(f.read_bytes())
    save_file(bad, str(target / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"conv_1d\.weight: checkpoint \(128, 128, 32\) vs config \(128, 128, 64\)"
    ):
        load_model(target)


def test_released_cot_checkpoint_uses_the_think_answer_format(released_dir, tmp_path):
    import shutil

    path, _ = released_dir
    cot = tmp_path / "models--OuyBin--LENS_ReasonSeg_CoT"
    shutil.copytree(path, cot)
    model, _ = load_model(cot, load_processor=False)
    assert model.lens_config.prompt.answer_format == "think_answer"
    assert model.lens_config.prompt.question_template.startswith('Locate "{question}"')
    plain, _ = load_model(path, load_processor=False)
    assert plain.lens_config.prompt.answer_format == "grounding"
