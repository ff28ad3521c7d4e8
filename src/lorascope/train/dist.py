"""Process-group facts the loop needs (rank, world size) without importing torch.distributed elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def all_reduce_sum(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.world_size == 1:
        return t
    import torch.distributed as tdist

    t = t.clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t
