"""Start one backend for one scenario (§10), timing engine start and adapter load apart.

Scenarios: ``base`` (no LoRA machinery), ``merged`` (the first adapter merged into the weights),
``unmerged-1`` (the first adapter applied at run time), ``multi-k`` (the first k adapters of the pool).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lorascope.serve.adapters import adapter_name, load_lora
from lorascope.serve.types import Backend, ServeError

_MULTI = re.compile(r"^multi-(\d+)$")


def adapters_needed(scenario: str) -> int:
    """How many adapters the scenario keeps resident (merged: 1, folded into the weights)."""
    if scenario == "base":
        return 0
    if scenario in ("merged", "unmerged-1"):
        return 1
    m = _MULTI.match(scenario)
    if m is None or int(m.group(1)) < 1:
        raise ServeError(f"unknown scenario {scenario!r}; expected base, merged, unmerged-1 or multi-<k>")
    return int(m.group(1))


@dataclass
class Started:
    backend: Backend
    engine_start_s: float
    adapter_load_s: float
    adapter_names: list[str]  # the engine's adapter index → name (merged: the merged one)


@dataclass
class EngineSpec:
    """What every backend needs: a fresh HF model on demand (CPU, fp32), its folder, token ids, budgets."""

    load_hf: Callable[[], object]
    model_dir: Path | None
    device: torch.device
    dtype: torch.dtype
    eos_id: int | None
    pad_id: int
    max_prompt: int
    max_new: int
    cuda_graphs: bool = True
    merged_dir: Callable[[Path], Path] | None = None  # vllm merged: adapter folder → merged model folder
    seed: int = 0
    native_decode: str = "fused"  # the native engine's decode path: "fused" (Triton) or "addmm" (serve/native_model.py)


def start_engine(backend: str, scenario: str, pool: list[Path], spec: EngineSpec) -> Started:
    k = adapters_needed(scenario)
    if len(pool) < k:
        raise ServeError(f"{scenario} needs {k} adapters, the pool has {len(pool)}")
    dirs = pool[:k]
    names = [adapter_name(p) for p in dirs]
    if backend == "native":
        return _start_native(scenario, dirs, names, spec)
    if backend == "hf-peft":
        return _start_hf(scenario, dirs, names, spec)
    if backend == "vllm":
        return _start_vllm(scenario, dirs, names, spec)
    raise ServeError(f"unknown backend {backend!r}")


def _start_native(scenario: str, dirs: list[Path], names: list[str], spec: EngineSpec) -> Started:
    from lorascope.serve.native import NativeBackend

    t0 = time.perf_counter()
    loras = [load_lora(d, n) for d, n in zip(dirs, names)]
    load_s = time.perf_counter() - t0 if dirs else 0.0
    t0 = time.perf_counter()
    merged = scenario == "merged"
    engine = NativeBackend(spec.load_hf(), adapters=None if merged else loras, merge=loras[0] if merged else None,
                           dtype=spec.dtype, device=spec.device, eos_id=spec.eos_id, pad_id=spec.pad_id,
                           max_prompt=spec.max_prompt, max_new=spec.max_new, cuda_graphs=spec.cuda_graphs,
                           decode=spec.native_decode)
    return Started(engine, time.perf_counter() - t0, load_s, names)


def _start_hf(scenario: str, dirs: list[Path], names: list[str], spec: EngineSpec) -> Started:
    from lorascope.serve.hf_peft import HFPeftBackend

    t0 = time.perf_counter()
    plain = HFPeftBackend(spec.load_hf(), dtype=spec.dtype, device=spec.device, eos_id=spec.eos_id,
                          pad_id=spec.pad_id)
    start_s = time.perf_counter() - t0
    if not dirs:
        return Started(plain, start_s, 0.0, [])
    t0 = time.perf_counter()  # PEFT wraps the loaded model: the difference is the adapters' load (and merge)
    engine = HFPeftBackend(plain.model, adapter_dirs=[str(d) for d in dirs], merge=scenario == "merged",
                           dtype=spec.dtype, device=spec.device, eos_id=spec.eos_id, pad_id=spec.pad_id)
    return Started(engine, start_s, time.perf_counter() - t0, names)


def _start_vllm(scenario: str, dirs: list[Path], names: list[str], spec: EngineSpec) -> Started:
    from lorascope.serve.vllm_backend import VLLMBackend

    if spec.model_dir is None:
        raise ServeError("the vllm backend needs the model as a folder")
    model_dir = spec.model_dir
    if scenario == "merged":
        if spec.merged_dir is None:
            raise ServeError("vllm merged needs a merged model folder")
        model_dir, dirs = spec.merged_dir(dirs[0]), []
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[spec.dtype]
    t0 = time.perf_counter()
    rank = load_lora(dirs[0]).r if dirs else 8
    engine = VLLMBackend(model_dir, adapter_dirs=dirs, rank=rank, dtype=dtype, eos_id=spec.eos_id,
                         max_len=spec.max_prompt + spec.max_new, seed=spec.seed,
                         enforce_eager=spec.device.type == "cpu" or not spec.cuda_graphs)
    total = time.perf_counter() - t0
    return Started(engine, total - engine.adapter_load_s, engine.adapter_load_s, names)
