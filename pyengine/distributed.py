"""Running ``pyengine eval`` / ``pyengine purify`` on many processes with torch.distributed.

Launch with ``torchrun --nproc-per-node G [--nnodes M ...] -m pyengine eval ...``. Each
rank takes every ``world_size``-th unit of work (DistributedSampler semantics: nothing
lost or done twice when the count does not divide), writes its own result files, and
rank 0 merges them after a barrier. Random draws are keyed by image index, not rank, so
any number of processes gives the single-process numbers.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist


class World(NamedTuple):
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def world(device: str | None = None) -> Iterator[World]:
    """The process group of a torchrun launch (NCCL on GPUs, gloo on CPUs), or a world of one."""
    if not launched_by_torchrun():
        yield World(0, 1, torch.device(device or "cpu"))
        return
    use_cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=6))
    try:
        yield World(dist.get_rank(), dist.get_world_size(),
                    torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
