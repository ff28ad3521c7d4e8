"""Choosing the fused kernel's tiles on the GPU at hand (a few candidates, timed), and measuring them.

A decode projection is a memory-bound GEMV whose best tiling (column block width, K tile, K-splits, warps)
depends on the GPU's SM count, its cache and the shape; the candidates (``lora_kernel.candidate_configs``) are
compiled in parallel, then each is timed inside a CUDA graph (eager timing would measure Python's launch
cost: a 20 µs kernel is launched in about as much host time). The log keeps every candidate's time and, for
the same shape, cuBLAS's time for the base GEMM alone (W) and for the ``addmm`` path ([W; A] GEMM + ``addmm_``),
so a benchmark shows the kernel-level cost of LoRA next to the end-to-end one.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lorascope.serve import lora_kernel
from lorascope.serve.lora_kernel import Config, Workspace

_TUNED: dict[tuple, Config] = {}
TUNING_LOG: list[dict] = []  # per shape: µs per candidate, the choice, cuBLAS references


def graph_time_us(fn: Callable[[], object], reps: int = 20, rounds: int = 3) -> float:
    """Device time of one ``fn()`` call: ``reps`` calls captured in a CUDA graph, replayed, median of rounds."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up (and compile) outside the capture
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


def _problem(widths, k, dtype, device, r, rows):
    gen = torch.Generator(device=device).manual_seed(0)
    n = sum(widths)
    rnd = lambda *s: (torch.randn(*s, device=device, generator=gen) / k ** 0.5).to(dtype)  # noqa: E731
    x, w_full, b = rnd(rows, k), rnd(n + len(widths) * r, k), rnd(1, r, n)
    row_lora = torch.zeros(rows, dtype=torch.int32, device=device)
    lora_ids = torch.zeros(1, dtype=torch.int32, device=device)
    return x, w_full, (w_full[n:], b, row_lora, lora_ids, r)


def tuned_configs(shapes: list[tuple[tuple[int, ...], int]], dtype: torch.dtype, device: torch.device, *,
                  r: int = 8, rows: int = 8) -> dict[tuple, Config]:
    """The fastest candidate per (widths, K), timed with one adapter on every row (unmerged-1, the case with
    the tightest aim); once per process, GPU and shape."""
    props = torch.cuda.get_device_properties(device)
    todo = [s for s in dict.fromkeys((tuple(w), k) for w, k in shapes) if (s, dtype, props.name) not in _TUNED]
    cands = {s: lora_kernel.candidate_configs(s[0], s[1], dtype, props.multi_processor_count) for s in todo}
    lora_kernel.precompile([(s[0], s[1], dtype, c, 1, r) for s in todo for c in cands[s]])
    for widths, k in todo:
        x, w_full, lora = _problem(widths, k, dtype, device, r, rows)
        n = sum(widths)
        w = w_full[:n]
        ws, times, errors = Workspace(device), {}, {}
        for cfg in cands[(widths, k)]:
            try:
                times[cfg] = graph_time_us(lambda: lora_kernel.fused_lora_linear(x, w, widths, cfg, ws, lora))
            except Exception as exc:  # a tile that does not compile or fit here: skip it, keep the others
                errors[str(cfg.__dict__)] = f"{type(exc).__name__}: {exc}"[:300]
        if not times:
            raise RuntimeError(f"no fused LoRA kernel configuration runs for widths {widths}, K {k}: {errors}")
        best = min(times, key=times.get)
        b_diag = torch.zeros(len(widths) * r, n, device=device, dtype=dtype)  # block-diagonal B of the addmm path
        col = 0
        for m, width in enumerate(widths):
            b_diag[m * r:(m + 1) * r, col: col + width] = lora[1][0, :, col: col + width]
            col += width

        def addmm_path():
            y = F.linear(x, w_full)
            return y[:, :n].addmm_(y[:, n:], b_diag)

        TUNING_LOG.append({"widths": list(widths), "k": k, "dtype": str(dtype), "rows": rows,
                           "fused_us": {str(c.__dict__): round(t, 2) for c, t in times.items()},
                           "errors": errors, "best": best.__dict__,
                           "cublas_base_us": round(graph_time_us(lambda: F.linear(x, w)), 2),
                           "cublas_addmm_path_us": round(graph_time_us(addmm_path), 2)})
        _TUNED[((widths, k), dtype, props.name)] = best
    return {s: _TUNED[(s, dtype, props.name)] for s in dict.fromkeys((tuple(w), k) for w, k in shapes)}
