"""Stage-1 building blocks: sample order, teacher-forced examples, the training forward, building from base."""

import numpy as np
import pytest
import torch

from lens_model.inference.answer import format_answer, parse_answer
from training.data import AlignExamples, Collator, Schedule, epoch_order, load_mixture


def test_epoch_order_follows_the_ratios_and_covers_each_dataset():
    order = epoch_order([50, 200], [1.0, 3.0], seed=42, epoch=0)
    assert order.shape == (250, 2)
    share = (order[:, 0] == 1).mean()
    assert abs(share - 0.75) < 0.08  # binomial(250, 0.75): sd 0.027
    for k, size in enumerate([50, 200]):
        drawn = order[order[:, 0] == k, 1]
        assert drawn.min() >= 0 and drawn.max() < size
        # a permutation per pass: no record repeats before all of them were drawn
        first_pass = drawn[: min(len(drawn), size)]
        assert len(set(first_pass.tolist())) == len(first_pass)
    assert np.array_equal(order, epoch_order([50, 200], [1.0, 3.0], seed=42, epoch=0))
    assert not np.array_equal(order, epoch_order([50, 200], [1.0, 3.0], seed=42, epoch=1))


def test_ranks_and_micro_batches_partition_the_single_process_order():
    one = Schedule((30, 10), (1.0, 1.0), 7, global_batch=8, per_device=4, world=1, grad_accum=2)
    four = Schedule((30, 10), (1.0, 1.0), 7, global_batch=8, per_device=1, world=4, grad_accum=2)
    steps = 12  # 40 samples / 8 per step = 5 steps per epoch: crosses two epoch boundaries
    single = one.rank_positions(0, 0, steps)
    assert len(single) == steps * 8
    per_rank = [four.rank_positions(r, 0, steps) for r in range(4)]
    for step in range(steps):
        for micro in range(2):
            # global slice of (step, micro) = the ranks' samples side by side
            expected = single[step * 8 + micro * 4 : step * 8 + micro * 4 + 4]
            got = [per_rank[r][step * 2 + micro] for r in range(4)]
            assert got == expected
    # resuming at step 5 yields exactly the tail of the full order
    assert one.rank_positions(0, 5, steps) == single[5 * 8 :]


def test_answer_format_parses_back_to_the_box():
    text = format_answer("the red cup.", (10.4, 20.6, 99.5, 120.0))
    assert text == "<|object_ref_start|>the red cup.<|object_ref_end|><|box_start|>(10,21),(100,120)<|box_end|>"
    parsed = parse_answer(text + "<|im_end|>", "grounding")
    assert parsed.box == (10, 21, 100, 120) and parsed.format_ok and parsed.object_ref == "the red cup."
    think = format_answer("cup", (1, 2, 3, 4), "think_answer")
    assert parse_answer(think, "think_answer").box == (1, 2, 3, 4)


def test_think_answers_carry_the_name_and_the_rationale_and_parse_back():
    text = format_answer(
        "the shape left of the red circle", (10.4, 20.6, 50, 60), "think_answer", "seen", "the blue cup"
    )
    assert text == '<think>seen</think><answer>the blue cup {"bbox_2d": [10, 21, 50, 60]}</answer>'
    parsed = parse_answer(text + "<|im_end|>", "think_answer")
    assert parsed.box == (10, 21, 50, 60) and parsed.template_ok and parsed.format_ok
    assert parsed.object_ref == "the blue cup" and parsed.reasoning == "seen"
    bare = parse_answer('<think></think><answer>{"bbox_2d": [1, 2, 3, 4]}</answer>', "think_answer")
    assert bare.object_ref is None and bare.box == (1, 2, 3, 4)


def test_reasoning_examples_teach_the_rationale_only_where_asked_and_the_queries_the_target_name(tmp_path):
    """Think/answer examples of reasoning scenes: the answer names the target by its own attributes; the think
    block holds the scene's rationale for a dataset with `rationale` on and is empty otherwise; the query states'
    word targets are the target's name, not the relational expression (which is about the anchor)."""
    from lens_model.data.synthetic import make_synthetic
    from lens_model.model.checkpoint import load_model
    from lens_model.model.config import PromptConfig
    from lens_model.model.tiny import make_tiny
    from training.config import DatasetSpec

    scenes = make_synthetic(tmp_path / "r", 10, seed=2, task="reasoning", min_objects=3, relation_rate=0.5)
    model, processor = load_model(make_tiny(tmp_path / "tiny", prompt=PromptConfig.for_format("think_answer")))
    datasets = load_mixture([DatasetSpec("synthetic", str(scenes))] * 2)
    record = next(r for r in datasets[0] if r.annotations["kind"] == "relational")
    index = datasets[0].index(record)
    examples = AlignExamples(datasets, [(0, index), (1, index)], processor, model.lens_config, 4096, [False, True])
    tok = processor.tokenizer
    plain, taught = (tok.decode(examples[i]["input_ids"]).split("<|im_start|>assistant\n")[1] for i in (0, 1))
    name = record.annotations["target_name"]
    assert plain.startswith(f"<think></think><answer>the {name} {{") and plain.endswith("</answer><|im_end|>")
    assert taught.startswith(f"<think>{record.annotations['rationale']}</think><answer>the {name} {{")
    assert parse_answer(taught, "think_answer").box == parse_answer(plain, "think_answer").box
    assert tok.decode(examples[0]["expression_ids"]) == name != record.expression
    # rationale_kinds: only attribute expressions carry theirs
    attribute = next(r for r in datasets[0] if r.annotations["kind"] == "attribute")
    positions = [(0, index), (0, datasets[0].index(attribute))]
    by_kind = AlignExamples(datasets, positions, processor, model.lens_config, 4096, [True], [["attribute"]])
    relational_answer, attribute_answer = (
        tok.decode(by_kind[i]["input_ids"]).split("<|im_start|>assistant\n")[1] for i in (0, 1)
    )
    assert relational_answer == plain
    assert attribute_answer.startswith(f"<think>{attribute.annotations['rationale']}</think>")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from lens_model.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("d") / "s", n_images=2, seed=1, image_size=64)


def test_examples_hold_the_gt_answer_in_mllm_pixels_and_collate_left_padded(tiny_dir, scenes):
    from lens_model.model.checkpoint import load_model
    from training.config import DatasetSpec

    model, processor = load_model(tiny_dir)
    datasets = load_mixture([DatasetSpec("synthetic", str(scenes))])
    records = datasets[0]
    examples = AlignExamples(datasets, [(0, 0), (0, 1)], processor, model.lens_config, max_length=4096)
    first = examples[0]
    text = processor.tokenizer.decode(first["input_ids"])
    parsed = parse_answer(text.split("<|im_start|>assistant\n")[1], "grounding")
    # 64x64 image -> smart resize to 56x56: the GT box is scaled by 56/64 and rounded
    x1, y1, x2, y2 = records[0].box
    assert parsed.box == tuple(float(round(v * 56 / 64)) for v in (x1, y1, x2, y2))
    assert text.endswith("<|im_end|>") and records[0].expression in text
    assert first["gt_mask"].shape == (64, 64) and torch.equal(first["gt_mask"], torch.from_numpy(records[0].mask()))
    batch = Collator(processor.tokenizer.pad_token_id)([examples[0], examples[1]])
    lengths = [len(examples[i]["input_ids"]) for i in range(2)]
    assert batch["input_ids"].shape == (2, max(lengths))
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == n and batch["attention_mask"][row, -1] == 1  # left padding
    too_long = AlignExamples(datasets, [(0, 0)], processor, model.lens_config, max_length=10)[0]
    assert "over the limit of 10" in too_long["error"]
    assert Collator(0)([too_long])["size"] == 0


@pytest.mark.parametrize("positions", ["1d", "mrope"])
def test_frozen_prefix_pass_gives_the_full_pass_gradients(tiny_dir, scenes, positions):
    """The no-grad prefix + grad queries shortcut must not change what stage 1 learns."""
    from lens_model.model.checkpoint import load_model
    from training.config import DatasetSpec
    from training.losses import mask_loss

    model, processor = load_model(tiny_dir)
    datasets = load_mixture([DatasetSpec("synthetic", str(scenes))])
    examples = AlignExamples(datasets, [(0, 0), (0, 3)], processor, model.lens_config, max_length=4096)
    batch = Collator(processor.tokenizer.pad_token_id)([examples[0], examples[1]])
    model.train()
    grads, logits = [], []
    for mllm_grad in (True, False):
        model.zero_grad()
        low, _ = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["mm_token_type_ids"],
            batch["pixel_values"],
            batch["image_grid_thw"],
            batch["sam_images"],
            positions=positions,
            mllm_grad=mllm_grad,
        )
        mask_loss(low, batch["gt_masks"])["loss"].backward()
        logits.append(low.detach())
        grads.append({n: p.grad.clone() for n, p in model.context.named_parameters()})
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7, msg=name)
    assert grads[0]["learnable_query"].abs().sum() > 0


def test_stage1_from_base_mllm_and_official_sam2_checkpoint(tmp_path, scenes):
    """The real start of stage 1: a plain Qwen2.5-VL directory + SAM2 .pt, through the training entry point."""
    from safetensors.torch import load_file
    from tiny_base import make_tiny_base

    from training.align import main

    mllm_dir, sam_pt, lens_config = make_tiny_base(tmp_path / "base")
    overrides = ",".join(f"'{o}'" for o in lens_config.sam.overrides)
    out = tmp_path / "run"
    code = main(
        [
            "--no-progress",
            f"base_mllm={mllm_dir}",
            f"sam_checkpoint={sam_pt}",
            f"sam_config={lens_config.sam.config_name}",
            f"sam_overrides=[{overrides}]",
            f"sam_image_size={lens_config.sam.image_size}",
            "num_queries=4",
            "max_pixels=50176",
            f"datasets=[{{name: synthetic, root: {scenes}}}]",
            "global_batch_size=2",
            "max_steps=1",
            "warmup_steps=0",
            "num_workers=0",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    saved = load_file(out / "final" / "model.safetensors")
    sam_official = torch.load(sam_pt, weights_only=True)["model"]
    assert saved["learnable_query"].shape == (1, 4, 128)  # the released layout
    for key, value in sam_official.items():
        if not key.startswith(("maskmem_tpos_enc", "memory_attention", "memory_encoder")):
            assert torch.equal(saved["sam." + key], value), key
    assert not any(k.startswith("sam.memory_") for k in saved)
