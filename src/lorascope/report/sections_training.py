"""Report sections on training and task metrics: sanity gate, baselines, HPO, main results, significance."""

from __future__ import annotations

from lorascope.config.protocol import PRIMARY_METRIC
from lorascope.report import fmt
from lorascope.report.blocks import Callout, Heading, Section, Table, Text
from lorascope.report.common import method_name, needs, study_config

MRPC_COLS = (("accuracy", "expected_accuracy", "Acc"), ("f1", "f1_at_expected_counts", "F1"),
             ("mcc", "mcc_at_expected_counts", "MCC"))
SQUAD_COLS = (("exact", "expected_exact", "EM"), ("f1", "expected_f1", "F1"),
              ("HasAns_f1", "HasAns_expected_f1", "HasAns F1"), ("NoAns_f1", "NoAns_expected_f1", "NoAns F1"))
COUNTS = {"n", "total", "truncated", "HasAns_total", "NoAns_total"}


def sanity(results: dict) -> Section:
    s = Section("sanity", "Sanity gate (STUDY.md §6)")
    sc = study_config(results).get("sanity") or {}
    n, loss, steps = sc.get("n_examples"), sc.get("loss_threshold"), sc.get("max_steps")
    if None in (n, loss, steps):
        s.blocks.append(Text("Each (task, method) trains on a few training examples until its loss on targets is "
                             "low, and must then get all of them right; a failure stops the study (the settings "
                             "were not recorded)."))
    else:
        s.blocks.append(Text(f"Each (task, method) trains on {n} training examples until the loss on targets ≤ "
                             f"{loss:g} or {steps} steps, and must then get all {n} right; a failure "
                             "stops the study."))
    rows, failed = [], []
    for task, t in results["tasks"].items():
        if not needs(s, results, ("sanity",), task):
            continue
        for method, x in sorted(t["sanity"].items()):
            rows.append([task, method_name(method), fmt.lr(x.get("lr")), fmt.plain(x.get("steps")),
                         fmt.num(x.get("final_loss"), 4), f"{x.get('metric')} {fmt.pts(x.get('score'))}",
                         fmt.yes_no(x.get("passed"))])
            if not x.get("passed"):
                failed.append(f"{task}/{method}: {x.get('metric')} {fmt.pts(x.get('score'))} after "
                              f"{x.get('steps')} steps, final loss {fmt.num(x.get('final_loss'), 4)}")
    if rows:
        s.blocks.append(Table(["task", "method", "lr", "steps", "final loss (nats/token)", "score (points)",
                               "passed"], rows))
    if failed:
        s.blocks.append(Callout("missing", "Sanity gate failed", failed))
    return s


def _baseline_rows(task: str, b: dict, zero_shot: dict | None) -> tuple[list[str], list[list[str]]]:
    cols = MRPC_COLS if task == "mrpc" else SQUAD_COLS
    rows = []
    for x in b.get("baselines") or []:
        m = x.get("metrics") or {}
        details = []
        if x.get("draws"):
            key = PRIMARY_METRIC[task]
            d = x["draws"].get(key) or {}
            details.append(f"expected value; {d.get('n_draws')} seeded draws: {key} {fmt.pts(d.get('mean'))} ± "
                           f"{fmt.pts(d.get('sd'))}")
        params = x.get("params") or {}
        if "tau" in params:
            details.append(f"τ = {fmt.num(params['tau'], 3)} tuned on validation")
        if "label" in params:
            details.append(f"predicts {params['label']}")
        values = [fmt.pts(m.get(k, m.get(k_exp))) for k, k_exp, _ in cols]
        rows.append([x.get("name", "?"), x.get("split", "?")] + values + ["; ".join(details)])
    if zero_shot:
        m = zero_shot.get("test") or {}
        rows.append(["base model zero-shot (same prompts)", "test"] + [fmt.pts(m.get(k)) for k, _, _ in cols]
                    + [f"truncated contexts: {m.get('truncated', 0)}"])
    return ["baseline", "split"] + [c[2] for c in cols] + ["details"], rows


def baselines(results: dict) -> Section:
    s = Section("baselines", "Baselines and literature (STUDY.md §7)")
    for task, t in results["tasks"].items():
        s.blocks.append(Heading(task))
        needs(s, results, ("baselines", "zero-shot"), task)
        if not t.get("baselines") and not t.get("zero_shot"):
            continue
        header, rows = _baseline_rows(task, t.get("baselines") or {}, t.get("zero_shot"))
        s.blocks.append(Table(header, rows, f"{task}: baselines on the test split (points)."))
        lit = (t.get("baselines") or {}).get("literature") or []
        if lit:
            s.blocks.append(Table(["model (other models)", "metric", "value (points)", "split", "source", "verified"],
                                  [[r.get("model"), r.get("metric"), fmt.pts(r.get("value")), r.get("split"),
                                    r.get("cite"), fmt.yes_no(r.get("verified"))] for r in lit],
                                  f"{task}: published numbers of other models, for context only; not comparable "
                                  "to this study's splits or model."))
    return s


def hpo(results: dict) -> Section:
    s = Section("hpo", "Hyper-parameter search on validation (STUDY.md §5)")
    rows = []
    for task, t in results["tasks"].items():
        if not needs(s, results, ("hpo",), task):
            continue
        for method, h in sorted(t["hpo"].items()):
            trials = sorted(h.get("trials") or [], key=lambda x: x.get("lr") or 0)
            grid = ", ".join(f"{fmt.lr(x.get('lr'))} → " + ("diverged" if x.get("value") is None else
                                                             fmt.pts(x.get("value"))) for x in trials)
            rows.append([task, method_name(method), str(h.get("metric")), grid, fmt.lr(h.get("best_lr")),
                         str(h.get("sampler"))])
    if rows:
        s.blocks.append(Table(["task", "method", "selection metric", "lr → validation (points)", "chosen lr",
                               "sampler"], rows, "Seed 0 only; the test split is never read during HPO."))
    return s


def _seed_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for r in runs:
        spec, test = r.get("run") or {}, r.get("test") or {}
        primary = r.get("primary")
        others = ", ".join(f"{k} {fmt.pts(v)}" for k, v in sorted(test.items()) if k not in COUNTS and k != primary)
        rows.append([r["name"], method_name(spec.get("method")), fmt.lr(spec.get("lr")),
                     fmt.plain(spec.get("replicate")),
                     fmt.pts(r.get("validation_best")), f"{primary} {fmt.pts(test.get(primary))}", others,
                     fmt.plain(r.get("train_dropped")), fmt.plain(test.get("truncated"))])
    return rows


def _descriptive_table(task: str, desc: list[dict], primary: str | None) -> Table:
    """One row per metric (primary first), one mean [95% CI] and sd column pair per method."""
    methods = sorted({str(d.get("method")) for d in desc}, key=lambda m: (m != "ft", m))
    metrics = sorted({str(d.get("metric")) for d in desc}, key=lambda m: (m != primary, m))
    by = {(str(d.get("method")), str(d.get("metric"))): d for d in desc}
    rows = []
    for metric in metrics:
        row = [metric + (" (primary)" if metric == primary else "")]
        for m in methods:
            d = by.get((m, metric)) or {}
            row += [fmt.est_ci(d.get("mean"), d.get("ci")), fmt.pts(d.get("sd"))]
        rows.append(row + [fmt.plain(max((by[k].get("n") or 0) for k in by if k[1] == metric))])
    header = ["metric"] + [h for m in methods for h in (f"{method_name(m)} mean [95% CI]", f"{method_name(m)} sd")]
    notes = sorted({d["note"] for d in desc if d.get("note")})
    return Table(header + ["seeds"], rows, f"{task}: test metrics in points, mean over seeds with a 95% t-interval "
                 "over seeds." + (" Notes: " + "; ".join(notes) + "." if notes else ""))


def main_results(results: dict) -> Section:
    s = Section("results", "Main results: test metrics over seeds (STUDY.md §5, §11)")
    stats = results.get("stats") or {}
    for task, t in results["tasks"].items():
        s.blocks.append(Heading(task))
        desc = ((stats.get("tasks") or {}).get(task) or {}).get("descriptive")
        primary = (t["runs"] or [{}])[0].get("primary")
        if needs(s, results, ("stats",)) and desc:
            s.blocks.append(_descriptive_table(task, desc, primary))
        if not needs(s, results, ("training",), task):
            continue
        s.blocks.append(Table(["run", "method", "lr", "seed", "validation best", "test primary", "other test metrics",
                               "train dropped (too long)", "test truncated"], _seed_rows(t["runs"]),
                              f"{task}: every final run (points). Dropped / truncated counts as §4 requires."))
    return s


def _test_rows(tests: list[dict]) -> list[list[str]]:
    rows = []
    for x in tests:
        eff = x.get("effect_sizes") or {}
        rows.append([x.get("test", "?"), x.get("metric", "?"), fmt.plain(x.get("replicate", "all")),
                     fmt.plain(x.get("n")), fmt.pts(x.get("estimate")), fmt.ci(x.get("ci")),
                     fmt.pval(x.get("p")), fmt.pval(x.get("p_holm")), fmt.num(eff.get("cohens_dz")),
                     fmt.num(eff.get("hedges_g")), x.get("note") or ""])
    return rows


def significance(results: dict) -> Section:
    s = Section("significance", "Significance and effect sizes, FT vs LoRA (STUDY.md §11)")
    stats = results.get("stats") or {}
    if not needs(s, results, ("stats",)):
        return s
    defs = stats.get("definitions") or {}
    s.blocks.append(Text("Estimate = FT − LoRA in points (positive: FT better). Seed-level tests pair runs by data-"
                         "order seed; per-example tests compare the two runs of one seed on the test set. p_holm: "
                         "Holm–Bonferroni within each test family. d_z: Cohen's d_z; g: Hedges' g."))
    for task, t in (stats.get("tasks") or {}).items():
        s.blocks.append(Heading(task))
        s.blocks.append(Table(["test", "metric", "seed", "n", "estimate", "CI", "p", "p_holm", "d_z", "g", "note"],
                              _test_rows(t.get("tests") or [])))
        power = (t.get("power") or {}).get("text")
        if power:
            s.blocks.append(Text(f"Power: {power}."))
    if defs:
        s.blocks.append(Table(["term", "definition"], [[k, v] for k, v in sorted(defs.items())],
                              "Definitions (from stats.json)."))
    return s
