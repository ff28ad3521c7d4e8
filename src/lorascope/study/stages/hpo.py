"""Stage ``hpo`` (§5), per task × method: the learning-rate search on validation only (the test split is
unreadable there). Every HPO job waits for every sanity gate: one failed gate cancels the whole grid."""

from __future__ import annotations

from lorascope.results import layout
from lorascope.study.ingest import file_ingester, ingest_hpo
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage


def run(ctx: JobContext, task: str, method: str) -> dict:
    from lorascope.train.hpo import run_hpo

    ctx.step(f"{task}: HPO ({method})")
    h = run_hpo(ctx.cfg, task, method, layout.hpo_dir(ctx.out_dir, task, method), data_dir=ctx.data_dir)
    return {k: h[k] for k in ("task", "method", "metric", "best_lr", "best_value", "trials")}


ingest = file_ingester(ingest_hpo, lambda out, p: layout.hpo_file(out, p["task"], p["method"]))


STAGE = Stage(
    name="hpo", title="HPO", reads=("training",),
    fan_out=lambda cfg: [{"task": t, "method": m} for t in cfg.data.tasks for m in cfg.train.methods],
    job_name=lambda p: f"hpo-{p['task']}-{p['method']}", run=run,
    after=(After("data", ("task",)), After("sanity")), role="vm2", gpus=1,
    ingest=ingest, report=("hpo",),
    cost=lambda model, p: model.hpo(p["task"], p["method"]))
