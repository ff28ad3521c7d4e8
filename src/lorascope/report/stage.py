"""The report stage, the study DAG's last job: ``<out>/report/report.html`` (self-contained) and
``report.md`` (+ ``study_flow.svg``), written atomically under a manifest."""

from __future__ import annotations

from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.io import atomic_write_text
from lorascope.manifest import run_manifest
from lorascope.report.blocks import Svg
from lorascope.report.build import build_report
from lorascope.report.load import load_results
from lorascope.report.render import to_html, to_markdown

REPORT_DIR = "report"


def write_report(results_dir: str | Path, cfg: StudyConfig | None = None) -> Path:
    """Render the report of ``results_dir`` (no manifest); returns the HTML path.

    The results folder's own manifest config wins over ``cfg``, which is used when the folder has none."""
    root = Path(results_dir)
    results = load_results(root, list(cfg.data.tasks) if cfg is not None else None)
    if cfg is not None:
        results["config"] = cfg.model_dump(mode="json")
    report = build_report(results)
    out = root / REPORT_DIR
    for section in report.sections:
        for block in section.blocks:
            if isinstance(block, Svg):
                atomic_write_text(out / block.file, block.svg)
    atomic_write_text(out / "report.md", to_markdown(report))
    return atomic_write_text(out / "report.html", to_html(report, root))


def run_report_stage(cfg: StudyConfig, out_dir: str | Path) -> Path:
    """The DAG's report job: write the report under ``<out_dir>/report/manifest.json``; returns the HTML path."""
    out_dir = Path(out_dir)
    with run_manifest(out_dir / REPORT_DIR, cfg, command="report") as manifest:
        html = write_report(out_dir, cfg)
        manifest["outputs"] = ["report.html", "report.md", "study_flow.svg"]
    return html
