"""Reading a results folder for the stats stage. A stage that did not run (or did not complete) gives
None plus a reason, never an exception; a malformed file that claims to be complete is a DataError.

Layout (STUDY.md §14; written by the training, drift and serve stages):
- ``<out>/<task>/runs/<task>-<method>-lr<lr>-r<rep>/results.json`` + ``predictions_test.jsonl``; only
  folders whose manifest says completed count;
- ``<out>/<task>/drift/drift.json``: ``scores`` rows {run, method, replicate, probe, pooling, drift};
- ``<out>/serve/serve.json``: ``cells`` rows {backend, scenario, batch_size, output_mode, status, requests}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lorascope.errors import DataError
from lorascope.io import read_json
from lorascope.manifest import MANIFEST, is_completed

# Keys of results.json "test" that are counts or bookkeeping, not metrics.
NON_METRIC = {"n", "total", "truncated", "HasAns_total", "NoAns_total"}


@dataclass
class Run:
    """One completed final run: its test metrics (points) and where its predictions are."""

    name: str
    task: str
    method: str
    lr: float
    replicate: int
    primary: str
    test: dict[str, float]
    path: Path


@dataclass
class Training:
    """Completed final runs of one task: ``runs[method][replicate]``; ``notes`` says what was skipped."""

    runs: dict[str, dict[int, Run]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_training(out_dir: Path, task: str, replicates: list[int] | None = None) -> Training:
    """Completed final runs of ``task`` at each method's selected learning rate (``study.selection``: the
    HPO choice, else the lr with the most replicates); runs at other learning rates are noted."""
    from lorascope.results.selection import excluded_runs, final_runs

    result = Training()
    selected = final_runs(out_dir, task, replicates)
    result.notes += [f"{name}: {why}, skipped" for name, why in excluded_runs(out_dir, task, replicates, selected)]
    for sel in selected:
        res_path = sel["path"] / "results.json"
        res = read_json(res_path)
        try:
            run = Run(name=sel["name"], task=task, method=sel["method"], lr=sel["lr"], replicate=sel["replicate"],
                      primary=res["primary"], path=sel["path"],
                      test={k: float(v) for k, v in res["test"].items()
                            if k not in NON_METRIC and isinstance(v, (int, float))})
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"results.json lacks a field ({exc})", path=str(res_path)) from None
        result.runs.setdefault(run.method, {})[run.replicate] = run
    return result


def load_predictions(run: Run) -> list[dict]:
    """The rows of a run's ``predictions_test.jsonl``; each must have an ``id``."""
    path = run.path / "predictions_test.jsonl"
    if not path.is_file():
        raise DataError("predictions_test.jsonl not found", path=str(path))
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"not JSON ({exc})", path=str(path), row=i) from None
        if "id" not in row:
            raise DataError("row has no 'id'", path=str(path), row=i)
        rows.append(row)
    return rows


def per_example(run: Run, key: str) -> dict[str, float]:
    """``{example id: row[key]}`` from a run's test predictions (MRPC ``correct``; SQuAD ``exact``/``f1``)."""
    out = {}
    for row in load_predictions(run):
        if key not in row:
            raise DataError(f"prediction row {row['id']!r} has no {key!r}", path=str(run.path))
        out[str(row["id"])] = float(row[key])
    return out


def _stage_file(folder: Path, name: str, stage: str, list_key: str) -> tuple[list[dict] | None, str | None]:
    path = folder / name
    if not path.is_file():
        return None, f"{stage} stage did not run ({path} not found)"
    if not is_completed(folder):
        return None, f"{stage} stage did not complete ({folder / MANIFEST} does not say completed)"
    rows = read_json(path).get(list_key)
    if not isinstance(rows, list):
        raise DataError(f"expected a list under {list_key!r}", path=str(path))
    return rows, None


def load_drift(out_dir: Path, task: str) -> tuple[list[dict] | None, str | None]:
    """Drift score rows of ``task``, or (None, why) when the drift stage did not run or complete."""
    return _stage_file(out_dir / task / "drift", "drift.json", "drift", "scores")


def load_serve(out_dir: Path) -> tuple[list[dict] | None, str | None]:
    """Serving cells, or (None, why) when the serve stage did not run or complete."""
    return _stage_file(out_dir / "serve", "serve.json", "serve", "cells")
