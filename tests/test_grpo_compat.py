"""Stage 2's two objectives on one fixed batch of completions, each against a computation written here from the
released trainer's formulas (`compat: released`) or from the sampling distribution (`compat: lens`).

Four completions of one prompt (G = 4): grounding answers ending on <|im_end|> and on <|endoftext|>, a box-only
answer, and one without a box; padded with <|endoftext|> as both samplers do. Everything runs in float32 on CPU;
both sides use the same kernels, so the tolerances are float32 rounding of different summation orders.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from lens_model.data import load_dataset
from lens_model.inference.prompting import special_token_ids
from lens_model.model.checkpoint import load_model
from training.config import GRPOConfig
from training.grpo import (
    load_reference,
    logprob_setup,
    micro_loss,
    policy_forward,
    reference_logp,
    score_rollout,
)
from training.grpo_loss import token_kl_k3
from training.policy import PolicyModel
from training.rollout import completion_end_for, prepare_prompts, rollout_from_completions

G = 4
BETA = 0.04
TEMPERATURE = 0.9
LOGIT_SCALE = 30.0
REWARDS = {"box_iou": 1.0, "segment_iou": 1.0}  # the released RefCOCO run: box IoU² + mask IoU², no format reward


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lens_model.data.synthetic import make_synthetic
    from lens_model.model.tiny import make_tiny

    scenes = make_synthetic(tmp_path_factory.mktemp("compat-data") / "scenes", n_images=2, seed=3, image_size=224)
    path = make_tiny(tmp_path_factory.mktemp("compat") / "tiny", seed=6, context_pass="official")
    model, processor = load_model(path)
    records = load_dataset("synthetic", scenes, "train")[:1]
    prompts, failed = prepare_prompts(records, processor, model.lens_config, max_prompt_length=4096)
    assert not failed
    tok = processor.tokenizer
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    x1, y1, x2, y2 = prompts.gt_boxes_llm[0]
    assert any(v != round(v) for v in (x1, y1, x2, y2)), "the GT box must be fractional for the rounding to matter"

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    a, b = (round(x1) + 1, round(y1)), (round(x2), round(y2) - 1)
    grounded = (
        f"<|object_ref_start|>the shape.<|object_ref_end|><|box_start|>({a[0]},{a[1]}),({b[0]},{b[1]})<|box_end|>"
    )
    looser = f"<|object_ref_start|>it.<|object_ref_end|><|box_start|>(0,0),({round(x2) + 3},{round(y2) + 2})<|box_end|>"
    completions = [
        ids(grounded) + [im_end],
        ids(looser) + [endoftext],
        ids(f"({round(x1)},{round(y1) + 2}),({round(x2) - 2},{round(y2)})") + [im_end],
        ids("no box") + [endoftext],
    ]
    reference = load_reference(GRPOConfig(init_from=str(path)), torch.float32, torch.device("cpu"), 0)
    with torch.no_grad():  # sharper token distributions (the random tiny model's are nearly flat), same in both
        model.mllm.lm_head.weight.mul_(LOGIT_SCALE)
        reference.lm_head.weight.mul_(LOGIT_SCALE)
    return model, processor, prompts, completions, reference, (im_end, endoftext)


def _lens_step(setup, compat):
    """What the GRPO stage computes for this batch: rollout (decoder in train mode), rewards, advantages,
    reference log-probs, then the training forward and loss."""
    model, processor, prompts, completions, reference, _ = setup
    cfg = GRPOConfig(compat=compat, reward_weights=REWARDS, num_generations=G, beta=BETA, temperature=TEMPERATURE)
    pad, eos = special_token_ids(processor.tokenizer)
    model.eval()
    model.sam.sam_mask_decoder.train()
    ro = rollout_from_completions(
        model, processor, prompts, [completions], eos_token_ids=eos, pad_token_id=pad,
        completion_end=completion_end_for(cfg.compat),
    )  # fmt: skip
    item = score_rollout(prompts, ro, cfg, "grounding")
    logps = logprob_setup(cfg)
    item.ref_logp = reference_logp(reference, ro, prompts, logps.temperature, logps.reference_positions)
    model.train()
    model.sam.image_encoder.eval()
    policy = PolicyModel(model)
    with torch.no_grad():
        logp, _ = policy_forward(policy, item, logps, vision_grad=False)
        losses = micro_loss(policy, item, cfg, vision_grad=False)
    return item, logp, losses


# ------------------------------------------------------------------------ hand-built computations
def _sequences(setup):
    """prompt ids (G, P) and completions right-padded with <|endoftext|> (G, T), as the released trainer pads."""
    _, processor, prompts, completions, _, (_, endoftext) = setup
    width = max(len(c) for c in completions)
    completion = torch.tensor([c + [endoftext] * (width - len(c)) for c in completions])
    prompt = prompts.input_ids.expand(G, -1)
    return prompt, completion


def _full_forward_logits(mllm, prompts, sequences, attention):
    """A plain Qwen-VL forward called with token ids (transformers builds the M-RoPE positions itself)."""
    types = torch.cat(
        [prompts.mm_token_type_ids.expand(G, -1), torch.zeros_like(sequences[:, prompts.input_ids.shape[1] :])], 1
    )
    out = mllm(
        input_ids=sequences,
        attention_mask=attention,
        mm_token_type_ids=types,
        pixel_values=prompts.pixel_values.repeat(G, 1),
        image_grid_thw=prompts.image_grid_thw.repeat(G, 1),
    )
    return out.logits.float()


def _gather(logits, targets):
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _released_box(text):
    """The released reward's box: the first [a,b,c,d], else (a,b,c,d), else (a,b),(c,d); else zeros."""
    num = r"(-?\d+(?:\.\d+)?)"
    for pattern in (
        rf"\[\s*{num},\s*{num},\s*{num},\s*{num}\s*\]",
        rf"\(\s*{num},\s*{num},\s*{num},\s*{num}\s*\)",
        rf"\(\s*{num},\s*{num}\),\s*\(\s*{num},\s*{num}\)",
    ):
        m = re.search(pattern, text)
        if m:
            return [float(v) for v in m.groups()]
    return [0.0, 0.0, 0.0, 0.0]


def _iou(p, g):
    inter = max(0.0, min(p[2], g[2]) - max(p[0], g[0])) * max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)


def _masks_and_seg(model, prompts, low_res):
    """Mask IoU² (I / (U + 1e-6), masks from logits > 0 at the GT size) and the released BCE + dice."""
    gt = torch.from_numpy(prompts.gt_masks[0]).float()[None, None]
    ious, bce, dice = [], 0.0, 0.0
    for row in low_res:
        x = F.interpolate(row[None].float(), size=gt.shape[-2:], mode="bilinear", align_corners=False)
        pred = (x[0, 0] > 0).float()
        inter = (pred * gt[0, 0]).sum()
        ious.append(float(inter / (pred.sum() + gt.sum() - inter + 1e-6)))
        bce += F.binary_cross_entropy_with_logits(x, gt, reduction="none").flatten(2).mean(-1).sum()
        p = x.sigmoid().flatten(2)
        dice += (1 - (2 * (p * gt.flatten(2)).sum(-1) + 1) / (p.sum(-1) + gt.flatten(2).sum(-1) + 1)).sum()
    return torch.tensor(ious) ** 2, (bce + dice) / G


def _released_step(setup):
    """The released stage-2 compute_loss on this batch, written from its formulas."""
    model, processor, prompts, _, reference, (im_end, _) = setup
    prompt, completion = _sequences(setup)
    p, t, n = prompt.shape[1], completion.shape[1], model.context.num_queries
    # completion mask: up to and including the first <|im_end|>, else the whole row
    is_end = completion == im_end
    end = torch.where(is_end.any(1), is_end.int().argmax(1), torch.full((G,), t))
    cmask = (torch.arange(t)[None] <= end[:, None]).int()
    attention = torch.cat([prompts.attention_mask.expand(G, -1), cmask], 1)
    sequences = torch.cat([prompt, completion], 1)
    mllm = model.mllm
    with torch.no_grad():
        # policy: embeddings + image features + queries, input_ids=None -> 1-D positions from the mask
        embeds = mllm.get_input_embeddings()(sequences)
        vision = mllm.model.visual(prompts.pixel_values, grid_thw=prompts.image_grid_thw).pooler_output
        slots = (sequences == mllm.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, vision.repeat(G, 1))
        embeds = torch.cat([embeds, model.context.learnable_query.expand(G, -1, -1)], 1)
        full_mask = torch.cat([attention, torch.ones(G, n, dtype=attention.dtype)], 1)
        positions = (full_mask.long().cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
        hidden = mllm.model.language_model(
            inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions[None].expand(3, -1, -1)
        ).last_hidden_state
        logits = mllm.lm_head(hidden[:, : -n - 1]).float()  # no temperature
        logp = _gather(logits, sequences[:, 1:])[:, p - 1 :]
        low_res, _ = model.masks_from_query_states(
            hidden[:, -n:], model.encode_sam_images(prompts.sam_images).select(torch.zeros(G, dtype=torch.long))
        )
        # reference: a plain Qwen-VL called with token ids (M-RoPE), no temperature
        ref_logits = _full_forward_logits(reference, prompts, sequences, attention)[:, :-1]
        ref = _gather(ref_logits, sequences[:, 1:])[:, p - 1 :]
    seg_reward, seg_loss = _masks_and_seg(model, prompts, low_res)
    texts = processor.tokenizer.batch_decode(completion, skip_special_tokens=False)
    gt = [round(v) for v in prompts.gt_boxes_llm[0]]  # the released dataset's integer GT box
    box_reward = torch.tensor([_iou(_released_box(s.replace("<|endoftext|>", "")), gt) ** 2 for s in texts])
    rewards = box_reward.float() + seg_reward.float()
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = -torch.exp(logp - logp.detach()) * advantages[:, None] + BETA * k3
    loss = ((per_token * cmask).sum(1) / cmask.sum(1)).mean()
    return dict(cmask=cmask, attention=attention, rewards=rewards, advantages=advantages, logp=logp, ref=ref,
                k3=k3, loss=loss + seg_loss, box_reward=box_reward)  # fmt: skip


def _lens_reference(setup):
    """lens's objective written from its definition: the sampling distribution (M-RoPE positions, logits /
    temperature) for policy and reference; answers end at their first end token; float GT boxes."""
    model, processor, prompts, completions, _, (im_end, endoftext) = setup
    prompt, completion = _sequences(setup)
    lengths = torch.tensor([len(c) for c in completions])
    valid = (torch.arange(completion.shape[1])[None] < lengths[:, None]).int()
    attended = valid * (completion != endoftext).int()
    attention = torch.cat([prompts.attention_mask.expand(G, -1), attended], 1)
    sequences = torch.cat([prompt, completion], 1)
    with torch.no_grad():
        logits = _full_forward_logits(model.mllm, prompts, sequences, attention)[:, prompt.shape[1] - 1 : -1]
    logp = _gather(logits / TEMPERATURE, completion)
    gt = prompts.gt_boxes_llm[0]
    texts = processor.tokenizer.batch_decode(completion, skip_special_tokens=False)
    box_reward = torch.tensor([_iou(_released_box(s.replace("<|endoftext|>", "")), gt) ** 2 for s in texts])
    return dict(valid=valid, attention=attention, logp=logp, box_reward=box_reward)


# ------------------------------------------------------------------------ tests
def test_released_compat_reproduces_the_released_objective(setup):
    item, logp, losses = _lens_step(setup, "released")
    hand = _released_step(setup)
    ro = item.rollout
    p = ro.prompt_length
    # (d) only <|im_end|> ends an answer: the <|endoftext|> answers count (and attend) their padding
    assert ro.completion_mask.tolist() == hand["cmask"].tolist()
    assert ro.attention_mask.tolist() == hand["attention"].tolist()
    assert ro.completion_mask[1].sum() == ro.completion_mask.shape[1] > len(setup[3][1])
    # (e) integer GT boxes, rewards and advantages
    torch.testing.assert_close(
        torch.as_tensor(item.components["box_iou"]).float(), hand["box_reward"].float(), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(item.rewards, hand["rewards"], atol=1e-6, rtol=0)
    torch.testing.assert_close(item.advantages, hand["advantages"], atol=1e-6, rtol=0)
    assert hand["advantages"].abs().max() > 0.1
    # (a, b) policy log-probs at 1-D positions without temperature; (c) reference at M-RoPE positions
    keep = hand["cmask"].bool()
    torch.testing.assert_close(logp[keep], hand["logp"][keep], atol=1e-6, rtol=0)
    torch.testing.assert_close(item.ref_logp[keep], hand["ref"][keep], atol=1e-6, rtol=0)
    k3 = token_kl_k3(logp, item.ref_logp)
    torch.testing.assert_close(k3[keep], hand["k3"][keep], atol=1e-6, rtol=0)
    print("released KL (token mean of k3) at step 1:", float(hand["k3"][keep].mean()))
    assert hand["k3"][keep].mean() > 1e-3  # identical weights, yet KL > 0 at step 1: the released quirk
    torch.testing.assert_close(losses["loss"], hand["loss"], atol=1e-6, rtol=0)
    assert p == setup[2].input_ids.shape[1]


def test_lens_default_is_the_sampling_distribution(setup):
    item, logp, losses = _lens_step(setup, "lens")
    hand = _lens_reference(setup)
    released = _released_step(setup)
    ro = item.rollout
    assert ro.completion_mask.tolist() == hand["valid"].tolist()
    assert ro.attention_mask[:, ro.prompt_length :].tolist() == hand["attention"][:, ro.prompt_length :].tolist()
    assert ro.completion_mask.sum() < released["cmask"].sum()  # padding after <|endoftext|> is not counted
    keep = hand["valid"].bool()
    torch.testing.assert_close(logp[keep], hand["logp"][keep], atol=1e-6, rtol=0)
    assert (logp[keep] - released["logp"][keep]).abs().max() > 1e-2
    assert float(losses["kl"]) < 1e-6  # same weights, same positions: KL 0 at step 1
    torch.testing.assert_close(
        torch.as_tensor(item.components["box_iou"]).float(), hand["box_reward"].float(), atol=1e-6, rtol=0
    )
    assert (hand["box_reward"] - released["box_reward"]).abs().max() > 1e-4  # float vs integer GT box


def test_released_compat_needs_an_official_model():
    from lens_model.errors import LensError

    with pytest.raises(LensError, match="compat: released .* context_pass official"):
        GRPOConfig(compat="released", context_pass="cached")
    with pytest.raises(LensError, match="compat"):
        GRPOConfig(compat="paper")
