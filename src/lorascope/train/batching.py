"""Batch order: seeded, length-grouped global batches split into per-rank micro-batches.

A *global batch* is what one optimizer step sees (``effective_batch`` examples). It is cut into
``world_size × accumulation`` micro-batches; rank r takes micro-batches r·A … r·A + A − 1. The order of
global batches depends only on (data seed, epoch), never on the world size, so 2 ranks see exactly the
examples per step that 1 rank with accumulation 2 sees (issue: data-parallel training).

Length grouping: shuffle, cut into mega-batches of ``group`` global batches, sort each by length and
cut it into global batches, then shuffle the batch order — little compute goes to padding while the
order stays random (as in fairseq / HF ``group_by_length``).
"""

from __future__ import annotations

import numpy as np


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: int = 50) -> list[list[int]]:
    """Global batches (lists of example indices) for one epoch. Incomplete last batches are dropped."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    mega = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = perm[start : start + mega]
        chunk = sorted(chunk.tolist(), key=lambda i: (-lengths[i], i))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    # Leftovers of each mega-batch are dropped only when smaller than a batch; shuffle batch order.
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def micro_batches(global_batch: list[int], micro: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This rank's micro-batches of one global batch (each of size ``micro``)."""
    per_rank = len(global_batch) // world_size
    mine = global_batch[rank * per_rank : (rank + 1) * per_rank]
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]
