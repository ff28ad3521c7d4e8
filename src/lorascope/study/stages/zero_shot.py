"""Stage ``zero_shot`` (§7), per task: the base model with the study's prompts, on the test split."""

from __future__ import annotations

from lorascope.results import layout
from lorascope.study.ingest import ingest_run
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage


def run(ctx: JobContext, task: str) -> dict:
    from lorascope.train.zero_shot import run_zero_shot

    ctx.step(f"{task}: base model zero-shot")
    r = run_zero_shot(ctx.cfg, task, layout.zero_shot_dir(ctx.out_dir, task), data_dir=ctx.data_dir)
    return {"primary": r["primary"], "test": r["test"]}


def ingest(store, out_dir, job, result: dict) -> None:
    task = job.params["task"]
    ingest_run(store, job.key, layout.zero_shot_dir(out_dir, task), name=f"{task}-base_zero_shot")


STAGE = Stage(
    name="zero_shot", title="zero-shot", reads=("training",),
    fan_out=lambda cfg: [{"task": t} for t in cfg.data.tasks], job_name=lambda p: f"zero_shot-{p['task']}",
    run=run, after=(After("data", ("task",)),), role="vm3", gpus=1,
    ingest=ingest, report=("baselines",),
    cost=lambda model, p: model.zero_shot(p["task"]))
