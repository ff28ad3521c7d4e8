"""Stage ``train`` (§5), per task × method × replicate: the final runs at the HPO-chosen learning rate (read
when the job runs, from its HPO job's output), best checkpoint on validation, test predictions."""

from __future__ import annotations

from lorascope.errors import LorascopeError
from lorascope.results import layout
from lorascope.results.selection import hpo_choice
from lorascope.study.ingest import ingest_run
from lorascope.study.roles import method_role
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage


def run(ctx: JobContext, task: str, method: str, replicate: int) -> dict:
    from lorascope.train.run import RunSpec, run_training

    lr = hpo_choice(ctx.out_dir, task, method)
    if lr is None:
        raise LorascopeError(f"{layout.hpo_file(ctx.out_dir, task, method)} not found: run the HPO job first")
    spec = RunSpec(task, method, lr, replicate=replicate)
    ctx.step(f"{task}: final run {spec.name}")
    folder = layout.run_dir(ctx.out_dir, task, spec.name)
    r = run_training(ctx.cfg, spec, folder, data_dir=ctx.data_dir)
    return {"run": spec.name, "run_dir": layout.relative(ctx.out_dir, folder), "lr": lr, "primary": r["primary"],
            "validation_best": r["validation_best"], "test_primary": r["test"][r["primary"]]}


def ingest(store, out_dir, job, result: dict) -> None:
    ingest_run(store, job.key, out_dir / result["run_dir"])


STAGE = Stage(
    name="train", title="final training", reads=("training",),
    fan_out=lambda cfg: [{"task": t, "method": m, "replicate": r} for t in cfg.data.tasks
                         for m in cfg.train.methods for r in cfg.seeds.replicates],
    job_name=lambda p: f"train-{p['task']}-{p['method']}-r{p['replicate']}", run=run,
    after=(After("hpo", ("task", "method")),), role=method_role, gpus=1,
    ingest=ingest, report=("results", "significance"),
    cost=lambda model, p: model.train_run(p["task"], p["method"]))
