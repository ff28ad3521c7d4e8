"""The study DAG (§14): content-addressed keys, order, skip-when-done, failure propagation, parallel = serial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorascope.config import load_config
from lorascope.manifest import is_completed
from lorascope.study.dag import Dag, is_done, job_dir, job_record
from lorascope.study.engine import run_dag
from lorascope.study.executor_local import InlineBackend, ProcessBackend
from lorascope.study.jobs import build_study_dag
from lorascope.study.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]
FAKE = "tests.fake_jobs:fake_run"


def _cfg(*overrides: str):
    return load_config(REPO / "configs" / "demo.yaml", list(overrides))


def _keys(*overrides: str) -> dict[str, str]:
    return {j.name: j.key for j in build_study_dag(_cfg(*overrides))}


def _changed(base: dict, other: dict) -> set[str]:
    assert base.keys() == other.keys()
    return {n for n in base if base[n] != other[n]}


# -- keys ------------------------------------------------------------------------------------------------------

def test_keys_are_stable_and_ignore_execution_settings():
    base = _keys()
    assert base == _keys()  # same config → same keys, in a fresh build
    for execution_only in ("train.compile=false", "executor.parallel=4", "executor.kind=ray",
                           "tracking.wandb=offline", "train.eval_batch_size=3", "output.root=elsewhere"):
        assert _changed(base, _keys(execution_only)) == set(), execution_only


def test_a_drift_setting_changes_only_drift_and_what_reads_it():
    base = _keys()
    changed = _changed(base, _keys("drift.batch_size=3"))
    assert {n for n in base if n.startswith("drift-")} <= changed
    assert changed <= {n for n in base if n.startswith(("drift-", "stats", "report"))}
    assert not any(n.startswith(("train-", "hpo-", "data-", "weights-")) for n in changed)


def test_a_training_setting_changes_training_and_downstream_but_not_data():
    base = _keys()
    changed = _changed(base, _keys("lora.lr_grid=[0.001]"))
    assert {n for n in base if n.startswith(("hpo-", "train-", "sanity-", "weights-"))} <= changed
    assert not any(n.startswith("data-") for n in changed)


def test_a_data_setting_changes_every_job_of_the_study():
    base = _keys()
    assert _changed(base, _keys("data.max_length=256")) == set(base)


def test_a_job_key_depends_on_its_dependencies_keys():
    a, b = Dag(), Dag()
    a.add("x", "data", FAKE, params={"value": 1})
    b.add("x", "data", FAKE, params={"value": 2})
    ya = a.add("y", "train", FAKE, deps=["x"])
    yb = b.add("y", "train", FAKE, deps=["x"])
    assert ya.key != yb.key


# -- structure -------------------------------------------------------------------------------------------------

def test_study_dag_order_roles_and_the_sanity_gate_before_any_grid():
    dag = build_study_dag(_cfg())
    order = [j.name for j in dag.topological()]
    position = {n: i for i, n in enumerate(order)}
    for job in dag.jobs.values():
        assert all(position[d] < position[job.name] for d in job.deps), job.name
    sanity = {j.name for j in dag.by_kind()["sanity"]}
    assert sanity and all(sanity <= set(h.deps) for h in dag.by_kind()["hpo"])
    assert all(j.deps == (f"hpo-{j.params['task']}-{j.params['method']}",) for j in dag.by_kind()["train"])
    roles = {j.kind: set() for j in dag.jobs.values()}
    for j in dag.jobs.values():
        roles[j.kind].add(j.role)
    assert roles["hpo"] == {"vm2"} and roles["data"] == {"vm1"} and roles["weights"] == {"vm3"}
    assert {j.role for j in dag.by_kind()["train"] if j.params["method"] == "ft"} == {"vm1"}
    assert len(dag.by_kind()["train"]) == 2 * 2 * 3  # tasks × methods × replicates in configs/demo.yaml
    assert len(dag.by_kind()["serve"]) == 1


def test_an_ft_only_study_has_no_serving_job():
    dag = build_study_dag(_cfg("train.methods=[ft]"))
    assert "serve" not in dag.by_kind() and "stats" in dag.by_kind()


def test_unknown_dependency_and_duplicate_names_are_refused():
    dag = Dag()
    dag.add("a", "data", FAKE)
    with pytest.raises(Exception, match="unknown"):
        dag.add("b", "data", FAKE, deps=["nope"])
    with pytest.raises(Exception, match="duplicate"):
        dag.add("a", "data", FAKE)


# -- execution with fake jobs ------------------------------------------------------------------------------------

def _diamond(fail: str | None = None, sleep: float = 0.0) -> Dag:
    """a → (b, c) → d, plus an independent e."""
    dag = Dag()
    for name, deps in (("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c")), ("e", ())):
        dag.add(name, "train", FAKE, params={"task": "t", "value": ord(name), "sleep": sleep, "fail": name == fail},
                deps=deps)
    return dag


def _outputs(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "fake").glob("*/runs/*/results.json"))}


def _executions(out: Path, name: str) -> int:
    path = out / "executions" / name
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_rerun_skips_done_jobs_and_redoes_only_what_changed(tmp_path):
    cfg = _cfg()
    events: list[tuple[str, str]] = []
    res = run_dag(cfg, _diamond(), tmp_path, InlineBackend(cfg, tmp_path),
                  on_event=lambda e, j, o: events.append((e, j.name)))
    assert [e for e in events if e[0] == "started"] == [("started", n) for n in "abcde"]  # topological, serial
    assert res.count("completed") == 5 and all(is_done(tmp_path, j) for j in _diamond())
    again = run_dag(cfg, _diamond(), tmp_path, InlineBackend(cfg, tmp_path))
    assert again.count("skipped") == 5 and again.count("completed") == 0
    assert all(_executions(tmp_path, n) == 1 for n in "abcde")
    # A changed param of b re-keys b and d only.
    dag = Dag()
    for name, deps in (("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c")), ("e", ())):
        dag.add(name, "train", FAKE, params={"task": "t", "value": ord(name) + (name == "b"), "sleep": 0.0,
                                             "fail": False}, deps=deps)
    third = run_dag(cfg, dag, tmp_path, InlineBackend(cfg, tmp_path))
    assert {n for n, s in third.status.items() if s == "completed"} == {"b", "d"}
    with ResultsStore.for_study(tmp_path) as store:
        assert store.count("runs") == 5  # upsert by run: b and d were replaced, not duplicated


def test_a_failed_job_cancels_its_dependents_and_leaves_no_completed_manifest(tmp_path):
    cfg = _cfg()
    res = run_dag(cfg, _diamond(fail="b"), tmp_path, InlineBackend(cfg, tmp_path))
    assert res.status == {"a": "completed", "e": "completed", "b": "failed", "c": "completed", "d": "cancelled"}
    assert "boom in b" in res.error_message()
    assert not is_completed(job_dir(tmp_path, "b")) and job_record(tmp_path, "b")["status"] == "failed"
    assert job_record(tmp_path, "d") is None and _executions(tmp_path, "d") == 0
    with ResultsStore.for_study(tmp_path) as store:
        status = {r["name"]: r["status"] for r in store.query("SELECT name, status FROM jobs")}
    assert status["b"] == "failed" and status["d"] == "cancelled" and status["e"] == "completed"


def test_a_failed_sanity_gate_stops_the_whole_grid(tmp_path):
    cfg = _cfg()
    study = build_study_dag(cfg)
    dag = Dag()  # the real study's shape, with fake jobs; one sanity gate fails
    for job in study.topological():
        fail = job.name == "sanity-squad_v2-lora"
        kind = job.kind if job.kind == "train" else f"fake_{job.kind}"  # no real outputs to ingest
        dag.add(job.name, kind, FAKE, params={"task": job.params.get("task", "all"), "fail": fail},
                deps=job.deps, role=job.role)
    res = run_dag(cfg, dag, tmp_path, InlineBackend(cfg, tmp_path))
    grid = [j.name for j in study.jobs.values() if j.kind not in ("data", "sanity", "zero_shot")]
    assert grid and all(res.status[n] == "cancelled" for n in grid)
    assert all(_executions(tmp_path, n) == 0 for n in grid)
    assert res.status["zero_shot-mrpc"] == "completed" and res.status["sanity-squad_v2-lora"] == "failed"


def test_parallel_local_execution_gives_the_same_results_as_serial(tmp_path):
    cfg = _cfg()
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    run_dag(cfg, _diamond(sleep=0.2), serial, InlineBackend(cfg, serial))
    res = run_dag(cfg, _diamond(sleep=0.2), parallel, ProcessBackend(cfg, parallel, 2, n_gpus=0, threads=1))
    assert res.count("completed") == 5
    assert _outputs(serial) == _outputs(parallel) and len(_outputs(serial)) == 5
    pids = {job_record(parallel, n)["result"]["pid"] for n in "abcde"}
    assert len(pids) > 1  # really ran in several worker processes
    with ResultsStore.for_study(serial) as a, ResultsStore.for_study(parallel) as b:
        q = "SELECT run, split, metric, value FROM metrics ORDER BY run, split, metric"
        assert a.query(q) == b.query(q) and len(a.query(q)) == 10


def test_analysis_seeds_and_more_replicates_do_not_retrain():
    """Review finding: seeds.bootstrap / seeds.probe / seeds.replicates were part of every training key, so
    changing a bootstrap seed or adding a replicate retrained everything."""
    base = _keys()
    boot = _keys("seeds.bootstrap=7")
    training = [n for n in base if n.split("-")[0] in ("sanity", "zero_shot", "hpo", "train", "data")]
    assert training and all(base[n] == boot[n] for n in training)
    assert base["stats"] != boot["stats"] and base["weights-mrpc"] != boot["weights-mrpc"]  # DARE draws
    probe = _keys("seeds.probe=7")
    assert base["drift-mrpc"] != probe["drift-mrpc"] and base["train-mrpc-ft-r0"] == probe["train-mrpc-ft-r0"]
    more = _keys("seeds.replicates=[0,1,2,3]")
    assert all(more[n] == base[n] for n in base if n.startswith("train-"))  # existing runs are reused
    assert "train-mrpc-ft-r3" in more and more["drift-mrpc"] != base["drift-mrpc"]
