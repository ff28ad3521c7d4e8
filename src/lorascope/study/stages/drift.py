"""Stage ``drift`` (§8), per task: how far every selected final run's representations moved from the base
model (``lorascope.drift.analysis``): ``drift.json``, ``layers.csv`` and figures under ``<task>/drift/``."""

from __future__ import annotations

from lorascope.io import atomic_write_json, atomic_write_text
from lorascope.manifest import run_manifest
from lorascope.results import layout
from lorascope.results.selection import final_runs
from lorascope.study.ingest import file_ingester, ingest_drift
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage


def run(ctx: JobContext, task: str) -> dict:
    from lorascope.drift.analysis import layers_csv, measure, write_figures
    from lorascope.train.run import default_device

    cfg = ctx.cfg
    runs = final_runs(ctx.out_dir, task, cfg.seeds.replicates)
    if not runs:
        raise FileNotFoundError(f"{layout.runs_dir(ctx.out_dir, task)}: no completed final run to measure")
    folder = layout.drift_dir(ctx.out_dir, task)
    with run_manifest(folder, cfg, command=f"drift {task}", seeds={"probe": cfg.seeds.probe},
                      extra={"identity": ctx.job.key, "runs": [r["name"] for r in runs]}):
        result = measure(cfg, task, runs, device=default_device(), data_dir=ctx.data_dir, progress=ctx.step)
        write_figures(result, folder, cfg)
        atomic_write_text(folder / "layers.csv", layers_csv(result["layers"]))
        atomic_write_json(folder / "drift.json", result)
    return {"task": task, "path": layout.relative(ctx.out_dir, folder / "drift.json")}


ingest = file_ingester(ingest_drift, lambda out, p: layout.drift_dir(out, p["task"]) / "drift.json")


STAGE = Stage(
    name="drift", title="drift", reads=("training", "drift", "stats.confidence", "seeds.probe", "seeds.replicates"),
    fan_out=lambda cfg: [{"task": t} for t in cfg.data.tasks], job_name=lambda p: f"drift-{p['task']}", run=run,
    after=(After("train", ("task",)),), role="vm3", gpus=1,
    ingest=ingest,
    report=("drift",), cost=lambda model, p: model.drift(p["task"]))
