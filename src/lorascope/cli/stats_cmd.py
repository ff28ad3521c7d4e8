"""``lorascope stats RESULTS_DIR``: §11 statistics and the §12 verdict of a results folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorascope.cli.common import console, print_json, results_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("stats")
    @user_errors
    def stats(
        results_dir: Path = typer.Argument(..., help="A results folder (the study's output root)."),
        config: Optional[Path] = typer.Option(None, "--config", "-c",
                                              help="Study YAML (default: configs/demo.yaml if present)."),
        as_json: bool = typer.Option(False, "--json", help="Print stats.json to stdout."),
        overrides: Optional[list[str]] = typer.Argument(None, help="Dotted KEY=VALUE overrides, e.g. "
                                                        "stats.bootstrap_resamples=2000."),
    ):
        """Statistics over seeds and per example, serving overheads, and the verdict A ∧ (B ∨ C).

        Writes RESULTS_DIR/stats/stats.json and stats.md. Stages that did not run are reported as missing."""
        from lorascope.errors import DataError
        from lorascope.stats.stage import run_stats_stage

        if not results_dir.is_dir():
            raise DataError("results folder not found", path=str(results_dir))
        cfg = results_config(results_dir, config, overrides)
        doc = run_stats_stage(cfg, results_dir)
        if as_json:
            print_json(doc)
            return
        for task, state in doc["verdicts"].items():
            reason = doc["tasks"][task]["verdict"]["reason"]
            console.print(f"[bold]{task}[/]: verdict [bold]{state}[/] ({reason})")
        console.print(f"wrote {results_dir / 'stats' / 'stats.json'} and stats.md")
