"""ΔW per adapted module (§9) for FT and LoRA, one module at a time, and the per-module / per-layer report.

- FT: ΔW = W_tuned − W_base for the Linear weights of every decoder block (q, k, v, o, gate, up, down;
  names like ``model.layers.3.self_attn.q_proj``), read from two models, two state dicts, or two HF
  folders / ``.safetensors`` files (opened lazily with ``safe_open``: one tensor in memory at a time).
- LoRA: ΔW = s·B·A from a PEFT adapter folder, read by ``lorascope.results.adapters`` (PEFT's own config
  loading and pattern rules: exactly what ``merge_and_unload()`` adds to W; the test suite checks it against
  PEFT).

Both are generators of ``ModuleDelta(name, base, delta)`` (float64 by default), so memory stays at one
module's matrices even for a 1.3B model. ``lora_factors`` yields LoRA modules as ``LoraFactors(name, base,
b, a, scaling)`` instead, so that ``weights_reports`` takes ΔW's spectrum from the factors (``spectra``).

``weights_reports`` has two paths that compute the same report: "fast" (the default; float64 Gram
eigendecompositions and LoRA factors, ``spectra``) and "reference" (a float64 SVD of every matrix, the
definition). ``benchmarks/weights_gpu.py`` times the first at 1.3B and checks it against the second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union

import torch

from lorascope.models.tokenizer import ModelLoadError
from lorascope.results.adapters import parse_module_name
from lorascope.weights.intruders import intruder_dimensions, left_singular_vectors
from lorascope.weights.metrics import module_report
from lorascope.weights.prefetch import Prefetched
from lorascope.weights.spectra import gram_or_svd_singular_values, left_singular_basis, lowrank_singular_values

LLAMA_MODULE_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModuleDelta(NamedTuple):
    name: str              # module name in the plain model, e.g. "model.layers.3.self_attn.q_proj"
    base: torch.Tensor     # W_base (out × in)
    delta: torch.Tensor    # ΔW (out × in)


class LoraFactors(NamedTuple):
    """A LoRA module as its factors: ΔW = scaling · b @ a (already transposed for ``fan_in_fan_out``)."""

    name: str
    base: torch.Tensor     # W_base (out × in)
    b: torch.Tensor        # out × r
    a: torch.Tensor        # r × in
    scaling: float

    def as_delta(self) -> ModuleDelta:
        return ModuleDelta(self.name, self.base, self.scaling * (self.b @ self.a))


WeightItem = Union[ModuleDelta, LoraFactors]


def _to(t: torch.Tensor, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Move, then cast: a CPU→GPU ``.to(device, dtype)`` converts on the CPU and ships the wider type."""
    return t.detach().to(device=device).to(dtype=dtype)


def _normalize(key: str) -> str:
    """A parameter name as in the plain model: drop PEFT's ``base_model.model.`` and ``.base_layer``."""
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    return key.replace(".base_layer.", ".")


class WeightSource:
    """Read-only named tensors from an ``nn.Module``, a state dict, or an HF folder / safetensors file."""

    def __init__(self, src: Any):
        self._tensors: dict[str, torch.Tensor] | None = None
        self._files: dict[str, tuple[Path, str]] = {}  # normalized name -> (file, stored name)
        if isinstance(src, torch.nn.Module):
            src = src.state_dict()  # references to the parameters, no copy
        if isinstance(src, Mapping):
            self._tensors = {_normalize(k): v for k, v in src.items() if "lora_" not in k}
            return
        path = Path(src)
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
        if not files:
            raise ModelLoadError(f"{path}: no .safetensors weights (need a model, a state dict or a folder)")
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    if "lora_" not in k:
                        self._files[_normalize(k)] = (f, k)

    def keys(self) -> list[str]:
        return list(self._tensors) if self._tensors is not None else list(self._files)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors if self._tensors is not None else key in self._files

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        from safetensors import safe_open

        f, stored = self._files[key]
        with safe_open(str(f), framework="pt") as h:  # memory-mapped: only this tensor is read
            return h.get_tensor(stored)


def module_order_key(name: str) -> tuple[int, int, str]:
    """Sort key of every ΔW generator here: decoder layer, then q, k, v, o, gate, up, down, then name."""
    layer, mtype = parse_module_name(name)
    rank = LLAMA_MODULE_TYPES.index(mtype) if mtype in LLAMA_MODULE_TYPES else len(LLAMA_MODULE_TYPES)
    return (layer if layer is not None else -1, rank, name)


def ft_deltas(base: Any, tuned: Any, *, module_types: Iterable[str] = LLAMA_MODULE_TYPES,
              dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Iterator[ModuleDelta]:
    """ΔW = W_tuned − W_base for every decoder-block Linear whose type is in ``module_types``."""
    types = tuple(module_types)
    b, t = WeightSource(base), WeightSource(tuned)
    names = [k[: -len(".weight")] for k in b.keys() if k.endswith(".weight")]
    names = [n for n in names if parse_module_name(n)[0] is not None and parse_module_name(n)[1] in types]
    if not names:
        raise ModelLoadError(f"no decoder-layer Linear weights of types {types} in the base weights")
    for name in sorted(names, key=module_order_key):
        key = name + ".weight"
        if key not in t:
            raise ModelLoadError(f"tuned weights lack {key}")
        wb = _to(b.get(key), device, dtype)
        wt = _to(t.get(key), device, dtype)
        if wb.shape != wt.shape:
            raise ModelLoadError(f"{key}: base shape {tuple(wb.shape)} vs tuned {tuple(wt.shape)}")
        yield ModuleDelta(name, wb, wt - wb)


def lora_factors(adapter_dir: str | Path, base: Any, *, module_types: Iterable[str] | None = None,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Iterator[LoraFactors]:
    """``LoraFactors`` (W_base, B, A, s) for every LoRA-adapted Linear of the adapter (or those of ``module_types``),
    read by the one adapter reader (``results.adapters``: PEFT's config and pattern rules)."""
    from lorascope.errors import AdapterError
    from lorascope.results.adapters import read_adapter

    try:
        adapter = read_adapter(adapter_dir)
    except AdapterError as exc:
        raise ModelLoadError(str(exc)) from None
    wanted = None if module_types is None else set(module_types)
    modules = [m for m in adapter.modules if wanted is None or m.module_type in wanted]
    if not modules:
        raise ModelLoadError(f"{adapter_dir}: no lora_A/lora_B weights found")
    src = WeightSource(base)
    for m in sorted(modules, key=lambda m: module_order_key(m.name)):
        if m.name + ".weight" not in src:
            raise ModelLoadError(f"base weights lack {m.name}.weight (adapter {adapter_dir})")
        wb = _to(src.get(m.name + ".weight"), device, dtype)
        if wb.shape != (m.b.shape[0], m.a.shape[1]):
            raise ModelLoadError(f"{m.name}: base shape {tuple(wb.shape)} vs ΔW {(m.b.shape[0], m.a.shape[1])}")
        yield LoraFactors(m.name, wb, _to(m.b, device, dtype), _to(m.a, device, dtype), m.scaling)


def lora_deltas(adapter_dir: str | Path, base: Any, *, module_types: Iterable[str] | None = None,
                dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Iterator[ModuleDelta]:
    """ΔW = s·B·A for every LoRA-adapted Linear of the adapter (or those of ``module_types``)."""
    for f in lora_factors(adapter_dir, base, module_types=module_types, dtype=dtype, device=device):
        yield f.as_delta()


_LAYER_MEANS = ("effective_rank", "stable_rank", "rank_at_energy", "hoyer_sparsity", "relative_frobenius_norm")


def summarize_layers(modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per decoder layer: ‖ΔW‖_F and ‖ΔW‖_F/‖W‖_F over the layer's modules taken together, means of the
    per-module ranks / sparsity, the parameter-weighted near-zero fraction, and the intruder total."""
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for m in modules:
        by_layer.setdefault(m["layer"], []).append(m)
    out = []
    for layer in sorted(by_layer, key=lambda v: (v is None, v if v is not None else 0)):
        ms = by_layer[layer]
        fro2 = sum(m["frobenius_norm"] ** 2 for m in ms)
        base2 = sum(m["base_frobenius_norm"] ** 2 for m in ms)
        n = sum(m["n_params"] for m in ms)
        row: dict[str, Any] = {"layer": layer, "n_modules": len(ms), "module_types": [m["module_type"] for m in ms],
                               "frobenius_norm": math.sqrt(fro2),
                               "relative_frobenius_norm_layer": math.sqrt(fro2 / base2) if base2 > 0 else 0.0}
        for key in _LAYER_MEANS:
            row["mean_" + key] = sum(m[key] for m in ms) / len(ms)
        row["near_zero_fraction"] = sum(m["near_zero_fraction"] * m["n_params"] for m in ms) / n
        if all("intruders" in m for m in ms):
            row["intruders"] = sum(m["intruders"] for m in ms)
            row["intruders_examined"] = sum(m["intruder_detail"]["k"] for m in ms)
        out.append(row)
    return out


PATHS = ("fast", "reference")


def _module_entry(item: WeightItem, u_base: torch.Tensor | None, s: Mapping[str, Any]) -> dict[str, Any]:
    """One module's report. "fast": σ of ΔW from the Gram (FT) or the factors (LoRA), ``spectra``;
    "reference": the float64 SVD of ΔW. ΔW itself is formed in float64 either way (sparsity needs its entries)."""
    if isinstance(item, LoraFactors):
        b, a = item.b.to(torch.float64), item.a.to(torch.float64)
        base, delta = item.base.to(torch.float64), item.scaling * (b @ a)
        fast = s["path"] == "fast"
        sigma, route = (lowrank_singular_values(b, a, item.scaling), "lowrank") if fast else (None, "svd")
    else:
        base, delta = item.base.to(torch.float64), item.delta.to(torch.float64)
        sigma, route = gram_or_svd_singular_values(delta) if s["path"] == "fast" else (None, "svd")
    layer, mtype = parse_module_name(item.name)
    rep = {
        "name": item.name,
        "layer": layer,
        "module_type": mtype,
        **module_report(
            base,
            delta=delta,
            sigma=sigma,
            near_zero_factor=s["near_zero_factor"],
            energy_threshold=s["energy_threshold"],
        ),
        "spectrum_route": route,
    }
    if u_base is not None:
        res = intruder_dimensions(
            None, base + delta, k=s["intruder_k"], epsilon=s["epsilon"], U_base=u_base, method=s["intruder_method"]
        )
        rep["intruders"] = res.count
        rep["intruder_detail"] = res.to_dict()
    return rep


def _on_device(item: WeightItem, device: str | torch.device | None) -> WeightItem:
    if device is None:
        return item
    if isinstance(item, LoraFactors):
        return item._replace(base=item.base.to(device), b=item.b.to(device), a=item.a.to(device))
    return item._replace(base=item.base.to(device), delta=item.delta.to(device))


def weights_reports(
    deltas_by_label: Mapping[str, Iterable[WeightItem]],
    *,
    intruder_k: int = 10,
    epsilon: float = 0.5,
    near_zero_factor: float = 1e-3,
    energy_threshold: float = 0.9,
    intruder_method: str = "auto",
    intruders: bool = True,
    device: str | torch.device | None = None,
    path: str = "fast",
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``weights_report`` for several tuned models of ONE base (e.g. FT and LoRA, several seeds), walked in
    lockstep in ``module_order_key`` order so that W_base's singular vectors are computed once per module and
    shared. Items are ``ModuleDelta`` (FT; or LoRA formed) or ``LoraFactors`` (LoRA, exact low-rank spectrum).
    Memory: a few modules per model at a time (read ahead in a thread). Raises if two models disagree on W_base.

    ``path``: "fast" (``spectra``: Gram eigendecompositions, LoRA factors) or "reference" (float64 SVDs).
    Measured (Sheared-LLaMA-1.3B shapes, random weights, one H200): the reference path takes ~12 s per layer
    for FT + LoRA (~5 min per task); the fast path: docs/benchmarks.md (benchmarks/weights_gpu.py).
    """
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: use one of {PATHS}")
    settings = {
        "intruder_k": intruder_k,
        "epsilon": epsilon,
        "near_zero_factor": near_zero_factor,
        "energy_threshold": energy_threshold,
        "intruder_method": intruder_method,
        "intruders": intruders,
        "path": path,
    }
    streams = {label: Prefetched(d, lambda item: _on_device(item, device)) for label, d in deltas_by_label.items()}
    modules: dict[str, list[dict[str, Any]]] = {label: [] for label in streams}
    try:
        heads = {label: st.next() for label, st in streams.items()}
        while any(h is not None for h in heads.values()):
            name = min((h.name for h in heads.values() if h is not None), key=module_order_key)
            first: torch.Tensor | None = None
            u_base = None
            for label, item in heads.items():
                if item is None or item.name != name:
                    continue
                if first is None:
                    first = item.base
                    if intruders:
                        u_base = left_singular_basis(first) if path == "fast" else left_singular_vectors(first)
                elif not torch.equal(first, item.base.to(first.device, first.dtype)):
                    raise ValueError(f"{name}: the models in deltas_by_label do not share W_base")
                modules[label].append(_module_entry(item, u_base, settings))
                if progress is not None:
                    progress(label, name)
                heads[label] = streams[label].next()
    finally:
        for st in streams.values():
            st.close()
    return {
        label: {"modules": mods, "layers": summarize_layers(mods), "settings": dict(settings)}
        for label, mods in modules.items()
    }


def weights_report(deltas: Iterable[WeightItem], **kwargs: Any) -> dict[str, Any]:
    """The §9 report of one tuned model: ``{"modules": [...], "layers": [...], "settings": {...}}``.

    Each module dict holds ``module_report``'s metrics (singular values and energy curve included), plus
    ``name``, ``layer``, ``module_type`` and, unless ``intruders=False``, ``intruders`` = the count among
    the top ``intruder_k`` left singular vectors of W_base + ΔW, with per-vector max |cos| in
    ``intruder_detail``. ``device``: where the linear algebra runs (e.g. "cuda"). Keywords as
    ``weights_reports``; ``progress`` is called with ("", module name).
    """
    return weights_reports({"": deltas}, **kwargs)[""]
