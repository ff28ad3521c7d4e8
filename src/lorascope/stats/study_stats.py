"""Every statistic of a results folder (STUDY.md §11) and the verdict (§12): ``compute_stats`` returns the
self-describing document that the study's stats stage writes as ``<out>/stats/stats.json``.

A stage that did not run makes its part "missing" (the verdict names it); it never crashes the computation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.config.schema import StudyConfig
from lorascope.results import layout
from lorascope.stats.collect import load_drift, load_serve, load_training
from lorascope.stats.drift_summary import drift_summary
from lorascope.stats.multitest import apply_holm
from lorascope.stats.per_example import BOOTSTRAP_P_DEFINITION
from lorascope.stats.seeds import REFERENCE, descriptive, example_tests, pairs, power_note, seed_tests
from lorascope.stats.serve_summary import serve_summary
from lorascope.stats.validity import gate_result, gate_tests
from lorascope.stats.verdict import criterion_a, study_verdict, verdict

SCHEMA = "lorascope.stats/1"
VERDICT_METHOD = "lora"  # the verdict compares FT with LoRA on all linear layers; lora_qv is an ablation
DEFINITIONS = {
    "estimate": "FT − LoRA (points) for paired tests; overhead = stat(treatment)/stat(merged) − 1 (fraction)",
    "paired_t": "scipy.stats.ttest_rel over seed pairs (same data-order seed); ci = t-CI of the mean difference",
    "wilcoxon_signed_rank": "two-sided; zero differences dropped; exact distribution without ties, exact "
                            "enumeration of all 2^n sign flips with ties; n < 6 cannot reach p < 0.05",
    "cohens_dz": "mean(d)/sd(d), ddof = 1 (Lakens 2013)",
    "hedges_g": "J(n−1)·d_z, exact J(df) = Γ(df/2)/(√(df/2)Γ((df−1)/2)) (Hedges & Olkin 1985)",
    "tost_paired": "two one-sided paired t-tests against ±margin points; p = max; ci at 1 − 2α",
    "mcnemar": "statsmodels mcnemar on per-example correctness; exact binomial when b + c < 25, else χ² with "
               "continuity correction",
    "paired_bootstrap": "resample test examples with replacement (same indices for both arms); percentile CI; "
                        + BOOTSTRAP_P_DEFINITION,
    "p_holm": "Holm–Bonferroni within the test's family (statsmodels multipletests, method='holm')",
    "overhead": "percentile bootstrap over requests, each group resampled independently; p95 = numpy linear "
                "quantile; inverse_throughput = Σ e2e / Σ output tokens",
    "criterion_b_ci": "t-CI of the mean per-seed-pair log ratio ln(D_LoRA/D_FT), mapped to 1 − exp(·): the "
                      "reduction of the geometric-mean ratio, an interval that cannot pass 100%",
    "validity_gate": "per task and arm (FT, LoRA): one-sided paired bootstrap over test examples of the seed-mean "
                     "primary score minus the strongest trivial baseline's (same examples); Holm over every task × "
                     "arm; passes when the difference is > 0 and p_holm < stats.validity_alpha",
}


def finite_or_none(obj: Any, notes: list[str], where: str = "$") -> Any:
    """A JSON-ready copy: numpy scalars to Python, NaN/inf to None (each noted with its path)."""
    if isinstance(obj, dict):
        return {str(k): finite_or_none(v, notes, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v, notes, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        if not math.isfinite(float(obj)):
            notes.append(f"{where}: undefined value {float(obj)!r} recorded as null")
            return None
        return float(obj)
    return obj


def _baselines(out_dir: Path, task: str) -> dict | None:
    import json

    try:
        return json.loads(layout.data_file(out_dir, task, "baselines").read_text())
    except (OSError, ValueError):
        return None


def task_stats(cfg: StudyConfig, out_dir: Path, task: str, serve: dict) -> dict:
    """Everything for one task: descriptive, tests (p_holm not yet set), drift, power, criteria. The gate and
    the verdict come after Holm (``run_stats_stage``): the gate's tests are one family over all tasks."""
    training = load_training(out_dir, task, cfg.seeds.replicates)
    reps = pairs(training, VERDICT_METHOD)
    drops = None
    if reps:
        ft, lora = training.runs[REFERENCE], training.runs[VERDICT_METHOD]
        primary = ft[reps[0]].primary
        drops = [ft[r].test[primary] - lora[r].test[primary] for r in reps]
    a = criterion_a(drops, margin=cfg.stats.equivalence_margin, confidence=cfg.stats.confidence)
    if drops is not None:
        a.update(primary=primary, replicates=reps, drops=drops)
    drift_rows, drift_why = load_drift(out_dir, task)
    drift = drift_summary(drift_rows, drift_why, cfg.stats)
    seed = cfg.seeds.bootstrap
    tests = (gate_tests(task, training, _baselines(out_dir, task), cfg.stats, seed)
             + seed_tests(task, training, cfg.stats) + example_tests(task, training, cfg.stats, seed))
    return {"descriptive": descriptive(training, cfg.stats), "tests": tests, "drift": drift,
            "power": power_note(task, training, cfg.stats), "criteria": (a, drift["criterion_b"], serve["criterion_c"]),
            "notes": training.notes}


def _decide(task: dict, alpha: float) -> None:
    """After Holm: the task's validity gate, then the verdict A ∧ (B ∨ C) behind it."""
    gate = gate_result([t for t in task["tests"] if t.get("family") == "validity"], alpha)
    task["validity"] = gate
    task["verdict"] = verdict(*task.pop("criteria"), gate=gate)


def compute_stats(cfg: StudyConfig, out_dir: str | Path) -> dict:
    """§11 statistics and the §12 verdict for the results folder ``out_dir`` (stats.json's content)."""
    out_dir = Path(out_dir)
    serve_rows, serve_why = load_serve(out_dir)
    serve = serve_summary(serve_rows, serve_why, cfg.stats, seed=cfg.seeds.bootstrap,
                          batch_sizes=list(cfg.serve.batch_sizes))
    tasks = {task: task_stats(cfg, out_dir, task, serve) for task in cfg.data.tasks}
    apply_holm([t for task in tasks.values() for t in task["tests"]])
    for task in tasks.values():
        _decide(task, cfg.stats.validity_alpha)
    verdicts = {task: t["verdict"]["state"] for task, t in tasks.items()}
    notes: list[str] = []
    doc = finite_or_none({
        "schema": SCHEMA, "results_dir": str(out_dir), "config": cfg.stats.model_dump(mode="json"),
        "seeds": {"bootstrap": cfg.seeds.bootstrap}, "definitions": DEFINITIONS,
        "tasks": tasks, "serve": serve, "verdicts": verdicts,
        "overall": study_verdict(list(verdicts.values()))}, notes)
    doc["notes"] = notes
    return doc
