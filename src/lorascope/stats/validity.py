"""The validity gate (STUDY.md §12): before any criterion, each method must beat the strongest trivial baseline.

A verdict drawn from models that never learned the task is worse than none: two runs that both predict the
majority class "drop" 0 points from each other and would certify criterion A. So, per task and per verdict
arm (FT, LoRA), the method's test primary metric — averaged over its final seeds, per example — must beat
the strongest trivial baseline of §7 (MRPC: majority class, stratified random; SQuAD v2: always-no-answer,
stratified random spans), scored on the *same* test examples (aligned by id; the baselines stage records
each trivial baseline's per-example primary score, the stratified ones as exact expectations).

The test: a one-sided paired bootstrap over test examples of mean(method − baseline) in points
(H1: > 0; ``per_example.paired_bootstrap(alternative="greater")``), Holm-corrected over every task × method
of the study (one family, ``FAMILY``). A method passes when the difference is positive and p_holm <
``stats.validity_alpha``. "The strongest" is chosen on those same examples by mean score, before testing.
The gate is "passed" when every arm passes, "not assessable" when one does not (the reason names the
method, its score, the baseline and its score), "missing" when runs or baselines are absent.
"""

from __future__ import annotations

from lorascope.config.protocol import PRIMARY_METRIC
from lorascope.config.schema import StatsConfig
from lorascope.errors import StatsInputError
from lorascope.stats.collect import Training, per_example
from lorascope.stats.per_example import paired_bootstrap
from lorascope.stats.seeds import child_rng
from lorascope.stats.verdict import MISSING, NOT_ASSESSABLE

FAMILY = "validity"
ARMS = ("ft", "lora")  # the verdict's arms (lora_qv is an ablation and takes no part in the verdict)
PER_EXAMPLE_PRIMARY = {"mrpc": "correct", "squad_v2": "f1"}  # predictions_test.jsonl key, a fraction per example
PASSED = "passed"


def trivial_baselines(baselines: dict | None) -> dict[str, dict[str, float]]:
    """``{baseline name: {example id: primary score (fraction)}}`` of the trivial baselines in baselines.json."""
    out = {}
    for b in (baselines or {}).get("baselines") or []:
        scores = (b.get("per_example") or {}).get("scores")
        if b.get("trivial") and isinstance(scores, dict):
            out[str(b["name"])] = {str(k): float(v) for k, v in scores.items()}
    return out


def seed_mean_scores(training: Training, method: str, task: str) -> tuple[dict[str, float], list[int]]:
    """Per test example, the method's primary score averaged over its final seeds (every seed scores the
    same examples; another id set is an error). The mean over examples is the seeds' mean test metric."""
    runs = training.runs.get(method) or {}
    key = PER_EXAMPLE_PRIMARY[task]
    total: dict[str, float] | None = None
    for rep in sorted(runs):
        scores = per_example(runs[rep], key)
        if total is None:
            total = dict(scores)
        elif set(scores) != set(total):
            raise StatsInputError(f"{runs[rep].name}: its test examples differ from the other seeds' "
                                  f"({len(set(scores) ^ set(total))} ids differ)")
        else:
            total = {i: total[i] + v for i, v in scores.items()}
    if not total:
        return {}, []
    return {i: v / len(runs) for i, v in total.items()}, sorted(runs)


def gate_tests(task: str, training: Training, baselines: dict | None, cfg: StatsConfig, seed: int) -> list[dict]:
    """One test dict per arm: method vs the strongest trivial baseline on its test examples (p_holm set later)."""
    trivial = trivial_baselines(baselines)
    tests = []
    for method in ARMS:
        base = {"family": FAMILY, "test": "paired_bootstrap_one_sided", "task": task, "method": method,
                "comparison": f"{method}-baseline", "level": "validity", "metric": PRIMARY_METRIC[task]}
        try:
            model, reps = seed_mean_scores(training, method, task)
        except StatsInputError as exc:
            tests.append({**base, "p": None, "note": str(exc)})
            continue
        if not model:
            tests.append({**base, "p": None, "note": f"no completed final {method} run"})
            continue
        ids = sorted(model)
        covering = {name: s for name, s in trivial.items() if all(i in s for i in ids)}
        if not covering:
            why = ("baselines.json has no per-example trivial baseline scores (rerun the data stage)" if not trivial
                   else "the trivial baselines were scored on other test examples than the models")
            tests.append({**base, "p": None, "note": why})
            continue
        means = {name: 100.0 * sum(s[i] for i in ids) / len(ids) for name, s in covering.items()}
        strongest = max(means, key=lambda name: (means[name], name))
        a = [100.0 * model[i] for i in ids]
        b = [100.0 * covering[strongest][i] for i in ids]
        rng = child_rng(seed, f"validity/{task}/{method}")
        res = paired_bootstrap(a, b, resamples=cfg.bootstrap_resamples, rng=rng, confidence=cfg.confidence,
                               alternative="greater")
        tests.append({**base, **res, "test": "paired_bootstrap_one_sided", "replicates": reps,
                      "method_score": sum(a) / len(a), "baseline": strongest, "baseline_score": means[strongest],
                      "baselines_considered": means, "n": len(ids)})
    return tests


def _label(method: str) -> str:
    return {"ft": "FT", "lora": "LoRA"}.get(method, method)


def gate_result(tests: list[dict], alpha: float) -> dict:
    """The gate of one task from its (Holm-adjusted) tests: passed / not assessable / missing, with reasons."""
    failed, missing, passed = [], [], []
    for t in tests:
        who = _label(t["method"])
        if t.get("p") is None or t.get("p_holm") is None:
            missing.append(f"{who}: {t.get('note') or 'no test'}")
        elif t["estimate"] > 0 and t["p_holm"] < alpha:
            passed.append(f"{who} {t['method_score']:.2f} > {t['baseline']} {t['baseline_score']:.2f} "
                          f"(one-sided p_holm = {t['p_holm']:.4f})")
        else:
            failed.append(f"{who} test {t['metric']} {t['method_score']:.2f} does not beat {t['baseline']} "
                          f"{t['baseline_score']:.2f} on the same {t['n']} examples (difference "
                          f"{t['estimate']:+.2f} points, one-sided p_holm = {t['p_holm']:.4f}, needs < {alpha:g})")
    if failed:
        return {"state": NOT_ASSESSABLE, "reason": "not assessable: " + "; ".join(failed + missing),
                "failed": failed, "passed": passed, "missing": missing, "alpha": alpha}
    if missing or not tests:
        return {"state": MISSING, "reason": "validity gate missing: " + ("; ".join(missing) or "no test"),
                "failed": [], "passed": passed, "missing": missing, "alpha": alpha}
    return {"state": PASSED, "reason": "both methods beat the strongest trivial baseline: " + "; ".join(passed),
            "failed": [], "passed": passed, "missing": [], "alpha": alpha}
