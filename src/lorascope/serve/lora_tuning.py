"""Choosing the fused kernel's tiles on the GPU at hand (a few candidates, timed), and measuring them.

A decode projection is a memory-bound GEMV whose best tiling (column block width, K tile, K-splits, warps)
depends on the GPU's SM count and caches, the shape, and how many adapters' A rows each program streams along
with W (the variant: its LoRA column count). So every (shape, variant) gets the fastest of a few candidates
(``lora_kernel.candidate_configs``) — the base-only variant too, so ``merged`` and ``base`` run at their best
and the LoRA overhead is not flattered. Candidates are compiled by worker processes (``precompile``), then
each is timed inside a CUDA graph (eager timing would measure Python's launch cost: a 20 µs kernel takes
about as long to launch from Python). The log keeps every candidate's time and, for the same shape, cuBLAS's
time for the base GEMM alone and for the ``addmm`` path ([W; A] GEMM + ``addmm_``), so a benchmark shows the
kernel-level cost of LoRA next to the end-to-end one.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lorascope.serve import lora_kernel
from lorascope.serve.lora_kernel import Config, Workspace

Shape = tuple[tuple[int, ...], int]  # (module widths, K)
_CONFIGS: dict[tuple, Config] = {}  # (shape, variant, dtype, gpu) → tiles, once per process
TUNING_LOG: list[dict] = []  # per (shape, variant): µs per candidate, the choice, cuBLAS references


def graph_time_us(fn: Callable[[], object], reps: int = 20, rounds: int = 3) -> float:
    """Device time of one ``fn()`` call: ``reps`` calls captured in a CUDA graph, replayed, median of rounds."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up (and any lazy allocation) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


def _u_of(variant: int, r: int) -> int:
    """The most distinct adapters a variant serves (its heaviest case: what it is tuned on); 0 = no LoRA."""
    return 0 if variant == 0 else max(1, variant // r)


def _jobs(shapes: list[Shape], variants: list[int], dtype: torch.dtype, r: int, tune: bool, n_sm: int) -> list:
    jobs = []
    for widths, k in shapes:
        cands = (lora_kernel.candidate_configs(widths, k, dtype, n_sm) if tune
                 else [lora_kernel.heuristic_config(widths, k, dtype, n_sm)])
        jobs += [(widths, k, dtype, c, _u_of(v, r), r) for v in variants for c in cands]
    return jobs


def prepare(plan: dict[torch.dtype, tuple[list[int], bool]], shapes: list[Shape], device: torch.device,
            r: int = 8) -> list[str]:
    """Compile, in one pool of worker processes, every kernel a benchmark will launch — per dtype: its variants
    and whether it is tuned (all candidates) or not (the heuristic) — then tune. Returns compile errors."""
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    jobs = [j for dtype, (variants, tune) in plan.items() for j in _jobs(shapes, variants, dtype, r, tune, n_sm)]
    errors = lora_kernel.precompile(jobs)
    for dtype, (variants, tune) in plan.items():
        configs_for(shapes, variants, dtype, device, r=r, tune=tune)
    return errors


def configs_for(shapes: list[Shape], variants: list[int], dtype: torch.dtype, device: torch.device, *, r: int = 8,
                tune: bool = True) -> dict[tuple[Shape, int], Config]:
    """Tiles per (shape, variant): the fastest candidate when tuning, else the heuristic."""
    if device.type != "cuda":
        return {(s, v): lora_kernel.heuristic_config(s[0], s[1], dtype, 4) for s in shapes for v in variants}
    props = torch.cuda.get_device_properties(device)
    if not tune:
        return {(s, v): lora_kernel.heuristic_config(s[0], s[1], dtype, props.multi_processor_count)
                for s in shapes for v in variants}
    for s in shapes:
        for v in variants:
            if (s, v, dtype, props.name) not in _CONFIGS:
                _CONFIGS[(s, v, dtype, props.name)] = _tune(s, v, dtype, device, r, props.multi_processor_count)
    return {(s, v): _CONFIGS[(s, v, dtype, props.name)] for s in shapes for v in variants}


def _tune(shape: Shape, variant: int, dtype: torch.dtype, device: torch.device, r: int, n_sm: int,
          rows: int = 16) -> Config:
    widths, k = shape
    u = _u_of(variant, r)
    gen = torch.Generator(device=device).manual_seed(0)
    n = sum(widths)
    rnd = lambda *s: (torch.randn(*s, device=device, generator=gen) / k ** 0.5).to(dtype)  # noqa: E731
    x, w_full, b = rnd(rows, k), rnd(n + max(u, 1) * len(widths) * r, k), rnd(max(u, 1), r, n)
    w = w_full[:n]
    lora = None
    if u:  # rows round-robin over u distinct adapters, as a multi-u batch
        lora = (w_full[n:], b, torch.arange(rows, device=device, dtype=torch.int32) % u,
                torch.arange(u, device=device, dtype=torch.int32), r)
    cands = lora_kernel.candidate_configs(widths, k, dtype, n_sm)
    lora_kernel.precompile([(widths, k, dtype, c, u, r) for c in cands], processes=1)  # cached by ``prepare``
    ws, times, errors = Workspace(device), {}, {}
    for cfg in cands:
        try:
            times[cfg] = graph_time_us(lambda cfg=cfg: lora_kernel.fused_lora_linear(x, w, widths, cfg, ws, lora))
        except Exception as exc:  # a tile that does not compile or fit here: skip it, keep the others
            errors[str(cfg.__dict__)] = f"{type(exc).__name__}: {exc}"[:300]
    if not times:
        raise RuntimeError(f"no fused LoRA kernel configuration runs for widths {widths}, K {k}: {errors}")
    best = min(times, key=times.get)
    entry = {"widths": list(widths), "k": k, "variant": variant, "adapters": u, "rows": rows, "dtype": str(dtype),
             "fused_us": {str(c.__dict__): round(t, 2) for c, t in times.items()}, "errors": errors,
             "best": best.__dict__, "cublas_base_us": round(graph_time_us(lambda: F.linear(x, w)), 2)}
    if u:
        entry["cublas_addmm_path_us"] = round(graph_time_us(_addmm_path(x, w_full, b, widths, r, u, rows)), 2)
    TUNING_LOG.append(entry)
    return best


def _addmm_path(x, w_full, b, widths, r, u, rows):
    """The ``addmm`` decode path on the same problem: [W; A] GEMM, mask (when several adapters), ``addmm_``."""
    n, n_mod = sum(widths), len(widths)
    b_diag = torch.zeros(u * n_mod * r, n, device=x.device, dtype=x.dtype)  # block-diagonal over modules
    for a in range(u):
        col = 0
        for m, width in enumerate(widths):
            b_diag[(a * n_mod + m) * r:(a * n_mod + m + 1) * r, col: col + width] = b[a, :, col: col + width]
            col += width
    slot = torch.arange(rows, device=x.device) % u
    mask = F.one_hot(slot, u).to(x.dtype).repeat_interleave(n_mod * r, dim=1)

    def run():
        y = F.linear(x, w_full)
        h = y[:, n:] * mask if u > 1 else y[:, n:]
        return y[:, :n].addmm_(h, b_diag)
    return run
