"""training.losses: closed forms on tiny tensors, independent references, gradients, batching."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from training.losses import dice_loss, mask_loss, sigmoid_bce_loss, sigmoid_focal_loss


def _rand(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=dtype) * 3
    target = (torch.rand(shape, generator=g) > 0.5).to(dtype)
    return logits, target


# ---------------------------------------------------------------------------------------------- closed forms
def test_bce_at_zero_logits_is_ln2():
    logits, target = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    target[0, 0, 0] = 1
    assert torch.allclose(sigmoid_bce_loss(logits, target), torch.full((2,), math.log(2)), atol=1e-7)


def test_dice_closed_form_at_zero_logits():
    # σ(0) = 0.5 on 6 pixels, 2 foreground: 1 − (2·0.5·2 + 1)/(3 + 2 + 1) = 1 − 3/6 = 0.5
    target = torch.tensor([[[1.0, 1, 0], [0, 0, 0]], [[0.0, 0, 0], [0, 0, 0]]])
    loss = dice_loss(torch.zeros(2, 2, 3), target)
    assert loss[0].item() == pytest.approx(0.5, abs=1e-7)
    assert loss[1].item() == pytest.approx(1 - 1 / 4, abs=1e-7)  # empty target: 1 − 1/(3 + 0 + 1)


def test_dice_closed_form_with_known_sigmoids():
    p = torch.tensor([[[0.9, 0.2], [0.6, 0.1]]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    expected = 1 - (2 * (0.9 + 0.6) + 1) / ((0.9 + 0.2 + 0.6 + 0.1) + 2 + 1)
    assert dice_loss(torch.logit(p), y).item() == pytest.approx(expected, abs=1e-12)


def test_dice_perfect_and_worst_predictions():
    y = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert dice_loss((y * 2 - 1) * 100, y).item() == pytest.approx(0.0, abs=1e-6)  # σ ≈ y: (2·3 + 1)/(3 + 3 + 1)
    assert dice_loss((1 - 2 * y) * 100, y).item() == pytest.approx(1 - 1 / 5, abs=1e-6)  # σ ≈ 1 − y


def test_focal_closed_form():
    # one pixel, x = 0, y = 1: p_t = 0.5 → α·(0.5)^γ·ln 2
    loss = sigmoid_focal_loss(torch.zeros(1, 1, 1), torch.ones(1, 1, 1), alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(0.25 * 0.25 * math.log(2), abs=1e-7)
    # y = 0 uses 1 − α
    loss = sigmoid_focal_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(0.75 * 0.25 * math.log(2), abs=1e-7)


# ---------------------------------------------------------------------------------------------- references
def test_bce_matches_torch_reference():
    logits, target = _rand((3, 7, 5))
    ref = torch.stack([F.binary_cross_entropy_with_logits(logits[i], target[i]) for i in range(3)])
    assert torch.allclose(sigmoid_bce_loss(logits, target), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.5), (0.9, 3.0)])
def test_focal_matches_torchvision(alpha, gamma):
    logits, target = _rand((3, 6, 4), seed=1)
    ref = tv_focal(logits, target, alpha=alpha, gamma=gamma, reduction="none").flatten(1).mean(1)
    assert torch.allclose(sigmoid_focal_loss(logits, target, alpha, gamma), ref, atol=1e-6, rtol=0)


def test_focal_with_gamma_0_and_no_alpha_is_bce():
    logits, target = _rand((2, 5, 5), seed=2)
    assert torch.allclose(
        sigmoid_focal_loss(logits, target, alpha=-1, gamma=0), sigmoid_bce_loss(logits, target), atol=1e-6
    )


def test_dice_matches_an_independent_formula():
    logits, target = _rand((4, 9, 8), seed=3, dtype=torch.float64)
    for i in range(4):
        p = 1 / (1 + torch.exp(-logits[i]))
        expected = 1 - (2 * (p * target[i]).sum() + 1) / (p.sum() + target[i].sum() + 1)
        assert dice_loss(logits, target)[i].item() == pytest.approx(expected.item(), abs=1e-12)


def test_bool_targets_and_low_precision_logits():
    logits, target = _rand((2, 4, 4), seed=4)
    ref = sigmoid_bce_loss(logits, target)
    assert torch.allclose(sigmoid_bce_loss(logits, target.bool()), ref)
    out = dice_loss(logits.bfloat16(), target.bool())
    assert out.dtype == torch.float32 and torch.allclose(out, dice_loss(logits.bfloat16().float(), target))


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("fn", [dice_loss, sigmoid_bce_loss, sigmoid_focal_loss])
def test_gradcheck(fn):
    logits, target = _rand((2, 3, 3), seed=5, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, target), (logits,))


def test_mask_loss_gradient_is_finite_even_for_extreme_logits():
    low = torch.tensor([[[[200.0, -200.0], [0.0, 50.0]]]], requires_grad=True)
    out = mask_loss(low, [torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)], pixel_loss="focal")
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(low.grad).all() and low.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- mask_loss
def test_mask_loss_resizes_each_sample_to_its_gt_and_averages():
    low, _ = _rand((3, 1, 8, 8), seed=6)
    sizes = [(16, 12), (5, 7), (8, 8)]
    gts = [(torch.rand(s, generator=torch.Generator().manual_seed(i)) > 0.5) for i, s in enumerate(sizes)]
    out = mask_loss(low, gts, dice_weight=2.0, pixel_weight=0.5)
    dice, bce = [], []
    for i, gt in enumerate(gts):
        x = F.interpolate(low[i : i + 1], size=gt.shape, mode="bilinear", align_corners=False)[0]
        dice.append(dice_loss(x, gt[None].float()))
        bce.append(F.binary_cross_entropy_with_logits(x[0], gt.float()))
    assert out["dice"].item() == pytest.approx(torch.cat(dice).mean().item(), abs=1e-6)
    assert out["pixel"].item() == pytest.approx(torch.stack(bce).mean().item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx(2.0 * out["dice"].item() + 0.5 * out["pixel"].item(), abs=1e-6)


def test_mask_loss_same_size_is_identity_resize():
    low, target = _rand((2, 1, 6, 6), seed=7)
    out = mask_loss(low, list(target[:, 0]))
    assert out["pixel"].item() == pytest.approx(F.binary_cross_entropy_with_logits(low, target).item(), abs=1e-6)


def test_mask_loss_focal_option():
    low, target = _rand((2, 1, 4, 4), seed=8)
    out = mask_loss(low, list(target[:, 0]), pixel_loss="focal", focal_alpha=0.5, focal_gamma=1.0)
    ref = tv_focal(low, target, alpha=0.5, gamma=1.0, reduction="mean")
    assert out["pixel"].item() == pytest.approx(ref.item(), abs=1e-6)


def test_per_sample_independence():
    low, _ = _rand((3, 1, 8, 8), seed=9)
    gts = [
        torch.rand(s, generator=torch.Generator().manual_seed(10 + i)) > 0.5
        for i, s in enumerate([(9, 9), (4, 11), (8, 8)])
    ]
    per_sample = [mask_loss(low[i : i + 1], [gts[i]]) for i in range(3)]
    batch = mask_loss(low, gts)
    for key in ("dice", "pixel", "loss"):
        assert batch[key].item() == pytest.approx(sum(s[key].item() for s in per_sample) / 3, abs=1e-6)

    # changing another sample leaves a sample's gradient unchanged (up to the 1/B of the mean)
    def grad_of_first(other):
        x = torch.cat([low[:1], other]).clone().requires_grad_(True)
        mask_loss(x, gts)["loss"].backward()
        return x.grad[0]

    assert torch.allclose(grad_of_first(low[1:]), grad_of_first(-low[1:] * 5), atol=1e-7)


def test_mask_loss_under_bf16_logits_and_autocast():
    low, target = _rand((2, 1, 4, 4), seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mask_loss(low.bfloat16(), list(target[:, 0]))
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(
        mask_loss(low.bfloat16().float(), list(target[:, 0]))["loss"].item(), abs=1e-6
    )


@pytest.mark.parametrize(
    "low_shape, gt_shapes, match",
    [
        ((2, 1, 4, 4), [(4, 4)], r"1 GT masks for logits of batch 2 \(shape \(2, 1, 4, 4\)\)"),
        ((2, 3, 4, 4), [(4, 4), (4, 4)], r"\(B, 1, h, w\).*\(2, 3, 4, 4\)"),
        ((2, 4, 4), [(4, 4), (4, 4)], r"\(2, 4, 4\)"),
        ((0, 1, 4, 4), [], r"B >= 1"),
        ((1, 1, 4, 4), [(1, 4, 4)], r"gt_masks\[0\] must be \(H, W\), got \(1, 4, 4\)"),
    ],
)
def test_mask_loss_shape_errors(low_shape, gt_shapes, match):
    with pytest.raises(ValueError, match=match):
        mask_loss(torch.zeros(low_shape), [torch.zeros(s) for s in gt_shapes])


def test_per_sample_shape_mismatch_and_unknown_pixel_loss():
    with pytest.raises(ValueError, match=r"\(1, 2, 2\).*\(1, 3, 3\)"):
        dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="pixel_loss must be one of bce, focal"):
        mask_loss(torch.zeros(1, 1, 2, 2), [torch.zeros(2, 2)], pixel_loss="l1")
