"""Write the report of a results folder: ``<out>/report/report.html`` (self-contained), ``report.md`` (+
``study_flow.svg``), and the short ``<out>/summary.md`` — every human-readable output of a study comes from
here (the CLI prints sections of the same report)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lorascope.io import atomic_write_text
from lorascope.report.blocks import Report, Svg
from lorascope.report.build import build_report, build_section
from lorascope.report.load import load_results
from lorascope.report.render import sections_markdown, to_html, to_markdown
from lorascope.results import layout

SUMMARY_SECTIONS = ("verdict", "results")


def load(results_dir: str | Path, *, config: dict | None = None, tasks: list[str] | None = None,
         flow: list[dict] | None = None, replicates: list[int] | None = None) -> dict:
    """The results folder as the report sees it; ``config``: the study's resolved config (when the folder has no
    root manifest), ``flow``: the stage declarations (``study.stage.describe``)."""
    results = load_results(results_dir, tasks, replicates)
    if config is not None and not (results.get("manifest") or {}).get("config"):
        results["config"] = config
    results["flow"] = flow or []
    return results


def write_report(results_dir: str | Path, stage_sections: Sequence[str], **kw) -> Path:
    """Render the report of ``results_dir``; returns the HTML path (no manifest: the report stage writes it)."""
    root = Path(results_dir)
    results = load(root, **kw)
    report = build_report(results, stage_sections)
    out = layout.report_dir(root)
    for section in report.sections:
        for block in section.blocks:
            if isinstance(block, Svg):
                atomic_write_text(out / block.file, block.svg)
    atomic_write_text(out / "report.md", to_markdown(report))
    atomic_write_text(root / layout.SUMMARY, to_markdown(summary(report), fig_prefix=""))
    return atomic_write_text(out / "report.html", to_html(report, root))


def summary(report: Report) -> Report:
    """The short version: caveat, alerts, missing stages, the verdict and the main results."""
    keep = [s for s in report.sections if s.id in SUMMARY_SECTIONS]
    return Report(title=report.title.replace("report", "summary", 1), caveat=report.caveat, missing=report.missing,
                  sections=keep, alerts=report.alerts)


def section_markdown(results_dir: str | Path, names: Sequence[str], **kw) -> str:
    """Some sections of the report as Markdown (what the CLI prints after a command)."""
    results = load(results_dir, **kw)
    return sections_markdown([build_section(n, results) for n in names], fig_prefix=f"{Path(results_dir)}/")
