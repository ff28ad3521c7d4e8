"""Checkpoints: atomic, complete, loadable without unpickling (safetensors + ``weights_only=True``).

Layout of ``checkpoints/step-000123/``:
  ``weights.safetensors``  trainable tensors, full (FT: the whole model; LoRA: the adapter)
  ``optimizer.pt``         AdamW state keyed by parameter name (``torch.load(weights_only=True)``)
  ``rng.safetensors``      torch CPU/CUDA generator states (dropout stream)
  ``state.json``           step, epoch, position, scheduler, best metric, history, seeds

A checkpoint is written to a temporary folder and renamed into place; ``LATEST`` names the newest
complete one, so a process killed mid-write leaves the previous checkpoint intact.

States are *full* (gathered with ``torch.distributed.checkpoint.state_dict``, also under FSDP) and keyed by
parameter name, so a checkpoint does not depend on the world size: single, DDP and FSDP runs resume from
each other's checkpoints. Gathering is collective under FSDP: every rank calls ``save_checkpoint``; only
the one with ``write=True`` writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lorascope.io import atomic_write_json, atomic_write_text

LATEST = "LATEST"


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable tensors on CPU; collective under FSDP (non-zero ranks get ``{}``)."""
    names = trainable_names(model)
    return {n: t.contiguous() for n, t in get_model_state_dict(model, options=_FULL).items() if n in names}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    names = trainable_names(model)
    missing = sorted(names - set(tensors))
    unknown = sorted(set(tensors) - {n for n, _ in model.named_parameters()})
    if missing or unknown:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unknown[:3]}")
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(root: Path, step: int, model, optimizer, state: dict, keep: int = 2, write: bool = True) -> Path:
    """Write ``root/step-{step}`` atomically, point ``LATEST`` at it, and prune older ones (keep ``keep``)."""
    weights = trainable_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=_FULL)
    final = root / f"step-{step:06d}"
    if not write:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, tmp / "weights.safetensors")
    torch.save(optim, tmp / "optimizer.pt")
    save_file(_rng_tensors(), tmp / "rng.safetensors")
    atomic_write_json(tmp / "state.json", state)
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, final.name + "\n")
    older = sorted(p for p in root.glob("step-*") if p != final)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG state; return the saved ``state.json`` dict."""
    load_trainable_state(model, load_file(path / "weights.safetensors"))
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(full_state_dict=True))
    _restore_rng(load_file(path / "rng.safetensors"))
    return json.loads((path / "state.json").read_text())
