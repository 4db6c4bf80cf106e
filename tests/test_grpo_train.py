"""Stage 2 (GRPO) on CPU with tiny models and synthetic scenes: log-probs under the sampling positions,
where gradients go, degenerate rollouts, a 2-process ZeRO-3 run, resume equivalence."""

import json
import os
import shutil
import subprocess
import sys

# installed by the setup: a broken install must fail here, not skip these tests
import deepspeed  # noqa: F401
import numpy as np
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from lens_model.data import load_dataset  # noqa: E402
from lens_model.inference.prompting import special_token_ids  # noqa: E402
from lens_model.model.checkpoint import load_model  # noqa: E402
from lens_model.model.modeling import ContextInputs, embed_with_images, image_features_per_row  # noqa: E402
from training.config import GRPOConfig  # noqa: E402
from training.grpo import ScoredRollout, micro_loss, rollout_ious, rollout_samples  # noqa: E402
from training.grpo import main as grpo_main
from training.grpo_loss import group_advantages  # noqa: E402
from training.policy import PolicyModel, sequence_logprobs  # noqa: E402
from training.rewards import score  # noqa: E402
from training.rollout import generate_rollouts, prepare_prompts  # noqa: E402

ENV = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
G = 4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from lens_model.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("grpo-data") / "scenes", n_images=3, seed=2, image_size=64)


@pytest.fixture(scope="module", params=["official", "cached"])
def policy(request, tmp_path_factory):
    from lens_model.model.tiny import make_tiny

    path = make_tiny(tmp_path_factory.mktemp(f"grpo-{request.param}") / "tiny", seed=4, context_pass=request.param)
    model, processor = load_model(path)
    return model, processor, path


def _rollout(model, processor, scenes, max_new_tokens=10, seed=0):
    records = load_dataset("synthetic", scenes, "train")[:2]
    prompts, failed = prepare_prompts(records, processor, model.lens_config, max_prompt_length=4096)
    assert not failed
    pad, eos = special_token_ids(processor.tokenizer)
    torch.manual_seed(seed)
    ro = generate_rollouts(
        model,
        processor,
        prompts,
        G,
        max_new_tokens=max_new_tokens,
        temperature=0.9,
        top_p=0.9,
        top_k=50,
        eos_token_ids=eos,
        pad_token_id=pad,
        context_pass=model.lens_config.context_pass,
    )
    return prompts, ro


def test_rollout_shapes_and_one_encoding_per_image(policy, scenes):
    model, processor, _ = policy
    prompts, ro = _rollout(model, processor, scenes)
    assert ro.sequences.shape[0] == 2 * G and ro.rows.tolist() == [0] * G + [1] * G
    assert ro.sam_features.image_embed.shape[0] == 2  # SAM2 image encoder ran once per image, not per answer
    assert len(ro.pred_masks) == 2 * G and ro.pred_masks[G].shape == prompts.gt_masks[1].shape
    assert ro.completion_mask.shape == ro.completion_ids.shape
    _, eos = special_token_ids(processor.tokenizer)
    for r, row in enumerate(ro.completion_ids.tolist()):
        ends = [t for t, tok in enumerate(row) if tok in eos]
        # answers that hit the length limit are flagged; the others count tokens up to and including the end
        assert bool(ro.truncated[r]) == (not ends)
        assert int(ro.completion_mask[r].sum()) == (ends[0] + 1 if ends else 10)


def test_logprobs_use_the_sampling_positions(policy, scenes):
    """Recomputed log-probs equal the sampling distribution's (generate's own logits, temperature applied);
    the released code's 1-D positions give different numbers."""
    model, processor, _ = policy
    records = load_dataset("synthetic", scenes, "train")[:2]
    prompts, _ = prepare_prompts(records, processor, model.lens_config, max_prompt_length=4096)
    pad, eos = special_token_ids(processor.tokenizer)
    grid = prompts.image_grid_thw
    rows = torch.arange(2).repeat_interleave(G)
    images = image_features_per_row(model.mllm, prompts.pixel_values, grid, rows)
    torch.manual_seed(0)
    with torch.no_grad():
        gen = model.mllm.generate(
            input_ids=prompts.input_ids[rows],
            attention_mask=prompts.attention_mask[rows],
            mm_token_type_ids=prompts.mm_token_type_ids[rows],
            image_grid_thw=grid[rows],
            mm_encoder_outputs={"image": images},
            max_new_tokens=8,
            do_sample=True,
            temperature=0.7,
            top_k=None,
            top_p=None,
            eos_token_id=eos,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_logits=True,
        )
        p = prompts.input_ids.shape[1]
        completion = gen.sequences[:, p:]
        sampled = torch.stack(gen.logits, 1).float().div(0.7).log_softmax(-1)
        expected = sampled.gather(-1, completion.unsqueeze(-1)).squeeze(-1)  # (K·G, T)
        ctx = ContextInputs(
            gen.sequences,
            torch.cat([prompts.attention_mask[rows], torch.ones_like(completion)], 1),
            torch.cat([prompts.mm_token_type_ids[rows], torch.zeros_like(completion)], 1),
            grid[rows],
        )
        logp, _ = sequence_logprobs(model.mllm, ctx, images, p, temperature=0.7)
        torch.testing.assert_close(logp, expected, rtol=1e-4, atol=1e-4)
        embeds = embed_with_images(model.mllm, gen.sequences, images, ctx.mm_token_type_ids)
        from lens_model.model.modeling import positions_1d

        hidden = model.mllm.model.language_model(
            inputs_embeds=embeds, attention_mask=ctx.attention_mask, position_ids=positions_1d(ctx.attention_mask)
        ).last_hidden_state
        released = model.mllm.lm_head(hidden[:, p - 1 : -1]).float().div(0.7).log_softmax(-1)
        released = released.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        assert (released - expected).abs().max() > 1e-3


def _scored(model, processor, scenes, ro_prompts=None):
    prompts, ro = ro_prompts or _rollout(model, processor, scenes)
    samples = rollout_samples(prompts, ro, model.lens_config.prompt.answer_format)
    total, components = score(samples, {"format": 1.0, "box_iou": 1.0, "segment_iou": 1.0})
    rewards = torch.as_tensor(total, dtype=torch.float32)
    mask_iou, box_iou = rollout_ious(samples)
    return ScoredRollout(prompts, ro, rewards, components, group_advantages(rewards, G), mask_iou, box_iou)


def test_gradients_reach_mllm_queries_connector_decoder_and_never_the_image_encoder(policy, scenes):
    model, processor, _ = policy
    item = _scored(model, processor, scenes)
    item.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)  # make the policy term non-zero for sure
    item.ref_logp = None
    model.requires_grad_(True)
    model.sam.image_encoder.requires_grad_(False)
    model.zero_grad()
    cfg = GRPOConfig(beta=0.0)
    losses = micro_loss(PolicyModel(model), item, cfg, model.lens_config.context_pass, vision_grad=True)
    losses["loss"].backward()

    def grad_sum(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert model.context.learnable_query.grad.abs().sum() > 0
    assert grad_sum(model.context.connector) > 0 and grad_sum(model.sam.sam_mask_decoder) > 0
    assert grad_sum(model.mllm.model.language_model) > 0 and grad_sum(model.mllm.lm_head) > 0
    assert grad_sum(model.mllm.model.visual) > 0
    assert all(p.grad is None for p in model.sam.image_encoder.parameters())


def test_failed_parses_and_identical_rewards_give_zero_advantages_and_a_finite_loss(policy, scenes):
    model, processor, _ = policy
    item = _scored(model, processor, scenes)
    assert (item.components["format"] == 0).all() and (item.components["box_iou"] == 0).all()  # untrained model
    flat = torch.zeros(2 * G)  # every answer failed: all rewards 0
    item.rewards, item.advantages = flat, group_advantages(flat, G)
    assert torch.equal(item.advantages, torch.zeros(2 * G))
    item.ref_logp = None
    losses = micro_loss(PolicyModel(model), item, GRPOConfig(beta=0.0), model.lens_config.context_pass, True)
    assert torch.isfinite(losses["loss"]) and losses["policy"].abs() < 1e-6  # only the mask loss remains
    assert losses["loss"].item() == pytest.approx(losses["seg"].item(), abs=1e-6)


def test_step_statistics_report_the_groups_spread_equal_groups_and_advantage_size(policy, scenes):
    """Logged per step: the mean within-group reward std, the fraction of groups whose rewards are all equal (no
    signal) and the mean |advantage|, over every answer, next to every reward component."""
    from training.grpo import step_statistics

    model, processor, _ = policy
    item = _scored(model, processor, scenes)
    item.rewards = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 2.0, 0.0, 2.0])  # group 1: all equal; group 2: 0/2
    item.advantages = group_advantages(item.rewards, G)
    stats = step_statistics([item], 1, torch.device("cpu"))
    spread = torch.tensor([0.0, 2.0, 0.0, 2.0]).std().item()  # 1.1547, unbiased
    assert stats["reward_group_std"] == pytest.approx((0 + spread) / 2, rel=1e-6)
    assert stats["equal_reward_groups"] == 0.5
    assert stats["advantage_abs"] == pytest.approx(0.5 / (spread + 1e-4), rel=1e-4)  # half the answers at 1/std
    assert stats["reward"] == pytest.approx(0.75)
    assert {"reward_format", "reward_box_iou", "reward_segment_iou", "mask_iou", "box_iou"} <= set(stats)
    item.rewards, item.advantages = item.rewards.flip(0), group_advantages(item.rewards.flip(0), G)
    assert step_statistics([item], 1, torch.device("cpu"))["equal_reward_groups"] == 0.5


def test_empty_ground_truth_mask(policy, scenes):
    model, processor, _ = policy
    prompts, ro = _rollout(model, processor, scenes)
    prompts.gt_masks = [m & False for m in prompts.gt_masks]
    prompts.gt_boxes_llm = [None, None]
    item = _scored(model, processor, scenes, (prompts, ro))
    for r, pred in enumerate(ro.pred_masks):  # IoU² with an empty target: 1 for an empty prediction, else 0
        assert item.components["segment_iou"][r] == (1.0 if not pred.any() else 0.0)
    losses = micro_loss(PolicyModel(model), item, GRPOConfig(beta=0.0), model.lens_config.context_pass, True)
    assert torch.isfinite(losses["loss"])


def test_grounded_segmentation_loss_trains_only_answers_whose_box_hits_the_gt(policy, scenes):
    """seg_loss_answers=grounded: the mask loss of exactly the answers with box IoU >= 0.5, each against its own
    prompt's GT mask; none grounded -> a zero loss that still backpropagates."""
    from training.grpo import logprob_setup, policy_forward
    from training.losses import mask_loss

    model, processor, _ = policy
    item = _scored(model, processor, scenes)
    item.ref_logp = None
    item.box_iou = np.array([0.6, 0.0, 0.2, 0.5, 0.0, 0.49, 0.0, 0.9])  # answers 0, 3 (prompt 0) and 7 (prompt 1)
    full, empty = np.ones_like(item.prompts.gt_masks[0]), np.zeros_like(item.prompts.gt_masks[1])
    item.prompts.gt_masks = [full, empty]  # the untrained decoder's logits are ~0: GTs far apart tell rows apart
    cfg = GRPOConfig(beta=0.0, seg_loss_answers="grounded")
    losses = micro_loss(PolicyModel(model), item, cfg, model.lens_config.context_pass, True)
    with torch.no_grad():
        _, low_res = policy_forward(PolicyModel(model), item, logprob_setup(cfg), True)
    gt = [torch.from_numpy(item.prompts.gt_masks[i]) for i in (0, 0, 1)]
    expected = mask_loss(low_res[[0, 3, 7]], gt)["loss"]
    assert losses["seg"].item() == pytest.approx(expected.item(), rel=1e-4)
    every = micro_loss(PolicyModel(model), item, GRPOConfig(beta=0.0), model.lens_config.context_pass, True)
    assert every["seg"].item() == pytest.approx(mask_loss(low_res, [gt[0]] * 4 + [gt[2]] * 4)["loss"].item(), rel=1e-4)
    assert abs(every["seg"].item() - losses["seg"].item()) > 0.05

    item.box_iou = np.zeros(2 * G)
    item.advantages = torch.zeros(2 * G)
    model.zero_grad()
    none = micro_loss(PolicyModel(model), item, cfg, model.lens_config.context_pass, True)
    none["loss"].backward()
    assert none["seg"].item() == 0.0 and none["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert all(p.grad is None or not p.grad.any() for p in model.sam.sam_mask_decoder.parameters())


# ---------------------------------------------------------------------------- the trainer
def _overrides(init, scenes, out, *extra):
    return [
        f"init_from={init}",
        f"datasets=[{{name: synthetic, root: {scenes}}}]",
        "global_batch_size=2",
        f"num_generations={G}",
        "max_completion_length=8",
        "max_steps=4",
        "lr=1e-3",
        "save_every=2",
        "keep_last=3",
        f"output_dir={out}",
        *extra,
    ]


def _curve(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def official_init(tmp_path_factory):
    from lens_model.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("grpo-init") / "tiny", seed=6, context_pass="official")


def test_zero3_two_processes(official_init, scenes, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29655",
        "-m",
        "training.grpo",
        *_overrides(official_init, scenes, out, "zero_stage=3"),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 ranks × 1 prompts × 1 accumulation = 2 prompts × G=4 answers per step" in proc.stderr
    curve = [r for r in _curve(out) if r["split"] == "train"]
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert curve[0]["kl"] == 0.0  # policy = reference before the first update
    assert curve[-1]["kl"] > 0.0
    for key in (
        "reward",
        "reward_format",
        "reward_box_iou",
        "reward_segment_iou",
        "mask_iou",
        "box_iou",
        "completion_length",
        "clip_fraction",
        "kl",
        "policy",
        "seg",
        "time_generate",
        "time_train",
        "reward_group_std",
        "equal_reward_groups",
        "advantage_abs",
    ):
        assert key in curve[0], key
    assert curve[0]["completion_length"] == 8.0 and curve[0]["truncated_fraction"] == 1.0
    before, after = load_file(official_init / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    encoder = [k for k in before if k.startswith("sam.image_encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["learnable_query"], after["learnable_query"])
    assert not torch.equal(
        before["model.language_model.layers.0.mlp.up_proj.weight"],
        after["model.language_model.layers.0.mlp.up_proj.weight"],
    )


def test_resumed_run_matches_the_uninterrupted_one(official_init, scenes, tmp_path):
    full = tmp_path / "full"
    assert grpo_main(["--no-progress", *_overrides(official_init, scenes, full)]) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000004")
    shutil.rmtree(resumed / "final")
    (resumed / "checkpoints" / "latest").write_text("step-0000002")
    assert grpo_main(["--no-progress", *_overrides(official_init, scenes, resumed), "--resume"]) == 0
    a, b = _curve(full), _curve(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("reward", "loss", "kl", "completion_length", "mask_iou"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    wa, wb = load_file(full / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)


def test_unknown_reward_is_refused_before_loading_anything(official_init, scenes, tmp_path, capsys):
    code = grpo_main(["--no-progress", *_overrides(official_init, scenes, tmp_path / "x", "reward_weights={iou: 1.0}")])
    assert code == 1
    err = capsys.readouterr().err
    assert "iou" in err and "format" in err  # names the unknown reward and lists the registered ones
    assert not (tmp_path / "x").exists()
