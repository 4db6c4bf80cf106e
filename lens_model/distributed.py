"""The few torch.distributed calls the library and the trainers share; every one is a no-op in one process."""

from __future__ import annotations

import os


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; initialises torch.distributed when sharded."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_sum(values, world: int):
    """Tensor summed over all ranks, in place (returned for chaining)."""
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def all_mean(value: float, world: int, device) -> float:
    """A Python number averaged over all ranks."""
    if world == 1:
        return value
    import torch

    return float(all_sum(torch.tensor([value], dtype=torch.float64, device=device), world)) / world
