"""Run every model-free baseline of one task (STUDY.md §7) and summarise them.

``run_baselines`` returns a JSON-ready dict that starts with ``data.describe()`` (task, split
scheme -- e.g. "dev-only" --, source, sizes, notes), so the scheme travels with every number. All
baselines are evaluated on the **test** split; the validation split is used only to tune the SQuAD
no-answer threshold (and reported as a second view for the MRPC logistic regression); the train split
fits everything else (majority label, random rates, TF-IDF/IDF, the regression).

Randomness: the stratified baselines draw from ``numpy.random.default_rng([seed, k])`` with a fixed
stream index k per baseline, so adding or reordering baselines never changes another's draws and
global RNG state is never touched.
"""

from __future__ import annotations

import numpy as np

from lorascope.config.baselines import BaselinesConfig
from lorascope.config.protocol import PRIMARY_METRIC
from lorascope.data.types import TaskData
from lorascope.errors import DataError

STREAM_MRPC_STRATIFIED = 11
STREAM_SQUAD_STRATIFIED = 12


def _check_disjoint(data: TaskData) -> None:
    """Validation (tuning) and test (reporting) must not share examples."""
    val_ids = {ex.id for ex in data["validation"]}
    test_ids = {ex.id for ex in data["test"]}
    assert not val_ids & test_ids, f"{len(val_ids & test_ids)} ids are in both validation and test"


# The trivial baselines of §7 (no model, no features): the validity gate of §12 asks every trained method to
# beat the strongest of them on the same test examples, so they carry per-example scores ("per_example":
# the primary metric per example id, as a fraction; the stratified ones their exact expectation).
TRIVIAL = {"mrpc": ("majority", "stratified_random"), "squad_v2": ("always_no_answer", "stratified_random")}


def _entry(result: dict, split: str = "test", task: str | None = None) -> dict:
    return {"name": result["name"], "split": split, "metrics": result["metrics"],
            "trivial": result["name"] in TRIVIAL.get(task or "", ()),
            **{k: v for k, v in result.items() if k not in ("name", "metrics")}}


def run_baselines(data: TaskData, cfg: BaselinesConfig, seed: int) -> dict:
    """All §7 baselines that need no neural model, for ``data.task``, evaluated on test."""
    from lorascope.baselines import majority, stratified
    from lorascope.baselines.literature import literature_for

    for split in ("train", "test"):
        if not data[split]:
            raise DataError(f"baselines: the {split} split of {data.task} is empty")
    _check_disjoint(data)
    train, val, test = data["train"], data["validation"], data["test"]
    results: list[dict] = []
    if data.task == "mrpc":
        from lorascope.baselines.lexical_mrpc import mrpc_lexical

        results.append(_entry(majority.mrpc_majority(train, test), task="mrpc"))
        rng = np.random.default_rng([seed, STREAM_MRPC_STRATIFIED])
        results.append(_entry(stratified.mrpc_stratified(train, test, cfg.random_draws, rng, cfg.percentiles),
                              task="mrpc"))
        results.append(_entry(mrpc_lexical(train, val, test, cfg), task="mrpc"))
    elif data.task == "squad_v2":
        from lorascope.baselines.squad_span import squad_sliding_window

        results.append(_entry(majority.squad_always_no_answer(test), task="squad_v2"))
        rng = np.random.default_rng([seed, STREAM_SQUAD_STRATIFIED])
        results.append(_entry(stratified.squad_stratified(train, test, cfg.random_draws, rng, cfg.percentiles),
                              task="squad_v2"))
        if not val:
            raise DataError("baselines: the sliding-window scorer needs a validation split to tune tau")
        results.append(_entry(squad_sliding_window(train, val, test, cfg), task="squad_v2"))
    else:
        raise DataError(f"baselines: unknown task {data.task!r}")
    return {**data.describe(), "seed": seed, "evaluated_on": "test", "tuned_on": "validation",
            "config": cfg.model_dump(mode="json"), "baselines": results,
            "literature": literature_for(data.task) if cfg.literature else []}


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def baselines_markdown(result: dict) -> str:
    """A Markdown summary: data description, one row per baseline, then the literature table."""
    task = result["task"]
    lines = [f"### Baselines — {task} (split scheme: {result['split_scheme']}, source: {result['source']})", ""]
    sizes = result.get("sizes", {})
    lines.append("Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ". Evaluated on **test**; "
                 "τ tuned on validation only. Stratified rows show exact expected values; draws as mean ± sd.")
    lines += [f"> {n}" for n in result.get("notes", [])] + [""]
    if task == "mrpc":
        cols = [("accuracy", "expected_accuracy", "Acc"), ("f1", "f1_at_expected_counts", "F1"),
                ("mcc", "mcc_at_expected_counts", "MCC")]
    else:
        cols = [("exact", "expected_exact", "EM"), ("f1", "expected_f1", "F1"),
                ("HasAns_f1", "HasAns_expected_f1", "HasAns F1"), ("NoAns_f1", "NoAns_expected_f1", "NoAns F1")]
    lines.append("| baseline | split | " + " | ".join(c[2] for c in cols) + " | details |")
    lines.append("|---" * (len(cols) + 3) + "|")
    for b in result["baselines"]:
        m = b["metrics"]
        cells = [_fmt(m.get(k, m.get(k_exp))) for k, k_exp, _ in cols]
        details = []
        draws = b.get("draws")
        if draws:
            key = PRIMARY_METRIC[task]
            d = draws[key]
            what = "exact expected accuracy; F1, MCC at expected counts" if task == "mrpc" else "exact expected values"
            details.append(f"{what}; {d['n_draws']} seeded draws: {key} {d['mean']:.2f} ± {d['sd']:.2f}")
            if task == "mrpc":
                details.append(f"F1 {draws['f1']['mean']:.2f} ± {draws['f1']['sd']:.2f}")
        params = b.get("params", {})
        if "tau" in params:
            details.append(f"τ = {params['tau']:.3f} (validation F1 {params['validation_metrics']['f1']:.2f})")
        if params.get("validation_metrics") and "tau" not in params:
            details.append(f"validation acc {params['validation_metrics']['accuracy']:.2f}")
        if "label" in params:
            details.append(f"predicts {params['label']}")
        lines.append(f"| {b['name']} | {b['split']} | " + " | ".join(cells) + f" | {'; '.join(details)} |")
    if result.get("literature"):
        lines += ["", "Literature (other models, not comparable splits unless stated):", "",
                  "| model | metric | value | split | source | verified |", "|---|---|---|---|---|---|"]
        for r in result["literature"]:
            lines.append(f"| {r['model']} | {r['metric']} | {r['value']:.1f} | {r['split']} | {r['cite']} | "
                         f"{'yes' if r['verified'] else 'no'} |")
    return "\n".join(lines) + "\n"
