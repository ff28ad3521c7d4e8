"""The training part of the stats stage for one task: descriptive stats over seeds, FT-vs-LoRA paired
tests over seeds, per-example paired tests per seed pair, and the power note (STUDY.md §11).

Every test is a self-describing dict: ``test``, ``family``, ``comparison`` ("ft-lora": estimate = FT − LoRA,
in points), ``metric``, ``n``, ``statistic``, ``p`` (``p_holm`` is set later per family), ``ci``,
``effect_sizes``, ``note``. A test that is undefined on these data has ``p`` None and the reason in ``note``.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np

from lorascope.config.protocol import PRIMARY_METRIC
from lorascope.config.schema import StatsConfig
from lorascope.errors import StatsInputError
from lorascope.stats.collect import Training, per_example
from lorascope.stats.describe import describe, paired_t_detectable_dz, proportion_ci_halfwidth, wilcoxon_min_p
from lorascope.stats.paired import cohens_dz, hedges_g, paired_t, tost_paired, wilcoxon_exact
from lorascope.stats.per_example import align_by_id, mcnemar_test, paired_bootstrap

REFERENCE = "ft"
LORA_METHODS = ("lora", "lora_qv")
MRPC_TEST_N = 1725  # the full MRPC (MSRP) test set, for the §11 power note
SQUAD_POINTS = {"exact": "exact", "f1": "f1"}  # per-example key → test metric name (per-example values 0–1)
# Metrics tested FT vs LoRA over seeds: each task's official pair (GLUE MRPC: accuracy, F1; SQuAD v2: EM, F1).
# The breakdowns (MCC, HasAns/NoAns) are described over seeds but not tested: they are not separate
# hypotheses, and testing them would only enlarge the Holm families.
TESTED_METRICS = {"mrpc": ("accuracy", "f1"), "squad_v2": ("exact", "f1")}


def guarded(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Run a statistic; degenerate input gives ``{"p": None, "note": why}`` instead of an exception."""
    try:
        return fn(*args, **kwargs)
    except StatsInputError as exc:
        return {"p": None, "statistic": None, "ci": None, "note": str(exc)}


def _value_or_note(fn: Callable[..., float], *args: Any) -> tuple[float | None, str | None]:
    try:
        return fn(*args), None
    except StatsInputError as exc:
        return None, str(exc)


def child_rng(seed: int, label: str) -> np.random.Generator:
    """A generator for one named comparison: independent of the order the stage computes things in."""
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])


def descriptive(training: Training, cfg: StatsConfig) -> list[dict]:
    """Mean, sd and t-CI over replicates per (method, metric), in points."""
    rows = []
    for method, runs in sorted(training.runs.items()):
        metrics = sorted({m for run in runs.values() for m in run.test})
        for metric in metrics:
            values = [runs[r].test[metric] for r in sorted(runs) if metric in runs[r].test]
            rows.append({"method": method, "metric": metric, "replicates": sorted(runs),
                         **describe(values, cfg.confidence)})
    return rows


def pairs(training: Training, method: str) -> list[int]:
    """Replicates that both FT and ``method`` completed (pairing by the shared data-order seed)."""
    ft, other = training.runs.get(REFERENCE, {}), training.runs.get(method, {})
    return sorted(set(ft) & set(other))


def seed_tests(task: str, training: Training, cfg: StatsConfig) -> list[dict]:
    """Paired t (with d_z, g), exact Wilcoxon and (primary metric) TOST for FT vs each LoRA variant."""
    tests = []
    for method in LORA_METHODS:
        reps = pairs(training, method)
        if not reps:
            continue
        ft, lo = training.runs[REFERENCE], training.runs[method]
        comparison = f"{REFERENCE}-{method}"
        primary = ft[reps[0]].primary
        tested = TESTED_METRICS.get(task, (primary,))
        for metric in [m for m in tested if all(m in ft[r].test and m in lo[r].test for r in reps)]:
            a = [ft[r].test[metric] for r in reps]
            b = [lo[r].test[metric] for r in reps]
            base = {"comparison": comparison, "metric": metric, "replicates": reps, "level": "seeds",
                    "estimate": float(np.mean(np.subtract(a, b), dtype=np.float64))}
            t = guarded(paired_t, a, b, cfg.confidence)
            dz, dz_note = _value_or_note(cohens_dz, a, b)
            g, g_note = _value_or_note(hedges_g, a, b)
            t["effect_sizes"] = {"cohens_dz": dz, "hedges_g": g, "note": g_note or dz_note,
                                 "hedges_correction": "exact J = Γ(df/2)/(√(df/2)Γ((df−1)/2)), df = n − 1"}
            tests.append({**base, "family": f"{task}/seeds/paired_t", "test": "paired_t", **t})
            w = guarded(wilcoxon_exact, a, b)
            tests.append({**base, "family": f"{task}/seeds/wilcoxon", "test": "wilcoxon_signed_rank", **w})
            if metric == primary:
                tost = guarded(tost_paired, a, b, cfg.equivalence_margin, 1.0 - cfg.confidence)
                tests.append({**base, "family": f"{task}/seeds/tost", "test": "tost_paired",
                              "margin": cfg.equivalence_margin, **tost})
    for t in tests:
        t.setdefault("n", len(t["replicates"]))
    return tests


def example_tests(task: str, training: Training, cfg: StatsConfig, seed: int) -> list[dict]:
    """Per seed pair on the test set: McNemar (MRPC correctness) or paired bootstrap (SQuAD EM and F1, points)."""
    tests = []
    for method in LORA_METHODS:
        for rep in pairs(training, method):
            ft, lo = training.runs[REFERENCE][rep], training.runs[method][rep]
            base = {"comparison": f"{REFERENCE}-{method}", "replicate": rep, "level": "per-example",
                    "runs": [ft.name, lo.name]}
            if task == "mrpc":
                a, b, _ = align_by_id(per_example(ft, "correct"), per_example(lo, "correct"), (ft.name, lo.name))
                res = guarded(mcnemar_test, a, b)
                tests.append({**base, "family": f"{task}/per-example/mcnemar/{base['comparison']}",
                              "test": "mcnemar", "metric": "accuracy", **res})
                continue
            for key, metric in SQUAD_POINTS.items():
                a, b, _ = align_by_id(per_example(ft, key), per_example(lo, key), (ft.name, lo.name))
                rng = child_rng(seed, f"{task}/{base['comparison']}/r{rep}/{metric}")
                res = guarded(paired_bootstrap, 100.0 * a, 100.0 * b, resamples=cfg.bootstrap_resamples,
                              rng=rng, confidence=cfg.confidence)
                tests.append({**base, "family": f"{task}/per-example/bootstrap-{metric}/{base['comparison']}",
                              "test": "paired_bootstrap", "metric": metric, **res})
    return tests


def power_note(task: str, training: Training, cfg: StatsConfig) -> dict:
    """How precise the study can be: test-set CI half-width of a proportion, and what n seed pairs can detect."""
    alpha = 1.0 - cfg.confidence
    out: dict = {"confidence": cfg.confidence}
    if task == "mrpc":
        out["reference"] = {"accuracy": 85.0, "n_test": MRPC_TEST_N,
                            "ci_halfwidth_points": 100.0 * proportion_ci_halfwidth(0.85, MRPC_TEST_N, cfg.confidence)}
    ft = training.runs.get(REFERENCE, {})
    metric = PRIMARY_METRIC[task]
    n_test = _test_n(training)
    if ft and n_test:
        p = float(np.mean([run.test[metric] for run in ft.values() if metric in run.test])) / 100.0
        # SQuAD F1 is a mean of per-question scores in [0, 1]: their variance is at most p(1 − p), so the
        # proportion's half-width is an upper bound there (exact for accuracy).
        out["observed"] = {"metric": metric, "value": 100.0 * p, "n_test": n_test, "bound": metric != "accuracy",
                           "ci_halfwidth_points": 100.0 * proportion_ci_halfwidth(p, n_test, cfg.confidence)}
    n_pairs = max((len(pairs(training, m)) for m in LORA_METHODS), default=0)
    out["seed_pairs"] = n_pairs
    if n_pairs >= 2:
        out["paired_t_detectable_dz_80pct_power"] = paired_t_detectable_dz(n_pairs, alpha, 0.8)
    if n_pairs >= 1:
        out["wilcoxon_min_attainable_p"] = wilcoxon_min_p(n_pairs)
    out["text"] = _power_text(out, alpha)
    return out


def _test_n(training: Training) -> int | None:
    for runs in training.runs.values():
        for run in runs.values():
            try:
                with open(run.path / "predictions_test.jsonl") as fh:
                    return sum(1 for line in fh if line.strip())
            except OSError:
                continue
    return None


def _power_text(out: dict, alpha: float) -> str:
    parts = []
    if "reference" in out:
        r = out["reference"]
        parts.append(f"at {r['accuracy']:.0f}% accuracy on the {r['n_test']:,} MRPC test pairs the "
                     f"{out['confidence']:.0%} CI half-width is ±{r['ci_halfwidth_points']:.2f} points")
    if "observed" in out:
        o = out["observed"]
        parts.append(f"here ({o['metric']} {o['value']:.1f} on n={o['n_test']}) it is "
                     f"{'at most ' if o.get('bound') else ''}±{o['ci_halfwidth_points']:.2f}")
    if "paired_t_detectable_dz_80pct_power" in out:
        parts.append(f"with {out['seed_pairs']} seed pairs a paired t-test has 80% power only for "
                     f"|d_z| ≥ {out['paired_t_detectable_dz_80pct_power']:.2f}")
    if out.get("wilcoxon_min_attainable_p", 0) >= alpha:
        parts.append(f"the exact Wilcoxon test cannot reach p < {alpha:g} (smallest p "
                     f"{out['wilcoxon_min_attainable_p']:.4g})")
    return "; ".join(parts)
