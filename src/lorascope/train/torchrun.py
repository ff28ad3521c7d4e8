"""Running ``lorascope train`` under torchrun: join the process group, train data-parallel, clean up.

    torchrun --nproc_per_node 2 -m lorascope.cli.main train --task mrpc --method lora --lr 2e-4 \\
        train.strategy=ddp
"""

from __future__ import annotations

from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.errors import LorascopeError
from lorascope.train.dist import init_distributed, shutdown_distributed, under_torchrun


def launch_if_distributed(cfg: StudyConfig, spec, out_dir: Path, data_dir) -> dict | None:
    """Under torchrun: train on this rank and return rank 0's results ({} elsewhere). Else None."""
    if not under_torchrun():
        return None
    strategy = cfg.train.strategy
    if strategy == "single":
        raise LorascopeError("running under torchrun: set train.strategy=ddp or train.strategy=fsdp")
    from lorascope.train.run import run_training

    dist, device = init_distributed(strategy)
    try:
        return run_training(cfg, spec, out_dir, data_dir=data_dir, device=device, dist=dist)
    finally:
        shutdown_distributed()
