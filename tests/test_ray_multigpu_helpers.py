"""benchmarks/ray_multigpu.py (the whole study on Ray, a node killed) and its helpers, on CPU without Ray:

- the synthetic MRPC / SQuAD v2 mirrors load through the study's data code (official splits, no leakage, SQuAD
  answerable and unanswerable), tokenize without <unk>, and SQuAD generation finds its newline stop token;
- the script's config overrides validate, for the GPU run and the CPU rehearsal;
- the integrity checks catch what a node kill could break: a restarted run's repeated metrics lines, a lost
  results.json, a job reported twice, an attempt count off, a store row missing;
- the verdict page is cut from a report; the simulated schedule keeps ≤ 1 GPU job per node and every dependency;
  moving serving forward keeps every job key.
The end-to-end rehearsal (``python benchmarks/ray_multigpu.py --tiny --out DIR``, ~2 min) is not run here."""

import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lorascope.config import load_config
from lorascope.config.schema import DataConfig
from lorascope.data.leakage import check_leakage
from lorascope.data.load import load_task
from lorascope.data.tokenize import encode_train
from lorascope.models.tokenizer import load_tokenizer
from lorascope.study.jobs import build_study_dag
from lorascope.study.store import ResultsStore
from lorascope.train.evaluate import evaluate, newline_token_id
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import ray_study_record as rec
import synthetic_tasks as synth

SUB = {"train": 256, "validation": 32, "test": 64}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    synth.make_data(root / "data")
    synth.make_tokenizer(root / "model")
    return root


@pytest.fixture()
def driver(monkeypatch):
    """benchmarks/ray_multigpu.py as a module; the environment variables it sets at import are undone."""
    monkeypatch.setattr(os, "environ", os.environ.copy())
    spec = importlib.util.spec_from_file_location("ray_multigpu_under_test", REPO / "benchmarks" / "ray_multigpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(tiny: bool) -> SimpleNamespace:
    return SimpleNamespace(tiny=tiny, dtype="float32" if tiny else "bfloat16", steps=16, checkpoint_every=8, probes=64,
                           forgetting_texts=32, serve_requests=6, sanity_n=4, sanity_steps=150, sanity_lr_ft=1e-4,
                           sanity_lr_lora=3e-3, max_retries=3, set=None)


def test_synthetic_mirrors_load_split_and_tokenize(mirror):
    cfg = DataConfig(tasks=["mrpc", "squad_v2"], source="mirror", data_dir=str(mirror / "data"), subsample=SUB)
    tok = load_tokenizer(str(mirror / "model"))
    for task in ("mrpc", "squad_v2"):
        data = load_task(task, cfg, seed=0, apply_subsample=True)
        assert data.split_scheme == "official"
        assert {k: len(v) for k, v in data.splits.items()} == SUB  # every cap is reached
        assert check_leakage(data, raise_on_error=False)["ok"]
        enc, dropped = encode_train(tok, data["train"], 512)
        assert not dropped
        assert all(i != tok.unk_token_id for e in enc for i in e.input_ids)  # every template word is in the vocab
    test = load_task("squad_v2", cfg, seed=0, apply_subsample=True)["test"]
    answerable = sum(1 for ex in test if ex.answers)
    assert 0 < answerable < len(test)
    assert tok.convert_ids_to_tokens(newline_token_id(tok)) == "\n"


def test_squad_generation_runs_with_the_synthetic_tokenizer(mirror):
    """The check that caught a missing newline token: SQuAD evaluation end to end on a tiny random model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(str(mirror / "model"))
    cfg = DataConfig(tasks=["squad_v2"], source="mirror", data_dir=str(mirror / "data"), subsample=SUB)
    examples = load_task("squad_v2", cfg, seed=0, apply_subsample=True)["validation"][:4]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    metrics, records = evaluate("squad_v2", model, tok, examples, batch_size=4, max_length=256, max_new_tokens=4,
                                device=torch.device("cpu"), bf16=False)
    assert len(records) == 4 and 0.0 <= metrics["exact"] <= 100.0


@pytest.mark.parametrize("tiny", [False, True])
def test_the_scripts_overrides_validate(driver, tiny, tmp_path):
    cfg = load_config(REPO / "configs" / "study.yaml", driver.overrides(_args(tiny), tmp_path / "m", tmp_path, "auto"))
    assert cfg.data.tasks == ["mrpc", "squad_v2"] and cfg.seeds.replicates == [0, 1]
    assert cfg.train.checkpoint_every < cfg.train.max_steps  # a mid-run checkpoint for the killed job to resume from
    # max_steps must bind: the epochs give at least that many steps on the subsampled train split
    assert min(cfg.train.epochs.values()) * SUB["train"] / cfg.train.effective_batch >= cfg.train.max_steps
    assert len(cfg.serve.scenarios) == 3 and -(-cfg.serve.requests // max(cfg.serve.batch_sizes)) >= 2


def test_serve_first_keeps_every_key_and_the_order_valid(driver, tmp_path):
    cfg = load_config(REPO / "configs" / "study.yaml", driver.overrides(_args(False), tmp_path / "m", tmp_path, "auto"))
    dag = build_study_dag(cfg)
    moved = driver.serve_first(dag)
    assert {n: j.key for n, j in moved.jobs.items()} == {n: j.key for n, j in dag.jobs.items()}
    names = list(moved.jobs)
    assert names.index("serve") == max(i for i, n in enumerate(names) if n.startswith("train-")) + 1
    assert names.index("serve") < names.index("drift-mrpc")


def test_simulated_schedule_respects_deps_and_one_gpu_job_per_node(driver, tmp_path):
    cfg = load_config(REPO / "configs" / "study.yaml", driver.overrides(_args(False), tmp_path / "m", tmp_path, "auto"))
    dag = build_study_dag(cfg)
    sched = rec.simulate(dag, driver.GPU_ESTIMATE_S)
    assert set(sched) == set(dag.jobs)
    for name, (start, _, _) in sched.items():
        assert all(sched[d][1] <= start + 1e-9 for d in dag[name].deps)
    for node in ("A", "B"):
        spans = sorted((s, e) for n, (s, e, nd) in sched.items() if nd == node and dag[n].num_gpus)
        assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(spans))
    killed = rec.simulate(dag, driver.GPU_ESTIMATE_S, kill_extra_s=30.0)
    assert max(e for _, e, _ in killed.values()) > max(e for _, e, _ in sched.values())


# -- the integrity checks on a hand-made study folder ----------------------------------------------------------

def _job(study: Path, name: str, rep: int, attempt: int) -> None:
    folder = study / "jobs" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "status": "completed", "attempt": attempt, "node": "n", "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:09+00:00",
        "job": {"name": name, "kind": "train", "params": {"task": "mrpc", "method": "ft", "replicate": rep}}}))


def _run(study: Path, rep: int, lines: list) -> Path:
    folder = study / "mrpc" / "runs" / f"mrpc-ft-lr1e-05-r{rep}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"steps": 4}))
    rows = [json.dumps(x if isinstance(x, dict) else {"step": x, "loss": 1.0, "grad_norm": 1.0}) for x in lines]
    (folder / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "predictions_test.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    return folder


def _store(study: Path, runs: list[Path], jobs: list[str]) -> None:
    with ResultsStore.for_study(study) as store, store.transaction() as tx:
        for j in jobs:
            tx.execute("INSERT INTO jobs (key, name, kind, status) VALUES (?, ?, 'train', 'completed')", (j, j))
        for r in runs:
            tx.execute("INSERT INTO runs (name, job_key, method, hpo, path) VALUES (?, 'k', 'ft', 0, ?)",
                       (r.name, str(r)))
            for ex in ("a", "b"):
                tx.execute("INSERT INTO predictions (run, example_id, job_key) VALUES (?, ?, 'k')", (r.name, ex))


def _checks(study: Path, events: list, jobs: list[str], killed: str | None) -> dict[str, dict]:
    out = rec.integrity(study, jobs, events, ["mrpc"], ["ft"], [0, 1], 4, killed)
    return {c["check"].split(":")[0]: c for c in out}


def test_integrity_passes_a_resumed_run_and_flags_a_restarted_one(tmp_path):
    jobs = ["train-mrpc-ft-r0", "train-mrpc-ft-r1"]
    _job(tmp_path, jobs[0], 0, 1)
    _job(tmp_path, jobs[1], 1, 2)
    r0 = _run(tmp_path, 0, [1, 2, 3, 4])
    # r1 was killed after step 3 and resumed from its step-2 checkpoint: the log was truncated, then continued
    r1 = _run(tmp_path, 1, [1, 2, {"event": "resumed", "step": 2, "checkpoint": "step-000002"}, 3, 4])
    _store(tmp_path, [r0, r1], jobs)
    events = [{"event": "completed", "job": j} for j in jobs]
    ok = _checks(tmp_path, events, jobs, killed=jobs[1])
    assert all(c["ok"] for c in ok.values()), ok
    assert "resumed from step [2]" in ok[jobs[1]]["detail"]

    # A retry that restarted from step 0 without truncating the log: steps 1-2 appear twice.
    (r1 / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "grad_norm": 1.0}) for s in (1, 2, 1, 2, 3, 4)))
    bad = _checks(tmp_path, events, jobs, killed=jobs[1])
    assert not bad[jobs[1]]["ok"] and "repeated steps [1, 2]" in bad[jobs[1]]["detail"]
    assert bad[jobs[0]]["ok"]


def test_integrity_flags_lost_results_double_reports_and_attempts(tmp_path):
    jobs = ["train-mrpc-ft-r0", "train-mrpc-ft-r1"]
    _job(tmp_path, jobs[0], 0, 2)  # a second attempt, but this job was not the one killed
    _job(tmp_path, jobs[1], 1, 1)
    r0 = _run(tmp_path, 0, [1, 2, 3, 4])
    r1 = _run(tmp_path, 1, [1, 2, 3, 4])
    (r1 / "results.json").unlink()
    _store(tmp_path, [r0], jobs[:1])
    events = [{"event": "completed", "job": jobs[0]}, {"event": "completed", "job": jobs[0]}]
    c = _checks(tmp_path, events, jobs, killed=None)
    assert not c["every DAG job completed exactly once"]["ok"]
    assert "train-mrpc-ft-r1" in c["every DAG job completed exactly once"]["detail"]   # missing
    assert "reported twice ['train-mrpc-ft-r0']" in c["every DAG job completed exactly once"]["detail"]
    assert not c[jobs[0]]["ok"] and "attempt 2, expected 1" in c[jobs[0]]["detail"]
    assert not c[jobs[1]]["ok"] and "0 results.json" in c[jobs[1]]["detail"]
    assert not c["results.db"]["ok"]


def test_verdict_page_is_the_callouts_and_the_verdict_section(tmp_path):
    md = tmp_path / "report.md"
    md.write_text("# report\n\n> **Caveat:** random\n\n> **⊘ mrpc: not assessable**\n\n## Contents\n\n1. x\n\n"
                  "## Research questions\n\nq\n\n<a id=\"verdict\"></a>\n\n## Verdict: validity gate\n\n| t | v |\n"
                  "|---|---|\n| mrpc | ⊘ |\n\n<a id=\"setup\"></a>\n\n## Setup and model\n\nsetup text\n")
    page = rec.verdict_page(md)
    assert "Caveat" in page and "not assessable" in page and "| mrpc | ⊘ |" in page
    assert "Setup and model" not in page and "Research questions" not in page


def test_job_table_times_placement_and_the_killed_attempt(tmp_path):
    _job(tmp_path, "train-mrpc-ft-r0", 0, 2)
    _run(tmp_path, 0, [{"step": s, "grad_norm": 1.0, "tokens": 100, "step_time_s": 0.5} for s in (1, 2, 3, 4)])
    events = [{"event": "started", "job": "train-mrpc-ft-r0", "t": 100.0},
              {"event": "completed", "job": "train-mrpc-ft-r0", "t": 131.0, "started": 120.0, "finished": 130.5}]
    kill = {"job": "train-mrpc-ft-r0", "attempt1_started": 101.0, "killed_at": 111.0}
    (row,) = rec.job_table(tmp_path, events, {"n": "B'"}, {"B'": 1}, 100.0, [(125.0, 1, 80.0, 1.0)], kill)
    assert (row["node"], row["gpu"], row["attempts"], row["seconds"]) == ("B'", 1, 2, 10.5)
    assert (row["queued_s"], row["gpu_util_mean"], row["manifest_seconds"]) == (20.0, 80.0, 9.0)
    assert row["killed_attempt"]["lost_seconds"] == 10.0
    assert row["training"] == {"steps": 4, "tokens": 400, "step_seconds": 2.0, "tokens_per_s": 200,
                               "peak_mem_gib": None}
