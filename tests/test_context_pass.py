"""The two context-pass modes against independent full re-forwards (fp32, CPU).

Tolerance: 1e-4 absolute on mask logits and 1e-4 on query states; both sides run the same float32
kernels, so differences come only from summation order (KV cache vs one pass).
"""

import numpy as np
import pytest
import torch

from lens_model.inference.generation import completion_mask
from lens_model.model.checkpoint import load_model
from lens_model.model.modeling import ContextInputs
from lens_model.model.sam import preprocess_for_sam

ATOL = 1e-4


def _inputs(processor, prompts, hw=(120, 160), seed=0):
    rng = np.random.default_rng(seed)
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
    texts = [
        processor.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": f"Output the bounding box of the {p} in the image."},
                    ],
                }
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in prompts
    ]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt"), np.asarray(image)


def _generate(model, batch, image_outputs, max_new_tokens, eos, **sampling):
    return model.mllm.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        mm_encoder_outputs={"image": image_outputs},
        max_new_tokens=max_new_tokens,
        do_sample=bool(sampling),
        eos_token_id=eos,
        **sampling,
        pad_token_id=eos[-1],
        return_dict_in_generate=True,
        use_cache=True,
    )


def _ctx(batch, gen, eos):
    completion = gen.sequences[:, batch["input_ids"].shape[1] :]
    return ContextInputs(
        input_ids=gen.sequences,
        attention_mask=torch.cat([batch["attention_mask"], completion_mask(completion, eos)], 1),
        mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], 1),
        image_grid_thw=batch["image_grid_thw"],
    )


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    model, processor = load_model(tiny_dir)
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    return model, processor, eos


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 7, 2, 9, 9], [5, 5, 5, 5, 5], [2, 3, 3, 3, 3]])
    assert completion_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


@pytest.mark.parametrize("prompts", [["red cup"], ["red cup", "the small blue square on the left of the image"]])
def test_cached_pass_equals_full_reforward_with_mrope(loaded, prompts):
    model, processor, eos = loaded
    batch, rgb = _inputs(processor, prompts)
    with torch.no_grad():
        image_outputs = model.encode_mllm_images(batch["pixel_values"], batch["image_grid_thw"])
        gen = _generate(model, batch, image_outputs, 12, eos)
        ctx = _ctx(batch, gen, eos)
        assert gen.sequences.shape[1] - batch["input_ids"].shape[1] >= 2
        full = model.query_states_full(ctx, image_outputs, positions="mrope")
        cached = model.query_states_cached(ctx, gen.cache)
        sam = model.encode_sam_images(preprocess_for_sam(rgb, model.lens_config.sam.image_size)[None])
        shared = sam.select(torch.zeros(len(prompts), dtype=torch.long))
        logits_full, _ = model.masks_from_query_states(full, shared)
        logits_cached, _ = model.masks_from_query_states(cached, shared)
    assert cached.shape == (len(prompts), model.context.num_queries, model.hidden_size)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits_cached, logits_full, atol=ATOL, rtol=0)
    # and the two position schemes really differ (otherwise the test would prove nothing)
    one_d = model.query_states_full(ctx, image_outputs, positions="1d")
    assert (one_d - full).abs().max() > 1e-3


def _released_style_states(model, ctx, pixel_values, image_grid_thw):
    """The released context pass, re-implemented independently: re-run the vision tower, embed, append the
    queries and run the whole sequence with transformers-4.51's fallback positions (attention-mask cumsum)."""
    mllm = model.mllm
    embeds = mllm.get_input_embeddings()(ctx.input_ids)
    vision = mllm.model.visual(pixel_values, grid_thw=image_grid_thw)
    image_embeds = vision.pooler_output
    mask = (ctx.input_ids == mllm.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, image_embeds)
    n = model.context.num_queries
    embeds = torch.cat([embeds, model.context.learnable_query.expand(embeds.shape[0], -1, -1)], 1)
    attn = torch.cat([ctx.attention_mask, torch.ones(embeds.shape[0], n, dtype=torch.long)], 1)
    pos = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 1)
    out = mllm.model.language_model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos[None].expand(3, -1, -1))
    return out.last_hidden_state[:, -n:]


def test_official_pass_equals_released_reforward(tiny_official_dir):
    model, processor = load_model(tiny_official_dir)
    assert model.lens_config.context_pass == "official"
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    batch, _ = _inputs(processor, ["green bottle", "a person"], seed=3)
    calls = []
    hook = model.mllm.model.visual.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        image_outputs = model.encode_mllm_images(batch["pixel_values"], batch["image_grid_thw"])
        gen = _generate(model, batch, image_outputs, 10, eos)
        ctx = _ctx(batch, gen, eos)
        ours = model.query_states_full(ctx, image_outputs, positions="1d")
    hook.remove()
    assert len(calls) == 1, "the vision encoder must run exactly once per image batch"
    with torch.no_grad():
        reference = _released_style_states(model, ctx, batch["pixel_values"], batch["image_grid_thw"])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_cached_pass_with_rows_ending_at_different_steps(loaded):
    """Row 0 stops early (its 3rd token is declared an end token); its post-EOS padding stays in the KV cache
    but must not change its query states relative to a full re-forward of the unpadded sequence."""
    model, processor, eos = loaded
    batch, _ = _inputs(processor, ["red cup", "the small blue square on the left"], seed=5)
    with torch.no_grad():
        image_outputs = model.encode_mllm_images(batch["pixel_values"], batch["image_grid_thw"])
        # sampled at a high temperature so the rows differ (the untrained tiny model's greedy output doesn't)
        torch.manual_seed(0)
        probe = _generate(model, batch, image_outputs, 8, eos, temperature=5.0, top_k=0)
        prompt_len = batch["input_ids"].shape[1]
        row0 = probe.sequences[0, prompt_len:].tolist()
        row1 = probe.sequences[1, prompt_len:].tolist()
        candidates = [(i, t) for i, t in enumerate(row0[1:6], start=1) if t not in row1 and t not in row0[:i]]
        assert candidates, f"tiny model output too uniform to end rows at different steps: {row0} / {row1}"
        stop_at, stop = candidates[0]
        eos_test = [stop, eos[-1]]
        torch.manual_seed(0)
        gen = _generate(model, batch, image_outputs, 8, eos_test, temperature=5.0, top_k=0)
        ctx = _ctx(batch, gen, eos_test)
        assert ctx.attention_mask[0, prompt_len:].tolist()[: stop_at + 2] == [1] * (stop_at + 1) + [
            0
        ]  # row 0 ended early
        assert ctx.attention_mask[1, prompt_len:].sum() > stop_at + 1  # row 1 went on
        cached = model.query_states_cached(ctx, gen.cache)
        full = model.query_states_full(ctx, image_outputs, positions="mrope")
        # reference for row 0 alone without any padding after its end token
        keep = ctx.attention_mask[0].bool()
        alone = ContextInputs(
            ctx.input_ids[:1, keep],
            ctx.attention_mask[:1, keep],
            ctx.mm_token_type_ids[:1, keep],
            ctx.image_grid_thw[:1],
        )
        single_outputs = model.encode_mllm_images(
            batch["pixel_values"][: int(batch["image_grid_thw"][0].prod())], batch["image_grid_thw"][:1]
        )
        row0_states = model.query_states_full(alone, single_outputs, positions="mrope")
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    torch.testing.assert_close(cached[:1], row0_states, atol=ATOL, rtol=0)


def _rows(batch, rgb, model):
    from lens_model.inference.generation import PromptRows

    r = batch["input_ids"].shape[0]
    return PromptRows(
        batch["input_ids"],
        batch["attention_mask"],
        batch["mm_token_type_ids"],
        batch["pixel_values"],
        batch["image_grid_thw"],
        torch.arange(r),
        preprocess_for_sam(rgb, model.lens_config.sam.image_size)[None].expand(r, -1, -1, -1),
        [rgb.shape[:2]] * r,
    )


def _states_of(model, run):
    """The query states the context head receives while `run()` segments (observed with a forward hook)."""
    seen = []
    hook = model.context.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    try:
        out = run()
    finally:
        hook.remove()
    assert len(seen) == 1
    return seen[0], out


def _released_eval_ctx(sequences, batch, pad_id):
    """The released evaluation/demo: attention 1 everywhere except on the padding id (<|endoftext|>)."""
    completion = sequences[:, batch["input_ids"].shape[1] :]
    return ContextInputs(
        sequences,
        (sequences != pad_id).long(),
        torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], 1),
        batch["image_grid_thw"],
    )


def test_official_pass_ignores_endoftext_like_the_released_evaluation(tiny_official_dir):
    """Answers that end on <|endoftext|> (forced as the last generated token) and answers given as ids (one
    ending on <|im_end|>, one on <|endoftext|>): the official pass equals the released evaluation's, which sets
    the attention mask to 0 on every <|endoftext|> before appending the queries."""
    from lens_model.inference.generation import Completions, generate_and_segment
    from lens_model.inference.prompting import special_token_ids

    model, processor = load_model(tiny_official_dir)
    tok = processor.tokenizer
    pad, eos = special_token_ids(tok)
    endoftext, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert pad == endoftext
    batch, rgb = _inputs(processor, ["green bottle", "a person on the left"], seed=7)
    rows = _rows(batch, rgb, model)
    with torch.no_grad():
        states, out = _states_of(
            model,
            lambda: generate_and_segment(
                model,
                tok,
                rows,
                pad,
                eos,
                generation_kwargs=dict(max_new_tokens=6, do_sample=False, forced_eos_token_id=endoftext),
            ),
        )
        completion = out.sequences[:, batch["input_ids"].shape[1] :]
        assert (completion[:, -1] == endoftext).all() and out.ended.all()
        assert out.completion_mask.sum(1).tolist() == [6, 6]  # the end token is part of the answer (GRPO's loss)
        released = _released_style_states(
            model, _released_eval_ctx(out.sequences, batch, pad), batch["pixel_values"], batch["image_grid_thw"]
        )
        torch.testing.assert_close(states, released, atol=ATOL, rtol=0)
        # attending the end token (lens before this rule) moves every query by one position: the check can fail
        attended = ContextInputs(
            out.sequences, (out.sequences != pad).long(), out.mm_token_type_ids, rows.image_grid_thw
        )
        attended.attention_mask[:, -1] = 1
        shifted = _released_style_states(model, attended, batch["pixel_values"], batch["image_grid_thw"])
        assert (shifted - released).abs().max() > 1e-3

        body = completion[0, :3].tolist()
        ids = torch.tensor([body + [endoftext, pad, pad], body + [7, 8, im_end]])  # padded with <|endoftext|>
        given, _ = _states_of(
            model,
            lambda: generate_and_segment(
                model, tok, rows, pad, eos, completions=Completions(ids, torch.tensor([4, 6]))
            ),
        )
        sequences = torch.cat([batch["input_ids"], ids], 1)
        released = _released_style_states(
            model, _released_eval_ctx(sequences, batch, pad), batch["pixel_values"], batch["image_grid_thw"]
        )
    torch.testing.assert_close(given, released, atol=ATOL, rtol=0)


def test_cached_pass_attends_what_the_official_pass_attends(loaded):
    """`cached` reuses the KV cache and reads the same tokens as `official` — never <|endoftext|> — at the M-RoPE
    positions that continue generation: it equals a full M-RoPE pass under the released evaluation's mask."""
    from lens_model.inference.generation import generate_and_segment
    from lens_model.inference.prompting import special_token_ids

    model, processor, _ = loaded
    tok = processor.tokenizer
    pad, eos = special_token_ids(tok)
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    batch, rgb = _inputs(processor, ["red cup", "the small blue square"], seed=8)
    rows = _rows(batch, rgb, model)
    with torch.no_grad():
        states, out = _states_of(
            model,
            lambda: generate_and_segment(
                model,
                tok,
                rows,
                pad,
                eos,
                generation_kwargs=dict(max_new_tokens=5, do_sample=False, forced_eos_token_id=endoftext),
            ),
        )
        assert (out.sequences[:, -1] == endoftext).all()
        image_outputs = model.encode_mllm_images(batch["pixel_values"], batch["image_grid_thw"])
        ctx = _released_eval_ctx(out.sequences, batch, pad)
        full = model.query_states_full(ctx, image_outputs, positions="mrope")
        ctx.attention_mask[:, -1] = 1
        attending_end = model.query_states_full(ctx, image_outputs, positions="mrope")
    torch.testing.assert_close(states, full, atol=ATOL, rtol=0)
    assert (attending_end - full).abs().max() > 1e-3
