"""Markdown tables of the stats stage's results (the dict written to stats.json)."""

from __future__ import annotations

from typing import Any, Sequence


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def _ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return "—" if ci is None else f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return lines + [""]


def _validity(doc: dict) -> list[str]:
    lines = ["## Validity gate (§12): each method must beat the strongest trivial baseline", ""]
    for task, t in doc["tasks"].items():
        g = t.get("validity") or {}
        lines.append(f"- {task}: **{g.get('state', 'missing')}** — {g.get('reason', 'no gate result')}")
    return lines + [""]


def _verdicts(doc: dict) -> list[str]:
    rows = []
    for task, t in doc["tasks"].items():
        v = t["verdict"]
        crit = v["criteria"]
        rows.append([task, crit["A"]["state"], crit["B"]["state"], crit["C"]["state"], f"**{v['state']}**",
                     v["reason"]])
    lines = ["## Verdict: validity gate, then A ∧ (B ∨ C)", "", f"Study: **{doc.get('overall', 'missing')}**", ""]
    lines += _table(["task", "A (drop)", "B (drift)", "C (serving)", "verdict", "why"], rows)
    for task, t in doc["tasks"].items():
        for name, c in t["verdict"]["criteria"].items():
            lines.append(f"- {task} {name} ({c['stage']}): {c['state']} — {c['reason']}"
                         + (f"; estimate {_f(c.get('estimate'))}, CI {_ci(c.get('ci'))}" if c.get("estimate")
                            is not None else ""))
    return lines + [""]


def _task(task: str, t: dict) -> list[str]:
    lines = [f"## {task}", "", "### Test metrics over seeds (points)", ""]
    lines += _table(["method", "metric", "n", "mean", "sd", "95% CI", "note"],
                    [[d["method"], d["metric"], d["n"], _f(d["mean"], 2), _f(d["sd"], 2), _ci(d["ci"], 2),
                      d["note"] or ""] for d in t["descriptive"]])
    lines += ["### FT vs LoRA (estimate = FT − LoRA, points)", ""]
    rows = []
    for x in t["tests"]:
        eff = x.get("effect_sizes") or {}
        rows.append([x["family"], x["test"], x["metric"], x.get("replicate", "all"), x.get("n"),
                     _f(x.get("estimate")), _ci(x.get("ci")), _f(x.get("statistic")), _f(x.get("p"), 4),
                     _f(x.get("p_holm"), 4), _f(eff.get("cohens_dz")), _f(eff.get("hedges_g")), x.get("note") or ""])
    lines += _table(["family", "test", "metric", "seed", "n", "estimate", "CI", "statistic", "p", "p_holm",
                     "d_z", "g", "note"], rows)
    lines += ["### Drift reduction 1 − D_LoRA/D_FT", ""]
    lines += _table(["comparison", "probe", "pooling", "n", "reduction", "CI", "vs threshold"],
                    [[r["comparison"], r["probe"], r["pooling"], r.get("n"), _f(r.get("estimate")),
                      _ci(r.get("ci")), r["state"]] for r in t["drift"]["reductions"]])
    lines += [f"Power: {t['power']['text']}.", ""]
    lines += [f"- note: {n}" for n in t["notes"] + t["drift"]["notes"]]
    return lines + [""]


def _serve(serve: dict) -> list[str]:
    rows = [[o["backend"], o["scenario"], o["batch_size"], o["output_mode"], o["metric"], _f(o.get("estimate")),
             _ci(o.get("ci")), o.get("note") or ""] for o in serve["overheads"]]
    lines = ["## Serving overhead over merged (fraction; 0.30 = 30%)", ""]
    lines += _table(["backend", "scenario", "batch", "output", "metric", "overhead", "CI", "note"], rows)
    return lines + [f"- note: {n}" for n in serve["notes"]] + [""]


def render(doc: dict, caveat: str | None = None) -> str:
    """The whole report: verdict first, then per task, then serving."""
    lines = ["# Statistics and verdict (STUDY.md §11, §12)", ""]
    if caveat:
        lines += [f"> {caveat}", ""]
    cfg = doc["config"]
    lines += [f"Confidence {cfg['confidence']}, margin {cfg['equivalence_margin']} points, drift-reduction "
              f"threshold {cfg['drift_reduction_threshold']}, overhead threshold {cfg['overhead_threshold']}, "
              f"{cfg['bootstrap_resamples']} bootstrap resamples (seed {doc['seeds']['bootstrap']}).", ""]
    lines += _validity(doc) + _verdicts(doc)
    for task, t in doc["tasks"].items():
        lines += _task(task, t)
    lines += _serve(doc["serve"])
    lines += [f"- {n}" for n in doc.get("notes", [])]
    return "\n".join(lines) + "\n"
