"""Learning-rate schedule of a training run: linear warm-up from 0, then the config's decay, by transformers.

`lr_scheduler` picks transformers' schedule: cosine -> `cosine_with_min_lr` (a half cosine from 1 down to
`min_lr_ratio`), linear -> `linear`, or `polynomial` with power 1 when `min_lr_ratio` > 0 (the same straight line
ending at the floor instead of 0), constant -> `constant_with_warmup`. With min_lr_ratio 0, the released recipes'
setting, these are the schedules the released transformers Trainer runs used. Past `total_steps` the rate holds
its final value (transformers' cosine would rise again).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import get_scheduler

from .config import ConfigError
from .vocab import LR_SCHEDULERS


def _transformers_schedule(kind: str, min_lr_ratio: float, lr: float) -> tuple[str, dict]:
    """Our scheduler name + floor -> (transformers' SchedulerType name, its scheduler_specific_kwargs)."""
    if kind not in LR_SCHEDULERS:
        raise ConfigError(f"lr_scheduler: expected one of {', '.join(LR_SCHEDULERS)}, got {kind!r}", key="lr_scheduler")
    if kind == "constant" or min_lr_ratio >= 1.0:  # no decay (polynomial needs an end below the start)
        return "constant_with_warmup", {}
    if kind == "cosine":
        return "cosine_with_min_lr", {"min_lr_rate": min_lr_ratio}
    if min_lr_ratio == 0.0:
        return "linear", {}
    return "polynomial", {"lr_end": min_lr_ratio * lr, "power": 1.0}


def _held_after_end(step: int, *, schedule, total_steps: int) -> float:
    return schedule(min(step, total_steps))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's scheduler over `optimizer` (whose lr is cfg.lr): step s (0-based optimizer steps) multiplies the
    learning rate by s / warmup_steps during the warm-up, then decays it to cfg.min_lr_ratio at `total_steps`."""
    name, kwargs = _transformers_schedule(cfg.lr_scheduler, cfg.min_lr_ratio, optimizer.defaults["lr"])
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs,
    )
    scheduler.lr_lambdas = [
        functools.partial(_held_after_end, schedule=f, total_steps=total_steps) for f in scheduler.lr_lambdas
    ]
    return scheduler


def lr_at(step: int, cfg: Any, total_steps: int) -> float:
    """The learning-rate multiplier `build_lr_scheduler` applies at optimizer step `step` (the first update: 0)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    return build_lr_scheduler(optimizer, cfg, total_steps).lr_lambdas[0](step)


__all__ = ["build_lr_scheduler", "lr_at"]
