"""The SQLite results store: concurrent writers lose nothing, ingestion is idempotent (upsert by job key)."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from lorascope.io import atomic_write_json, atomic_write_text
from lorascope.study.ingest import ingest_drift, ingest_hpo, ingest_run, ingest_serve, ingest_weights
from lorascope.study.store import ResultsStore

WRITERS, BATCHES, ROWS = 4, 25, 8


def _writer(path: str, writer: int, barrier) -> None:
    store = ResultsStore(path)  # each process its own connection, opened at the same time as the others
    barrier.wait()
    for batch in range(BATCHES):
        rows = [{"run": f"w{writer}-b{batch}", "split": "test", "metric": f"m{i}", "value": float(i)}
                for i in range(ROWS)]
        store.replace_rows("metrics", f"job-{writer}-{batch}", rows)
    store.close()


def test_concurrent_writers_lose_no_rows_and_never_see_locked(tmp_path):
    path = str(tmp_path / "results.db")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(path, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS  # a "database is locked" error would exit 1
    with ResultsStore(path) as store:
        assert store.count("metrics") == WRITERS * BATCHES * ROWS
        assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        per_job = store.query("SELECT job_key, COUNT(*) AS n FROM metrics GROUP BY job_key")
    assert len(per_job) == WRITERS * BATCHES and {r["n"] for r in per_job} == {ROWS}


def _run_dir(root: Path, name: str, accuracy: float) -> Path:
    run = root / "mrpc" / "runs" / name
    atomic_write_json(run / "results.json", {
        "name": name, "run": {"task": "mrpc", "method": "lora", "lr": 0.01, "replicate": 0, "hpo": False},
        "primary": "accuracy", "validation_best": 70.0, "best_step": 4, "steps": 12,
        "test": {"accuracy": accuracy, "f1": 80.0, "n": 3}})
    atomic_write_text(run / "predictions_test.jsonl",
                      "".join(json.dumps({"id": f"ex{i}", "pred": "yes", "correct": 1}) + "\n" for i in range(3)))
    return run


def _snapshot(store: ResultsStore) -> dict:
    tables = ("runs", "metrics", "predictions", "drift", "weights", "serving")
    return {t: store.query(f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in tables}


def test_ingestion_is_idempotent_and_replaces_a_jobs_rows(tmp_path):
    run = _run_dir(tmp_path, "mrpc-lora-lr0.01-r0", 75.0)
    atomic_write_json(tmp_path / "hpo.json", {"task": "mrpc", "method": "lora", "metric": "validation accuracy",
                                              "trials": [{"lr": 0.01, "value": 70.0, "run": "mrpc-lora-lr0.01-r0-hpo"},
                                                         {"lr": 0.1, "value": None, "run": "mrpc-lora-lr0.1-r0-hpo"}]})
    atomic_write_json(tmp_path / "weights.json", {
        "task": "mrpc", "runs": {"LoRA": "mrpc-lora-lr0.01-r0"},
        "layers": {"LoRA": [{"layer": 0, "mean_effective_rank": 7.5, "module_types": ["q_proj"]},
                            {"layer": 1, "mean_effective_rank": 6.0, "module_types": ["q_proj"]}]},
        "dare": {"LoRA": {"dare": {"0.0": 70.0, "0.9": 65.0}, "magnitude": {"0.0": 70.0}}}})
    atomic_write_json(tmp_path / "drift.json", {"task": "mrpc", "scores": [
        {"run": "mrpc-lora-lr0.01-r0", "method": "lora", "replicate": 0, "probe": "in_task", "pooling": p,
         "drift": 0.1 * i} for i, p in enumerate(("mean", "last"))]})
    atomic_write_json(tmp_path / "serve.json", {"cells": [
        {"backend": "native", "scenario": "merged", "batch_size": b, "output_mode": "fixed", "tokens_per_s": 10.0 * b}
        for b in (1, 2, 4)]})

    def ingest_all(store: ResultsStore) -> None:
        ingest_run(store, "k-run", run)
        ingest_hpo(store, "k-hpo", tmp_path / "hpo.json")
        ingest_weights(store, "k-w", tmp_path / "weights.json")
        ingest_drift(store, "k-d", tmp_path / "drift.json")
        ingest_serve(store, "k-s", tmp_path / "serve.json")

    with ResultsStore(tmp_path / "results.db") as store:
        ingest_all(store)
        first = _snapshot(store)
        ingest_all(store)
        assert _snapshot(store) == first
        assert {t: len(rows) for t, rows in first.items()} == {
            "runs": 3, "metrics": 2 + 1 + 1 + 1, "predictions": 3, "drift": 2, "weights": 2 + 3, "serving": 3}
        # A rerun of the run with other numbers replaces its rows; nothing of the old values stays.
        _run_dir(tmp_path, "mrpc-lora-lr0.01-r0", 50.0)
        ingest_run(store, "k-run", run)
        acc = store.query("SELECT value FROM metrics WHERE run = ? AND split = 'test' AND metric = 'accuracy'",
                          ("mrpc-lora-lr0.01-r0",))
        assert acc == [{"value": 50.0}]
        assert store.count("metrics") == 5 and store.count("predictions") == 3
