"""Data parallelism under torchrun (issue: DDP, and FSDP when full FT does not fit one GPU).

``init_distributed()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins the process
group: NCCL on CUDA, gloo on CPU. ``wrap_for_strategy`` turns the loss module into what the loop
trains through: DDP around the loss module (so DDP's hooks see the forward that makes the loss), or
FSDP2 ``fully_shard`` on every decoder layer and the root. Single-process runs never import
``torch.distributed``'s process-group machinery.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(strategy: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up; returns (rank facts, this rank's device)."""
    import torch.distributed as tdist

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        # Long timeout: rank 0 alone evaluates the test split after training while the others wait.
        tdist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None,
                                 timeout=timedelta(hours=6))
    return DistInfo(rank=rank, world_size=world, local_rank=local, strategy=strategy), device


def shutdown_distributed() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()


def all_reduce_sum(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.world_size == 1:
        return t
    import torch.distributed as tdist

    t = t.clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_bool(value: bool, dist: DistInfo) -> bool:
    """Rank 0's ``value`` on every rank."""
    if dist.world_size == 1:
        return value
    import torch.distributed as tdist

    t = torch.tensor([1.0 if value else 0.0], device="cuda" if torch.cuda.is_available() else "cpu")
    tdist.broadcast(t, src=0)
    return bool(t.item())


def wrap_for_strategy(loss_module: nn.Module, model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
    """DDP: wrap the loss module. FSDP2: shard each decoder layer, then the loss module as the root.

    The loss module (not the LM) is the FSDP root because its forward is the one the loop calls: the
    root's pre-forward hook gathers the parameters outside the layers (embeddings, final norm, LM head).
    """
    if dist.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from lorascope.train.speed import decoder_layers

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(loss_module)
        return loss_module
    return loss_module


def grad_sync(loss_module: nn.Module, model: nn.Module, sync: bool):
    """Skip gradient communication on all but the last micro-batch of a step (accumulation)."""
    if hasattr(loss_module, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else loss_module.no_sync()
    if hasattr(loss_module, "set_requires_gradient_sync"):  # FSDP2 root
        loss_module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


@contextlib.contextmanager
def root_unsharded(loss_module: nn.Module):
    """Gather the FSDP root's own parameters (embeddings, norm, head) for calls that bypass its forward,
    such as evaluation and generation; decoder layers gather themselves through their hooks."""
    if hasattr(loss_module, "unshard") and hasattr(loss_module, "reshard"):
        loss_module.unshard()
        try:
            yield
        finally:
            loss_module.reshard()
    else:
        yield
