"""Drift results across seeds (§8): per-layer bands, per-model drift scores and the drift reduction.

Input rows are the per-layer records the drift stage writes (one per model × probe set × pooling ×
layer); a model is one final run (method, replicate). Intervals over seeds are Student-t on the seed
means (n = number of replicates), the same construction as §11's per-method CIs.

Intervals respect the range of what they estimate (docs/design.md, "Intervals that respect the range"):
- the drift *reduction* 1 − D_LoRA/D_FT is a ratio of positive quantities, so its interval is built on
  the log scale — a t-interval of the mean of ln(D_LoRA,r / D_FT,r) over replicate pairs, mapped back by
  1 − exp(·) — and can never pass 100% (the estimand is 1 − the geometric-mean ratio; bioequivalence
  trials treat ratios of positive quantities the same way: Schuirmann 1987, FDA 2001 guidance);
- a descriptive band of a bounded quantity (drift ≥ 0, similarity ≤ 1, LM loss ≥ 0) is the t-interval
  clipped to the range, with ``clipped`` saying which end was cut — never a silent impossible bound.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from lorascope.drift.cosine import t_interval

# The range of each per-layer measure and score: a band is clipped to it (with a ``clipped`` flag).
RANGES = {"linear_cka": (0.0, 1.0), "linear_cka_debiased": (None, 1.0), "rbf_cka": (0.0, 1.0),
          "cosine_mean": (-1.0, 1.0), "cosine_standardized_mean": (-1.0, 1.0), "drift": (0.0, None),
          "lm_loss": (0.0, None)}


def t_band(values: list[float], confidence: float = 0.95, bounds: tuple[float | None, float | None] = (None, None)
           ) -> dict:
    """Mean and Student-t interval of ``values`` (one per seed); a single seed has no interval (None).

    ``bounds`` = the parameter's range: an interval end beyond it is set to the bound and named in
    ``clipped`` (e.g. ``["upper"]``) so a reader sees that the t-interval left the range there."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": len(x)}
    lo, hi = t_interval(mean, float(x.std(ddof=1)), len(x), confidence)
    clipped = []
    if bounds[0] is not None and lo < bounds[0]:
        lo, clipped = bounds[0], clipped + ["lower"]
    if bounds[1] is not None and hi > bounds[1]:
        hi, clipped = bounds[1], clipped + ["upper"]
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(x), **({"clipped": clipped} if clipped else {})}


def drift_score(rows: list[dict]) -> float:
    """Drift of a model = mean over layers of (1 − debiased linear CKA) (§8); undefined layers are skipped."""
    vals = [1.0 - r["linear_cka_debiased"] for r in rows if r.get("linear_cka_debiased") is not None]
    return float(np.mean(vals))


def drift_reduction(d_lora: float, d_ft: float) -> float:
    """1 − D_LoRA / D_FT (§8): 0.2 means LoRA drifts 20% less than FT."""
    return 1.0 - d_lora / d_ft


def ratio_reduction(drift_ft: list[float], drift_lora: list[float], confidence: float = 0.95) -> dict:
    """Drift reduction 1 − D_LoRA/D_FT over replicate pairs (same order), on the log scale (module docstring).

    Returns ``estimate`` = 1 − exp(mean ℓ) (ℓ_r = ln D_LoRA,r − ln D_FT,r), ``ci`` (None for one pair),
    ``per_replicate`` reductions 1 − D_LoRA,r/D_FT,r, their arithmetic mean ``mean_of_reductions``, and
    ``note`` (with ``estimate`` None) when a drift is ≤ 0, where the ratio has no logarithm."""
    ft = np.asarray(drift_ft, dtype=np.float64)
    lora = np.asarray(drift_lora, dtype=np.float64)
    out: dict = {"n": int(ft.size), "estimate": None, "ci": None, "method": "t-interval of mean ln(D_LoRA/D_FT), "
                 "mapped by 1 − exp(·)"}
    if ft.size == 0 or ft.shape != lora.shape:
        return {**out, "note": "no replicate pairs"}
    if (ft <= 0).any() or (lora <= 0).any():
        who = "D_FT" if (ft <= 0).any() else "D_LoRA"
        return {**out, "note": f"{who} ≤ 0 in some seed: the reduction has no log-ratio interval"}
    ratios = lora / ft
    logs = np.log(ratios)
    lbar = float(logs.mean())
    out.update(estimate=1.0 - math.exp(lbar), per_replicate=[float(v) for v in 1.0 - ratios],
               mean_of_reductions=float((1.0 - ratios).mean()))
    if ft.size >= 2:
        lo, hi = t_interval(lbar, float(logs.std(ddof=1)), int(ft.size), confidence)
        out["ci"] = [1.0 - math.exp(hi), 1.0 - math.exp(lo)]
    return out


def layer_bands(rows: list[dict], measure: str, *, probe: str, pooling: str, confidence: float = 0.95) -> dict:
    """``{method: {"layers": [...], "mean": [...], "lo": [...], "hi": [...]}}`` of ``measure`` over seeds.

    Layers where a measure is undefined for some seed (recorded with a note instead of a value) are
    summarised over the seeds where it is defined."""
    per: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["probe"] == probe and r["pooling"] == pooling and r.get(measure) is not None:
            per[r["method"]][r["layer"]].append(float(r[measure]))
    out = {}
    for method, by_layer in sorted(per.items()):
        layers = sorted(by_layer)
        bands = [t_band(by_layer[layer], confidence, RANGES.get(measure, (None, None))) for layer in layers]
        out[method] = {"layers": layers, "mean": [b["mean"] for b in bands], "lo": [b["lo"] for b in bands],
                       "hi": [b["hi"] for b in bands], "seeds": max(b["n"] for b in bands)}
    return out


def drift_scores(rows: list[dict]) -> list[dict]:
    """One drift score (mean over layers of 1 − debiased CKA, §8) per (run, probe, pooling)."""
    groups: dict = defaultdict(list)
    meta: dict = {}
    for r in rows:
        key = (r["run"], r["probe"], r["pooling"])
        groups[key].append(r)
        meta[key] = (r["method"], r["replicate"])
    out = []
    for (run, probe, pooling), layer_rows in sorted(groups.items()):
        if not any(lr.get("linear_cka_debiased") is not None for lr in layer_rows):
            continue
        method, rep = meta[(run, probe, pooling)]
        out.append({"run": run, "method": method, "replicate": rep, "probe": probe, "pooling": pooling,
                    "drift": drift_score(layer_rows)})
    return out


def reduction_summary(scores: list[dict], confidence: float = 0.95) -> list[dict]:
    """Per (probe, pooling): mean drift of FT and LoRA over seeds, and 1 − D_LoRA / D_FT (§8).

    ``reduction_of_means`` uses the seed-mean drifts; ``paired`` is the t-band of per-replicate
    reductions (replicate r of LoRA against replicate r of FT, same data-order seed) by ``ratio_reduction``,
    the function the statistics stage's criterion B uses too."""
    by: dict = defaultdict(lambda: defaultdict(dict))
    for s in scores:
        by[(s["probe"], s["pooling"])][s["method"]][s["replicate"]] = s["drift"]
    out = []
    for (probe, pooling), methods in sorted(by.items()):
        row: dict = {"probe": probe, "pooling": pooling}
        for method, reps in sorted(methods.items()):
            row[f"drift_{method}"] = t_band(list(reps.values()), confidence, RANGES["drift"])
        ft, lora = methods.get("ft", {}), methods.get("lora", {})
        if ft and lora:
            d_ft, d_lora = float(np.mean(list(ft.values()))), float(np.mean(list(lora.values())))
            row["reduction_of_means"] = 1.0 - d_lora / d_ft if d_ft > 0 else None
            reps = sorted(set(ft) & set(lora))
            red = ratio_reduction([ft[r] for r in reps], [lora[r] for r in reps], confidence) if reps else None
            row["paired"] = None if red is None or red["estimate"] is None else {
                "mean": red["estimate"], "lo": red["ci"][0] if red["ci"] else None,
                "hi": red["ci"][1] if red["ci"] else None, "n": red["n"], "method": red["method"]}
        out.append(row)
    return out
