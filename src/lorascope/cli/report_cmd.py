"""``lorascope report RESULTS_DIR``: the study report, one self-contained HTML page and a Markdown twin."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorascope.cli.common import console, results_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("report")
    @user_errors
    def report(
        results_dir: Path = typer.Argument(..., help="A results folder (the study's output root)."),
        config: Optional[Path] = typer.Option(None, "--config", "-c",
                                              help="Study YAML (default: configs/demo.yaml if present); the "
                                                   "folder's own manifest config wins when it has one."),
        overrides: Optional[list[str]] = typer.Argument(None, help="Dotted KEY=VALUE overrides."),
    ):
        """Write RESULTS_DIR/report/report.html (figures embedded, no network access needed) and report.md.

        Stages that did not run are named in a "missing stages" box and in each section; a corrupt results
        file is an error naming the file."""
        from lorascope.errors import ReportError
        from lorascope.report.stage import run_report_stage

        if not results_dir.is_dir():
            raise ReportError(f"{results_dir}: results folder not found")
        html = run_report_stage(results_config(results_dir, config, overrides), results_dir)
        console.print(f"wrote {html} and {html.with_name('report.md')}")
        print(html)
