"""Tiny LENS checkpoints built locally: a real Qwen2.5-VL / SAM2 architecture at toy sizes.

`make_tiny(out_dir)` writes a complete checkpoint (config, safetensors, tokenizer with the Qwen special
tokens and chat template, image processor) that loads through the same `LensModel.from_pretrained`
path as a released checkpoint. The weights are random: the model is untrained.

A random tiny model answers every image and prompt with the same token cycle and never writes a box.
`make_tiny(..., grounding_answers=True)` gives one whose answers depend on the input and follow the grounding
format: its reasoning-model weights are scaled up (so that image and prompt move the logits), and its
generation_config.json carries a `sequence_bias` grammar (`grounding_answer_bias`) that `generate` reads from the
checkpoint like any generation setting. Tests use it where equal outputs must mean something.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .config import ConfidenceConfig, LensConfig, PromptConfig, SamConfig

# Qwen2-VL / Qwen2.5-VL special tokens, in their released order.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Same rendering as the Qwen2.5-VL chat template for system/user/assistant turns with images.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Output the bounding box of the red cup in the image.",
    "the small red circle left of the blue square",
    "the person on the left",
    "the green bottle",
    "<think>The user asks for the object. I compare the candidates.</think><answer>[10, 20, 30, 40]</answer>",
    "Locate the object, report the bbox coordinates in JSON format.",
    'You are a helpful assistant. 0123456789 (12,34),(56,78) {"bbox_2d": [1, 2, 3, 4]}',
]


def build_tiny_tokenizer(vocab_size: int = 600, corpus: Sequence[str] = ()):
    """Byte-level BPE with Qwen's special tokens, wrapped as a transformers fast tokenizer. `corpus`: more text to
    learn merges from (a model trained on one domain gets its words as single tokens, as a real Qwen tokenizer has
    them); `vocab_size` bounds the vocabulary, which is smaller when the text has fewer merges to learn."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Qwen splits digits one by one; byte-level BPE for everything else.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def build_tiny_processor(
    min_pixels: int = 56 * 56, max_pixels: int = 224 * 224, vocab_size: int = 600, corpus: Sequence[str] = ()
):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = build_tiny_tokenizer(vocab_size, corpus)
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_mllm_config(
    tokenizer,
    hidden: int = 128,
    mllm_type: str = "qwen2_5_vl",
    layers: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    rope_theta: float = 10000.0,
):
    """Tiny Qwen2.5-VL (LENS-3B family) or Qwen2-VL (LENS-2B family) config sharing the tokenizer's ids: `layers`
    text layers of width `hidden` (4 heads), a vision tower of `vision_depth` blocks of width `vision_hidden`.

    `rope_theta`: the text model's rotary base. M-RoPE gives an image token's height and width positions the
    *lowest* rotary frequencies (mrope_section splits them t, h, w in that order): with 16 frequency pairs per head
    and base 10000 the width ones turn by at most 0.003 rad per position, so the columns of a 5 × 5 token image are
    indistinguishable to the text model's attention. A small base (10) gives them 0.12-0.24 rad per position."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 4
    half = hidden // heads // 2  # rotary frequencies per head, split over (t, h, w) like Qwen's [16, 24, 24]
    mrope_section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    special = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if mllm_type == "qwen2_5_vl":
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=2,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=list(range(1, vision_depth, 2)),  # every second block, as Qwen's [7, 15, 23, 31]
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special)
    if mllm_type == "qwen2_vl":
        vision = dict(
            depth=vision_depth,
            embed_dim=vision_hidden,
            hidden_size=hidden,
            mlp_ratio=2,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, **special)
    raise ValueError(f"unknown mllm_type {mllm_type!r}; expected 'qwen2_5_vl' or 'qwen2_vl'")


def tiny_lens_config(
    num_queries: int = 8,
    sam_image_size: int = 256,
    prompt: PromptConfig | None = None,
    mllm_longest_side: int | None = None,
) -> LensConfig:
    # Hiera with one block per stage at width 32; SAM's prompt/decoder width stays 256 as in every SAM2.
    sam_overrides = [
        f"++model.image_size={sam_image_size}",
        "++model.image_encoder.trunk.embed_dim=32",
        "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
        "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    ]
    return LensConfig(
        num_queries=num_queries,
        connector_heads=4,
        context_pass="cached",
        max_pixels=224 * 224,
        mllm_longest_side=mllm_longest_side,
        prompt=prompt or PromptConfig(),
        sam=SamConfig(config_name="configs/sam2/sam2_hiera_t.yaml", overrides=sam_overrides, image_size=sam_image_size),
    )


# The grammar of `grounding_answer_bias`: "<|object_ref_start|>the WORD<|object_ref_end|>" then
# "<|box_start|>(A0,B0),(1C0,1D0)<|box_end|><|im_end|>" with WORD, A, B, C, D chosen by the model.
_REF_WORDS = ("Ġcup", "Ġred", "Ġperson", "Ġleft", "Ġgreen", "Ġobject", "Ġcircle", "Ġsquare", "Ġsmall", "Ġblue")
_DIGITS = tuple("0123456789")
GRAMMAR_BIAS = 100.0  # far above the tiny model's logits: the grammar always wins, the model picks within it
GROUNDING_WEIGHT_SCALE = 8.0  # random weights this much larger make the answer depend on image and prompt


def grounding_answer_bias(tokenizer, bias: float = GRAMMAR_BIAS) -> list[list]:
    """transformers `sequence_bias` ([[token ids], bias], ...) under which greedy decoding writes
    `<|object_ref_start|>the WORD<|object_ref_end|><|box_start|>(A0,B0),(1C0,1D0)<|box_end|><|im_end|>`:
    each entry adds `bias` to its last token when the answer so far ends with the others. At every step exactly
    one fixed token is favoured, or a set (WORD among a few nouns, A..D among the digits) that the model's own
    logits decide. x1 = 10·A < 100 <= x2 = 100 + 10·C (likewise y), so every answer is a valid box."""

    def ids(*tokens: str) -> list[int]:
        out = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        if None in out or tokenizer.unk_token_id in out:
            raise ValueError(f"the tokenizer lacks one of {tokens}")
        return out

    rules: list[tuple[tuple[str, ...], str]] = [
        (("Ċ",), "<|object_ref_start|>"),  # the assistant header ends with a newline; the answer has none
        (("<|object_ref_start|>",), "the"),
        *((("<|object_ref_start|>", "the"), word) for word in _REF_WORDS),
        *((("the", word), "<|object_ref_end|>") for word in _REF_WORDS),
        (("<|object_ref_end|>",), "<|box_start|>"),
        (("<|box_start|>",), "("),
        ((")", ","), "("),  # ")," only between the two corners
        ((")", ",", "("), "1"),
    ]
    for a in _DIGITS:
        first = ("<|box_start|>", "(", a)
        rules += [(("<|box_start|>", "("), a), (first, "0"), ((*first, "0"), ",")]
        for b in _DIGITS:
            corner = (*first, "0", ",", b)
            rules += [((*first, "0", ","), b), (corner, "0"), ((*corner, "0"), ")"), ((*corner, "0", ")"), ",")]
    second = (")", ",", "(", "1")
    for c in _DIGITS:
        x2 = (*second, c, "0")
        rules += [(second, c), ((*second, c), "0"), (x2, ","), ((*x2, ","), "1")]
        for d in _DIGITS:
            y2 = (*x2, ",", "1", d)
            rules += [((*x2, ",", "1"), d), (y2, "0"), ((*y2, "0"), ")"), ((*y2, "0", ")"), "<|box_end|>")]
    rules.append((("<|box_end|>",), "<|im_end|>"))
    return [[ids(*context, token), bias] for context, token in rules]


def make_tiny(
    out_dir: str | Path,
    seed: int = 0,
    num_queries: int = 8,
    context_pass: str = "cached",
    mllm_type: str = "qwen2_5_vl",
    grounding_answers: bool = False,
    sam_image_size: int = 256,
    hidden: int = 128,
    layers: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    prompt: PromptConfig | None = None,
    mllm_longest_side: int | None = None,
    tokenizer_corpus: Sequence[str] = (),
    rope_theta: float = 10000.0,
    confidence: ConfidenceConfig | None = None,
    absolute_positions: bool = False,
) -> Path:
    """Build, randomly initialise (seeded) and save a tiny LENS checkpoint, with SAM2 memory weights for tracking
    (sam2_memory.safetensors); returns its directory.

    grounding_answers: answers that depend on image and prompt and hold a grounding box (module docstring).
    sam_image_size: SAM2's input side (a multiple of 64; 1024 in released models, smaller here for speed).
    hidden, layers, vision_depth, vision_hidden, rope_theta: the MLLM (`tiny_mllm_config`). prompt: the prompt and
    answer format (default: grounding, as the released RefCOCO model). mllm_longest_side: the MLLM image size the
    model is meant for (LensConfig). tokenizer_corpus: text the tokenizer learns merges from besides its own few
    sentences (`build_tiny_tokenizer`). absolute_positions: LensConfig.mllm_absolute_positions.
    confidence: when a result counts as confident (default: ConfidenceConfig(), under which a random model's results
    never are; ConfidenceConfig.accept_all() for tests of what is published and tracked for confident results)."""
    from .checkpoint import save_model
    from .modeling import LensModel
    from .sam_memory import build_sam_memory, save_sam_memory

    torch.manual_seed(seed)
    processor = build_tiny_processor(corpus=tokenizer_corpus)
    lens_config = tiny_lens_config(num_queries, sam_image_size, prompt, mllm_longest_side)
    lens_config.context_pass = context_pass
    lens_config.mllm_absolute_positions = absolute_positions
    if confidence is not None:
        lens_config.confidence = confidence
    mllm_config = tiny_mllm_config(
        processor.tokenizer, hidden, mllm_type, layers, vision_depth, vision_hidden, rope_theta
    )
    model = LensModel(mllm_config, lens_config)
    if grounding_answers:
        with torch.no_grad():
            for weight in model.mllm.parameters():
                if weight.dim() >= 2:  # matrices only: norms and biases keep their scale
                    weight.mul_(GROUNDING_WEIGHT_SCALE)
        model.mllm.generation_config.sequence_bias = grounding_answer_bias(processor.tokenizer)
    save_model(model, out_dir, processor=processor)
    # SAM2's video-memory modules (random, seeded apart from the model) so that `lens track` runs on tiny models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        save_sam_memory(build_sam_memory(lens_config.sam), out_dir)
    return Path(out_dir)
