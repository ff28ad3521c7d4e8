"""Drift results across seeds (§8): per-layer bands, per-model drift scores and the drift reduction.

Input rows are the per-layer records the drift stage writes (one per model × probe set × pooling ×
layer); a model is one final run (method, replicate). Intervals over seeds are Student-t on the seed
means (n = number of replicates), the same construction as §11's per-method CIs.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lorascope.drift.compute import drift_score
from lorascope.drift.cosine import t_interval


def t_band(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and Student-t interval of ``values`` (one per seed); a single seed has no interval (None)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": len(x)}
    lo, hi = t_interval(mean, float(x.std(ddof=1)), len(x), confidence)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(x)}


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
        bands = [t_band(by_layer[layer], confidence) for layer in layers]
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
    reductions (replicate r of LoRA against replicate r of FT, same data-order seed). The verdict's CI is
    computed by the statistics stage; this is the descriptive summary the drift tables show."""
    by: dict = defaultdict(lambda: defaultdict(dict))
    for s in scores:
        by[(s["probe"], s["pooling"])][s["method"]][s["replicate"]] = s["drift"]
    out = []
    for (probe, pooling), methods in sorted(by.items()):
        row: dict = {"probe": probe, "pooling": pooling}
        for method, reps in sorted(methods.items()):
            row[f"drift_{method}"] = t_band(list(reps.values()), confidence)
        ft, lora = methods.get("ft", {}), methods.get("lora", {})
        if ft and lora:
            d_ft, d_lora = float(np.mean(list(ft.values()))), float(np.mean(list(lora.values())))
            row["reduction_of_means"] = 1.0 - d_lora / d_ft if d_ft > 0 else None
            paired = [1.0 - lora[r] / ft[r] for r in sorted(set(ft) & set(lora)) if ft[r] > 0]
            row["paired"] = t_band(paired, confidence) if paired else None
        out.append(row)
    return out
