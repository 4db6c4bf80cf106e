"""Module sizes of LENS-3B / LENS-2B against the paper (Table A4), built on the meta device (no memory, no download)."""

import pytest
import torch

from lens_model.model.modeling import LensModel
from lens_model.model.paper_shapes import lens_3b_shape, paper_lens_config, qwen2_vl_2b_config
from lens_model.model.sam import MEMORY_MODULES, build_sam
from lens_model.model.tiny import tiny_lens_config


def _millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.fixture(scope="module")
def lens_3b():
    return lens_3b_shape()  # on the meta device: sizes without memory (sam2's Hiera is built on the CPU)


def test_lens_3b_module_sizes_match_paper_table_a4(lens_3b):
    m = lens_3b
    assert m.hidden_size == 2048
    # Table A4: MLLM 3755.6 M, context query 0.13 M, connector 206.3 M, SAM2 224.4 M
    assert _millions(m.mllm) == pytest.approx(3755.6, abs=1.5)
    assert m.context.learnable_query.numel() / 1e6 == pytest.approx(0.13, abs=0.005)
    assert (_millions(m.context.connector) + _millions(m.context.proj_to_sam)) == pytest.approx(206.3, abs=0.2)
    # The paper counts the whole SAM2-L (224.4 M); LENS drops its 7.3 M of video-memory modules.
    from sam2.build_sam import build_sam2

    full = build_sam2(m.lens_config.sam.config_name, device="cpu")
    assert _millions(full) == pytest.approx(224.4, abs=0.05)
    memory = sum(
        _millions(getattr(full, name))
        if isinstance(getattr(full, name), torch.nn.Module)
        else getattr(full, name).numel() / 1e6
        for name in MEMORY_MODULES
    )
    assert _millions(m.sam) == pytest.approx(_millions(full) - memory, abs=1e-6)
    assert memory == pytest.approx(7.31, abs=0.01)
    assert tuple(m.context.conv_1d.weight.shape) == (2048, 2048, 64)
    assert tuple(m.context.proj_to_sam[-1].weight.shape) == (256, 2048)
    assert len(m.context.connector.blocks) == 4


def test_lens_2b_uses_qwen2_vl():
    config = paper_lens_config()
    sam = build_sam(tiny_lens_config().sam)  # SAM size is not under test here
    with torch.device("meta"):
        m = LensModel(qwen2_vl_2b_config(), config, sam=sam)
    assert type(m.mllm).__name__ == "Qwen2VLForConditionalGeneration"
    assert m.hidden_size == 1536 and tuple(m.context.learnable_query.shape) == (1, 64, 1536)
    assert _millions(m.mllm) == pytest.approx(2209, abs=5)


def test_lens_3b_shape_with_fewer_layers_and_a_tokenizer(lens_3b):
    """The builder the benchmarks time LENS-3B with: a few of its layers (each the shape of all the others), bf16,
    special ids of the tokenizer a pipeline runs it with."""
    from lens_model.model.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    short = lens_3b_shape(text_layers=2, vision_layers=3, tokenizer=tokenizer)
    text, vision = short.mllm.model.language_model, short.mllm.model.visual
    assert len(text.layers) == 2 and len(vision.blocks) == 3
    assert vision.fullatt_block_indexes == []  # Qwen's full-attention blocks are 7, 15, 23, 31
    full_text = lens_3b.mllm.model.language_model
    assert _millions(text.layers[0]) == _millions(full_text.layers[35]) == pytest.approx(77.1, abs=0.1)
    assert _millions(text) - 2 * _millions(text.layers[0]) == pytest.approx(
        _millions(full_text) - 36 * _millions(full_text.layers[0])
    )  # what is not a layer (embeddings, final norm) is kept whole: 151,936 x 2048
    assert short.dtype == torch.bfloat16 and short.sam.image_encoder.trunk.pos_embed.dtype == torch.float32
    assert short.mllm.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert short.mllm.config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert lens_3b.mllm.config.image_token_id == 151655  # Qwen's own without a tokenizer
