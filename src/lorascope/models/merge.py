"""Merge a PEFT LoRA adapter into its base model and write a plain HF model folder (§10 ``merged``)."""

from __future__ import annotations

from pathlib import Path

from lorascope.config.schema import ModelConfig
from lorascope.io import atomic_dir
from lorascope.models.load import load_causal_lm
from lorascope.models.tokenizer import ModelLoadError, tokenizer_for


def load_adapter(model_cfg: ModelConfig, adapter_dir: str | Path, device="cpu"):
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter_dir}: no adapter_config.json — not a PEFT adapter folder")
    base = load_causal_lm(model_cfg, device)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)


def merge_adapter(model_cfg: ModelConfig, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """W ← W + (α/r)·B·A for every adapted module; saved with the tokenizer (safetensors), atomically."""
    out_dir = Path(out_dir)
    merged = load_adapter(model_cfg, adapter_dir).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer_for(model_cfg).save_pretrained(tmp)
    return out_dir


def load_tuned(model_cfg: ModelConfig, saved: str | Path, method: str, device="cpu"):
    """A final run's model for analysis from its saved folder (``results.layout.saved_model_dir``): FT's model,
    or the LoRA adapter merged into the base (equal outputs to the unmerged adapter up to rounding — tested —
    and one matmul per layer cheaper)."""
    if method == "ft":
        return load_causal_lm(model_cfg.model_copy(update={"name_or_path": str(saved)}), device)
    return load_adapter(model_cfg, saved, device).merge_and_unload()
