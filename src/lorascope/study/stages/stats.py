"""Stage ``stats`` (§11, §12), one job after everything else but the report: every statistic, the validity gate
and the verdict (``lorascope.stats.study_stats``) into ``stats/stats.json``."""

from __future__ import annotations

from lorascope.io import atomic_write_json
from lorascope.manifest import run_manifest
from lorascope.results import layout
from lorascope.study.runner import JobContext
from lorascope.study.stage import EVERYTHING_BEFORE, After, Stage


def run(ctx: JobContext) -> dict:
    from lorascope.stats.study_stats import compute_stats

    folder = layout.stats_dir(ctx.out_dir)
    with run_manifest(folder, ctx.cfg, command="stats", extra={"identity": ctx.job.key}) as manifest:
        ctx.step("statistics and the verdict")
        doc = compute_stats(ctx.cfg, ctx.out_dir)
        atomic_write_json(folder / "stats.json", doc)
        manifest["outputs"] = ["stats.json"]
    return {"verdicts": doc["verdicts"], "overall": doc["overall"]}


STAGE = Stage(
    name="stats", title="statistics",
    reads=("training", "stats", "serve.batch_sizes", "seeds.bootstrap", "seeds.replicates"),
    fan_out=lambda cfg: [{}], job_name=lambda p: "stats", run=run, after=(After(EVERYTHING_BEFORE),), role="vm3",
    report=("verdict", "results", "significance"),
    cost=lambda model, p: model.cpu("stats"))
