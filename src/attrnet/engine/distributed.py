"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate each rank's rows (rank order); every rank gets the result."""
    if not info.enabled:
        return t
    parts = [None] * info.world_size
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)  # type: ignore[arg-type]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(info: DistInfo, timeout: datetime.timedelta = datetime.timedelta(hours=6)) -> Iterator[None]:
    """Run the block on each node's local rank 0 first, then on that node's other ranks.

    For work the other ranks can then reuse from the node's disk, such as building the decoded-image cache:
    one build per node instead of one per process (each would decode everything and write its own copy).
    The wait is a barrier on a gloo group with a long timeout, since a build can outlast NCCL's default one.
    """
    if not info.enabled:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        if info.local_rank != 0:
            dist.barrier(group=group)
        yield
        if info.local_rank == 0:
            dist.barrier(group=group)
    finally:
        dist.destroy_process_group(group)
