"""The locally built tokenizer/processor behave like Qwen2.5-VL's for everything LENS relies on."""

import numpy as np
import pytest
from PIL import Image

from lens_model.model.checkpoint import load_model
from lens_model.model.tiny import QWEN_SPECIAL_TOKENS, build_tiny_processor


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def test_special_tokens_are_single_tokens(processor):
    tok = processor.tokenizer
    for token in QWEN_SPECIAL_TOKENS:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == token
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_chat_template_renders_the_qwen_format(processor):
    messages = [
        {"role": "system", "content": "You are a helpful assistant. "},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Output the bounding box of the cup in the image."},
            ],
        },
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant. <|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Output the bounding box of the cup in the image.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_digits_are_split_and_text_round_trips(processor):
    tok = processor.tokenizer
    text = "<|box_start|>(123,45),(678,90)<|box_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert [t for t in tok.convert_ids_to_tokens(ids) if t.isdigit()] == list("1234567890")


def test_image_becomes_merged_patch_tokens(processor):
    image = Image.fromarray(np.zeros((112, 168, 3), np.uint8))  # 8 x 12 patches of 14 px, merged 2x2 -> 24 tokens
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 12]]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_id).sum()) == 24 == int(batch["mm_token_type_ids"].sum())


def test_tiny_checkpoint_matches_its_processor(tiny_dir):
    model, processor = load_model(tiny_dir)
    tok = processor.tokenizer
    assert model.mllm.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.mllm.get_input_embeddings().num_embeddings == len(tok)


def test_grounding_tiny_answers_depend_on_the_input_and_hold_boxes(tiny_grounding_dir):
    """The model behind the pipeline-equality tests: a random tiny model answers everything alike, this one must
    not, or `text == text` and `box == box` between two code paths would compare constants."""
    import json

    from lens_model.inference.pipeline import LensPipeline

    config = json.loads((tiny_grounding_dir / "generation_config.json").read_text())
    assert len(config["sequence_bias"]) > 100  # the grammar travels in the checkpoint, read by generate
    pipe = LensPipeline.from_pretrained(str(tiny_grounding_dir), device="cpu", max_new_tokens=40)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (150, 160, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["the red cup", "the person on the left", "a dog"]
    results = [pipe(image, prompts) for image in images]  # results[image][prompt]
    texts = [[r.text for r in row] for row in results]
    assert len({row[0] for row in texts}) == 3, texts  # the same prompt over different images
    assert all(len(set(row)) >= 2 for row in texts), texts  # different prompts on one image
    answers = [r for row in results for r in row]
    assert all(r.format_ok and r.box is not None and r.box_error is None for r in answers), texts
    assert len({r.box for r in answers}) >= 5
    assert all(r.text.startswith("<|object_ref_start|>the ") for r in answers)


def test_make_tiny_builds_the_sizes_format_and_vocabulary_asked_for(tmp_path):
    """A larger tiny model (text width and depth, vision tower), the think/answer prompt, the MLLM image size it is
    meant for, and a tokenizer that learnt the domain's words as single tokens."""
    from lens_model.model.config import PromptConfig
    from lens_model.model.tiny import make_tiny

    words = "the large yellow triangle is at the bottom center"
    path = make_tiny(
        tmp_path / "t", hidden=64, layers=3, vision_depth=4, vision_hidden=32,
        prompt=PromptConfig.for_format("think_answer"), mllm_longest_side=128, tokenizer_corpus=[words] * 50,
        rope_theta=10.0,
    )  # fmt: skip
    model, processor = load_model(path)
    text, vision = model.mllm.config.text_config, model.mllm.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.rope_parameters["rope_theta"]) == (64, 3, 10.0)
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.fullatt_block_indexes) == (
        4,
        32,
        64,
        [1, 3],
    )
    assert model.lens_config.prompt == PromptConfig.for_format("think_answer")
    assert model.lens_config.mllm_longest_side == 128
    assert len(processor.tokenizer(words, add_special_tokens=False)["input_ids"]) == len(words.split())
    assert len(build_tiny_processor().tokenizer(words, add_special_tokens=False)["input_ids"]) > 2 * len(words.split())
