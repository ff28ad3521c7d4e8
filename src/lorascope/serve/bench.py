"""The benchmark loop (§10): for each backend × scenario, start an engine, gate it on correctness, then
time every batch size × output mode cell. Needs no pydantic: settings come as a plain ``BenchSettings``.

Request stream of a cell: batch j holds requests j·b … j·b+b−1; request g uses prompt g mod |pool| and, in
``multi-k``, adapter g mod k (round-robin, recorded per request). The first ``warmup`` batches are untimed;
then ⌈requests / b⌉ batches are timed, so every cell has ≥ ``requests`` timed requests.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from lorascope.serve.correctness import Reference, check_backend
from lorascope.serve.engines import EngineSpec, Started, adapters_needed, start_engine
from lorascope.serve.gate import gate_cell
from lorascope.serve.timing import memory_snapshot, request_records, reset_peak, summarize
from lorascope.serve.types import ServeError

Progress = Callable[[str], None] | None


@dataclass
class BenchSettings:
    backends: Sequence[str]
    scenarios: Sequence[str]
    batch_sizes: Sequence[int]
    output_modes: Sequence[str]
    new_tokens: int
    requests: int
    warmup: int
    correctness_prompts: int


def _row_adapters(scenario: str, start: int, b: int) -> list[int | None] | None:
    k = adapters_needed(scenario)
    if scenario in ("base", "merged"):
        return None
    return [(start + i) % k for i in range(b)]


def _label(started: Started, scenario: str, slot: int | None) -> str | None:
    if scenario == "merged":
        return f"merged:{started.adapter_names[0]}"
    return None if slot is None else started.adapter_names[slot]


def _gate(started: Started, scenario: str, reference: Reference, prompts: list[list[int]], new_tokens: int,
          modes: Sequence[str]) -> str | None:
    """Greedy equality with the fp32 reference on fixed prompts, as one (mixed) batch, in each output mode.

    The batch has at least one row per resident adapter (prompts reused round-robin), so every adapter a
    ``multi-k`` cell will serve is checked, not only the first ``len(prompts)``."""
    rows = max(len(prompts), adapters_needed(scenario))
    prompts = [prompts[i % len(prompts)] for i in range(rows)]
    ids = _row_adapters(scenario, 0, rows)
    ref_ids = [0] * len(prompts) if scenario == "merged" else (ids or [None] * len(prompts))
    for mode in modes:
        bad = check_backend(started.backend, reference, prompts, ids, ref_ids, new_tokens, mode == "natural")
        if bad is not None:
            return f"correctness gate ({mode}): {bad}"
    return None


def _forced_gate(started: Started, scenario: str, reference: Reference, prompts: list[list[int]], b: int,
                 new_tokens: int, dtype: torch.dtype) -> dict | None:
    """The teacher-forced gate of the timed low-precision engine at batch size b (its own graph): on logits, or for
    vLLM on its log-probabilities of its own greedy tokens (``gate.py``); None when the engine is fp32 (its greedy
    tokens are the gate) or can return neither."""
    backend = started.backend
    if dtype == torch.float32 or not (hasattr(backend, "forced_logits") or hasattr(backend, "decode_logprobs")):
        return None
    k = 0 if scenario in ("base", "merged") else adapters_needed(scenario)
    return gate_cell(backend, reference, prompts, k, b, new_tokens, dtype,
                     merged=scenario == "merged").summary()


def time_cell(started: Started, scenario: str, prompts: list[list[int]], b: int, mode: str,
              s: BenchSettings, device: torch.device) -> dict:
    """Warm up, then time ⌈requests/b⌉ batches; returns the cell's requests, summary and memory."""
    stop = mode == "natural"
    n_timed = math.ceil(s.requests / b)
    reset_peak(device)
    requests, walls = [], []
    for j in range(s.warmup + n_timed):
        start = j * b
        batch = [prompts[(start + i) % len(prompts)] for i in range(b)]
        ids = _row_adapters(scenario, start, b)
        t0 = time.perf_counter()
        gen = started.backend.generate(batch, ids, s.new_tokens, stop)
        wall = time.perf_counter() - t0
        if j < s.warmup:
            continue
        labels = [_label(started, scenario, a) for a in (ids or [None] * b)]
        for i, rec in enumerate(request_records(gen, labels)):
            requests.append({"batch_index": j - s.warmup, "row": i, **rec})
        walls.append(wall)
    return {"requests": requests, "summary": summarize(requests, walls), "memory": memory_snapshot(device)}


def _cell(backend: str, scenario: str, b: int, mode: str, status: str, reason: str | None = None, **rest) -> dict:
    return {"backend": backend, "scenario": scenario, "batch_size": b, "output_mode": mode, "status": status,
            "reason": reason, "requests": rest.get("requests", []), "summary": rest.get("summary", {}),
            "memory": rest.get("memory", {})}


def run_benchmark(s: BenchSettings, spec: EngineSpec, pool: list[Path], prompts: list[list[int]],
                  gate_prompts: list[list[int]], *, gate_spec: EngineSpec | None = None,
                  skip: dict[str, str] | None = None, progress: Progress = None) -> dict:
    """All cells plus per-(backend, scenario) engine start and adapter load times.

    ``gate_spec``: the fp32 engine spec the greedy-token gate runs on when ``spec`` is not fp32 (bf16 rounding
    legitimately changes greedy tokens); the timed low-precision engine itself is then gated per batch size by
    teacher-forced logits (``gate.py``; ``correctness_forced``), where the backend can return logits.
    ``skip``: backend → reason (e.g. vLLM not installed): its cells are recorded as ``skipped``."""
    skip = skip or {}
    reference = Reference(spec.load_hf(), [str(p) for p in pool[: max(map(adapters_needed, s.scenarios))]],
                          eos_id=spec.eos_id, device="cpu")
    cells, start_s, load_s, gates, forced = [], {}, {}, {}, {}
    grid = [(b, m) for b in s.batch_sizes for m in s.output_modes]
    for backend in s.backends:
        for scenario in s.scenarios:
            if backend in skip:
                cells += [_cell(backend, scenario, b, m, "skipped", skip[backend]) for b, m in grid]
                continue
            if progress:
                progress(f"{backend} {scenario}: start + correctness gate")
            try:
                reason = None
                if gate_spec is not None:
                    checker = start_engine(backend, scenario, pool, gate_spec)
                    reason = _gate(checker, scenario, reference, gate_prompts, s.new_tokens, s.output_modes)
                    checker.backend.close()
                started = start_engine(backend, scenario, pool, spec)
                if gate_spec is None:
                    reason = _gate(started, scenario, reference, gate_prompts, s.new_tokens, s.output_modes)
            except (ServeError, RuntimeError, ValueError) as exc:
                reason = f"engine failed: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                started = None
            gates[f"{backend}/{scenario}"] = reason or "passed"
            if started is not None:
                start_s.setdefault(backend, {})[scenario] = started.engine_start_s
                load_s.setdefault(backend, {})[scenario] = started.adapter_load_s
            if reason is not None:
                cells += [_cell(backend, scenario, b, m, "failed", reason) for b, m in grid]
                continue
            for b, mode in grid:
                if progress:
                    progress(f"{backend} {scenario}: batch {b}, {mode}")
                key = f"{backend}/{scenario}/b{b}"
                if key not in forced:
                    try:
                        forced[key] = _forced_gate(started, scenario, reference, gate_prompts, b, s.new_tokens,
                                                   spec.dtype)
                    except (ServeError, RuntimeError) as exc:
                        forced[key] = {"passed": False, "reason": f"gate failed to run: {type(exc).__name__}: {exc}"}
                if forced[key] is not None and not forced[key]["passed"]:
                    reason = f"correctness gate: {forced[key]['reason']}"
                    cells.append(_cell(backend, scenario, b, mode, "failed", reason))
                    continue
                try:
                    cells.append(_cell(backend, scenario, b, mode, "ok",
                                       **time_cell(started, scenario, prompts, b, mode, s, spec.device)))
                except (ServeError, RuntimeError) as exc:  # e.g. out of memory at a large batch
                    cells.append(_cell(backend, scenario, b, mode, "failed", f"{type(exc).__name__}: {exc}"))
            started.backend.close()
            del started
            if spec.device.type == "cuda":
                torch.cuda.empty_cache()
    return {"cells": cells, "engine_start_s": start_s, "adapter_load_s": load_s, "correctness": gates,
            "correctness_forced": {k: v for k, v in forced.items() if v is not None}}
