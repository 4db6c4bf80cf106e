"""training.grpo_loss: group advantages by hand, the loss against a plain-Python reference, gradients, clipping."""

import math

import pytest
import torch

from lens_model.errors import LensError
from training.grpo_loss import aggregation_weights, group_advantages, grpo_loss, token_kl_k3
from training.vocab import LOSS_AGGREGATIONS as AGGREGATIONS

TOL = 1e-6


def _inputs(n=4, t=6, lengths=(6, 3, 1, 4), seed=0, spread=0.3):
    """float64 log-probs with policy/old/ref close to each other, and masks of different lengths (left-aligned)."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    old = logp + torch.randn(n, t, generator=g, dtype=torch.float64) * spread
    ref = logp + torch.randn(n, t, generator=g, dtype=torch.float64) * spread
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    mask = torch.zeros(n, t, dtype=torch.float64)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    return logp, old, ref, adv, mask


def _reference(logp, old, ref, adv, mask, eps=0.2, eps_high=None, beta=0.04, agg="sequence"):
    """Independent loop implementation over Python floats."""
    eps_high = eps if eps_high is None else eps_high
    n, t = len(logp), len(logp[0])
    rows = []  # per sequence: list of (loss, -surrogate, k3, ratio, clipped) on its masked tokens
    for i in range(n):
        toks = []
        for j in range(t):
            if mask[i][j] == 0:
                continue
            lp, a = float(logp[i][j]), float(adv[i])
            r = math.exp(lp - float(old[i][j]))
            clipped_r = min(max(r, 1 - eps), 1 + eps_high)
            s = min(r * a, clipped_r * a)
            k3 = 0.0 if ref is None else math.exp(float(ref[i][j]) - lp) - (float(ref[i][j]) - lp) - 1
            is_clip = (r > 1 + eps_high and a > 0) or (r < 1 - eps and a < 0)
            toks.append((-s + beta * k3, -s, k3, r, float(is_clip)))
        rows.append(toks)
    all_toks = [tok for toks in rows for tok in toks]

    def aggregate(k):
        if agg == "sequence":
            means = [sum(tok[k] for tok in toks) / len(toks) for toks in rows if toks]
            return sum(means) / len(means) if means else 0.0
        if agg == "token":
            return sum(tok[k] for tok in all_toks) / len(all_toks) if all_toks else 0.0
        return sum(tok[k] for tok in all_toks) / (n * t)

    def token_mean(k):
        return sum(tok[k] for tok in all_toks) / len(all_toks) if all_toks else 0.0

    return {
        "loss": aggregate(0),
        "policy": aggregate(1),
        "kl": token_mean(2),
        "clip_fraction": token_mean(4),
        "ratio_mean": token_mean(3),
    }


# --------------------------------------------------------------------------------------------- advantages
def test_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64), group_size=4)
    std = math.sqrt(14 / 3)  # mean 3, deviations −2, −1, 0, 3, unbiased variance 14/3
    expected = [d / (std + 1e-4) for d in (-2, -1, 0, 3)]
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)


def test_advantages_groups_are_consecutive_and_independent():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 14.0], dtype=torch.float64)
    adv = group_advantages(r, group_size=4, eps=0.0)
    std2 = (3 * 1.0**2 + 3.0**2) / 3  # second group: mean 11, deviations −1, −1, −1, 3
    assert adv[4:].tolist() == pytest.approx([d / math.sqrt(std2) for d in (-1, -1, -1, 3)], abs=1e-12)
    assert adv[:4].tolist() == pytest.approx([d / math.sqrt(14 / 3) for d in (-2, -1, 0, 3)], abs=1e-12)


def test_advantages_unscaled_is_centered():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), group_size=2, scale=False)
    assert adv.tolist() == [-0.5, 0.5, -1.5, 1.5]


def test_identical_rewards_give_exact_zeros():
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 1.0, 2.0, 3.0], dtype=torch.float32)
    for scale in (True, False):
        adv = group_advantages(r, group_size=3, scale=scale)
        assert torch.isfinite(adv).all()
        assert adv[:6].tolist() == [0.0] * 6
        assert adv[6:].abs().sum() > 0


def test_all_failed_group_is_zero():
    assert group_advantages(torch.zeros(8), group_size=8).tolist() == [0.0] * 8


def test_group_of_one_is_zero():
    adv = group_advantages(torch.tensor([0.3, 1.5, -2.0]), group_size=1)
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_integer_rewards_are_accepted():
    adv = group_advantages(torch.tensor([0, 2]), group_size=2, scale=False)
    assert adv.is_floating_point() and adv.tolist() == [-1.0, 1.0]


def test_advantage_errors():
    with pytest.raises(ValueError, match=r"5 rewards do not split into groups of 2"):
        group_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match=r"\(N,\).*\(2, 2\)"):
        group_advantages(torch.zeros(2, 2), group_size=2)
    with pytest.raises(LensError, match="group_size"):
        group_advantages(torch.zeros(4), group_size=0)
    with pytest.raises(LensError, match=r"non-finite at rows \[1\]"):
        group_advantages(torch.tensor([0.0, math.nan]), group_size=2)


# ---------------------------------------------------------------------------------------------------- KL
def test_k3_is_zero_when_equal_and_positive_otherwise():
    logp, _, ref, *_ = _inputs()
    assert torch.equal(token_kl_k3(logp, logp.clone()), torch.zeros_like(logp))
    k3 = token_kl_k3(logp, ref)
    assert (k3 >= 0).all() and (k3 > 0).any()
    d = 0.3  # ref − logp
    assert token_kl_k3(torch.tensor([0.0]), torch.tensor([d])).item() == pytest.approx(math.exp(d) - d - 1, abs=1e-7)


def test_kl_is_exactly_zero_when_policy_equals_reference():
    logp, old, _, adv, mask = _inputs()
    out = grpo_loss(logp, old, logp.clone(), adv, mask)
    assert out["kl"].item() == 0.0
    assert out["loss"].item() == out["policy"].item()


# -------------------------------------------------------------------------------------- against reference
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed, eps_high, beta", [(0, None, 0.04), (1, 0.28, 0.04), (4, None, 0.0), (3, 0.5, 0.1)])
def test_matches_loop_reference(aggregation, seed, eps_high, beta):
    logp, old, ref, adv, mask = _inputs(seed=seed)
    out = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, clip_eps_high=eps_high, beta=beta, aggregation=aggregation)
    expected = _reference(
        logp.tolist(),
        old.tolist(),
        ref.tolist(),
        adv.tolist(),
        mask.tolist(),
        eps_high=eps_high,
        beta=beta,
        agg=aggregation,
    )
    assert 0 < expected["clip_fraction"] < 1  # the random data exercises both branches
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, abs=TOL), key
        assert out[key].dim() == 0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_matches_reference_with_empty_rows_and_no_ref(aggregation):
    logp, old, _, adv, mask = _inputs(lengths=(5, 0, 2, 0), seed=4)
    out = grpo_loss(logp, old, None, adv, mask, beta=0.0, aggregation=aggregation)
    expected = _reference(logp.tolist(), old.tolist(), None, adv.tolist(), mask.tolist(), beta=0.0, agg=aggregation)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, abs=TOL), key
    assert out["kl"].item() == 0.0


def test_constant_length_override():
    logp, old, ref, adv, mask = _inputs()
    a = grpo_loss(logp, old, ref, adv, mask, aggregation="constant")
    b = grpo_loss(logp, old, ref, adv, mask, aggregation="constant", constant_length=12)
    assert b["loss"].item() == pytest.approx(a["loss"].item() * 6 / 12, abs=1e-12)


# ---------------------------------------------------------------------------------------------- gradients
def _hand_weights(mask, aggregation):
    n, t = mask.shape
    lengths = mask.sum(1).tolist()
    nonempty = sum(1 for length in lengths if length > 0)
    total = sum(lengths)
    w = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            if mask[i, j]:
                w[i, j] = {"sequence": 1 / (lengths[i] * nonempty), "token": 1 / total, "constant": 1 / (n * t)}[
                    aggregation
                ]
    return w


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_policy_gradient_closed_form_on_policy(aggregation):
    # old = logp: ρ = 1 everywhere, nothing clipped, ∂(−ρ·Â)/∂logp = −Â per token, times the aggregation weight
    logp, _, ref, adv, mask = _inputs(lengths=(6, 3, 0, 4))
    logp.requires_grad_(True)
    out = grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.04, aggregation=aggregation)
    (grad,) = torch.autograd.grad(out["policy"], logp)
    w = _hand_weights(mask, aggregation)
    assert torch.allclose(grad, -adv[:, None] * w, atol=1e-12, rtol=0)
    assert torch.allclose(aggregation_weights(mask, aggregation), w, atol=1e-15, rtol=0)
    assert out["clip_fraction"].item() == 0.0 and out["ratio_mean"].item() == 1.0


def test_kl_gradient_closed_form():
    # ∂k3/∂logp = 1 − exp(ref − logp)
    logp, _, ref, adv, mask = _inputs()
    logp.requires_grad_(True)
    out = grpo_loss(logp, logp.detach(), ref, torch.zeros_like(adv), mask, beta=0.5, aggregation="token")
    (grad,) = torch.autograd.grad(out["loss"], logp)
    expected = 0.5 * (1 - torch.exp(ref - logp.detach())) * mask / mask.sum()
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------- clipping
def _clip_case():
    # ratios per row: 1.5, 0.5, 1.0, 1.1; row 0 has Â = +1, row 1 Â = −1
    ratios = torch.tensor([[1.5, 0.5, 1.0, 1.1]] * 2, dtype=torch.float64)
    old = torch.zeros(2, 4, dtype=torch.float64)
    logp = ratios.log().requires_grad_(True)
    return logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)


def test_clipping_by_hand():
    logp, old, adv, mask = _clip_case()
    out = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, beta=0.0, aggregation="token")
    # Â > 0: 1.5 is clipped to 1.2 (min(1.5, 1.2)); 0.5 keeps 0.5 (min(0.5, 0.8)).
    # Â < 0: 1.5 keeps −1.5 (min(−1.5, −1.2)); 0.5 is clipped to −0.8 (min(−0.5, −0.8)).
    surrogate = [1.2, 0.5, 1.0, 1.1, -1.5, -0.8, -1.0, -1.1]
    assert out["policy"].item() == pytest.approx(-sum(surrogate) / 8, abs=1e-12)
    assert out["clip_fraction"].item() == 2 / 8
    assert out["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.0 + 1.1) / 4, abs=1e-12)
    (grad,) = torch.autograd.grad(out["loss"], logp)
    # ∂(−ρ·Â)/∂logp = −ρ·Â / 8 on unclipped tokens, 0 on the clipped ones ([0, 0] and [1, 1])
    expected = torch.tensor([[0.0, -0.5, -1.0, -1.1], [1.5, 0.0, 1.0, 1.1]], dtype=torch.float64) / 8
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0)


def test_asymmetric_clip_high():
    logp, old, adv, mask = _clip_case()
    out = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.6, beta=0.0, aggregation="token")
    assert out["clip_fraction"].item() == 1 / 8  # 1.5 ≤ 1.6 now: only (Â < 0, ρ = 0.5) is clipped
    out = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.3, beta=0.0, aggregation="token")
    assert out["clip_fraction"].item() == 2 / 8


def test_zero_advantage_is_never_clipped():
    logp, old, _, mask = _clip_case()
    out = grpo_loss(logp, old, None, torch.zeros(2, dtype=torch.float64), mask, beta=0.0)
    assert out["clip_fraction"].item() == 0.0 and out["policy"].item() == 0.0


# ------------------------------------------------------------------------------------------- degenerate
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_failed_group_gives_finite_loss(aggregation):
    logp, old, ref, _, mask = _inputs()
    logp.requires_grad_(True)
    adv = group_advantages(torch.zeros(4, dtype=torch.float64), group_size=4)
    out = grpo_loss(logp, old, ref, adv, mask, aggregation=aggregation)
    assert out["policy"].item() == 0.0
    assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0  # the KL term alone
    out["loss"].backward()
    assert torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_empty_completions(aggregation):
    logp, old, ref, adv, _ = _inputs()
    logp.requires_grad_(True)
    out = grpo_loss(logp, old, ref, adv, torch.zeros_like(logp), aggregation=aggregation)
    for key, value in out.items():
        assert value.item() == 0.0, key
    out["loss"].backward()  # still connected to the graph
    assert torch.equal(logp.grad, torch.zeros_like(logp))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_garbage_in_padding_never_reaches_loss_or_gradient(aggregation):
    logp, old, ref, adv, mask = _inputs(lengths=(6, 3, 0, 4))
    clean = grpo_loss(logp, old, ref, adv, mask, aggregation=aggregation)
    pad = mask == 0
    dirty = [x.masked_fill(pad, v) for x, v in ((logp, -math.inf), (old, math.nan), (ref, math.inf))]
    dirty[0].requires_grad_(True)
    out = grpo_loss(*dirty[:2], dirty[2], adv, mask, aggregation=aggregation)
    for key in clean:
        assert out[key].item() == pytest.approx(clean[key].item(), abs=1e-12), key
    out["loss"].backward()
    assert torch.isfinite(dirty[0].grad).all() and (dirty[0].grad[pad] == 0).all()


def test_bool_mask_and_bf16_inputs():
    logp, old, ref, adv, mask = _inputs()
    lp16 = logp.to(torch.bfloat16).requires_grad_(True)
    out = grpo_loss(lp16, old.to(torch.bfloat16), ref.to(torch.bfloat16), adv, mask.bool())
    assert out["loss"].dtype == torch.float32  # the ratio is computed in float32
    out["loss"].backward()
    assert lp16.grad.dtype == torch.bfloat16 and torch.isfinite(lp16.grad.float()).all()


# ------------------------------------------------------------------------------------------------- errors
def test_shape_errors_name_shapes():
    logp, old, ref, adv, mask = _inputs()
    with pytest.raises(ValueError, match=r"old_logp shape \(4, 5\) does not match logp shape \(4, 6\)"):
        grpo_loss(logp, old[:, :5], ref, adv, mask)
    with pytest.raises(ValueError, match=r"ref_logp shape \(3, 6\)"):
        grpo_loss(logp, old, ref[:3], adv, mask)
    with pytest.raises(ValueError, match=r"completion_mask shape \(4, 7\)"):
        grpo_loss(logp, old, ref, adv, torch.ones(4, 7))
    with pytest.raises(ValueError, match=r"advantages must be \(N,\) = \(4,\), got shape \(4, 1\)"):
        grpo_loss(logp, old, ref, adv[:, None], mask)
    with pytest.raises(ValueError, match=r"logp must be \(N, T\), got shape \(24,\)"):
        grpo_loss(logp.flatten(), old.flatten(), None, adv, mask.flatten(), beta=0.0)
    with pytest.raises(ValueError, match=r"\(4, 6\) and ref_logp \(4, 5\)"):
        token_kl_k3(logp, ref[:, :5])


def test_argument_errors():
    logp, old, ref, adv, mask = _inputs()
    with pytest.raises(LensError, match="ref_logp is None but beta=0.04"):
        grpo_loss(logp, old, None, adv, mask)
    with pytest.raises(LensError, match="unknown loss aggregation 'mean'; valid: sequence, token, constant"):
        grpo_loss(logp, old, ref, adv, mask, aggregation="mean")
    with pytest.raises(LensError, match="must be >= 0"):
        grpo_loss(logp, old, ref, adv, mask, clip_eps=-0.1)
