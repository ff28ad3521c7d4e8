"""Serving overhead with bootstrap CIs (STUDY.md §10): stat(treatment) / stat(reference) − 1.

Treatment is a cell of ``unmerged-1`` or ``multi-k``, reference the ``merged`` cell at the same backend,
batch size and output mode. Latencies are in seconds; the overhead is a fraction (0.3 = 30% slower).
CI: percentile bootstrap (Efron & Tibshirani 1993, ch. 13), independently in each cell (the two cells are
separate runs, so there is no pairing to keep). Requests of one batch are timed together (in fixed-length
mode they share one e2e value), so they are not independent: given each request's batch index, the
bootstrap resamples whole batches (a cluster bootstrap, Davison & Hinkley 1997, §3.8) and needs ≥ 2
batches per cell; without batch indices it resamples requests.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from lorascope.errors import StatsInputError
from lorascope.stats.checks import as_sample, check_confidence, check_resamples, check_rng

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
BOOTSTRAP_CHUNK = 1000
# Each function maps arrays of shape (m, n) (m resamples of n requests) to shape (m,).
StatFn = Callable[..., np.ndarray]


def latency_stat(stat: str) -> StatFn:
    """The statistic of a latency sample: "p50"/"p95"/"p99" (numpy's default linear quantile) or "mean"."""
    if stat == "mean":
        return lambda v: v.mean(axis=-1, dtype=np.float64)
    if stat in QUANTILES:
        q = QUANTILES[stat]
        return lambda v: np.quantile(v, q, axis=-1)
    raise StatsInputError(f"unknown statistic {stat!r}: choose one of {sorted([*QUANTILES, 'mean'])}")


def seconds_per_token(e2e: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Σ e2e / Σ output tokens over a cell's requests: ∝ 1/throughput at a fixed batch size (s/token)."""
    return e2e.sum(axis=-1, dtype=np.float64) / tokens.sum(axis=-1, dtype=np.float64)


def _resampled(cols: Sequence[np.ndarray], fn: StatFn, m: int, rng: np.random.Generator,
               groups: np.ndarray | None = None) -> np.ndarray:
    """m bootstrap values of fn: rows resampled, or — with ``groups`` (a label per row) — whole groups."""
    if groups is None:
        n = cols[0].size
        idx = rng.integers(0, n, size=(m, n))
        return fn(*(c[idx] for c in cols))
    labels = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in labels]
    picks = rng.integers(0, len(labels), size=(m, len(labels)))
    if len({len(x) for x in members}) == 1:  # equal batch sizes: one gather for all resamples
        idx = np.stack(members)[picks].reshape(m, -1)
        return fn(*(c[idx] for c in cols))
    out = np.empty(m, dtype=np.float64)
    for i in range(m):
        idx = np.concatenate([members[j] for j in picks[i]])
        out[i] = fn(*(c[idx][None, :] for c in cols))[0]
    return out


def _groups(groups: Any, n: int, name: str) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise StatsInputError(f"{name}: one batch index per request expected ({n}), got shape {g.shape}")
    if np.unique(g).size < 2:
        raise StatsInputError(f"{name}: a CI needs ≥ 2 timed batches in the cell, got {np.unique(g).size}")
    return g


def bootstrap_ratio(treatment: Sequence[np.ndarray], reference: Sequence[np.ndarray], fn: StatFn, *,
                    resamples: int, rng: np.random.Generator, confidence: float = 0.95,
                    groups: tuple[Any, Any] = (None, None)) -> dict:
    """fn(treatment)/fn(reference) − 1 with a percentile-bootstrap CI; each side is a tuple of per-request
    columns (resampled together, row-wise; by batch when ``groups`` gives each side's batch indices).
    fn(reference) must be > 0."""
    check_confidence(confidence)
    t_groups = _groups(groups[0], treatment[0].size, "treatment")
    r_groups = _groups(groups[1], reference[0].size, "reference")
    resamples = check_resamples(resamples)
    rng = check_rng(rng)
    t_val = float(fn(*(c[None, :] for c in treatment))[0])
    r_val = float(fn(*(c[None, :] for c in reference))[0])
    if not r_val > 0:
        raise StatsInputError(f"reference statistic must be positive, got {r_val}")
    ratios = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        m = min(BOOTSTRAP_CHUNK, resamples - start)
        t_b = _resampled(treatment, fn, m, rng, t_groups)
        r_b = _resampled(reference, fn, m, rng, r_groups)
        ratios[start:start + m] = t_b / r_b - 1.0
    alpha = 1.0 - confidence
    lo, hi = np.quantile(ratios, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {"estimate": t_val / r_val - 1.0, "ci": [float(lo), float(hi)], "confidence": confidence,
            "treatment_value": t_val, "reference_value": r_val, "n_treatment": int(treatment[0].size),
            "n_reference": int(reference[0].size), "resamples": resamples,
            "ci_method": "percentile bootstrap" + (" over batches" if t_groups is not None else " over requests")}


def _latencies(values: Any, name: str) -> np.ndarray:
    x = as_sample(values, name, min_n=2)
    if (x < 0).any():
        raise StatsInputError(f"{name}: latencies must be ≥ 0 seconds")
    return x


def overhead(treatment_latencies: Any, reference_latencies: Any, stat: str = "p95", *, resamples: int = 10_000,
             rng: np.random.Generator, confidence: float = 0.95, treatment_batches: Any = None,
             reference_batches: Any = None) -> dict:
    """Latency overhead stat(treatment)/stat(reference) − 1 (fraction) with a percentile-bootstrap CI.

    Inputs: per-request latencies in seconds (≥ 2 requests each; lengths may differ) and, optionally, each
    request's batch index (then whole batches are resampled; give both or neither)."""
    t = _latencies(treatment_latencies, "treatment_latencies")
    r = _latencies(reference_latencies, "reference_latencies")
    out = bootstrap_ratio((t,), (r,), latency_stat(stat), resamples=resamples, rng=rng, confidence=confidence,
                          groups=(treatment_batches, reference_batches))
    return {"metric": f"{stat}_latency", **out}


def overhead_inverse_throughput(treatment_e2e: Any, treatment_tokens: Any, reference_e2e: Any,
                                reference_tokens: Any, *, resamples: int = 10_000, rng: np.random.Generator,
                                confidence: float = 0.95, treatment_batches: Any = None,
                                reference_batches: Any = None) -> dict:
    """Overhead of 1/throughput: (Σe2e/Σtokens)_treatment / (Σe2e/Σtokens)_reference − 1, bootstrapped over
    requests (each request's e2e seconds and output tokens resampled together).

    Both cells have the same batch size, so the batch factor of throughput cancels in the ratio."""
    cols = []
    for e_name, e, k_name, k in (("treatment_e2e", treatment_e2e, "treatment_tokens", treatment_tokens),
                                 ("reference_e2e", reference_e2e, "reference_tokens", reference_tokens)):
        ev = _latencies(e, e_name)
        kv = as_sample(k, k_name, min_n=2)
        if kv.size != ev.size:
            raise StatsInputError(f"{e_name} and {k_name} differ in length ({ev.size} vs {kv.size})")
        if (kv < 1).any():
            raise StatsInputError(f"{k_name}: every request must produce ≥ 1 token")
        cols.append((ev, kv))
    out = bootstrap_ratio(cols[0], cols[1], seconds_per_token, resamples=resamples, rng=rng, confidence=confidence,
                          groups=(treatment_batches, reference_batches))
    return {"metric": "inverse_throughput", **out}
