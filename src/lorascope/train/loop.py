"""The training loop shared by full fine-tuning and LoRA, written over plain torch so every step is visible.

One optimizer step = one global batch of ``effective_batch`` examples, cut into micro-batches (gradient
accumulation) and, under torchrun, across ranks. The loss is the sum of target-token NLL divided by the
number of target tokens in the *global* batch, so accumulation and data parallelism reproduce the
gradient of the single large batch. AdamW, linear warmup then linear decay (as HF
``get_linear_schedule_with_warmup``), gradient clipping, bf16 autocast on CUDA with fp32 master weights.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lorascope.data.tokenize import IGNORE_INDEX, Encoded
from lorascope.errors import LorascopeError
from lorascope.train.batching import epoch_batches, micro_batches
from lorascope.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lorascope.train.collapse import loss_exploded
from lorascope.train.dist import DistInfo, all_reduce_sum, broadcast_bool, grad_sync
from lorascope.train.evaluate import autocast_ctx
from lorascope.train.seeds import RunSeeds
from lorascope.train.speed import adamw_kwargs


class TrainingDiverged(LorascopeError):
    """The loss or gradient norm became NaN/inf, the loss exploded, or the outputs collapsed (``collapse.py``).
    ``diagnostics`` says where and what led to it."""

    def __init__(self, diagnostics: dict):
        why = f" ({diagnostics['reason']})" if diagnostics.get("reason") else ""
        super().__init__(f"training diverged at step {diagnostics['step']}{why}: loss={diagnostics['loss']}, "
                         f"grad_norm={diagnostics.get('grad_norm')}, lr={diagnostics['lr']:.3g}")
        self.diagnostics = diagnostics


@dataclass
class LoopSettings:
    lr: float
    weight_decay: float
    epochs: float
    effective_batch: int
    micro_batch: int
    warmup_ratio: float
    grad_clip: float
    evals_per_epoch: int | None = 3  # None: no validation (the sanity gate)
    max_steps: int | None = None
    checkpoint_every: int | None = None  # steps; None: at evaluation points and the end
    bf16: bool = True
    stop_loss: float | None = None  # stop once the step loss is ≤ this (sanity gate, §6)
    divergence_factor: float | None = None  # a step loss above this × the first step's is a divergence


@dataclass
class LoopResult:
    steps: int
    best_metric: float | None
    best_step: int | None
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def _drop_best_beyond(out_dir: Path, step: int) -> None:
    """``best/`` saved after the checkpoint we resume from belongs to a trajectory that is being redone."""
    best = out_dir / "best" / "best.json"
    if best.is_file() and json.loads(best.read_text())["step"] > step:
        shutil.rmtree(out_dir / "best")


def micro_seed(dropout_seed: int, step: int, micro_index: int) -> int:
    return (dropout_seed * 1_000_003 + step * 4099 + micro_index) % (2**63 - 1)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (1-D tensors), the usual practice. Fused on CUDA
    (one kernel for all parameters, −8% FT step time; docs/benchmarks.md), the default on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8,
                             **adamw_kwargs(device))


def linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def collate(batch: list[Encoded], pad_id: int, device: torch.device):
    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def _n_targets(e: Encoded) -> int:
    return sum(1 for t in e.labels[1:] if t != IGNORE_INDEX)


def _diverged(step: int, loss: float, grad_norm: float, lr: float, recent: list[dict], **extra) -> dict:
    """The diagnostics a ``TrainingDiverged`` carries: where it happened, why, and the last few history records."""
    return {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, **extra, "recent": recent}


def _last_steps(history: list[dict]) -> list[dict]:
    return [h for h in history if "loss" in h][-5:]


def train_loop(loss_module: nn.Module, model: nn.Module, train: list[Encoded], settings: LoopSettings, seeds: RunSeeds,
               out_dir: Path, *, pad_id: int, device: torch.device, dist: DistInfo = DistInfo(),
               validate: Callable[[], dict] | None = None, primary: str = "accuracy",
               on_best: Callable[[int, dict], None] | None = None, log: Callable[[dict], None] = lambda r: None,
               identity: str | None = None, health: Callable[[], dict] | None = None) -> LoopResult:
    """Train ``model`` (through ``loss_module``) on ``train``; resume from ``out_dir/checkpoints`` if present.

    ``validate()`` returns validation metrics; the best by ``primary`` triggers ``on_best(step, metrics)``.
    ``health()`` (``collapse.output_collapse`` against the starting model's outputs) runs before each
    validation: collapsed outputs, like a NaN
    loss or a loss above ``divergence_factor`` × the first step's, raise ``TrainingDiverged``.
    The caller's global torch RNG state is restored on return (the dropout stream lives in a fork).
    """
    S = settings
    accum = S.effective_batch // (S.micro_batch * dist.world_size)
    if accum < 1 or S.effective_batch != accum * S.micro_batch * dist.world_size:
        raise LorascopeError(f"effective_batch {S.effective_batch} is not micro_batch {S.micro_batch} × world "
                             f"{dist.world_size} × an integer accumulation")
    lengths = [len(e.input_ids) for e in train]
    steps_per_epoch = len(epoch_batches(lengths, S.effective_batch, seeds.data, 0))
    if steps_per_epoch == 0:
        raise LorascopeError(f"{len(train)} training examples are fewer than one batch of {S.effective_batch}")
    total = math.ceil(S.epochs * steps_per_epoch)
    if S.max_steps is not None:
        total = min(total, S.max_steps)  # a cap, never an extension
    eval_every = max(1, round(steps_per_epoch / S.evals_per_epoch)) if S.evals_per_epoch and validate else None
    ckpt_every = S.checkpoint_every or eval_every or total
    optimizer = make_optimizer(model, S.lr, S.weight_decay, device)
    warmup = math.ceil(S.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total))
    ckpt_root = out_dir / "checkpoints"
    params = [p for p in model.parameters() if p.requires_grad]
    result = LoopResult(steps=0, best_metric=None, best_step=None)

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        step = 0
        ckpt = latest_checkpoint(ckpt_root)
        if ckpt is not None:
            saved = json.loads((ckpt / "state.json").read_text())
            if saved.get("identity") != identity or saved.get("total_steps") != total:
                raise LorascopeError(
                    f"{ckpt} belongs to another run (different spec, config or data; or {saved.get('total_steps')} "
                    f"vs {total} total steps): refusing to resume from it. Use another --out or delete the folder."
                )
            state = load_checkpoint(ckpt, model, optimizer)
            _drop_best_beyond(out_dir, state["step"])
            scheduler.load_state_dict(state["scheduler"])
            step, result.best_metric, result.best_step = state["step"], state["best_metric"], state["best_step"]
            result.history = state["history"]
            log({"event": "resumed", "step": step, "checkpoint": ckpt.name})
        model.train()
        batches_cache: dict[int, list[list[int]]] = {}
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch not in batches_cache:
                batches_cache = {epoch: epoch_batches(lengths, S.effective_batch, seeds.data, epoch)}
            global_batch = batches_cache[epoch][pos]
            n_tgt = sum(_n_targets(train[i]) for i in global_batch)
            t0 = time.perf_counter()
            nll_sum = torch.zeros((), dtype=torch.float64, device=device)
            tokens = 0
            mbs = micro_batches(global_batch, S.micro_batch, dist.rank, dist.world_size)
            for k, mb in enumerate(mbs):
                ids, mask, labels = collate([train[i] for i in mb], pad_id, device)
                # Dropout masks depend on (seed, step, global micro-batch index) only, so 2 ranks draw
                # exactly the masks 1 rank with accumulation 2 draws, and resume needs no RNG replay.
                torch.manual_seed(micro_seed(seeds.dropout, step, dist.rank * len(mbs) + k))
                with grad_sync(loss_module, model, sync=k == len(mbs) - 1), autocast_ctx(device, S.bf16):
                    nll, _ = loss_module(ids, mask, labels)
                    # DDP averages gradients over ranks; × world_size turns that average back into the sum.
                    (nll * (dist.world_size / n_tgt)).backward()
                nll_sum += nll.detach().double()
                tokens += int(mask.sum())
            nll_sum = all_reduce_sum(nll_sum, dist)
            loss = float(nll_sum) / n_tgt
            lr = scheduler.get_last_lr()[0]
            norm = torch.nn.utils.clip_grad_norm_(params, S.grad_clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise TrainingDiverged(_diverged(step + 1, loss, grad_norm, lr, _last_steps(result.history)))
            first = next((h["loss"] for h in result.history if "loss" in h), None)
            exploded = loss_exploded(loss, first, S.divergence_factor)
            if exploded:
                raise TrainingDiverged(_diverged(step + 1, loss, grad_norm, lr, _last_steps(result.history),
                                                 reason=exploded))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            record = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": tokens * dist.world_size,
                "step_time_s": round(dt, 4),
            }
            if device.type == "cuda":
                record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            result.history.append(record)
            log(record)
            if eval_every and (step % eval_every == 0 or step == total):
                if health is not None:
                    diag = health()
                    if diag["collapsed"]:
                        raise TrainingDiverged(_diverged(step, loss, grad_norm, lr, result.history[-5:],
                                                         reason=diag["reason"], outputs=diag))
                metrics = validate()
                # Every rank must take the same decision (on_best is collective under FSDP): rank 0's.
                better = bool(broadcast_bool(result.best_metric is None or metrics[primary] > result.best_metric, dist))
                if better:
                    result.best_metric, result.best_step = metrics[primary], step
                    if on_best is not None:
                        on_best(step, metrics)
                entry = {"step": step, "split": "validation", **{k: v for k, v in metrics.items()}, "best": better}
                result.history.append(entry)
                log(entry)
            stop = S.stop_loss is not None and loss <= S.stop_loss
            if step % ckpt_every == 0 or step == total or stop:
                state = {
                    "step": step,
                    "best_metric": result.best_metric,
                    "best_step": result.best_step,
                    "scheduler": scheduler.state_dict(),
                    "history": result.history,
                    "seeds": seeds.as_dict(),
                    "settings": asdict(S),
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total,
                    "identity": identity,
                }
                save_checkpoint(ckpt_root, step, model, optimizer, state, write=dist.is_main)
            if stop:
                result.stopped_early = True
                break
    result.steps = step
    return result
