"""GRPO's objective (DeepSeekMath; TRL 0.17 `GRPOTrainer` as the released LENS stage 2 uses it), pure torch.

Per prompt, G completions are sampled; their rewards are normalised within the group into advantages Â, and each
completion token gets the PPO clipped surrogate min(ρ·Â, clip(ρ, 1−ε, 1+ε_high)·Â) with ρ = π/π_old, minus
β times the k3 estimate of KL(π‖π_ref). Shapes: N = prompts·G rows, T = padded completion length.
"""

from __future__ import annotations

import torch

from lens_model.errors import LensError

from .vocab import LOSS_AGGREGATIONS


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """rewards (N,) -> advantages (N,); rows i·G .. i·G+G−1 belong to prompt i.

    Â = (r − mean_group) / (std_group + eps), std unbiased (torch.std's default, as TRL and the released code);
    scale=False gives r − mean_group (Dr.GRPO). A group of identical rewards (incl. G = 1) gives exactly 0:
    it carries no preference, and its std would be 0 (or NaN for one sample).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (N,), got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise LensError(f"group_size must be a positive integer, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"{rewards.shape[0]} rewards do not split into groups of {group_size} (shape {tuple(rewards.shape)})"
        )
    r = rewards if rewards.is_floating_point() else rewards.double()
    if not torch.isfinite(r).all():
        bad = torch.nonzero(~torch.isfinite(r)).flatten().tolist()
        raise LensError(f"rewards must be finite; non-finite at rows {bad[:10]}")
    grouped = r.view(-1, group_size)  # (P, G)
    same = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # (P, 1): exact 0 without relying on mean's rounding
    centered = torch.where(same, torch.zeros_like(grouped), grouped - grouped.mean(dim=1, keepdim=True))  # (P, G)
    if scale and group_size > 1:
        std = grouped.std(dim=1, keepdim=True)  # (P, 1), unbiased
        centered = centered / (std + eps)
    return centered.reshape(-1)


def token_kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref − logp) − (ref − logp) − 1, elementwise: unbiased for KL(π‖π_ref) under π's samples, ≥ 0."""
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have the same shape")
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _check_shapes(logp, old_logp, ref_logp, advantages, completion_mask) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be (N, T), got shape {tuple(logp.shape)}")
    named = {"old_logp": old_logp, "completion_mask": completion_mask}
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    for name, t in named.items():
        if t.shape != logp.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} does not match logp shape {tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (N,) = ({logp.shape[0]},), got shape {tuple(advantages.shape)}")


def aggregation_weights(mask: torch.Tensor, aggregation: str, constant_length: int | None = None) -> torch.Tensor:
    """mask (N, T) float 0/1 -> weights (N, T) such that the aggregated loss is Σ weights · per-token loss.

    sequence (GRPO):   mask / len_i / (number of non-empty sequences); empty sequences weigh 0
    token (DAPO):      mask / Σ mask
    constant (Dr.GRPO): mask / (N · L), L = constant_length or T (pass max_completion_length for a fixed L)
    """
    if aggregation == "sequence":
        lengths = mask.sum(dim=1, keepdim=True)  # (N, 1)
        n_seq = (lengths > 0).sum().clamp(min=1)
        return mask / lengths.clamp(min=1) / n_seq
    if aggregation == "token":
        return mask / mask.sum().clamp(min=1)
    if aggregation == "constant":
        length = mask.shape[1] if constant_length is None else constant_length
        if length < 1:
            raise LensError(f"constant_length must be a positive integer, got {constant_length!r}")
        return mask / (mask.shape[0] * length) if mask.shape[0] else mask
    raise LensError(f"unknown loss aggregation {aggregation!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.04,
    aggregation: str = "sequence",
    constant_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Clipped-surrogate GRPO loss with a k3 KL penalty.

    logp, old_logp, ref_logp (N, T): log-probs of the sampled tokens under the policy being trained, the rollout
    policy (detached here) and the reference (may be None when beta == 0); advantages (N,); completion_mask
    (N, T): 1 on real completion tokens (through EOS). Padded positions may hold anything (even ±inf/NaN): they
    are replaced before any arithmetic so they reach neither the loss nor the gradient.

    Returns {"loss", "policy", "kl", "clip_fraction", "ratio_mean"}, scalars: loss and policy are aggregated as
    `aggregation` says (see `aggregation_weights`) and carry the graph; kl (token mean of k3, with the graph),
    clip_fraction and ratio_mean (detached) are means over completion tokens, for logging. With no completion
    token at all every value is 0 and loss is a zero still connected to logp (so backward() works everywhere).
    """
    _check_shapes(logp, old_logp, ref_logp, advantages, completion_mask)
    if ref_logp is None and beta != 0:
        raise LensError(f"ref_logp is None but beta={beta}: the KL penalty needs the reference model's log-probs")
    if clip_eps < 0 or (clip_eps_high is not None and clip_eps_high < 0) or beta < 0:
        raise LensError(f"clip_eps ({clip_eps}), clip_eps_high ({clip_eps_high}) and beta ({beta}) must be >= 0")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    dtype = (
        logp.dtype if logp.dtype in (torch.float32, torch.float64) else torch.float32
    )  # exp(Δ) in bf16 is too coarse
    keep = completion_mask > 0  # (N, T) bool
    mask = keep.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=logp.device)
    cur = torch.where(keep, logp.to(dtype), zero)  # (N, T)
    old = torch.where(keep, old_logp.detach().to(dtype), zero)
    adv = advantages.detach().to(dtype).unsqueeze(1)  # (N, 1)

    ratio = torch.exp(cur - old)  # (N, T); 1 on padding
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + eps_high) * adv
    surrogate = torch.minimum(unclipped, clipped)  # (N, T)
    # The clipped term is taken (and its gradient is 0) only when ρ left the trust region in Â's direction.
    is_clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))  # (N, T)

    if ref_logp is not None:
        k3 = token_kl_k3(cur, torch.where(keep, ref_logp.detach().to(dtype), zero))  # (N, T); 0 on padding
    else:
        k3 = torch.zeros_like(cur)
    weights = aggregation_weights(mask, aggregation, constant_length)  # (N, T)
    policy = (weights * -surrogate).sum()
    loss = policy + beta * (weights * k3).sum() if beta != 0 else policy

    n_tokens = mask.sum().clamp(min=1)
    token_mean = lambda x: (mask * x).sum() / n_tokens  # noqa: E731
    return {
        "loss": loss,
        "policy": policy,
        "kl": token_mean(k3),
        "clip_fraction": token_mean(is_clipped.to(dtype)).detach(),
        "ratio_mean": token_mean(ratio).detach(),
    }
