"""``lorascope run STUDY.yaml`` (the whole study as a DAG, locally or on Ray) and ``lorascope plan STUDY.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lorascope.cli.common import console, print_json, resolve_config, user_errors

STATES = ("skipped", "completed", "failed", "cancelled")


class StudyProgress:
    """Jobs done / running / pending and the names of the running jobs (plus the stage's own message)."""

    def __init__(self, bar: Progress, total: int) -> None:
        self.bar, self.total = bar, total
        self.counts = dict.fromkeys(STATES, 0)
        self.running: list[str] = []
        self.message = ""
        self.task = bar.add_task("starting", total=total)
        self.lines = not bar.console.is_terminal  # a redirected log gets one line per job instead of a live view
        self.started: dict[str, float] = {}

    def _line(self, text: str) -> None:
        import time

        self.bar.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, markup=False)

    def event(self, event: str, job, outcome) -> None:
        import time

        if self.lines and event == "started":
            self.started[job.name] = time.time()
            self._line(f"{'started':<10}{job.name} ({job.role})")
        elif self.lines and event in ("completed", "failed", "cancelled"):
            took = time.time() - self.started.get(job.name, time.time())
            self._line(f"{event:<10}{job.name}" + (f" in {took:.1f} s" if event != "cancelled" else ""))
        if event == "started":
            self.running.append(job.name)
        else:
            self.counts[event] += 1
            if job.name in self.running:
                self.running.remove(job.name)
            if event == "failed":
                error = (outcome or {}).get("error")
                self.bar.console.print(f"[bold red]failed[/] {job.name}: {error}", highlight=False)
        self.refresh()

    def stage_message(self, msg: str) -> None:
        self.message = msg
        self.refresh()

    def refresh(self) -> None:
        c = self.counts
        finished = sum(c.values())
        pending = self.total - finished - len(self.running)
        head = (f"done {c['completed']} · skipped {c['skipped']} · running {len(self.running)} · pending {pending}"
                + (f" · [red]failed {c['failed']} · cancelled {c['cancelled']}[/]" if c["failed"] else ""))
        now = ", ".join(self.running[:4]) + (" …" if len(self.running) > 4 else "")
        tail = f"\n  running: {now}" if now else ""
        tail += f"\n  {self.message}" if self.message and self.running else ""
        self.bar.update(self.task, completed=finished, description=head + tail)


def duration(seconds: float) -> str:
    """Seconds in the unit a reader wants: s below 90 s, minutes below 90 min, else hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _plan_tables(est: dict, dag) -> list[Table]:
    stages = Table(title="Stages (one H200 per GPU job)", show_lines=False)
    for col in ("stage", "jobs", "roles", "per job", "GPU-hours (est.)"):
        stages.add_column(col, justify="left" if col in ("stage", "roles") else "right")
    for kind, s in est["stages"].items():
        per = [j["seconds"] for j in est["jobs"] if j["kind"] == kind]
        span = duration(min(per)) + ("" if duration(min(per)) == duration(max(per)) else f"–{duration(max(per))}")
        hours = f"{s['gpu_hours']:.3g}" if s["gpus"] else "0 (CPU)"
        stages.add_row(kind, str(s["jobs"]), ", ".join(s["roles"]), span, hours)
    stages.add_row("[bold]total[/]", str(len(est["jobs"])), "", "", f"[bold]{est['total_gpu_hours']:.3g}[/]")
    gpus = Table(title=f"The whole study on 1, 2 and 3 GPUs (critical path {duration(est['critical_path_s'])})")
    for col in ("GPUs", "wall clock", "GPU-hours held", "GPU-hours busy", "utilisation"):
        gpus.add_column(col, justify="right")
    for g in est["gpu_counts"]:
        gpus.add_row(str(g["gpus"]), duration(g["wall_s"]), f"{g['gpu_hours_held']:.3g}", f"{g['gpu_hours_busy']:.3g}",
                     f"{g['utilisation']:.0%}")
    jobs = Table(title="Jobs (topological order)")
    for col in ("job", "role", "GPUs", "est.", "depends on", "key"):
        jobs.add_column(col, no_wrap=col in ("job", "key"), justify="right" if col == "est." else "left")
    for j in est["jobs"]:
        deps = j["deps"] if len(j["deps"]) <= 2 else [j["deps"][0], f"+{len(j['deps']) - 1} more"]
        jobs.add_row(j["name"], j["role"], f"{j['num_gpus']:g}", duration(j["seconds"]), ", ".join(deps) or "—",
                     dag[j["name"]].key[:10])
    return [stages, gpus, jobs]


def register(app: typer.Typer) -> None:
    overrides_arg = typer.Argument(None, help="Dotted KEY=VALUE overrides, e.g. data.max_length=256.")

    @app.command("run")
    @user_errors
    def run(config: Path = typer.Argument(..., help="Study YAML, e.g. configs/demo.yaml."),
            executor: Optional[str] = typer.Option(None, "--executor", help="local or ray (default: executor.kind)."),
            out: Optional[Path] = typer.Option(None, "--out", help="Results folder (default: output.root)."),
            parallel: Optional[int] = typer.Option(None, "--parallel", min=1,
                                                   help="Local executor: jobs at once (default: executor.parallel)."),
            data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data mirror folder."),
            overrides: Optional[list[str]] = overrides_arg):
        """Run the whole study as a DAG of jobs; skips what is done, resumes what is not; ends with the report."""
        from lorascope.results.config import check_same_training
        from lorascope.study.dag import job_record
        from lorascope.study.engine import run_study
        from lorascope.study.jobs import build_study_dag

        cfg = resolve_config(config, overrides)
        out_dir = out or Path(cfg.output.root)
        check_same_training(out_dir, cfg)  # before any job: an existing folder keeps its trained runs
        dag = build_study_dag(cfg, out_dir)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
            view = StudyProgress(bar, len(dag))
            outcome, summary = run_study(cfg, out_dir, executor=executor, parallel=parallel,
                                         data_dir=str(data_dir) if data_dir else None, on_event=view.event,
                                         progress=view.stage_message, dag=dag)
        skipped = outcome.count("skipped")
        if skipped:
            console.print(f"skipped {skipped} of {len(dag)} jobs already done (same key)")
        record = job_record(out_dir, "report") if "report" in dag.jobs else None
        report = ((record or {}).get("result") or {}).get("path")
        final = out_dir / report if report else summary
        console.print(f"[bold green]done[/] — summary: {summary}; results database: {out_dir / 'results.db'}"
                      + (f"; report: {final}" if report else ""))
        print(final)

    @app.command("plan")
    @user_errors
    def plan(config: Path = typer.Argument(..., help="Study YAML."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout."),
             overrides: Optional[list[str]] = overrides_arg):
        """The study's jobs per stage, their roles and dependencies, the estimated time of each, and the GPU-hours
        and wall clock of the whole study on 1, 2 and 3 GPUs (cost model: lorascope/study/plan_assumptions.py)."""
        from lorascope.study.jobs import build_study_dag
        from lorascope.study.plan import estimate

        cfg = resolve_config(config, overrides)
        dag = build_study_dag(cfg, Path(cfg.output.root))
        est = estimate(cfg, dag)
        if as_json:
            print_json(est)
            return
        out = Console()
        for table in _plan_tables(est, dag):
            out.print(table)
        out.print("[bold]Cost model assumptions[/] (lorascope/study/plan_assumptions.py):")
        for line in est["assumptions"]:
            out.print(f"  - {line}", highlight=False)
