"""Read a study results folder into one plain dict for the report; never crash on a partial folder.

A file that is absent makes its stage *missing* (recorded with the path it was looked for at); a folder whose
manifest does not say ``completed`` counts as missing too. A file that exists but is not a JSON object is an
error (``ReportError`` naming the file): a report silently built around a corrupt result would mislead.

Layout read (STUDY.md §14), relative to the results folder:
``manifest.json``, ``stats/stats.json``, ``serve/serve.json`` + ``serve/figures/*.png``, and per task
``data_stats.json``, ``leakage.json``, ``baselines.json``, ``figures/token_lengths.png``,
``sanity/<method>/sanity.json``, ``zero_shot/results.json``, ``hpo/<method>/hpo.json``,
``runs/<name>/results.json``, ``weights/weights.json`` + figures, ``drift/drift.json`` + figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorascope.errors import ReportError
from lorascope.results import layout
from lorascope.results.selection import excluded_runs, final_runs

# (stage, file relative to the task folder) for the single-file stages of a task, in study order.
TASK_FILES = (
    ("data", "data_stats.json"),
    ("leakage", "leakage.json"),
    ("baselines", "baselines.json"),
    ("zero-shot", "zero_shot/results.json"),
    ("weights", "weights/weights.json"),
    ("drift", "drift/drift.json"),
)
TASK_FIGURES = {
    "token_lengths": "figures/token_lengths.png",
    "drift_mean": "drift/figures/similarity_mean.png",
    "drift_last": "drift/figures/similarity_last.png",
    "drift_token": "drift/figures/similarity_token.png",
    "forgetting": "drift/figures/forgetting.png",
    "singular_spectra": "weights/figures/singular_spectra.png",
    "effective_rank": "weights/figures/effective_rank.png",
    "intruders": "weights/figures/intruders.png",
    "dare_curves": "weights/figures/dare_curves.png",
}
SERVE_FIGURES = {
    "throughput": "serve/figures/throughput_vs_batch.png",
    "p95_latency": "serve/figures/p95_latency_vs_batch.png",
    "memory": "serve/figures/memory_by_scenario.png",
}
# Stages in DAG order (STUDY.md §14), as the report names them.
STAGE_ORDER = ("data", "leakage", "baselines", "zero-shot", "sanity", "hpo", "training", "drift", "weights",
               "serve", "stats")


def read_json(root: Path, rel: str) -> Any | None:
    """The JSON object at ``root/rel``; None when the file is absent; ReportError when it is unreadable."""
    path = root / rel
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path}: corrupt results file, not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: corrupt results file, expected a JSON object, got {type(obj).__name__}")
    return obj


def _status(root: Path, folder: str) -> str | None:
    """The manifest status of ``root/folder`` ("completed", "failed", ...); None when it has no manifest."""
    man = read_json(root, f"{folder}/manifest.json")
    return None if man is None else str(man.get("status"))


def _stage_file(root: Path, rel: str, stage: str, task: str | None, missing: list[dict]) -> dict | None:
    """Read a stage's file; record it as missing when absent or when its folder's manifest is not completed."""
    obj = read_json(root, rel)
    if obj is None:
        missing.append({"stage": stage, "task": task, "reason": f"{rel} not found"})
        return None
    folder = str(Path(rel).parent)
    status = _status(root, folder)
    if status not in (None, "completed"):
        missing.append({"stage": stage, "task": task, "reason": f"{folder}/manifest.json says {status}"})
        return None
    return obj


def _per_method(root: Path, task: str, sub: str, name: str, stage: str, missing: list[dict]) -> dict[str, dict]:
    found = {}
    for path in sorted((root / task / sub).glob(f"*/{name}")):
        obj = read_json(root, str(path.relative_to(root)))
        if obj is not None:
            found[path.parent.name] = obj
    if not found:
        missing.append({"stage": stage, "task": task, "reason": f"{task}/{sub}/<method>/{name} not found"})
    return found


def _runs(root: Path, task: str, missing: list[dict], notes: list[str], replicates: list[int] | None) -> list[dict]:
    """The task's selected final runs — the same rule the statistics use (``results.selection``), so the report
    never lists a run the statistics excluded; every other run folder is named in a note."""
    runs, selected = [], final_runs(root, task, replicates)
    for sel in selected:
        obj = read_json(root, layout.relative(root, sel["path"] / layout.RESULTS))
        if obj is not None:
            runs.append({**obj, "name": obj.get("name") or sel["name"]})
    notes += [f"{task}: run {name} left out ({why})"
              for name, why in excluded_runs(root, task, replicates, selected)]
    if not runs:
        missing.append({"stage": "training", "task": task, "reason": f"{task}/runs/*/results.json not found"})
    return runs


def _figures(root: Path, table: dict[str, str], prefix: str = "") -> dict[str, str]:
    """Figure name → path relative to the results folder, for the figures that exist."""
    return {name: prefix + rel for name, rel in sorted(table.items()) if (root / prefix / rel).is_file()}


def _manifests(root: Path, task: str) -> list[tuple[str, dict]]:
    """The stage manifests of a task (HPO trials and checkpoints excluded), as (relative folder, manifest)."""
    rels = [task, f"{task}/zero_shot", f"{task}/drift", f"{task}/weights"]
    rels += [str(p.parent.relative_to(root)) for p in sorted((root / task / "sanity").glob("*/manifest.json"))]
    rels += [str(p.parent.relative_to(root)) for p in sorted((root / task / "hpo").glob("*/hpo.json"))]
    rels += [str(p.parent.relative_to(root)) for p in sorted((root / task / "runs").glob("*/manifest.json"))]
    out = []
    for rel in rels:
        man = read_json(root, f"{rel}/manifest.json")
        if man is not None:
            out.append((rel, man))
    return out


def discover_tasks(root: Path, manifest: dict | None, fallback: list[str] | None) -> list[str]:
    """Tasks from the root manifest's config, else the given config's, else the task folders present."""
    tasks = ((manifest or {}).get("config") or {}).get("data", {}).get("tasks")
    if tasks:
        return list(tasks)
    if fallback:
        return list(fallback)
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and ((p / "data_stats.json").is_file() or (p / "runs").is_dir()))


def load_task(root: Path, task: str, missing: list[dict], notes: list[str], replicates: list[int] | None = None
              ) -> dict:
    out: dict[str, Any] = {"task": task}
    for stage, rel in TASK_FILES:
        out[stage.replace("-", "_")] = _stage_file(root, f"{task}/{rel}", stage, task, missing)
    out["sanity"] = _per_method(root, task, "sanity", "sanity.json", "sanity", missing)
    out["hpo"] = _per_method(root, task, "hpo", "hpo.json", "hpo", missing)
    out["runs"] = _runs(root, task, missing, notes, replicates)
    out["figures"] = _figures(root, TASK_FIGURES, f"{task}/")
    out["manifest"] = read_json(root, f"{task}/manifest.json")
    out["manifests"] = _manifests(root, task)
    return out


def load_results(results_dir: str | Path, tasks: list[str] | None = None, replicates: list[int] | None = None) -> dict:
    """Everything the report shows, as plain data. ``tasks``: used when the root manifest names none;
    ``replicates``: the study's seeds (default: the root manifest's, else every completed replicate)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: results folder not found")
    missing: list[dict] = []
    notes: list[str] = []
    manifest = read_json(root, "manifest.json")
    if manifest is None:
        missing.append({"stage": "manifest", "task": None, "reason": "manifest.json not found"})
    task_names = discover_tasks(root, manifest, tasks)
    if replicates is None:
        replicates = (((manifest or {}).get("config") or {}).get("seeds") or {}).get("replicates")
    if not task_names:
        missing.append({"stage": "data", "task": None, "reason": "no task folder found"})
    per_task = {t: load_task(root, t, missing, notes, replicates) for t in task_names}
    serve = _stage_file(root, "serve/serve.json", "serve", None, missing)
    stats = _stage_file(root, "stats/stats.json", "stats", None, missing)
    serve_manifest = read_json(root, "serve/manifest.json")
    stats_manifest = read_json(root, "stats/manifest.json")
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    missing.sort(key=lambda m: (order.get(m["stage"], -1), m["task"] or "", m["reason"]))
    return {"root": root, "manifest": manifest, "tasks": per_task, "serve": serve, "stats": stats,
            "serve_figures": _figures(root, SERVE_FIGURES), "missing": missing, "notes": notes,
            "global_manifests": [(rel, m) for rel, m in (("serve", serve_manifest), ("stats", stats_manifest))
                                 if m is not None]}


def missing_stages(results: dict, task: str | None = None, stages: tuple[str, ...] | None = None) -> list[dict]:
    """Missing entries, optionally only for one task (plus the global ones) and some stages."""
    return [m for m in results["missing"]
            if (task is None or m["task"] in (task, None)) and (stages is None or m["stage"] in stages)]
