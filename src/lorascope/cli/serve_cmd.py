"""``lorascope serve-bench RESULTS_DIR``: the deployment benchmark (§10) on a results folder's adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lorascope.cli.common import console, results_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("serve-bench")
    @user_errors
    def serve_bench(
        results_dir: Path = typer.Argument(..., help="A study results folder (with <task>/runs/<task>-lora-*-r0/adapter)."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Study YAML (default: configs/demo.yaml if present)."),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data mirror (else config)."),
        overrides: Optional[list[str]] = typer.Argument(None, help="Dotted KEY=VALUE overrides, e.g. serve.requests=8."),
    ):
        """Latency, throughput and memory of base / merged / unmerged / multi-adapter serving per backend (§10).

        Each (backend, scenario) is checked against the fp32 transformers + PEFT greedy outputs before it is timed;
        a mismatch is reported as a failed cell. Writes RESULTS_DIR/serve/{serve.json, requests.csv, figures/}."""
        from lorascope.serve.report import serve_markdown
        from lorascope.serve.stage import run_serve_stage

        cfg = results_config(results_dir, config, overrides)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
            job = bar.add_task("serve-bench: starting", total=None)
            result = run_serve_stage(cfg, results_dir, data_dir=data_dir,
                                     progress=lambda msg: bar.update(job, description=msg))
        console.print(serve_markdown(result), highlight=False)
        print(results_dir / "serve" / "serve.json")
