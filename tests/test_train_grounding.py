"""Grounding attention (training/grounding.py): which image tokens an object covers, which answer tokens are about
the anchor, the loss against a hand computation, and the whole path on a tiny LENS with reasoning scenes."""

import numpy as np
import pytest
import torch

from training.grounding import (
    ANCHOR,
    NO_OBJECT,
    TARGET,
    answer_objects,
    box_mask,
    captured_attention,
    grounding_attention_loss,
    object_tokens,
    sequence_targets,
    token_cover,
    with_context_queries,
)


def test_token_cover_follows_the_processors_row_major_order_on_a_non_square_image():
    """An 84 × 140 MLLM image is 3 × 5 merged tokens of 28 px. A mask on the original 42 × 70 image (half size)
    covering exactly token (row 1, column 3) and half of token (row 2, column 0) gives those shares, in
    row-major order (an H/W swap or column-major order moves them)."""
    mask = np.zeros((42, 70), bool)
    mask[14:28, 42:56] = True  # token (1, 3) in the half-size image: rows 14-28, columns 42-56
    mask[28:35, 0:14] = True  # the top half of token (2, 0)
    cover = token_cover(mask, (84, 140))
    expected = np.zeros(15)
    expected[1 * 5 + 3] = 1.0
    expected[2 * 5 + 0] = 0.5
    np.testing.assert_allclose(cover, expected, atol=1e-6)
    tokens = object_tokens(cover)
    assert tokens.nonzero()[0].tolist() == [8, 10]
    with pytest.raises(ValueError, match="28-pixel"):
        token_cover(mask, (84, 130))


def test_a_small_object_still_has_its_most_covered_token():
    cover = np.array([0.0, 0.05, 0.15, 0.1])
    assert object_tokens(cover).tolist() == [False, False, True, False]


def test_box_mask_holds_the_pixels_whose_centres_are_inside():
    m = box_mask((2, 1, 5, 3), (4, 8))  # x 2..5, y 1..3 on a 4-row, 8-column image
    assert m.shape == (4, 8)
    assert m.nonzero()[0].min() == 1 and m.nonzero()[0].max() == 2  # rows 1, 2 (centres 1.5, 2.5)
    assert m.nonzero()[1].min() == 2 and m.nonzero()[1].max() == 4  # columns 2, 3, 4


def test_answer_tokens_up_to_the_first_clause_end_are_about_the_anchor():
    answer = "<think>the red circle is at the top right; left of it is the blue square</think>"
    starts = [0, 7, 11, 15, 22, 25, 28, 32, 36, 41, 43, 48, 51, 54, 57, 61, 66, 73]
    labels = answer_objects(starts, answer.find(";"))
    first_after = next(i for i, s in enumerate(starts) if s > answer.find(";"))
    assert labels[:first_after].tolist() == [ANCHOR] * first_after
    assert labels[first_after:].tolist() == [TARGET] * (len(starts) - first_after)
    assert answer_objects(starts, None).tolist() == [TARGET] * len(starts)


def test_sequence_targets_put_each_label_on_the_state_that_predicts_the_token():
    """Sequence [text, img, img, img, text, a0, a1, a2]: answer token j's label sits at position j − 1."""
    image = 9
    ids = torch.tensor([1, image, image, image, 2, 3, 4, 5])
    labels = np.array([ANCHOR, TARGET, TARGET], np.int8)
    objects = {ANCHOR: np.array([True, False, False]), TARGET: np.array([False, False, True])}
    keys, queries = sequence_targets(ids, image, labels, objects)
    assert keys[ANCHOR].nonzero().flatten().tolist() == [1] and keys[TARGET].nonzero().flatten().tolist() == [3]
    assert queries.tolist() == [NO_OBJECT] * 4 + [ANCHOR, TARGET, TARGET, NO_OBJECT]
    # no anchor known: its positions are not supervised
    _, queries = sequence_targets(ids, image, labels, {TARGET: objects[TARGET]})
    assert queries.tolist() == [NO_OBJECT] * 5 + [TARGET, TARGET, NO_OBJECT]
    with pytest.raises(ValueError, match="2 object-token labels for 3 image tokens"):
        sequence_targets(ids, image, labels, {TARGET: np.array([True, False])})


def test_loss_is_minus_log_of_the_attention_mass_on_the_object_averaged_over_heads_and_positions():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    keys = torch.zeros(2, 2, 5, dtype=torch.bool)
    keys[0, TARGET, [1, 2]] = True
    keys[1, ANCHOR, 0] = True
    keys[1, TARGET, 4] = True
    queries = torch.full((2, 5), NO_OBJECT)
    queries[0, 3] = TARGET
    queries[1, 2] = ANCHOR
    queries[1, 3] = TARGET
    expected = []
    for h in range(2):
        expected += [
            -torch.log(weights[0, h, 3, 1] + weights[0, h, 3, 2]),
            -torch.log(weights[1, h, 2, 0]),
            -torch.log(weights[1, h, 3, 4]),
        ]
    loss = grounding_attention_loss(weights, queries, keys, heads=2)
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-6, atol=1e-7)
    # attention already on the objects: no loss
    perfect = torch.zeros_like(weights)
    perfect[0, :, 3, 1] = 1.0
    perfect[1, :, 2, 0] = 1.0
    perfect[1, :, 3, 4] = 1.0
    assert float(grounding_attention_loss(perfect, queries, keys, heads=2)) < 1e-6
    assert float(grounding_attention_loss(weights, torch.full((2, 5), NO_OBJECT), keys, 2)) == 0.0


@pytest.fixture(scope="module")
def reasoning_setup(tmp_path_factory):
    from lens_model.data.synthetic import make_synthetic
    from lens_model.model.checkpoint import load_model
    from lens_model.model.config import PromptConfig
    from lens_model.model.tiny import make_tiny
    from training.config import DatasetSpec
    from training.data import load_mixture

    root = tmp_path_factory.mktemp("grounding")
    scenes = make_synthetic(
        root / "r", 10, seed=4, task="reasoning", min_objects=3, relation_rate=1.0, image_size=(96, 160)
    )
    model, processor = load_model(make_tiny(root / "tiny", prompt=PromptConfig.for_format("think_answer")))
    return model, processor, load_mixture([DatasetSpec("synthetic", str(scenes))])[0]


def test_examples_point_the_rationale_at_the_anchor_and_the_rest_at_the_target(reasoning_setup):
    """A relational example on a 160 × 96 scene: the keys are the image tokens under the anchor's box and the
    target's mask, the rationale's tokens up to "; " look at the anchor, the rest of the answer at the target."""
    from training.data import AlignExamples, Collator
    from training.grounding import token_cover

    model, processor, records = reasoning_setup
    record = next(r for r in records if r.annotations["kind"] == "relational")
    assert record.annotations["anchor_box"] is not None
    index = records.index(record)
    example = AlignExamples([records], [(0, index)], processor, model.lens_config, 4096, [True])[0]
    ids, keys, queries = example["input_ids"], example["grounding_keys"], example["grounding_queries"]
    image_positions = (ids == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).nonzero().flatten()
    thw = example["image_grid_thw"][0].tolist()
    mllm_hw = (thw[1] * 14, thw[2] * 14)
    assert mllm_hw[1] > mllm_hw[0]  # the non-square scene stays wide
    target_cover = token_cover(record.mask(), mllm_hw)
    assert keys[TARGET, image_positions].tolist() == (target_cover >= 0.2).tolist()
    x0, y0, x1, y1 = record.annotations["anchor_box"]
    anchor_cover = token_cover(box_mask((x0, y0, x1, y1), record.image_size), mllm_hw)
    assert keys[ANCHOR, image_positions].tolist() == (anchor_cover >= 0.2).tolist()
    assert not keys[:, : image_positions[0]].any()  # only image tokens are keys
    tok = processor.tokenizer
    answer_start = len(ids) - example["answer_length"]
    anchor_part = tok.decode(ids[(queries == ANCHOR).nonzero().flatten() + 1])
    target_part = tok.decode(ids[(queries == TARGET).nonzero().flatten() + 1])
    assert anchor_part.endswith(";") and record.annotations["rationale"].split(";")[0] in anchor_part
    assert record.annotations["target_name"] in target_part and target_part.endswith("<|im_end|>")
    assert (queries[: answer_start - 1] == NO_OBJECT).all()
    batch = Collator(tok.pad_token_id)(
        [example, AlignExamples([records], [(0, 0)], processor, model.lens_config, 4096)[0]]
    )
    for row in range(2):  # left padding keeps each row's labels on its own tokens
        n = int(batch["attention_mask"][row].sum())
        assert (batch["grounding_queries"][row, :-n] == NO_OBJECT).all()
    torch.testing.assert_close(batch["grounding_queries"][0, -len(ids) :], queries)


def test_the_loss_trains_the_language_models_attention_through_the_answer_pass(reasoning_setup):
    """On a tiny LENS with eager attention: the captured weights are the layer's (B, H, L, L) probabilities, the
    loss has gradients on the language model, and a few steps of it alone raise the mass on the objects."""
    from training.align import answer_lm_loss
    from training.data import AlignExamples, Collator

    model, processor, records = reasoning_setup
    model.mllm.set_attn_implementation("eager")
    examples = AlignExamples([records], [(0, i) for i in range(4)], processor, model.lens_config, 4096, [True] * 1)
    batch = Collator(processor.tokenizer.pad_token_id)([examples[i] for i in range(4)])
    params = [p for p in model.mllm.model.language_model.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(8):
        with captured_attention(model.mllm, -1) as attention:
            answer_lm_loss(model, batch, torch.device("cpu"))
        weights = attention["weights"]
        assert weights.shape[0] == 4 and weights.shape[2] == weights.shape[3] == batch["input_ids"].shape[1]
        torch.testing.assert_close(
            weights.sum(-1)[batch["attention_mask"].bool()[:, None].expand(-1, weights.shape[1], -1)],
            torch.ones(()).expand(int(batch["attention_mask"].sum()) * weights.shape[1]),
        )
        loss = grounding_attention_loss(weights, batch["grounding_queries"], batch["grounding_keys"], heads=1)
        opt.zero_grad()
        loss.backward()
        assert model.mllm.model.language_model.layers[-1].self_attn.q_proj.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_mllm_language_trains_the_language_model_and_leaves_the_vision_encoder(reasoning_setup):
    """The part that keeps a pretrained vision encoder as it is: every language-model and lm_head weight trains,
    no vision-encoder weight does (the `mllm` part trains both)."""
    from training.runner import freeze_all_but

    model = reasoning_setup[0]
    counts = freeze_all_but(model, ["mllm_language"])
    visual = list(model.mllm.model.visual.parameters())
    language = list(model.mllm.model.language_model.parameters()) + list(model.mllm.lm_head.parameters())
    assert not any(p.requires_grad for p in visual)
    assert all(p.requires_grad for p in language)
    assert counts["mllm_language"] == sum(p.numel() for p in language)
    assert not any(p.requires_grad for p in model.sam.parameters())
    freeze_all_but(model, ["mllm"])
    assert all(p.requires_grad for p in visual)


def test_context_queries_look_at_the_target_and_a_pass_over_the_last_positions_scores_those():
    from training.grounding import with_context_queries

    torch.manual_seed(1)
    queries = torch.full((2, 4), NO_OBJECT)
    queries[0, 2] = ANCHOR
    keys = torch.zeros(2, 2, 4, dtype=torch.bool)
    keys[:, TARGET, 1] = True
    keys[:, ANCHOR, 0] = True
    labels, padded = with_context_queries(queries, keys, 3)
    assert labels.tolist() == [[-1, -1, ANCHOR, -1, TARGET, TARGET, TARGET], [-1] * 4 + [TARGET] * 3]
    assert padded.shape == (2, 2, 7) and not padded[:, :, 4:].any() and torch.equal(padded[:, :, :4], keys)
    full = torch.softmax(torch.randn(2, 2, 7, 7), dim=-1)
    only_queries = torch.full_like(labels, NO_OBJECT)
    only_queries[:, 4:] = TARGET
    # the last 3 rows alone (a pass over a cached prefix) give the loss of those rows in the full pass
    torch.testing.assert_close(
        grounding_attention_loss(full[:, :, 4:], only_queries, padded, 1),
        grounding_attention_loss(full, only_queries, padded, 1),
    )
    expected = -torch.log(full[:, 0, 4:, 1]).mean()
    torch.testing.assert_close(grounding_attention_loss(full, only_queries, padded, 1), expected)


def test_the_mask_pass_exposes_the_context_queries_attention(reasoning_setup):
    """LensModel.forward with the language model trained runs prompt + answer + N queries in one pass: the captured
    weights cover all L + N positions, so the queries' rows are there to supervise."""
    from training.data import AlignExamples, Collator

    model, processor, records = reasoning_setup
    model.requires_grad_(True)  # (another test froze parts of the shared model)
    model.mllm.set_attn_implementation("eager")
    examples = AlignExamples([records], [(0, 0), (0, 1)], processor, model.lens_config, 4096)
    batch = Collator(processor.tokenizer.pad_token_id)([examples[0], examples[1]])
    with captured_attention(model.mllm, -1) as attention:
        _, _, states = model(
            batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], batch["pixel_values"],
            batch["image_grid_thw"], batch["sam_images"], mllm_grad=True, return_query_states=True,
        )  # fmt: skip
    n, length = states.shape[1], batch["input_ids"].shape[1]
    assert attention["weights"].shape[-2:] == (length + n, length + n)
    labels, keys = with_context_queries(
        torch.full_like(batch["grounding_queries"], NO_OBJECT), batch["grounding_keys"], n
    )
    loss = grounding_attention_loss(attention["weights"], labels, keys, 1)
    loss.backward()
    assert model.context.learnable_query.grad.abs().sum() > 0  # the queries' own embeddings learn where to look
