"""Success criteria and the verdict (STUDY.md §12), as pure functions over plain numbers.

Each criterion has one of four states: "met", "not met", "inconclusive" (the data do not decide it) and
"missing" (the stage that feeds it did not run). The verdict is A ∧ (B ∨ C) in Kleene's strong
three-valued logic, with "missing" and "inconclusive" both unknown; an unknown result is reported as
"missing" when an operand is missing (running that stage could decide it), else "inconclusive".

In front of the criteria stands the validity gate (``stats/validity.py``): where a method did not beat the
strongest trivial baseline of its task, the task's verdict is "not assessable" — a fifth state that no
criterion takes and that no logic turns into met or not met; a task without a gate result is "missing".
A degenerate (zero-width) interval, e.g. from identical FT and LoRA predictions, decides nothing: it is
not evidence of "no drop", so a criterion that would rest on it is inconclusive, with a note.

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

from lorascope.drift.aggregate import ratio_reduction
from lorascope.stats.checks import as_pair, as_sample
from lorascope.stats.describe import describe

MET, NOT_MET, INCONCLUSIVE, MISSING = "met", "not met", "inconclusive", "missing"
NOT_ASSESSABLE = "not assessable"  # the validity gate failed: no criterion can be judged on these models
MIN_TIMED_REQUESTS = 30  # §10: a serving cell needs ≥ 30 timed requests; fewer make C at most inconclusive
DEGENERATE = ("zero-width interval (every seed pair gives the same value): not evidence either way — are the "
              "two arms' predictions identical?")
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
    if upper is not None and d["ci"][0] == upper and d["mean"] <= margin + EPS:
        return {**out, "state": INCONCLUSIVE, "note": DEGENERATE,
                "reason": f"drop {d['mean']:.3f} in every seed pair: a {DEGENERATE}"}
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
    """Criterion B from per-seed drift scores (paired by replicate). None/empty → missing.

    The reduction and its interval come from ``drift.aggregate.ratio_reduction`` (log scale, so the interval
    never passes 100%; the drift stage's tables use the same function)."""
    if drift_ft is None or drift_lora is None or len(drift_ft) == 0:
        return _missing("B", "no paired FT/LoRA drift scores (drift stage)")
    ft, lora = as_pair(drift_ft, drift_lora, ("drift_ft", "drift_lora"))
    out: dict[str, Any] = {"criterion": "B", "stage": "drift", "n": int(ft.size), "threshold": threshold,
                           "confidence": confidence, "estimate": None, "ci": None}
    red = ratio_reduction(ft.tolist(), lora.tolist(), confidence)
    if red["estimate"] is None:
        return {**out, "state": INCONCLUSIVE, "reason": red["note"]}
    out.update(estimate=red["estimate"], ci=red["ci"], per_seed=red["per_replicate"], interval=red["method"],
               mean_of_reductions=red["mean_of_reductions"], ratio_of_means=float(1.0 - lora.mean() / ft.mean()))
    if red["ci"] is None:
        return {**out, "state": INCONCLUSIVE, "reason": "one seed pair gives no CI"}
    lo, hi = red["ci"]
    if lo == hi:
        return {**out, "state": INCONCLUSIVE, "note": DEGENERATE, "reason": f"reduction {lo:.3f}: a {DEGENERATE}"}
    if lo >= threshold - EPS:
        return {**out, "state": MET, "reason": f"lower bound {lo:.3f} ≥ {threshold}"}
    if hi < threshold - EPS:
        return {**out, "state": NOT_MET, "reason": f"upper bound {hi:.3f} < {threshold}"}
    return {**out, "state": INCONCLUSIVE, "reason": f"CI [{lo:.3f}, {hi:.3f}] contains {threshold}"}


def _cell(raw: Any) -> dict | None:
    """A C input cell: None (not measured), a (lo, hi) CI, or ``{"ci": (lo, hi) | None, "n": timed requests,
    "problem": why the cell cannot be used}``. A CI bound that is not finite counts as no measurement."""
    if raw is None:
        return None
    cell = dict(raw) if isinstance(raw, dict) else {"ci": raw}
    ci = cell.get("ci")
    cell["ci"] = tuple(ci) if ci is not None and all(math.isfinite(v) for v in ci) else None
    return cell


def _fmt_bs(sizes: Sequence[int]) -> str:
    return ", ".join(str(b) for b in sizes)


def _backend_state(cells: dict[int, Any], batch_sizes: Sequence[int], threshold: float, min_requests: int) -> dict:
    cells = {b: _cell(c) for b, c in cells.items()}
    if not any(c is not None and (c["ci"] is not None or c.get("problem")) for c in cells.values()):
        return {"state": MISSING, "reason": "no completed cell"}
    usable = {b: c for b, c in cells.items() if c is not None and c["ci"] is not None and not c.get("problem")}
    # Unmerged serving does strictly more work than merged: an overhead CI entirely below 0 is a measurement
    # problem (warm-up, ordering, noise), never evidence; the cell is not used.
    faster = [b for b in batch_sizes if b in usable and usable[b]["ci"][1] < 0]
    problems = [b for b in batch_sizes if cells.get(b) is not None and cells[b].get("problem")]
    absent = [b for b in batch_sizes if b not in usable and b not in problems]
    usable = {b: c for b, c in usable.items() if b not in faster}
    over = [b for b in batch_sizes if b in usable and usable[b]["ci"][0] > threshold + EPS]
    straddle = [b for b in batch_sizes if b in usable and usable[b]["ci"][1] > threshold + EPS and b not in over]
    counts = [c.get("n") for c in usable.values() if c.get("n") is not None]
    few = min(counts) if counts else None
    parts = []
    if faster:
        parts.append(f"unmerged faster than merged (CI below 0) at batch size(s) {_fmt_bs(faster)}: a measurement "
                     "problem, not used")
    parts += [f"batch size {b}: {cells[b]['problem']}" for b in problems]
    if absent:
        parts.append(f"no measurement at batch size(s) {_fmt_bs(absent)}")
    if over:
        state, why = NOT_MET, f"overhead CI above {threshold:.0%} at batch size(s) {_fmt_bs(over)}"
    elif faster or problems or absent or straddle:
        state = INCONCLUSIVE
        why = "; ".join(parts + ([f"CI contains {threshold:.0%} at batch size(s) {_fmt_bs(straddle)}"]
                                 if straddle else []))
        parts = []
    else:
        state, why = MET, f"upper bound ≤ {threshold:.0%} at every batch size {_fmt_bs(batch_sizes)}"
    if few is not None and few < min_requests and state in (MET, NOT_MET):
        why = (f"under-powered: {few} timed requests per cell (§10 asks ≥ {min_requests}); the data alone would say "
               f"'{state}' ({why})")
        state = INCONCLUSIVE
    if parts:
        why = why + "; " + "; ".join(parts)
    return {"state": state, "reason": why, "min_timed_requests": few}


def criterion_c(overheads: dict[str, dict[int, Any]] | None, *, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
                threshold: float = 0.3, min_requests: int = MIN_TIMED_REQUESTS) -> dict:
    """Criterion C from ``{backend: {batch_size: cell}}`` (``_cell``: overhead CI as a fraction, timed requests).

    None/empty, no batch size, or no backend with a completed cell → missing. Fewer than ``min_requests``
    timed requests make a backend at most inconclusive; an overhead CI below 0 is flagged, not used."""
    if not overheads:
        return _missing("C", "no serving overhead measured (serve stage)")
    if not batch_sizes:
        return _missing("C", "no batch sizes to judge (serve.batch_sizes is empty)")
    per_backend = {b: _backend_state(cells, batch_sizes, threshold, min_requests)
                   for b, cells in sorted(overheads.items())}
    measured = {b: v for b, v in per_backend.items() if v["state"] != MISSING}
    if not measured:
        c = _missing("C", "no backend completed a serving cell")
        return {**c, "backends": per_backend, "backend": [], "threshold": threshold, "batch_sizes": list(batch_sizes)}
    state = kleene_or(*(v["state"] for v in measured.values()))
    deciding = [b for b, v in measured.items() if v["state"] == state]
    by_reason: dict[str, list[str]] = {}  # backends with the same reason share one clause
    for name in deciding:
        by_reason.setdefault(per_backend[name]["reason"], []).append(name)
    reason = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
    return {"criterion": "C", "stage": "serve", "state": state, "backends": per_backend, "backend": deciding,
            "threshold": threshold, "batch_sizes": list(batch_sizes), "reason": reason}


def verdict(a: dict, b: dict, c: dict, gate: dict | None = None) -> dict:
    """A ∧ (B ∨ C) over criterion dicts (each with ``state`` and ``stage``); names the missing stages.

    ``gate`` (``stats.validity.gate_result``): "passed" lets the criteria decide; "not assessable" makes the
    verdict not assessable whatever A, B and C say; "missing" (or no gate) leaves it missing."""
    missing = [f"{x['stage']} (criterion {x['criterion']})" for x in (a, b, c) if x["state"] == MISSING]
    if gate is not None and gate.get("state") != "passed":
        state = NOT_ASSESSABLE if gate.get("state") == NOT_ASSESSABLE else MISSING
        return {"state": state, "formula": "validity gate, then A ∧ (B ∨ C)", "criteria": {"A": a, "B": b, "C": c},
                "gate": gate, "missing_stages": ([] if state == NOT_ASSESSABLE else ["validity gate"]) + missing,
                "reason": gate.get("reason", "no validity gate result")}
    state = kleene_and(a["state"], kleene_or(b["state"], c["state"]))
    reason = {MET: "A met and (B or C) met", NOT_MET: "A not met" if a["state"] == NOT_MET else "neither B nor C met"}
    undecided = [f"{x['criterion']} {x['state']}" for x in (a, b, c) if x["state"] in (INCONCLUSIVE, MISSING)]
    why = reason.get(state, f"undecided ({', '.join(undecided)})" + (f"; missing: {', '.join(missing)}"
                                                                      if missing else ""))
    return {"state": state, "formula": "A ∧ (B ∨ C)", "criteria": {"A": a, "B": b, "C": c},
            "missing_stages": missing, "reason": why, **({"gate": gate} if gate is not None else {})}


def study_verdict(task_states: Sequence[str]) -> str:
    """Over tasks: any task not assessable makes the study not assessable; else every task must hold (AND)."""
    if not task_states:
        return MISSING
    if NOT_ASSESSABLE in task_states:
        return NOT_ASSESSABLE
    return kleene_and(*task_states)
