"""Per-request latency records, their percentiles, and memory probes (§10)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from lorascope.serve.types import Generation

PERCENTILES = (50, 95, 99)


def request_records(gen: Generation, adapters: Sequence[str | None]) -> list[dict]:
    """One row per request. TPOT = (e2e − TTFT)/(out_tokens − 1) (§10); None for a one-token output."""
    rows = []
    for toks, ttft, e2e, adapter in zip(gen.tokens, gen.ttft_s, gen.e2e_s, adapters):
        n = len(toks)
        rows.append({"e2e_s": e2e, "ttft_s": ttft, "tpot_s": (e2e - ttft) / (n - 1) if n > 1 else None,
                     "out_tokens": n, "adapter": adapter})
    return rows


def summarize(requests: list[dict], batch_wall_s: Sequence[float]) -> dict:
    """p50/p95/p99 of e2e, TTFT and TPOT over requests; output tokens/s = all output tokens over the summed
    wall time of the timed batches (requests of one batch run concurrently)."""
    out: dict = {"n_requests": len(requests)}
    for key in ("e2e_s", "ttft_s", "tpot_s"):
        vals = np.array([r[key] for r in requests if r[key] is not None], dtype=float)
        for p in PERCENTILES:
            out[f"p{p}_{key}"] = float(np.percentile(vals, p)) if vals.size else None
    wall = float(np.sum(batch_wall_s))
    out["tokens_per_s"] = sum(r["out_tokens"] for r in requests) / wall if wall > 0 else None
    out["mean_out_tokens"] = float(np.mean([r["out_tokens"] for r in requests])) if requests else None
    return out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def memory_snapshot(device: torch.device) -> dict:
    """GPU: framework peak allocated since the last ``reset_peak`` and device-used from NVML (else
    ``torch.cuda.mem_get_info``). CPU: this process's resident set size (psutil) and its lifetime peak."""
    if device.type == "cuda":
        snap = {"kind": "gpu", "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            snap.update(device_used_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).used), device_used_source="nvml")
        except Exception:  # pynvml missing or NVML unavailable (containers): the CUDA runtime's view
            free, total = torch.cuda.mem_get_info(device)
            snap.update(device_used_bytes=int(total - free), device_used_source="cuda_mem_get_info")
        return snap
    import resource

    import psutil

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"kind": "cpu", "rss_bytes": int(psutil.Process(os.getpid()).memory_info().rss),
            "process_peak_rss_bytes": int(peak_kib) * 1024}
