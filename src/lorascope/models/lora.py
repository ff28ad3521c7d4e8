"""LoRA through PEFT (§5): r, α, dropout and target modules from config; presets ``lora`` / ``lora_qv``."""

from __future__ import annotations

import torch

from lorascope.config.schema import LoRAConfig

PRESETS = {
    # All linear layers of every Llama block (the study's default, §5).
    "lora": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # The original LoRA paper's choice (Hu et al. 2022, §4.2): query and value projections only.
    "lora_qv": ["q_proj", "v_proj"],
}


def target_modules(cfg: LoRAConfig, method: str = "lora") -> list[str]:
    """``lora_qv`` (the ablation) is always q,v; ``lora`` uses ``target_modules`` if set, else ``preset``."""
    if method == "lora_qv":
        return PRESETS["lora_qv"]
    return list(cfg.target_modules) if cfg.target_modules else PRESETS[cfg.preset]


def apply_lora(model, cfg: LoRAConfig, *, init_seed: int, method: str = "lora"):
    """Wrap ``model`` with a PEFT LoRA adapter named ``default``; A is initialised from ``init_seed``.

    PEFT draws the A matrices from torch's global generator; the draw happens inside ``fork_rng`` so the
    caller's global RNG state is left exactly as it was.
    """
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=target_modules(cfg, method), bias="none", task_type="CAUSAL_LM")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(init_seed)
        return get_peft_model(model, peft_cfg)
