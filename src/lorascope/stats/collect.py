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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.errors import DataError
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON ({exc})", path=str(path)) from None


def load_training(out_dir: Path, task: str) -> Training:
    """Completed, non-HPO runs of ``task``. Per method only one learning rate is kept: the one with the
    most completed replicates (ties: the smaller lr); others are noted."""
    found: dict[str, dict[float, dict[int, Run]]] = defaultdict(lambda: defaultdict(dict))
    result = Training()
    for res_path in sorted((out_dir / task / "runs").glob("*/results.json")):
        folder = res_path.parent
        if not is_completed(folder):
            result.notes.append(f"{folder.name}: manifest not completed, skipped")
            continue
        res = _read_json(res_path)
        spec = res.get("run", {})
        if spec.get("hpo"):
            continue
        try:
            run = Run(name=folder.name, task=spec["task"], method=spec["method"], lr=float(spec["lr"]),
                      replicate=int(spec["replicate"]), primary=res["primary"], path=folder,
                      test={k: float(v) for k, v in res["test"].items()
                            if k not in NON_METRIC and isinstance(v, (int, float))})
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"results.json lacks a field ({exc})", path=str(res_path)) from None
        found[run.method][run.lr][run.replicate] = run
    for method, by_lr in sorted(found.items()):
        lr = min(by_lr, key=lambda v: (-len(by_lr[v]), v))
        result.runs[method] = by_lr[lr]
        for other in sorted(set(by_lr) - {lr}):
            result.notes.append(f"{task}/{method}: lr {other} ignored (lr {lr} has more completed replicates)")
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
    rows = _read_json(path).get(list_key)
    if not isinstance(rows, list):
        raise DataError(f"expected a list under {list_key!r}", path=str(path))
    return rows, None


def load_drift(out_dir: Path, task: str) -> tuple[list[dict] | None, str | None]:
    """Drift score rows of ``task``, or (None, why) when the drift stage did not run or complete."""
    return _stage_file(out_dir / task / "drift", "drift.json", "drift", "scores")


def load_serve(out_dir: Path) -> tuple[list[dict] | None, str | None]:
    """Serving cells, or (None, why) when the serve stage did not run or complete."""
    return _stage_file(out_dir / "serve", "serve.json", "serve", "cells")
