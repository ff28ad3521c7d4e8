"""The data stage of the study (§3, §7): per task — load, leakage check, statistics + figures, baselines.

Each task gets its own output folder with a manifest; nothing is written as a result unless its stage
finished (atomic writes, manifest status). Later stages (training, drift, ...) build on these folders; the
study DAG (``study/jobs.py``) runs them in order.
"""

from __future__ import annotations

from pathlib import Path

from lorascope.baselines.run import baselines_markdown, run_baselines
from lorascope.config.schema import StudyConfig
from lorascope.data.figures import length_histogram
from lorascope.data.leakage import check_leakage
from lorascope.data.load import load_task
from lorascope.data.stats import dataset_stats, token_length_arrays
from lorascope.data.types import TaskData
from lorascope.io import atomic_write_json, atomic_write_text
from lorascope.manifest import run_manifest


def data_files(data: TaskData) -> list[dict]:
    return [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in data.files]


def run_task_data_stage(cfg: StudyConfig, task: str, out_dir: Path, *, data_dir: str | None = None,
                        tokenizer=None, progress=None) -> dict:
    """Load ``task``, check leakage (fatal overlaps raise), write stats, figure and baselines to ``out_dir``."""
    step = (lambda msg: progress(msg)) if progress else (lambda msg: None)
    with run_manifest(out_dir, cfg, command=f"data-stage {task}") as manifest:
        step(f"{task}: loading data")
        data = load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir)
        manifest["data"] = data.describe()
        manifest["data_files"] = data_files(data)
        step(f"{task}: leakage checks")
        leakage = check_leakage(data)
        atomic_write_json(out_dir / "leakage.json", leakage)
        step(f"{task}: statistics")
        stats = dataset_stats(data, seed=cfg.seeds.split, n_samples=cfg.data.stats_samples, tokenizer=tokenizer,
                              max_length=cfg.data.max_length, max_new_tokens=cfg.data.max_new_tokens)
        atomic_write_json(out_dir / "data_stats.json", stats)
        if tokenizer is not None:
            lengths = token_length_arrays(data, tokenizer)
            length_histogram(lengths, cfg.data.max_length, f"{task} ({data.split_scheme}): token lengths",
                             out_dir / "figures" / "token_lengths.png")
        step(f"{task}: baselines")
        # Scored on the same (possibly subsampled) splits as the tuned models, so the summary compares like
        # with like; `lorascope baselines` scores the full splits.
        scored = load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir, apply_subsample=True)
        baselines = run_baselines(scored, cfg.baselines, seed=cfg.seeds.baselines)
        atomic_write_json(out_dir / "baselines.json", baselines)
        atomic_write_text(out_dir / "baselines.md", baselines_markdown(baselines))
    return {"data": data.describe(), "leakage": leakage, "stats": stats, "baselines": baselines}


def _stats_table(stats: dict) -> list[str]:
    rows = ["| split | n | labels | tokens p50 / p95 / max | over max length |", "|---|---:|---|---|---:|"]
    for split, entry in stats["splits"].items():
        labels = ", ".join(f"{k} {v}" for k, v in entry["labels"].items() if not k.endswith("_pct"))
        pct = ", ".join(f"{v}%" for k, v in entry["labels"].items() if k.endswith("_pct"))
        tok = entry.get("tokens", {}).get("sequence", {})
        tok_txt = f"{tok.get('p50')} / {tok.get('p95')} / {tok.get('p100')}" if tok.get("n") else "—"
        rows.append(f"| {split} | {entry['n']} | {labels} ({pct}) | {tok_txt} | {tok.get('over_limit', '—')} |")
    return rows


def summary_markdown(cfg: StudyConfig, results: dict[str, dict], out_dir: Path) -> str:
    lines = [f"# lorascope — {cfg.name}", "", f"Model: `{cfg.model.name_or_path}`; results in `{out_dir}`.", ""]
    if cfg.output.note:
        lines += [f"> **Note:** {cfg.output.note}", ""]
    for task, res in results.items():
        d = res["data"]
        lines += [f"## {task} — split `{d['split_scheme']}` (source: {d['source']})", ""]
        lines += [f"> {note}" for note in d["notes"]] + ([""] if d["notes"] else [])
        lines += _stats_table(res["stats"]) + [""]
        leak = res["leakage"]
        shared = {pair: {k: v["count"] for k, v in kinds.items()} for pair, kinds in leak["pairs"].items()}
        lines += [f"Leakage check: {'passed' if leak['ok'] else 'FAILED'}; overlaps per split pair: `{shared}`", ""]
        lines += [baselines_markdown(res["baselines"]), ""]
    return "\n".join(lines)
