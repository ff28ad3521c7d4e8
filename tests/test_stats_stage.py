"""The stats stage end to end on synthetic results folders: every number it writes is recomputed here
from the fixture's own data (scipy, numpy), stages that did not run are "missing", and the CLI works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from scipy import stats as sps
from typer.testing import CliRunner

from lorascope.cli import folder_cmds
from lorascope.config.schema import StatsConfig, StudyConfig
from lorascope.manifest import is_completed
from tests.conftest import run_stage

N_TEST = 120
REPS = (0, 1, 2)
BATCHES = (1, 2, 4, 8, 16)


def _write(path: Path, obj, status: str = "completed") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    (path.parent / "manifest.json").write_text(json.dumps({"status": status}))


# Fixed per example (every run scores the same test set): 60% positive MRPC pairs, 40% unanswerable questions.
LABELS = (np.random.default_rng(42).random(N_TEST) < 0.6).astype(int)
UNANSWERABLE = np.random.default_rng(43).random(N_TEST) < 0.4


def _baselines(root: Path, task: str) -> dict:
    """baselines.json with the trivial baselines' per-example scores, as the data stage writes them."""
    ids = [f"{task}-{i}" for i in range(N_TEST)]
    if task == "mrpc":
        entries = [("majority", "accuracy", {i: float(y == 1) for i, y in zip(ids, LABELS)}),
                   ("stratified_random", "accuracy", {i: 0.6 if y == 1 else 0.4 for i, y in zip(ids, LABELS)})]
    else:
        entries = [("always_no_answer", "f1", {i: float(u) for i, u in zip(ids, UNANSWERABLE)})]
    doc = {"task": task, "baselines": [{"name": n, "trivial": True, "metrics": {},
                                        "per_example": {"metric": m, "scores": sc}} for n, m, sc in entries]}
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / "baselines.json").write_text(json.dumps(doc))
    return doc


def _run(root: Path, task: str, method: str, rep: int, rng: np.random.Generator, skill: float,
         status: str = "completed") -> dict:
    folder = root / task / "runs" / f"{task}-{method}-lr0.001-r{rep}"
    ids = [f"{task}-{i}" for i in range(N_TEST)]
    if task == "mrpc":
        correct = (rng.random(N_TEST) < skill).astype(int)
        rows = [{"id": i, "label": int(y), "pred": int(y if c else 1 - y), "correct": int(c)}
                for i, c, y in zip(ids, correct, LABELS)]
        test, primary = {"accuracy": 100 * correct.mean(), "f1": 100 * correct.mean() - 1, "n": N_TEST}, "accuracy"
    else:
        f1 = np.clip(rng.random(N_TEST) * 2 * skill, 0, 1)
        exact = (f1 > 0.9).astype(float)
        rows = [{"id": i, "exact": float(e), "f1": float(f)} for i, e, f in zip(ids, exact, f1)]
        test, primary = {"exact": 100 * exact.mean(), "f1": 100 * f1.mean(), "total": N_TEST}, "f1"
    _write(folder / "results.json", {"run": {"task": task, "method": method, "lr": 0.001, "replicate": rep},
                                     "primary": primary, "test": test}, status)
    (folder / "predictions_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"test": test, "rows": rows}


def _serve(root: Path, rng: np.random.Generator) -> None:
    cells = []
    for scenario, scale in (("merged", 1.0), ("unmerged-1", 1.1), ("multi-2", 1.2)):
        for bs in BATCHES:
            reqs = [{"e2e_s": float(scale * (1 + 0.02 * rng.random())), "ttft_s": 0.01, "tpot_s": 0.01,
                     "out_tokens": 64} for _ in range(30)]
            cells.append({"backend": "native", "scenario": scenario, "batch_size": bs, "output_mode": "fixed",
                          "status": "ok", "requests": reqs})
    cells.append({"backend": "native", "scenario": "multi-8", "batch_size": 16, "output_mode": "fixed",
                  "status": "failed", "requests": []})
    _write(root / "serve" / "serve.json", {"cells": cells})


def _drift(root: Path, task: str) -> None:
    scores = [{"run": f"{task}-{m}-r{r}", "method": m, "replicate": r, "probe": probe, "pooling": pooling,
               "drift": (0.4 + 0.01 * r) * (0.5 + 0.02 * r if m == "lora" else 1.0)}
              for m in ("ft", "lora") for r in REPS for probe in ("in_task", "out_of_task")
              for pooling in ("mean", "last")]
    scores.append({"run": "base", "method": "base", "replicate": None, "probe": "in_task", "pooling": "mean",
                   "drift": 0.0})  # a row without a replicate is skipped with a note
    _write(root / task / "drift" / "drift.json", {"scores": scores})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    runs = {}
    for task, skills in (("mrpc", {"ft": 0.80, "lora": 0.79}), ("squad_v2", {"ft": 0.45, "lora": 0.3})):
        for method, skill in skills.items():
            for rep in REPS:
                runs[task, method, rep] = _run(root, task, method, rep, rng, skill)
    _run(root, "mrpc", "lora", 3, rng, 0.5, status="running")  # incomplete: must be ignored
    for task in ("mrpc", "squad_v2"):
        _baselines(root, task)
    _drift(root, "mrpc")
    _serve(root, rng)
    return root, runs


def run_stats_stage(cfg: StudyConfig, root: Path) -> dict:
    run_stage(cfg, root, "stats")
    return json.loads((root / "stats" / "stats.json").read_text())


def _cfg() -> StudyConfig:
    return StudyConfig(stats=StatsConfig(bootstrap_resamples=500))


def test_stage_numbers_and_verdict(folder):
    root, runs = folder
    doc = run_stats_stage(_cfg(), root)
    on_disk = json.loads((root / "stats" / "stats.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-finite {c} in stats.json"))
    assert on_disk == doc and is_completed(root / "stats")
    mrpc = doc["tasks"]["mrpc"]
    t = next(x for x in mrpc["tests"] if x["test"] == "paired_t" and x["metric"] == "accuracy")
    acc = {m: [runs["mrpc", m, r]["test"]["accuracy"] for r in REPS] for m in ("ft", "lora")}
    ref = sps.ttest_rel(acc["ft"], acc["lora"])
    assert t["replicates"] == list(REPS) and t["p"] == pytest.approx(ref.pvalue)
    assert t["statistic"] == pytest.approx(ref.statistic) and t["p_holm"] >= t["p"]
    assert {"cohens_dz", "hedges_g"} <= set(t["effect_sizes"]) and t["family"] == "mrpc/seeds/paired_t"
    mcn = [x for x in mrpc["tests"] if x["test"] == "mcnemar"]
    assert [x["replicate"] for x in mcn] == list(REPS) and all(x["family_size"] == 3 for x in mcn)
    boot = [x for x in doc["tasks"]["squad_v2"]["tests"] if x["test"] == "paired_bootstrap"]
    assert len(boot) == 6
    f1 = next(x for x in boot if x["metric"] == "f1" and x["replicate"] == 1)
    a, b = (np.array([r["f1"] for r in runs["squad_v2", m, 1]["rows"]]) for m in ("ft", "lora"))
    assert f1["estimate"] == pytest.approx(100 * (a - b).mean()) and f1["ci"][0] < f1["estimate"] < f1["ci"][1]
    # criteria: drift halves (B met), unmerged-1 / multi-2 are 10% / 20% slower (C met), MRPC drop ≈ 1 point
    drops = np.subtract(acc["ft"], acc["lora"])
    a_crit = mrpc["verdict"]["criteria"]["A"]
    assert a_crit["estimate"] == pytest.approx(drops.mean()) and a_crit["drops"] == pytest.approx(drops.tolist())
    assert mrpc["verdict"]["criteria"]["B"]["state"] == "met"
    ratios = [0.5, 0.52, 0.54]  # D_LoRA/D_FT per replicate (fixture): 1 − their geometric mean
    assert mrpc["verdict"]["criteria"]["B"]["estimate"] == pytest.approx(1 - np.exp(np.mean(np.log(ratios))))
    assert len(mrpc["drift"]["reductions"]) == 4 and any("replicate = None" in n for n in mrpc["drift"]["notes"])
    c = doc["serve"]["criterion_c"]
    # multi-8 failed at batch 16: that batch size has no valid maximum, so C cannot be "met" for native.
    assert c["state"] == "inconclusive" and c["backend"] == ["native"]
    assert c["backends"]["native"]["state"] == "inconclusive"
    over = [o for o in doc["serve"]["overheads"] if o["scenario"] == "unmerged-1" and o["metric"] == "p95_latency"]
    assert len(over) == 5 and all(0.05 < o["estimate"] < 0.15 for o in over)
    assert any("failed" in n for n in doc["serve"]["notes"])
    # MRPC: both methods (≈ 80%) beat the majority class (60%) on the same examples: the gate passes.
    gate = mrpc["validity"]
    assert gate["state"] == "passed" and len(gate["passed"]) == 2
    val = [x for x in mrpc["tests"] if x["family"] == "validity"]
    assert {x["method"] for x in val} == {"ft", "lora"} and all(x["baseline"] == "majority" for x in val)
    ft_mean = np.mean([[r["correct"] for r in runs["mrpc", "ft", k]["rows"]] for k in REPS])
    assert next(x for x in val if x["method"] == "ft")["method_score"] == pytest.approx(100 * ft_mean)
    assert all(x["baseline_score"] == pytest.approx(100 * LABELS.mean()) for x in val)
    assert all(x["family_size"] == 4 for x in val)  # Holm over both tasks × both arms
    # SQuAD: LoRA (F1 ≈ 30) does not beat always-no-answer (40): not assessable, whatever A says (A: not met)
    sq = doc["tasks"]["squad_v2"]["verdict"]
    assert sq["criteria"]["B"]["state"] == "missing" and sq["criteria"]["A"]["state"] == "not met"
    assert sq["state"] == "not assessable" and doc["verdicts"]["squad_v2"] == "not assessable"
    assert "LoRA test f1" in sq["reason"] and f"always_no_answer {100 * UNANSWERABLE.mean():.2f}" in sq["reason"]
    assert doc["verdicts"]["mrpc"] == kleene(a_crit["state"]) and doc["overall"] == "not assessable"


def kleene(a_state: str) -> str:
    return {"met": "met", "not met": "not met"}.get(a_state, "inconclusive")


def test_missing_stages_are_named(tmp_path):
    rng = np.random.default_rng(1)
    for method in ("ft", "lora"):
        for rep in REPS:
            _run(tmp_path, "mrpc", method, rep, rng, 0.8)
    _baselines(tmp_path, "mrpc")
    cfg = StudyConfig(stats=StatsConfig(bootstrap_resamples=200)).model_copy(deep=True)
    cfg.data.tasks = ["mrpc", "squad_v2"]
    doc = run_stats_stage(cfg, tmp_path)
    v = doc["tasks"]["mrpc"]["verdict"]
    assert v["criteria"]["B"]["state"] == "missing" and v["criteria"]["C"]["state"] == "missing"
    assert v["missing_stages"] == ["drift (criterion B)", "serve (criterion C)"]
    assert v["state"] == ("not met" if v["criteria"]["A"]["state"] == "not met" else "missing")
    assert "drift.json not found" in v["criteria"]["B"]["reason"]
    assert doc["tasks"]["mrpc"]["validity"]["state"] == "passed"
    sq = doc["tasks"]["squad_v2"]["verdict"]  # no training, no baselines either: the gate is missing too
    assert sq["state"] == "missing" and sq["missing_stages"][:2] == ["validity gate", "training (criterion A)"]
    assert "no completed final ft run" in sq["reason"]
    from lorascope.stats.verdict import study_verdict

    assert doc["overall"] == study_verdict([v["state"], sq["state"]])  # missing, unless mrpc is not met


def test_cli(folder, tmp_path):
    root, _ = folder
    app = typer.Typer()
    folder_cmds.register(app)
    app.command("noop")(lambda: None)  # typer needs two commands to keep the command name
    runner = CliRunner()
    res = runner.invoke(app, ["stats", str(root), "--json", "stats.bootstrap_resamples=200"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["config"]["bootstrap_resamples"] == 200
    bad = runner.invoke(app, ["stats", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_criterion_c_takes_the_worst_unmerged_scenario():
    """RQ2 is about several adapters side by side: a multi-k overhead above the threshold fails C even
    when unmerged-1 is cheap; the envelope [max lows, max highs] is what C sees per batch size."""
    from lorascope.config.schema import StatsConfig
    from lorascope.stats.serve_summary import serve_summary

    rng = np.random.default_rng(0)
    cells = []
    for scenario, scale in (("merged", 1.0), ("unmerged-1", 1.05), ("multi-4", 1.6)):
        reqs = [{"e2e_s": float(scale * (1 + 0.02 * rng.random())), "out_tokens": 64} for _ in range(30)]
        cells.append({"backend": "native", "scenario": scenario, "batch_size": 1, "output_mode": "fixed",
                      "status": "ok", "requests": reqs})
    out = serve_summary(cells, None, StatsConfig(bootstrap_resamples=500), seed=0, batch_sizes=[1])
    c = out["criterion_c"]
    assert c["state"] == "not met" and c["scenarios"] == ["multi-4", "unmerged-1"]
    cis = {o["scenario"]: o["ci"] for o in out["overheads"] if o["metric"] == "p95_latency"}
    assert cis["multi-4"][0] > 0.3 > cis["unmerged-1"][1]
    without_multi = serve_summary(cells[:2], None, StatsConfig(bootstrap_resamples=500), seed=0, batch_sizes=[1])
    assert without_multi["criterion_c"]["state"] == "met"


def test_criterion_c_failed_or_skipped_cells():
    """A treatment cell that failed (correctness gate, OOM) leaves its batch size without a valid maximum;
    a backend that was skipped altogether (not installed) takes no part in C."""
    from lorascope.config.schema import StatsConfig
    from lorascope.stats.serve_summary import serve_summary

    rng = np.random.default_rng(1)

    def cell(backend, scenario, status="ok", scale=1.0):
        reqs = [{"e2e_s": float(scale * (1 + 0.02 * rng.random())), "out_tokens": 8, "batch_index": i // 2}
                for i in range(12)] if status == "ok" else []
        return {"backend": backend, "scenario": scenario, "batch_size": 2, "output_mode": "fixed",
                "status": status, "requests": reqs}

    cfg = StatsConfig(bootstrap_resamples=300, min_timed_requests=12)  # 12 timed requests per cell here
    ok = [cell("native", "merged"), cell("native", "unmerged-1", scale=1.05)]
    assert serve_summary(ok, None, cfg, seed=0, batch_sizes=[2])["criterion_c"]["state"] == "met"
    failed = ok + [cell("native", "multi-2", status="failed")]
    assert serve_summary(failed, None, cfg, seed=0, batch_sizes=[2])["criterion_c"]["state"] == "inconclusive"
    skipped = ok + [cell("vllm", s, status="skipped") for s in ("merged", "unmerged-1")]
    c = serve_summary(skipped, None, cfg, seed=0, batch_sizes=[2])["criterion_c"]
    assert c["state"] == "met" and set(c["backends"]) == {"native"}


def test_overhead_ci_resamples_batches_not_requests():
    """Rows of one batch share a timing in fixed mode: 2 batches of 16 identical values are 2 observations,
    not 32. Request-level resampling gave a zero-width CI; batch resampling does not, and 1 batch is refused."""
    from lorascope.errors import StatsInputError
    from lorascope.stats.overhead import overhead

    t, r = np.repeat([1.20, 1.45], 16), np.repeat([1.00, 1.30], 16)
    batches = np.repeat([0, 1], 16)
    naive = overhead(t, r, "p95", resamples=2000, rng=np.random.default_rng(0))
    assert naive["ci"][1] - naive["ci"][0] < 1e-12  # the collapse the review found
    clustered = overhead(t, r, "p95", resamples=2000, rng=np.random.default_rng(0), treatment_batches=batches,
                         reference_batches=batches)
    assert clustered["estimate"] == pytest.approx(naive["estimate"])
    assert clustered["ci"][1] - clustered["ci"][0] > 0.1 and "batches" in clustered["ci_method"]
    with pytest.raises(StatsInputError, match="2 timed batches"):
        overhead(t, r, "p95", resamples=100, rng=np.random.default_rng(0), treatment_batches=np.zeros(32),
                 reference_batches=batches)
