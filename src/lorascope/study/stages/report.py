"""Stage ``report``, the last job: the self-contained HTML report, its Markdown twin and ``summary.md``
(``lorascope.report.write``), with the sections each stage declares, in stage order, and the flow diagram
drawn from the same declarations."""

from __future__ import annotations

from lorascope.manifest import run_manifest
from lorascope.results import layout
from lorascope.study.runner import JobContext
from lorascope.study.stage import EVERYTHING_BEFORE, After, Stage


def render(out_dir, cfg) -> object:
    """The report of ``out_dir`` for the study config ``cfg`` (also rendered again after an invocation ends)."""
    from lorascope.report.write import write_report
    from lorascope.study.stages import declared_sections, flow

    raw = getattr(cfg, "unwrapped", cfg)
    return write_report(out_dir, declared_sections(raw), config=raw.model_dump(mode="json"),
                        tasks=list(raw.data.tasks), flow=flow(raw), replicates=list(raw.seeds.replicates))


def run(ctx: JobContext) -> dict:
    folder = layout.report_dir(ctx.out_dir)
    with run_manifest(folder, ctx.cfg, command="report", extra={"identity": ctx.job.key}) as manifest:
        ctx.step("report")
        html = render(ctx.out_dir, ctx.cfg)
        manifest["outputs"] = ["report.html", "report.md", "study_flow.svg", f"../{layout.SUMMARY}"]
    return {"path": layout.relative(ctx.out_dir, html)}


STAGE = Stage(
    # The report shows every stage's outputs and the study's whole config (setup, limitations): it reads it all.
    name="report", title="report", reads=("training", "drift", "serve", "stats", "seeds", "output.note", "name"),
    fan_out=lambda cfg: [{}], job_name=lambda p: "report", run=run, after=(After(EVERYTHING_BEFORE),), role="vm3",
    cost=lambda model, p: model.cpu("report"))
