"""Stage ``sanity`` (§6), per task × method: memorise a few training examples, then get all of them right.
A failure stops the study: every HPO job depends on every sanity job, so a failed gate cancels the grid."""

from __future__ import annotations

from lorascope.results import layout
from lorascope.study.roles import method_role
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage


def run(ctx: JobContext, task: str, method: str) -> dict:
    from lorascope.train.sanity import SanityGateFailed, run_sanity

    folder = layout.sanity_dir(ctx.out_dir, task, method)
    ctx.step(f"{task}: sanity gate ({method})")
    v = run_sanity(ctx.cfg, task, method, folder, data_dir=ctx.data_dir)
    if not v["passed"]:
        loss = "n/a" if v["final_loss"] is None else f"{v['final_loss']:.4f}"
        raise SanityGateFailed(
            f"sanity gate failed for {task}/{method}: {v['metric']} {v['score']:.0f}% after {v['steps']} steps "
            f"(final loss {loss}); loss curve in {folder / 'sanity.json'}")
    return {k: v[k] for k in ("passed", "score", "metric", "steps", "final_loss", "lr")}


def cost(model, p: dict) -> dict:
    return model.sanity(p["task"], p["method"])


STAGE = Stage(
    name="sanity", title="sanity gate", reads=("training",),
    fan_out=lambda cfg: [{"task": t, "method": m} for t in cfg.data.tasks for m in cfg.train.methods],
    job_name=lambda p: f"sanity-{p['task']}-{p['method']}", run=run, after=(After("data", ("task",)),),
    role=method_role, gpus=1, report=("sanity",), cost=cost)
