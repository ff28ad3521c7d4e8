"""Which run folders are a study's final runs — the one rule every reader uses (weights, drift, serving,
statistics, the report), so none of them ever mixes runs of different learning rates or shows a run the
statistics excluded.

A results folder can hold final runs at several learning rates (the HPO choice changed after a config
edit, or runs were started by hand). Per (task, method) the learning rate is the HPO choice recorded in
``<task>/hpo/<method>/hpo.json``; without one (runs made with ``lorascope train`` alone), the learning rate
with the most completed replicates (ties: the smaller). Only runs whose manifest says completed count;
``replicates`` (the config's) restricts the seeds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lorascope.io import read_json
from lorascope.manifest import is_completed
from lorascope.results import layout


def hpo_choice(out_dir: str | Path, task: str, method: str) -> float | None:
    path = layout.hpo_file(out_dir, task, method)
    return float(read_json(path)["best_lr"]) if path.is_file() else None


def run_folders(out_dir: str | Path, task: str) -> list[Path]:
    """Every run folder of ``task`` that has a ``results.json`` (completed or not), sorted by name."""
    return sorted(p.parent for p in layout.runs_dir(out_dir, task).glob(f"*/{layout.RESULTS}"))


def final_runs(out_dir: str | Path, task: str, replicates: list[int] | None = None) -> list[dict]:
    """``[{"name", "path", "method", "lr", "replicate"}]`` ordered by method then replicate."""
    found: dict = defaultdict(lambda: defaultdict(dict))
    for folder in run_folders(out_dir, task):
        if not is_completed(folder):
            continue
        spec = read_json(folder / layout.RESULTS).get("run", {})
        if spec.get("hpo") or spec.get("task") != task or "method" not in spec:
            continue
        if replicates is not None and int(spec["replicate"]) not in replicates:
            continue
        found[spec["method"]][float(spec["lr"])][int(spec["replicate"])] = folder
    runs = []
    for method, by_lr in sorted(found.items()):
        lr = hpo_choice(out_dir, task, method)
        if lr is None:
            lr = min(by_lr, key=lambda v: (-len(by_lr[v]), v))
        elif lr not in by_lr:  # the HPO choice has no finished run yet: older lrs are not its stand-in
            continue
        for rep, path in sorted(by_lr[lr].items()):
            runs.append({"name": path.name, "path": path, "method": method, "lr": lr, "replicate": rep})
    return runs


def excluded_runs(out_dir: str | Path, task: str, replicates: list[int] | None = None,
                  selected: list[dict] | None = None) -> list[tuple[str, str]]:
    """(run folder name, why) of every run folder that is not a selected final run — said, never silently dropped.
    ``selected``: the ``final_runs`` of the same arguments, when the caller has them already."""
    chosen = {r["path"] for r in (final_runs(out_dir, task, replicates) if selected is None else selected)}
    out = []
    for folder in run_folders(out_dir, task):
        if folder in chosen:
            continue
        if not is_completed(folder):
            why = "manifest not completed"
        elif (read_json(folder / layout.RESULTS) or {}).get("run", {}).get("hpo"):
            continue  # HPO trials live under hpo/ in studies; a stray one here is not a final run either
        else:
            why = "not a selected final run (another learning rate or replicate)"
        out.append((folder.name, why))
    return out


def lowest_replicate_runs(out_dir: str | Path, task: str, replicates: list[int] | None = None) -> dict[str, dict]:
    """Per method, the selected final run with the lowest replicate (the §9 weights stage, served adapters);
    a method without a final run is absent."""
    runs: dict[str, dict] = {}
    for run in final_runs(out_dir, task, replicates):  # ordered by method then replicate: the first is the lowest
        runs.setdefault(run["method"], run)
    return runs


def lowest_replicate_run(out_dir: str | Path, task: str, method: str, replicates: list[int] | None = None
                         ) -> dict | None:
    """The selected final run of (task, method) with the lowest replicate; None when it has none."""
    return lowest_replicate_runs(out_dir, task, replicates).get(method)
