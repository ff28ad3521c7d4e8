"""Commands that run one stage of the study on an existing results folder — drift, weights, serve-bench, stats,
report — as the same jobs ``lorascope run`` runs (same keys: done ones are skipped), then print that stage's
report sections."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorascope.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    OverridesArg,
    ResultsDirArg,
    console,
    print_json,
    print_markdown,
    results_config,
    user_errors,
)


def run_stage(stage: str, results_dir: Path, config: Path | None, overrides: list[str] | None,
              tasks: list[str] | None = None, data_dir: Path | None = None, force: bool = False):
    """The folder's config, the stage's jobs run (progress on the terminal), the config used."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from lorascope.errors import DataError
    from lorascope.study.engine import run_stage_jobs

    if not Path(results_dir).is_dir():
        raise DataError("results folder not found", path=str(results_dir))
    cfg = results_config(results_dir, config, overrides)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        job = bar.add_task(f"{stage}: starting", total=None)
        outcomes = run_stage_jobs(cfg, results_dir, stage, tasks=tasks, data_dir=str(data_dir) if data_dir else None,
                                  progress=lambda msg: bar.update(job, description=msg), force=force)
    done = sum(1 for o in outcomes if o.get("skipped"))
    if done:
        console.print(f"{done} of {len(outcomes)} {stage} job(s) already done with this config: kept")
    return cfg


def show(results_dir: Path, cfg, sections: list[str]) -> None:
    from lorascope.report.write import section_markdown
    from lorascope.study.stages import flow

    print_markdown(section_markdown(results_dir, sections, config=cfg.model_dump(mode="json"),
                                    tasks=list(cfg.data.tasks), flow=flow(cfg), replicates=list(cfg.seeds.replicates)))


def register(app: typer.Typer) -> None:
    @app.command("drift")
    @user_errors
    def drift(results_dir: Path = ResultsDirArg,
              task: Optional[str] = typer.Option(None, "--task", "-t", help="One task (default: every task)."),
              config: Optional[Path] = ConfigOpt, data_dir: Optional[Path] = DataDirOpt,
              overrides: Optional[list[str]] = OverridesArg):
        """Representation drift of every final run vs the base model (§8): per-layer CKA / cosine tables,
        figures (FT vs LoRA, in- vs out-of-task), drift and drift reduction, the forgetting proxy."""
        cfg = run_stage("drift", results_dir, config, overrides, [task] if task else None, data_dir)
        show(results_dir, cfg, ["drift"])

    @app.command("weights")
    @user_errors
    def weights(results_dir: Path = ResultsDirArg, task: Optional[str] = typer.Option(None, "--task", "-t"),
                config: Optional[Path] = ConfigOpt, data_dir: Optional[Path] = DataDirOpt,
                overrides: Optional[list[str]] = OverridesArg):
        """ΔW structure of the final FT and LoRA runs (§9): metrics, intruders, DARE curves, figures."""
        cfg = run_stage("weights", results_dir, config, overrides, [task] if task else None, data_dir)
        show(results_dir, cfg, ["weights"])

    @app.command("serve-bench")
    @user_errors
    def serve_bench(results_dir: Path = ResultsDirArg, config: Optional[Path] = ConfigOpt,
                    data_dir: Optional[Path] = DataDirOpt, overrides: Optional[list[str]] = OverridesArg):
        """Latency, throughput and memory of base / merged / unmerged / multi-adapter serving per backend (§10),
        each cell gated against the fp32 transformers + PEFT reference before it is timed."""
        cfg = run_stage("serve", results_dir, config, overrides, None, data_dir)
        show(results_dir, cfg, ["deployment"])
        print(results_dir / "serve" / "serve.json")

    @app.command("stats")
    @user_errors
    def stats(results_dir: Path = ResultsDirArg, config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
              overrides: Optional[list[str]] = OverridesArg):
        """Statistics over seeds and per example, serving overheads, the validity gate and the verdict
        A ∧ (B ∨ C) (§11, §12) into RESULTS_DIR/stats/stats.json; stages that did not run are missing."""
        import json

        cfg = run_stage("stats", results_dir, config, overrides)
        doc = json.loads((results_dir / "stats" / "stats.json").read_text())
        if as_json:
            print_json(doc)
            return
        show(results_dir, cfg, ["verdict"])

    @app.command("report")
    @user_errors
    def report(results_dir: Path = ResultsDirArg, config: Optional[Path] = ConfigOpt,
               overrides: Optional[list[str]] = OverridesArg):
        """RESULTS_DIR/report/report.html (figures embedded, no network access needed), report.md and summary.md.
        Stages that did not run are named; a corrupt results file is an error naming the file."""
        run_stage("report", results_dir, config, overrides, force=True)  # cheap; its inputs may have changed
        html = results_dir / "report" / "report.html"
        console.print(f"wrote {html}, {html.with_name('report.md')} and {results_dir / 'summary.md'}")
        print(html)
