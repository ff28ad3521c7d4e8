"""Success criteria and the verdict (STUDY.md §12), as pure functions over plain numbers.

Each criterion has one of four states: "met", "not met", "inconclusive" (the data do not decide it) and
"missing" (the stage that feeds it did not run). The verdict is A ∧ (B ∨ C) in Kleene's strong
three-valued logic, with "missing" and "inconclusive" both unknown; an unknown result is reported as
"missing" when an operand is missing (running that stage could decide it), else "inconclusive".

- A (training): drop = FT − LoRA primary metric per seed pair (points). CI: two-sided t-CI at
  ``confidence`` over the per-pair drops (the two-sided 95% bound, as non-inferiority trials use: ICH E9;
  CONSORT, Piaggio et al. 2012). Met if upper ≤ margin; inconclusive if mean ≤ margin < upper; else not
  met. One pair: no CI, so inconclusive unless mean > margin (not met).
- B (drift): r_i = 1 − D_LoRA,i / D_FT,i per seed pair (same replicate), CI = t-CI of the mean of r_i.
  Pairing by replicate removes seed-level variation shared by the two arms; with 3–5 seeds a bootstrap
  over seeds has only C(2n−1, n) distinct resamples (126 at n = 5) and under-covers, while the t-interval
  is exact for normal r_i. Met if lower ≥ threshold, not met if upper < threshold, else inconclusive.
- C (serving): per backend, the overhead CI at every required batch size. Met if every upper ≤ threshold,
  not met if some lower > threshold, else inconclusive (a CI straddles or a batch size is absent).
  Over backends C is the OR (one backend that serves unmerged within the threshold suffices); the
  deciding backend is named.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from lorascope.stats.checks import as_pair, as_sample
from lorascope.stats.describe import describe

MET, NOT_MET, INCONCLUSIVE, MISSING = "met", "not met", "inconclusive", "missing"
# Threshold comparisons allow this absolute slack, so that a value equal to a threshold up to float rounding
# counts as equal (1 − 0.8/1.0 is 0.19999999999999996, not 0.2).
EPS = 1e-12
STATES = (MET, NOT_MET, INCONCLUSIVE, MISSING)
STAGES = {"A": "training", "B": "drift", "C": "serve"}


def _unknown(states: Sequence[str]) -> str:
    return MISSING if MISSING in states else INCONCLUSIVE


def kleene_and(*states: str) -> str:
    """Strong Kleene AND: any "not met" → not met; all met → met; else unknown (missing beats inconclusive)."""
    _check(states)
    if NOT_MET in states:
        return NOT_MET
    if all(s == MET for s in states):
        return MET
    return _unknown([s for s in states if s != MET])


def kleene_or(*states: str) -> str:
    """Strong Kleene OR: any met → met; all "not met" → not met; else unknown (missing beats inconclusive)."""
    _check(states)
    if MET in states:
        return MET
    if all(s == NOT_MET for s in states):
        return NOT_MET
    return _unknown([s for s in states if s != NOT_MET])


def _check(states: Iterable[str]) -> None:
    for s in states:
        if s not in STATES:
            raise ValueError(f"unknown criterion state {s!r}; expected one of {STATES}")


def _missing(name: str, why: str) -> dict:
    return {"criterion": name, "stage": STAGES[name], "state": MISSING, "reason": why}


def criterion_a(drops: Sequence[float] | None, *, margin: float = 3.0, confidence: float = 0.95) -> dict:
    """Criterion A from the per-seed-pair drops FT − LoRA (points). None/empty → missing."""
    if drops is None or len(drops) == 0:
        return _missing("A", "no completed FT/LoRA seed pair (training stage)")
    d = describe(as_sample(drops, "drops"), confidence)
    out = {"criterion": "A", "stage": "training", "n": d["n"], "estimate": d["mean"], "ci": d["ci"],
           "confidence": confidence, "margin": margin}
    upper = d["ci"][1] if d["ci"] is not None else None
    if upper is not None and upper <= margin + EPS:
        state, why = MET, f"upper {confidence:.0%} bound {upper:.3f} ≤ {margin} points"
    elif d["mean"] <= margin + EPS:
        state = INCONCLUSIVE
        why = (f"drop {d['mean']:.3f} ≤ {margin} but upper bound {upper:.3f} > {margin}" if upper is not None
               else f"drop {d['mean']:.3f} ≤ {margin} but one seed pair gives no CI")
    else:
        state, why = NOT_MET, f"drop {d['mean']:.3f} > {margin} points"
    return {**out, "state": state, "reason": why}


def criterion_b(drift_ft: Sequence[float] | None, drift_lora: Sequence[float] | None, *, threshold: float = 0.2,
                confidence: float = 0.95) -> dict:
    """Criterion B from per-seed drift scores (paired by replicate). None/empty → missing."""
    if drift_ft is None or drift_lora is None or len(drift_ft) == 0:
        return _missing("B", "no paired FT/LoRA drift scores (drift stage)")
    ft, lora = as_pair(drift_ft, drift_lora, ("drift_ft", "drift_lora"))
    out: dict[str, Any] = {"criterion": "B", "stage": "drift", "n": int(ft.size), "threshold": threshold,
                           "confidence": confidence, "estimate": None, "ci": None}
    if (ft <= 0).any():
        return {**out, "state": INCONCLUSIVE, "reason": "D_FT ≤ 0 in some seed: the reduction is undefined"}
    d = describe(1.0 - lora / ft, confidence)
    out.update(estimate=d["mean"], ci=d["ci"], per_seed=[float(v) for v in 1.0 - lora / ft],
               ratio_of_means=float(1.0 - lora.mean() / ft.mean()))
    if d["ci"] is None:
        return {**out, "state": INCONCLUSIVE, "reason": "one seed pair gives no CI"}
    lo, hi = d["ci"]
    if lo >= threshold - EPS:
        return {**out, "state": MET, "reason": f"lower bound {lo:.3f} ≥ {threshold}"}
    if hi < threshold - EPS:
        return {**out, "state": NOT_MET, "reason": f"upper bound {hi:.3f} < {threshold}"}
    return {**out, "state": INCONCLUSIVE, "reason": f"CI [{lo:.3f}, {hi:.3f}] contains {threshold}"}


def _backend_state(cells: dict[int, Sequence[float] | None], batch_sizes: Sequence[int], threshold: float) -> dict:
    absent = [b for b in batch_sizes if cells.get(b) is None]
    over = [b for b in batch_sizes if cells.get(b) is not None and cells[b][0] > threshold + EPS]
    straddle = [b for b in batch_sizes if cells.get(b) is not None and cells[b][1] > threshold + EPS
                and b not in over]
    if over:
        return {"state": NOT_MET, "reason": f"overhead CI above {threshold:.0%} at batch size(s) {over}"}
    if absent or straddle:
        parts = ([f"no measurement at batch size(s) {absent}"] if absent else []) + (
            [f"CI contains {threshold:.0%} at batch size(s) {straddle}"] if straddle else [])
        return {"state": INCONCLUSIVE, "reason": "; ".join(parts)}
    return {"state": MET, "reason": f"upper bound ≤ {threshold:.0%} at every batch size {list(batch_sizes)}"}


def criterion_c(overheads: dict[str, dict[int, Sequence[float] | None]] | None, *,
                batch_sizes: Sequence[int] = (1, 2, 4, 8, 16), threshold: float = 0.3) -> dict:
    """Criterion C from ``{backend: {batch_size: (ci_low, ci_high) or None}}`` (overhead as a fraction).

    None/empty → missing. A CI bound that is not finite counts as no measurement."""
    if not overheads:
        return _missing("C", "no serving overhead measured (serve stage)")
    per_backend = {}
    for backend, cells in sorted(overheads.items()):
        clean = {b: (tuple(ci) if ci is not None and all(math.isfinite(v) for v in ci) else None)
                 for b, ci in cells.items()}
        per_backend[backend] = _backend_state(clean, batch_sizes, threshold)
    state = kleene_or(*(v["state"] for v in per_backend.values()))
    deciding = [b for b, v in per_backend.items() if v["state"] == state]
    reason = f"{state} for backend(s) {deciding}: " + "; ".join(per_backend[b]["reason"] for b in deciding)
    return {"criterion": "C", "stage": "serve", "state": state, "backends": per_backend, "backend": deciding,
            "threshold": threshold, "batch_sizes": list(batch_sizes), "reason": reason}


def verdict(a: dict, b: dict, c: dict) -> dict:
    """A ∧ (B ∨ C) over criterion dicts (each with ``state`` and ``stage``); names the missing stages."""
    state = kleene_and(a["state"], kleene_or(b["state"], c["state"]))
    missing = [f"{x['stage']} (criterion {x['criterion']})" for x in (a, b, c) if x["state"] == MISSING]
    reason = {MET: "A met and (B or C) met", NOT_MET: "A not met" if a["state"] == NOT_MET else "neither B nor C met"}
    undecided = [f"{x['criterion']} {x['state']}" for x in (a, b, c) if x["state"] in (INCONCLUSIVE, MISSING)]
    why = reason.get(state, f"undecided ({', '.join(undecided)})" + (f"; missing: {', '.join(missing)}"
                                                                      if missing else ""))
    return {"state": state, "formula": "A ∧ (B ∨ C)", "criteria": {"A": a, "B": b, "C": c},
            "missing_stages": missing, "reason": why}
