"""The drift part of the stats stage (STUDY.md §8, §12 B): drift reduction 1 − D_LoRA/D_FT per probe set
and pooling, paired by replicate, with the criterion-B rule applied to each; the headline (criterion B)
is probe ``in_task``, pooling ``mean`` (the §8 default), LoRA on all linear layers."""

from __future__ import annotations

import math
from collections import defaultdict

from lorascope.config.schema import StatsConfig
from lorascope.stats.verdict import criterion_b

HEADLINE = {"method": "lora", "probe": "in_task", "pooling": "mean"}
REQUIRED = ("method", "replicate", "probe", "pooling", "drift")


def _index(rows: list[dict], notes: list[str]) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(method, probe, pooling): {replicate: drift}}; malformed rows are skipped with a note."""
    out: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for i, row in enumerate(rows):
        missing = [k for k in REQUIRED if k not in row]
        value = row.get("drift")
        if missing or not isinstance(value, (int, float)) or not math.isfinite(value):
            notes.append(f"drift row {i} skipped: " + (f"lacks {missing}" if missing else f"drift = {value!r}"))
            continue
        if not isinstance(row["replicate"], int):
            notes.append(f"drift row {i} skipped: replicate = {row['replicate']!r}")
            continue
        key = (str(row["method"]), str(row["probe"]), str(row["pooling"]))
        if int(row["replicate"]) in out[key]:
            notes.append(f"drift row {i}: duplicate {key} replicate {row['replicate']}; the later row is kept")
        out[key][int(row["replicate"])] = float(value)
    return out


def drift_summary(rows: list[dict] | None, why_missing: str | None, cfg: StatsConfig) -> dict:
    """Reductions for every (LoRA variant, probe, pooling) with FT scores on the same probe and pooling,
    and criterion B from the headline one. ``rows`` None: criterion B is missing with ``why_missing``."""
    if rows is None:
        b = criterion_b(None, None, threshold=cfg.drift_reduction_threshold, confidence=cfg.confidence)
        b["reason"] = why_missing or b["reason"]
        return {"reductions": [], "criterion_b": b, "notes": []}
    notes: list[str] = []
    index = _index(rows, notes)
    reductions = []
    for (method, probe, pooling), scores in sorted(index.items()):
        ft = index.get(("ft", probe, pooling))
        if method == "ft" or not ft:
            continue
        reps = sorted(set(ft) & set(scores))
        res = criterion_b([ft[r] for r in reps] or None, [scores[r] for r in reps] or None,
                          threshold=cfg.drift_reduction_threshold, confidence=cfg.confidence)
        reductions.append({"comparison": f"ft-{method}", "method": method, "probe": probe, "pooling": pooling,
                           "replicates": reps, "drift_ft": [ft[r] for r in reps],
                           "drift_lora": [scores[r] for r in reps], **res})
    head = [r for r in reductions
            if (r["method"], r["probe"], r["pooling"]) == tuple(HEADLINE.values())]
    if head:
        b = {k: v for k, v in head[0].items() if k not in ("comparison", "method", "drift_ft", "drift_lora")}
    else:
        b = criterion_b(None, None, threshold=cfg.drift_reduction_threshold, confidence=cfg.confidence)
        b["reason"] = "drift.json has no paired FT/LoRA scores for probe in_task, pooling mean"
    return {"reductions": reductions, "criterion_b": b, "notes": notes}
