"""The results folder's layout: every path under a study's output root is spelled here and nowhere else.

    <out>/manifest.json                      the study's root manifest (config, invocations)
    <out>/.lorascope.lock                    the writer's lock (study/lock.py)
    <out>/results.db                         SQLite export of the results (study/store.py)
    <out>/jobs/<job>/manifest.json           one record per DAG job (status, key, attempts, node)
    <out>/<task>/                            data stage: manifest, data_stats.json, leakage.json, baselines.json,
                                             figures/token_lengths.png
    <out>/<task>/sanity/<method>/            sanity.json
    <out>/<task>/zero_shot/                  results.json, predictions_test.jsonl
    <out>/<task>/hpo/<method>/               hpo.json, optuna.db, <trial runs>
    <out>/<task>/runs/<run>/                 results.json, predictions_test.jsonl, metrics.jsonl, checkpoints/,
                                             best/, model/ (FT) or adapter/ (LoRA, PEFT format)
    <out>/<task>/weights/                    weights.json, figures/
    <out>/<task>/drift/                      drift.json, layers.csv, figures/
    <out>/serve/                             serve.json, requests.csv, figures/, adapters/, merged/
    <out>/stats/                             stats.json
    <out>/report/                            report.html, report.md, study_flow.svg
    <out>/summary.md                         the short Markdown summary (rendered by the report package)
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
LOCK = ".lorascope.lock"
RESULTS_DB = "results.db"
SUMMARY = "summary.md"
JOBS = "jobs"
RUNS = "runs"
MODEL = "model"  # a full fine-tuning run's saved model
ADAPTER = "adapter"  # a LoRA run's adapter (PEFT format)
RESULTS = "results.json"
PREDICTIONS = "predictions_test.jsonl"
DATA_FILES = {"data_stats": "data_stats.json", "leakage": "leakage.json", "baselines": "baselines.json"}
TOKEN_LENGTHS_FIGURE = "figures/token_lengths.png"


def task_dir(out: str | Path, task: str) -> Path:
    return Path(out) / task


def data_file(out: str | Path, task: str, what: str) -> Path:
    """``what``: data_stats, leakage or baselines."""
    return task_dir(out, task) / DATA_FILES[what]


def sanity_dir(out: str | Path, task: str, method: str) -> Path:
    return task_dir(out, task) / "sanity" / method


def zero_shot_dir(out: str | Path, task: str) -> Path:
    return task_dir(out, task) / "zero_shot"


def hpo_dir(out: str | Path, task: str, method: str) -> Path:
    return task_dir(out, task) / "hpo" / method


def hpo_file(out: str | Path, task: str, method: str) -> Path:
    return hpo_dir(out, task, method) / "hpo.json"


def runs_dir(out: str | Path, task: str) -> Path:
    return task_dir(out, task) / RUNS


def run_dir(out: str | Path, task: str, run_name: str) -> Path:
    return runs_dir(out, task) / run_name


def saved_model_dir(run: str | Path, method: str) -> Path:
    """Where a finished run keeps its model: ``model/`` (FT) or ``adapter/`` (LoRA)."""
    return Path(run) / (MODEL if method == "ft" else ADAPTER)


def weights_dir(out: str | Path, task: str) -> Path:
    return task_dir(out, task) / "weights"


def drift_dir(out: str | Path, task: str) -> Path:
    return task_dir(out, task) / "drift"


def serve_dir(out: str | Path) -> Path:
    return Path(out) / "serve"


def stats_dir(out: str | Path) -> Path:
    return Path(out) / "stats"


def report_dir(out: str | Path) -> Path:
    return Path(out) / "report"


def jobs_dir(out: str | Path) -> Path:
    return Path(out) / JOBS


def job_dir(out: str | Path, name: str) -> Path:
    return jobs_dir(out) / name


def relative(out: str | Path, path: str | Path) -> str:
    return str(Path(path).relative_to(Path(out)))
