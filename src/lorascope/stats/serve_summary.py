"""The serving part of the stats stage (STUDY.md §10, §12 C): overhead of every unmerged scenario over
``merged`` (same backend, batch size, output mode), for p95 e2e latency and for 1/throughput, with
percentile-bootstrap CIs over requests; criterion C from every unmerged scenario (``unmerged-1`` and each
``multi-k``: RQ2 asks what serving several adapters side by side costs), output mode ``fixed``, p95 latency.
Per backend and batch size C needs the *largest* overhead over those scenarios ≤ threshold; its interval
is [max of the lower bounds, max of the upper bounds], which contains the maximum whenever each scenario's
interval contains its own overhead."""

from __future__ import annotations

from typing import Any

import numpy as np

from lorascope.config.schema import StatsConfig
from lorascope.errors import StatsInputError
from lorascope.stats.overhead import overhead, overhead_inverse_throughput
from lorascope.stats.seeds import child_rng
from lorascope.stats.verdict import criterion_c

REFERENCE = "merged"
NOT_TREATMENTS = ("base", "merged")
CRITERION_C = {"output_mode": "fixed", "metric": "p95_latency"}  # scenarios: every one but base / merged


def _columns(cell: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """e2e seconds, output tokens and (when recorded) the batch index of every timed request."""
    reqs = cell.get("requests") or []
    try:
        e2e = np.array([r["e2e_s"] for r in reqs], dtype=np.float64)
        tokens = np.array([r["out_tokens"] for r in reqs], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise StatsInputError(f"request rows lack e2e_s/out_tokens ({exc})") from None
    batches = np.array([r["batch_index"] for r in reqs]) if reqs and all("batch_index" in r for r in reqs) else None
    return e2e, tokens, batches


def _key(cell: dict) -> tuple[str, str, int, str]:
    return (str(cell.get("backend")), str(cell.get("scenario")), int(cell.get("batch_size", -1)),
            str(cell.get("output_mode")))


def _one(metric: str, t: dict, r: dict, cfg: StatsConfig, seed: int, label: str) -> dict[str, Any]:
    rng = child_rng(seed, f"{label}/{metric}")
    try:
        (te, tk, tb), (re_, rk, rb) = _columns(t), _columns(r)
        batches = {"treatment_batches": tb, "reference_batches": rb} if tb is not None and rb is not None else {}
        if metric == "p95_latency":
            return overhead(te, re_, "p95", resamples=cfg.bootstrap_resamples, rng=rng, confidence=cfg.confidence,
                            **batches)
        return overhead_inverse_throughput(te, tk, re_, rk, resamples=cfg.bootstrap_resamples, rng=rng,
                                           confidence=cfg.confidence, **batches)
    except StatsInputError as exc:
        return {"metric": metric, "estimate": None, "ci": None, "note": str(exc)}


def _envelope(rows: list[dict], backend: str, batch_size: int, unusable: dict) -> dict | None:
    """Criterion C's cell at (backend, batch size): the interval of the largest overhead over the unmerged
    scenarios, the fewest timed requests behind it, and a ``problem`` when a scenario cannot be used — it did
    not run cleanly (failed the correctness gate, ran out of memory), or it came out significantly *faster*
    than merged (impossible physically: it does strictly more work). A scenario that could not be measured
    correctly must not drop out of the maximum. None: nothing measured here."""
    if (backend, batch_size) in unusable:
        return {"ci": None, "n": None, "problem": unusable[(backend, batch_size)]}
    chosen = [r for r in rows if r["backend"] == backend and r["batch_size"] == batch_size
              and all(r[k] == v for k, v in CRITERION_C.items())]
    if not chosen:
        return None
    if any(r["ci"] is None for r in chosen):
        return {"ci": None, "n": None, "problem": "; ".join(f"{r['scenario']}: {r.get('note') or 'no CI'}"
                                                           for r in chosen if r["ci"] is None)}
    faster = [r["scenario"] for r in chosen if r["ci"][1] < 0]
    n = min(r.get("timed_requests") or 0 for r in chosen)
    if faster:
        return {"ci": None, "n": n, "problem": f"{', '.join(faster)} significantly faster than merged (overhead CI "
                                               "below 0): a measurement problem, not used"}
    return {"ci": (max(r["ci"][0] for r in chosen), max(r["ci"][1] for r in chosen)), "n": n}


def serve_summary(cells: list[dict] | None, why_missing: str | None, cfg: StatsConfig, *, seed: int,
                  batch_sizes: list[int]) -> dict:
    """Overhead rows for every ok treatment cell, and criterion C. ``cells`` None: C is missing."""
    if cells is None:
        c = criterion_c(None, batch_sizes=batch_sizes, threshold=cfg.overhead_threshold)
        c["reason"] = why_missing or c["reason"]
        return {"overheads": [], "criterion_c": c, "notes": []}
    notes = [f"cell {_key(c)} status {c.get('status')}" for c in cells if c.get("status") != "ok"]
    ok = {_key(c): c for c in cells if c.get("status") == "ok"}
    rows = []
    for key, cell in sorted(ok.items()):
        backend, scenario, bs, mode = key
        if scenario in NOT_TREATMENTS:
            continue
        base = {"backend": backend, "scenario": scenario, "batch_size": bs, "output_mode": mode,
                "reference": REFERENCE}
        ref = ok.get((backend, REFERENCE, bs, mode))
        for metric in ("p95_latency", "inverse_throughput"):
            if ref is None:
                rows.append({**base, "metric": metric, "estimate": None, "ci": None,
                             "note": "no ok merged cell at this backend, batch size and output mode"})
            else:
                timed = min(len(cell.get("requests") or []), len(ref.get("requests") or []))
                rows.append({**base, "timed_requests": timed, **_one(metric, cell, ref, cfg, seed,
                                                                      "/".join(map(str, key)))})
    # A backend whose every cell was skipped (e.g. vllm not installed) was not measured: it takes no part in C.
    backends = sorted({_key(c)[0] for c in cells if c.get("status") != "skipped"})
    unusable = {(_key(c)[0], _key(c)[2]): f"{_key(c)[1]} {c.get('status')}" for c in cells if c.get("status") != "ok"
                and _key(c)[1] not in NOT_TREATMENTS and _key(c)[3] == CRITERION_C["output_mode"]}
    c_input = {b: {bs: _envelope(rows, b, bs, unusable) for bs in batch_sizes} for b in backends}
    c = criterion_c(c_input, batch_sizes=batch_sizes, threshold=cfg.overhead_threshold,
                    min_requests=cfg.min_timed_requests)
    c.update({**CRITERION_C, "scenarios": sorted({r["scenario"] for r in rows})})
    return {"overheads": rows, "criterion_c": c, "notes": notes}
