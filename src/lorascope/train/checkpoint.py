"""Checkpoints: atomic, complete, loadable without unpickling (safetensors + ``weights_only=True``).

Layout of ``checkpoints/step-000123/``:
  ``weights.safetensors``  trainable tensors (FT: the whole model; LoRA: the adapter)
  ``optimizer.pt``         AdamW state (``torch.load(weights_only=True)``)
  ``rng.safetensors``      torch CPU/CUDA generator states (dropout stream)
  ``state.json``           step, epoch, position, scheduler, best metric, history, seeds

A checkpoint is written to a temporary folder and renamed into place; ``LATEST`` names the newest
complete one, so a process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lorascope.io import atomic_write_json, atomic_write_text

LATEST = "LATEST"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unknown[:3]}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


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


def save_checkpoint(root: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Write ``root/step-{step}`` atomically, point ``LATEST`` at it, and prune older ones (keep ``keep``)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), tmp / "weights.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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
    device = next(model.parameters()).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    _restore_rng(load_file(path / "rng.safetensors"))
    return json.loads((path / "state.json").read_text())
