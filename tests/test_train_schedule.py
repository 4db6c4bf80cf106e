"""training.schedule: the scheduler the engine steps follows the closed-form warm-up + decay of each lr_scheduler."""

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from training.config import AlignConfig, GRPOConfig
from training.schedule import build_lr_scheduler, lr_at
from training.vocab import LR_SCHEDULERS

LR, WARMUP, TOTAL = 2e-3, 10, 110


def _closed_form(kind: str, step: int, min_ratio: float) -> float:
    if step < WARMUP:
        return step / WARMUP
    progress = min(1.0, (step - WARMUP) / (TOTAL - WARMUP))
    decay = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[kind]
    return decay if kind == "constant" else min_ratio + (1 - min_ratio) * decay


def _stepped_lrs(cfg, steps: int) -> list[float]:
    """The learning rate each optimizer step uses, stepping optimizer and scheduler as the engine does."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    scheduler = build_lr_scheduler(optimizer, cfg, TOTAL)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        param.sum().backward()
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("kind", LR_SCHEDULERS)
@pytest.mark.parametrize("min_ratio", [0.0, 0.25])
def test_stepped_schedule_is_the_closed_form(kind, min_ratio):
    cfg = AlignConfig(lr=LR, lr_scheduler=kind, warmup_steps=WARMUP, min_lr_ratio=min_ratio)
    lrs = _stepped_lrs(cfg, TOTAL + 20)
    middle = (WARMUP + TOTAL) // 2
    for step in (0, WARMUP // 2, WARMUP, middle, TOTAL - 1, TOTAL, TOTAL + 19):  # warm-up end, middle, last, past
        assert lrs[step] == pytest.approx(LR * _closed_form(kind, step, min_ratio), rel=1e-12, abs=1e-18), step
        assert lr_at(step, cfg, TOTAL) == pytest.approx(_closed_form(kind, step, min_ratio), rel=1e-12, abs=1e-15)


def test_released_recipes_are_transformers_own_schedules():
    """min_lr_ratio 0 (both shipped recipes): exactly transformers' cosine / linear schedules, as released."""
    for cfg, make in (
        (AlignConfig(lr=LR, warmup_steps=WARMUP), get_cosine_schedule_with_warmup),
        (GRPOConfig(lr=LR, warmup_steps=WARMUP), get_linear_schedule_with_warmup),
    ):
        reference = make(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR), WARMUP, TOTAL)
        steps = range(TOTAL + 1)
        assert [lr_at(s, cfg, TOTAL) for s in steps] == [reference.lr_lambdas[0](s) for s in steps]


def test_schedule_state_survives_a_resume():
    cfg = AlignConfig(lr=LR, warmup_steps=WARMUP, min_lr_ratio=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=LR)
    first = build_lr_scheduler(optimizer, cfg, TOTAL)
    for _ in range(37):
        optimizer.step()
        first.step()
    resumed = build_lr_scheduler(torch.optim.SGD([param], lr=LR), cfg, TOTAL)
    resumed.load_state_dict(first.state_dict())
    assert resumed.last_epoch == 37
    assert resumed.get_last_lr() == first.get_last_lr() == [pytest.approx(LR * _closed_form("cosine", 37, 0.1))]
