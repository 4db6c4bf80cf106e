"""Wall-clock time per named stage, with the device synchronised at both ends so GPU work is counted where
it is launched (CUDA kernels run asynchronously)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """`with timer.stage("generate"): ...` adds the stage's seconds to `timer.times["generate"]`; stages may nest
    (an outer stage includes the inner ones)."""

    def __init__(self, device: torch.device, times: dict[str, float] | None = None) -> None:
        self.device = device
        self.times: dict[str, float] = dict(times or {})

    @contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def total(self, names) -> float:
        return sum(self.times.get(n, 0.0) for n in names)
