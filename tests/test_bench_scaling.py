"""benchmarks/torchrun_scaling.py: the per-rank batch settings it derives satisfy the training loop's check for
every world size, keep the global batch fixed, and give each global micro-batch index the same examples whether
one rank accumulates or several ranks share (so 1- and N-rank loss curves are comparable)."""

import importlib.util

import pytest

from lorascope.errors import LorascopeError
from lorascope.train.batching import micro_batches
from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("torchrun_scaling", REPO / "benchmarks" / "torchrun_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "global_batch, per_rank, worlds",
    [(32, 16, (1, 2)), (64, 16, (1, 2, 4, 8)), (48, 16, (1, 2, 3)), (16, 16, (1, 2)), (24, 5, (1, 2, 3))],
)
def test_batch_for_passes_the_loop_check_and_keeps_the_global_batch(global_batch, per_rank, worlds):
    batch_for = _bench().batch_for
    order = list(range(global_batch))
    per_index = {}
    for world in worlds:
        eff, micro, accum = batch_for(global_batch, world, per_rank)
        assert eff == global_batch and micro <= per_rank
        assert eff == micro * world * accum  # the check in lorascope.train.loop.train_loop
        chunks = [mb for rank in range(world) for mb in micro_batches(order, micro, rank, world)]
        assert sorted(i for mb in chunks for i in mb) == order  # every example once per step
        per_index[world] = (micro, chunks)
    ref_micro = {m for m, _ in per_index.values()}
    if len(ref_micro) == 1:  # same micro-batch size: identical global micro-batches
        first = next(iter(per_index.values()))[1]
        assert all(chunks == first for _, chunks in per_index.values())


def test_batch_for_refuses_a_global_batch_that_does_not_split():
    with pytest.raises(ValueError):
        _bench().batch_for(30, 4, 16)


def test_the_old_fixed_settings_fail_the_loop_check_at_two_ranks():
    # What issue 15 found: effective 16 = micro 16 at 2 ranks is not micro × world × integer accumulation.
    from pathlib import Path

    import torch

    from lorascope.train.dist import DistInfo
    from lorascope.train.loop import LoopSettings, train_loop
    from lorascope.train.seeds import RunSeeds

    settings = LoopSettings(
        lr=1e-3, weight_decay=0.0, epochs=1, effective_batch=16, micro_batch=16, warmup_ratio=0.0, grad_clip=1.0
    )
    model = torch.nn.Linear(2, 2)
    with pytest.raises(LorascopeError, match="not micro_batch"):
        train_loop(
            model,
            model,
            [],
            settings,
            RunSeeds(0, 0, 0, 0),
            Path("/nonexistent"),
            pad_id=0,
            device=torch.device("cpu"),
            dist=DistInfo(rank=0, world_size=2),
        )
    eff, micro, accum = _bench().batch_for(16, 2, 16)
    assert (eff, micro, accum) == (16, 8, 1)
