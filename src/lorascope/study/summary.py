"""The study-level ``summary.md``, rebuilt from what is on disk after the DAG ran (until the report stage exists).

Reads only finished outputs (stage files and job records), so it is the same whether the jobs ran now,
in an earlier run (skipped now), in parallel or on other nodes. Sections whose jobs are not in the DAG or
not completed are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.io import atomic_write_text
from lorascope.study.dag import Dag, job_record


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _results(out_dir: Path, dag: Dag, kind: str) -> dict[str, dict]:
    """Completed jobs of ``kind`` → their recorded summaries, in DAG order."""
    out = {}
    for job in dag.by_kind().get(kind, []):
        rec = job_record(out_dir, job.name)
        if rec and rec.get("status") == "completed" and rec.get("identity") == job.key:
            out[job.name] = {"job": job, "result": rec.get("result") or {}}
    return out


def _data_section(cfg: StudyConfig, out_dir: Path, dag: Dag) -> str:
    from lorascope.study.foundation import summary_markdown

    results = {}
    for entry in _results(out_dir, dag, "data").values():
        task = entry["job"].params["task"]
        folder = out_dir / task
        parts = {"data": (_json(folder / "manifest.json") or {}).get("data"), "leakage": _json(folder / "leakage.json"),
                 "stats": _json(folder / "data_stats.json"), "baselines": _json(folder / "baselines.json")}
        if all(v is not None for v in parts.values()):
            results[task] = parts
    return summary_markdown(cfg, results, out_dir)


def _training_section(out_dir: Path, dag: Dag) -> str | None:
    from lorascope.study.training import training_markdown

    sanity = {f"{e['job'].params['task']}/{e['job'].params['method']}": e["result"]
              for e in _results(out_dir, dag, "sanity").values()}
    hpo = {f"{e['job'].params['task']}/{e['job'].params['method']}": e["result"]
           for e in _results(out_dir, dag, "hpo").values()}
    runs: dict[str, list[dict]] = {}
    for e in _results(out_dir, dag, "train").values():
        res = _json(out_dir / e["result"]["run_dir"] / "results.json")
        if res is not None:
            runs.setdefault(f"{e['job'].params['task']}/{e['job'].params['method']}", []).append(res)
    zero = {}
    for e in _results(out_dir, dag, "zero_shot").values():
        res = _json(out_dir / e["job"].params["task"] / "zero_shot" / "results.json")
        if res is not None:
            zero[e["job"].params["task"]] = res
    if not (sanity and hpo and runs):
        return None
    return training_markdown(sanity, hpo, runs, zero)


def _weights_section(out_dir: Path, dag: Dag) -> str | None:
    from lorascope.study.weights_stage import weights_markdown

    found = {}
    for e in _results(out_dir, dag, "weights").values():
        task = e["job"].params["task"]
        w = _json(out_dir / task / "weights" / "weights.json")
        if w is not None:
            found[task] = w
    return weights_markdown(found) if found else None


def write_summary(cfg: StudyConfig, dag: Dag, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    sections = [_data_section(cfg, out_dir, dag), _training_section(out_dir, dag), _weights_section(out_dir, dag)]
    return atomic_write_text(out_dir / "summary.md", "\n".join(s for s in sections if s))
