"""Which run folders are a study's final runs — the one rule every analysis stage (weights, drift, stats)
uses, so they never mix runs of different learning rates.

A results folder can hold final runs at several learning rates (the HPO choice changed after a config
edit, or runs were started by hand). Per (task, method) the learning rate is the HPO choice recorded in
``<task>/hpo/<method>/hpo.json``; without one (runs made with ``lorascope train`` alone), the learning rate
with the most completed replicates (ties: the smaller). Only runs whose manifest says completed count.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lorascope.io import read_json
from lorascope.manifest import is_completed


def hpo_choice(out_dir: Path, task: str, method: str) -> float | None:
    path = Path(out_dir) / task / "hpo" / method / "hpo.json"
    return float(read_json(path)["best_lr"]) if path.is_file() else None


def final_runs(out_dir: Path, task: str, replicates: list[int] | None = None) -> list[dict]:
    """``[{"name", "path", "method", "lr", "replicate"}]`` ordered by method then replicate; ``replicates``
    restricts to those seeds (the config's), else every completed replicate."""
    found: dict = defaultdict(lambda: defaultdict(dict))
    for res in sorted((Path(out_dir) / task / "runs").glob("*/results.json")):
        if not is_completed(res.parent):
            continue
        spec = read_json(res).get("run", {})
        if spec.get("hpo") or spec.get("task") != task or "method" not in spec:
            continue
        if replicates is not None and int(spec["replicate"]) not in replicates:
            continue
        found[spec["method"]][float(spec["lr"])][int(spec["replicate"])] = res.parent
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
