"""LoRA adapters for serving: read PEFT folders, write seeded perturbed copies and random test adapters.

Every adapter the benchmark serves is a PEFT folder on disk, so every backend (vLLM needs paths) loads the
same bytes. Perturbed copies stand in for "more tenants" in ``multi-k`` (§10): T' = T + s·rms(T)·ε with
ε ~ N(0, 1) from a seeded ``torch.Generator``, so the noise's relative Frobenius norm is ≈ s.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lorascope.results import layout
from lorascope.serve.types import ServeError

LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraWeights:
    """One adapter: ``pairs[(layer, module)] = (A (r, d_in), B (d_out, r))`` and its scaling α/r."""

    name: str
    path: Path
    r: int
    scaling: float
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def adapter_name(path: Path) -> str:
    """A served adapter's name: its run folder's name for a run's ``adapter/`` folder, else the folder's own."""
    return path.parent.name if path.name == layout.ADAPTER else path.name


def load_lora(folder: str | Path, name: str | None = None) -> LoraWeights:
    """A PEFT LoRA folder for serving, through the one adapter reader (``results.adapters``). The engines stack
    every resident adapter, so only plain LoRA (one rank and one scaling for every module) of Llama's linear
    layers is served; DoRA, rank / alpha patterns and other modules are refused."""
    from lorascope.errors import AdapterError
    from lorascope.results.adapters import read_adapter

    folder = Path(folder)
    try:
        adapter = read_adapter(folder)
    except AdapterError as exc:
        raise ServeError(str(exc)) from None
    if not adapter.plain:
        raise ServeError(f"{folder}: only plain LoRA adapters (one r and one α for every module) can be served")
    other = [m.name for m in adapter.modules if m.layer is None or m.module_type not in LLAMA_MODULES]
    if other:
        raise ServeError(f"{folder}: unexpected module {other[0]} (only Llama linear LoRA layers are served)")
    pairs = {(m.layer, m.module_type): (m.a, m.b) for m in adapter.modules}
    first = adapter.modules[0]
    return LoraWeights(name=name or folder.name, path=folder, r=first.r, scaling=first.scaling, pairs=pairs)


def perturbed_copy(src: str | Path, dst: str | Path, scale: float, generator: torch.Generator) -> Path:
    """Copy a PEFT folder, adding seeded noise of relative scale ``scale`` to every LoRA tensor (in key order)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    tensors = load_file(str(src / "adapter_model.safetensors"))
    noisy = {}
    for key in sorted(tensors):
        t = tensors[key].float()
        rms = t.pow(2).mean().sqrt()
        noisy[key] = (t + scale * rms * torch.randn(t.shape, generator=generator)).to(tensors[key].dtype).contiguous()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(noisy, str(dst / "adapter_model.safetensors"))
    shutil.copy2(src / "adapter_config.json", dst / "adapter_config.json")
    return dst


def adapter_pool(task_adapters: list[Path], k: int, out_dir: Path, scale: float, seed: int) -> list[Path]:
    """``k`` adapter folders: the task adapters first, then perturbed copies of them, round-robin (§10)."""
    if not task_adapters:
        raise ServeError("no LoRA adapters to serve")
    gen = torch.Generator().manual_seed(seed)
    pool = list(task_adapters[:k])
    for i in range(len(pool), k):
        src = task_adapters[i % len(task_adapters)]
        pool.append(
            perturbed_copy(
                src, out_dir / f"{adapter_name(src)}-perturbed{i}", scale, gen
            )
        )
    return pool


def module_shapes(config) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of each Llama linear module, from a transformers ``LlamaConfig``."""
    d, inter = config.hidden_size, config.intermediate_size
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {
        "q_proj": (q, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "o_proj": (d, q),
        "gate_proj": (inter, d),
        "up_proj": (inter, d),
        "down_proj": (d, inter),
    }


def random_adapter(
    config,
    dst: str | Path,
    seed: int,
    *,
    r: int = 8,
    alpha: float = 16.0,
    std: float = 0.5,
    target_modules: tuple[str, ...] = LLAMA_MODULES,
    base: str = "",
) -> Path:
    """Write a PEFT-format adapter with seeded random NONZERO A and B for a Llama ``config``. A zero B (PEFT's
    default init) would make every serving test pass trivially. A ~ N(0, std²/d_in), B ~ N(0, std²/r).
    Written directly (no model copy, no global RNG): PEFT's own keys and config fields."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    shapes = module_shapes(config)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module in target_modules:
            d_out, d_in = shapes[module]
            block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, d_in, generator=gen) * std / d_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(d_out, r, generator=gen) * std / r**0.5
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": base,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (dst / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return dst
