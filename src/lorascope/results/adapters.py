"""The one reader of PEFT LoRA adapter folders (a LoRA run's ``adapter/``, or a perturbed serving copy).

The config is read by PEFT itself (``LoraConfig.from_pretrained``), and each module's rank and α come from
``rank_pattern`` / ``alpha_pattern`` by PEFT's own matching rule (``peft.utils.other.get_pattern_key``), so
ΔW = s·B·A here is exactly what ``merge_and_unload()`` adds to W (``peft.tuners.lora.layer.Linear
.get_delta_weight``; Hu et al. 2022, eq. 3): s = α/r, or α/√r with ``use_rslora`` (Kalajdzievski 2023), and
B·A transposed when ``fan_in_fan_out``. DoRA (its merge rescales W's columns) and ``lora_bias`` (it also
changes biases) are refused. Tensors are read from ``adapter_model.safetensors`` (or ``.bin``).

Consumers: the §9 weights stage (ΔW from the factors) and the §10 serving engines (which serve plain
adapters only: one r and one scaling for every module).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lorascope.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
_LORA_A = re.compile(r"^(?:base_model\.model\.)?(?P<name>.+)\.lora_A(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def parse_module_name(name: str) -> tuple[int | None, str]:
    """(decoder layer index or None, module type = last name component) of a module name."""
    m = _LAYER.search(name)
    return (int(m.group(1)) if m else None), name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class AdapterModule:
    """One adapted Linear: ΔW = scaling · b @ a, shapes b (out × r), a (r × in), already transposed for
    ``fan_in_fan_out``. ``name`` is the module's name in the plain model (``model.layers.3.self_attn.q_proj``)."""

    name: str
    layer: int | None
    module_type: str
    a: torch.Tensor
    b: torch.Tensor
    r: int
    alpha: float
    scaling: float


@dataclass(frozen=True)
class Adapter:
    folder: Path
    config: object  # peft.LoraConfig
    modules: tuple[AdapterModule, ...]

    @property
    def plain(self) -> bool:
        """One rank and one scaling for every module (what the serving engines stack)."""
        return len({m.r for m in self.modules}) == 1 and len({m.scaling for m in self.modules}) == 1


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def _config(folder: Path):
    from peft import LoraConfig

    if not is_adapter_folder(folder):
        raise AdapterError(f"{folder}: no {CONFIG_FILE} — not a PEFT adapter folder")
    try:
        cfg = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, KeyError) as exc:
        raise AdapterError(f"{folder / CONFIG_FILE}: not a LoRA adapter config PEFT can read ({exc})") from None
    if str(getattr(cfg, "peft_type", "LORA")).upper().split(".")[-1] != "LORA":
        raise AdapterError(f"{folder / CONFIG_FILE}: peft_type {cfg.peft_type} is not LORA")
    if getattr(cfg, "use_dora", False):
        raise AdapterError(f"{folder / CONFIG_FILE}: DoRA adapters are not supported (ΔW is not s·B·A)")
    if getattr(cfg, "lora_bias", False):
        raise AdapterError(f"{folder / CONFIG_FILE}: adapters with lora_bias are not supported (the merge also "
                           "changes biases)")
    return cfg


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))  # an adapter is small: r·(m + n) per module
    if pt.is_file():
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise AdapterError(f"{folder}: no adapter_model.safetensors")


def _rank_alpha(cfg, name: str) -> tuple[int, float]:
    from peft.utils.other import get_pattern_key

    r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), name), cfg.r) if cfg.rank_pattern else cfg.r
    alpha = (cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), name), cfg.lora_alpha)
             if cfg.alpha_pattern else cfg.lora_alpha)
    return int(r), float(alpha)


def read_adapter(folder: str | Path) -> Adapter:
    """Every adapted module of a PEFT LoRA folder, in the file's key order (callers sort as they need)."""
    folder = Path(folder)
    cfg = _config(folder)
    tensors = _tensors(folder)
    modules = []
    for key in tensors:
        m = _LORA_A.match(key)
        if m is None:
            continue
        b_key = key.replace(".lora_A", ".lora_B")
        if b_key not in tensors:
            raise AdapterError(f"{folder}: {key} has no matching {b_key}")
        name = m.group("name")
        a, b = tensors[key].float(), tensors[b_key].float()
        r, alpha = _rank_alpha(cfg, name)
        if a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{folder}: {name} has A {tuple(a.shape)}, B {tuple(b.shape)} but r = {r}")
        if getattr(cfg, "fan_in_fan_out", False):
            b, a = a.T.contiguous(), b.T.contiguous()  # (s·B·A)ᵀ = s·Aᵀ·Bᵀ
        scaling = alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else alpha / r
        modules.append(AdapterModule(name, *parse_module_name(name), a, b, r, alpha, float(scaling)))
    if not modules:
        raise AdapterError(f"{folder}: no lora_A/lora_B weights found")
    return Adapter(folder, cfg, tuple(modules))
