"""Export the JSON outputs the stages write into ``results.db`` (run by the driver only).

``results.db`` is an export, not a source: the files under the results folder (atomic, manifest-guarded)
are what the statistics and the report read; the database is a queryable index of them for the researcher
(SQL over runs, metrics, predictions, drift, weights, serving). Each function reads one output and replaces
the rows of one job key, so ingesting a job again (a rerun, a rebuilt database) never duplicates anything;
each stage declares which of these functions ingests it (``study/stages/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from lorascope.study.store import ResultsStore


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ingest_run(store: ResultsStore, job_key: str, run_dir: str | Path, *, name: str | None = None) -> int:
    """A run folder (``results.json`` [+ ``predictions_test.jsonl``]) → runs, metrics, predictions."""
    run_dir = Path(run_dir)
    res = _read_json(run_dir / "results.json")
    name = name or res.get("name") or run_dir.name
    spec = res.get("run") or {}
    primary = res.get("primary")
    store.replace_rows("runs", job_key, [{
        "name": name, "task": spec.get("task", res.get("task")), "method": spec.get("method", res.get("name")),
        "lr": spec.get("lr"), "replicate": spec.get("replicate"), "hpo": int(bool(spec.get("hpo"))),
        "primary_metric": primary, "validation_best": res.get("validation_best"), "best_step": res.get("best_step"),
        "steps": res.get("steps"), "path": str(run_dir)}])
    metrics = [{"run": name, "split": "test", "metric": k, "value": v}
               for k, v in (res.get("test") or {}).items() if _is_number(v)]
    if _is_number(res.get("validation_best")) and primary:
        metrics.append({"run": name, "split": "validation", "metric": primary, "value": res["validation_best"]})
    store.replace_rows("metrics", job_key, metrics)
    preds_path = run_dir / "predictions_test.jsonl"
    preds = []
    if preds_path.is_file():
        for i, line in enumerate(preds_path.read_text().splitlines()):
            if line.strip():
                rec = json.loads(line)
                preds.append({"run": name, "example_id": str(rec.get("id", i)), "record": line})
    store.replace_rows("predictions", job_key, preds)
    return 1 + len(metrics) + len(preds)


def ingest_hpo(store: ResultsStore, job_key: str, hpo_json: str | Path) -> int:
    """An HPO summary → one validation-only run row (and metric) per trial; diverged trials have no value."""
    hpo = _read_json(Path(hpo_json))
    metric = hpo.get("metric", "validation").removeprefix("validation ")
    runs, metrics = [], []
    for t in hpo.get("trials", []):
        name = t.get("run") or f"{hpo['task']}-{hpo['method']}-lr{t['lr']:g}-hpo"
        runs.append({"name": name, "task": hpo["task"], "method": hpo["method"], "lr": t["lr"], "hpo": 1,
                     "primary_metric": metric, "validation_best": t.get("value"),
                     "path": str(Path(hpo_json).parent / name)})
        if _is_number(t.get("value")):
            metrics.append({"run": name, "split": "validation", "metric": metric, "value": t["value"]})
    store.replace_rows("runs", job_key, runs)
    store.replace_rows("metrics", job_key, metrics)
    return len(runs) + len(metrics)


def ingest_weights(store: ResultsStore, job_key: str, weights_json: str | Path) -> int:
    """Per-layer numeric metrics of each method's ΔW (``layers``), plus the DARE/magnitude curves (layer -1)."""
    w = _read_json(Path(weights_json))
    task, rows = w["task"], []
    for label, layers in (w.get("layers") or {}).items():
        run = (w.get("runs") or {}).get(label)
        for entry in layers:
            for metric, value in entry.items():
                if metric != "layer" and _is_number(value):
                    rows.append({"task": task, "label": label, "run": run, "layer": entry.get("layer"),
                                 "metric": metric, "value": value})
    for label, curves in (w.get("dare") or {}).items():
        for transform, points in curves.items():
            for p, value in points.items():
                if _is_number(value):
                    rows.append({"task": task, "label": label, "run": (w.get("runs") or {}).get(label), "layer": -1,
                                 "metric": f"{transform}@{p}", "value": value})
    return store.replace_rows("weights", job_key, rows)


def ingest_drift(store: ResultsStore, job_key: str, drift_json: str | Path, *, task: str | None = None) -> int:
    d = _read_json(Path(drift_json))
    task = task or d.get("task")
    rows = [{"task": task, "run": r.get("run"), "method": r.get("method"), "replicate": r.get("replicate"),
             "probe": r.get("probe"), "pooling": r.get("pooling"), "drift": r.get("drift"),
             "row": json.dumps(r, sort_keys=True)} for r in d.get("scores", [])]
    return store.replace_rows("drift", job_key, rows)


def ingest_serve(store: ResultsStore, job_key: str, serve_json: str | Path) -> int:
    s = _read_json(Path(serve_json))
    rows = [{"idx": i, "backend": c.get("backend"), "scenario": c.get("scenario"), "batch_size": c.get("batch_size"),
             "output_mode": c.get("output_mode"), "row": json.dumps(c, sort_keys=True)}
            for i, c in enumerate(s.get("cells", []))]
    return store.replace_rows("serving", job_key, rows)


def file_ingester(ingest_file: Callable[[ResultsStore, str, Path], int], path_of: Callable[[Path, dict], Path]):
    """A stage's ingester for one result file (at ``path_of(out_dir, job params)``), when the job wrote it."""

    def ingest(store: ResultsStore, out_dir: Path, job, result: dict) -> None:
        path = path_of(out_dir, job.params)
        if path.is_file():
            ingest_file(store, job.key, path)

    return ingest


def ingest_job(store: ResultsStore, out_dir: str | Path, job, outcome: dict) -> None:
    """Record the job's outcome and, for a completed job of a stage that declares an ingester, ingest its outputs."""
    from lorascope.study.stages import BY_NAME

    stage = BY_NAME.get(job.kind)
    if outcome.get("status") == "completed" and stage is not None and stage.ingest is not None:
        stage.ingest(store, Path(out_dir), job, outcome.get("result") or {})
    store.record_job(job, outcome.get("status", "failed"), outcome)
