"""Causal LM loading by hub id or local folder (§2): dtype, SDPA attention, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorascope.config.schema import ModelConfig
from lorascope.models.tokenizer import ModelLoadError, _looks_local

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}")
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{folder}: no config.json — not a Hugging Face model folder")
    try:
        json.loads(cfg.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{cfg}: malformed JSON ({exc})") from None
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelLoadError(f"{folder}: no weight files (*.safetensors)")


def load_causal_lm(cfg: ModelConfig, device: str | torch.device = "cpu"):
    """Load weights in ``cfg.dtype`` (fp32 master weights by default; autocast handles bf16 compute)."""
    from transformers import AutoModelForCausalLM

    name = cfg.name_or_path
    if _looks_local(name):
        folder = Path(name).expanduser()
        _check_folder(folder)
        name = str(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, revision=cfg.revision, dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation,
            use_safetensors=True if _looks_local(cfg.name_or_path) else None,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load model {cfg.name_or_path!r}: {exc}") from None
    return model.to(device)
