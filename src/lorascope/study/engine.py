"""``run_study``: build the DAG, execute it locally or on Ray, record everything in the store, write the summary.

The driver is the only writer of ``results.db``: every outcome (from this process, a worker process or a
Ray task) comes back here and is recorded and ingested by ``record_outcome``. A study with a failed job
raises ``StudyFailed`` (after independent jobs finished) and its top-level manifest says ``failed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lorascope.config.schema import StudyConfig
from lorascope.errors import LorascopeError
from lorascope.manifest import study_invocation
from lorascope.results import layout
from lorascope.study.dag import Dag, Job
from lorascope.study.executors import EventFn, StudyFailed, StudyOutcome, execute
from lorascope.study.ingest import ingest_job
from lorascope.study.store import ResultsStore


def make_backend(cfg: StudyConfig, out_dir: Path, *, kind: str | None = None, parallel: int | None = None,
                 data_dir: str | None = None, progress: Callable[[str], None] | None = None):
    kind = kind or cfg.executor.kind
    if kind == "local":
        from lorascope.study.executor_local import local_backend

        return local_backend(cfg, out_dir, parallel=parallel, data_dir=data_dir, progress=progress)
    if kind == "ray":
        from lorascope.study.executor_ray import RayBackend

        return RayBackend(cfg, out_dir, data_dir=data_dir)
    raise LorascopeError(f"unknown executor {kind!r}: expected local or ray")


def recorder(store: ResultsStore, out_dir: Path, on_event: EventFn | None = None,
             ingest_errors: list[str] | None = None) -> EventFn:
    """An ``on_event`` that records each job's state in the store (and ingests outputs), then forwards.

    An output that cannot be ingested is recorded (status ``ingest_failed``) and listed in ``ingest_errors``
    rather than raised: the driver must keep collecting the other jobs' outcomes."""

    def ingest(job: Job, outcome: dict) -> None:
        try:
            ingest_job(store, out_dir, job, outcome)
        except Exception as exc:  # noqa: BLE001 — reported at the end of the study
            msg = f"{job.name}: outputs could not be ingested: {type(exc).__name__}: {exc}"
            store.record_job(job, "ingest_failed", {**outcome, "error": msg})
            if ingest_errors is not None:
                ingest_errors.append(msg)

    def handle(event: str, job: Job, outcome: dict | None) -> None:
        if event == "started":
            store.record_job(job, "running")
        elif event == "skipped":
            if store.job_status(job.key) != "completed":  # e.g. a rebuilt database: ingest the old outputs
                ingest(job, outcome or {"status": "completed"})
        elif event == "completed":
            ingest(job, outcome or {})
        else:  # failed, cancelled
            store.record_job(job, event, outcome)
        if on_event:
            on_event(event, job, outcome)

    return handle


def run_dag(cfg: StudyConfig, dag: Dag, out_dir: str | Path, backend, *, on_event: EventFn | None = None,
            store: ResultsStore | None = None) -> StudyOutcome:
    """Execute ``dag`` with ``backend``, recording into ``store`` (default ``<out>/results.db``)."""
    out_dir = Path(out_dir)
    own = store is None
    store = store or ResultsStore.for_study(out_dir)
    errors: list[str] = []
    try:
        outcome = execute(dag, backend, out_dir, on_event=recorder(store, out_dir, on_event, errors))
        outcome.ingest_errors = errors
        return outcome
    finally:
        if own:
            store.close()


def _run_recorded(cfg: StudyConfig, dag: Dag, out_dir: Path, backend, entry: dict, *,
                  on_event: EventFn | None = None, hint: str = "") -> StudyOutcome:
    """Run ``dag`` inside an invocation: its job counts go into the invocation's ``entry``; failures raise."""
    outcome = run_dag(cfg, dag, out_dir, backend, on_event=on_event)
    entry["jobs"] = {s: outcome.count(s) for s in ("skipped", "completed", "failed", "cancelled")}
    if outcome.failed or outcome.ingest_errors:
        raise StudyFailed(outcome.error_message() + hint)
    return outcome


def _rerender_report(cfg: StudyConfig, out_dir: Path, outcome: StudyOutcome) -> None:
    """The report job ran inside the invocation, before it was recorded as completed: render it once more now, so
    the report a reader opens never shows a finished invocation as "running" (``run`` and ``lorascope report``)."""
    if "report" in outcome.status and outcome.count("completed"):
        from lorascope.study.stages.report import render

        render(out_dir, cfg)


def run_study(cfg: StudyConfig, out_dir: str | Path, *, executor: str | None = None, parallel: int | None = None,
              data_dir: str | None = None, on_event: EventFn | None = None,
              progress: Callable[[str], None] | None = None, dag: Dag | None = None) -> tuple[StudyOutcome, Path]:
    """The whole study; returns the outcome and the path of ``summary.md``. Raises ``StudyFailed`` on failures."""
    from lorascope.results.config import check_same_training
    from lorascope.study.jobs import build_study_dag
    from lorascope.study.lock import folder_lock

    out_dir = Path(out_dir)
    kind = executor or cfg.executor.kind
    with folder_lock(out_dir, f"lorascope run ({kind})", note=progress):
        check_same_training(out_dir, cfg)  # under the lock: the folder's config cannot change meanwhile
        dag = dag or build_study_dag(cfg, out_dir)
        with study_invocation(out_dir, cfg, command="run", extra={"executor": kind, "jobs": len(dag)}) as entry:
            backend = make_backend(cfg, out_dir, kind=kind, parallel=parallel, data_dir=data_dir, progress=progress)
            outcome = _run_recorded(cfg, dag, out_dir, backend, entry, on_event=on_event,
                                    hint=f"\njob records: {layout.jobs_dir(out_dir)}/<job>/manifest.json")
        _rerender_report(cfg, out_dir, outcome)
    return outcome, out_dir / layout.SUMMARY


def run_stage_jobs(
    cfg: StudyConfig,
    out_dir: str | Path,
    stage: str,
    *,
    tasks: list[str] | None = None,
    data_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> list[dict]:
    """Run the jobs of one stage of the study in an existing results folder (``lorascope drift/weights/
    serve-bench/stats/report``): the same jobs, keys and outputs as ``lorascope run`` — done ones are skipped —
    under the folder's lock, recorded in its invocation history and ``results.db``. Their inputs must exist
    (the stage says which are missing); the jobs they depend on are not run. ``force``: run them even when done
    (the report: rendering is cheap, and the files it reads may have changed under the same keys)."""
    from lorascope.results.config import check_same_training
    from lorascope.study.executor_local import InlineBackend
    from lorascope.study.jobs import build_study_dag
    from lorascope.study.lock import folder_lock

    out_dir = Path(out_dir)
    with folder_lock(out_dir, f"lorascope {stage}", note=progress):
        check_same_training(out_dir, cfg)
        full = build_study_dag(cfg, out_dir)
        chosen = [j for j in full.by_kind().get(stage, []) if tasks is None or j.params.get("task") in tasks]
        if not chosen:
            raise LorascopeError(f"the study has no {stage} job" + (f" for {', '.join(tasks)}" if tasks else ""))
        with study_invocation(out_dir, cfg, command=stage, extra={"jobs": len(chosen)},
                              defines_study=False) as entry:
            sub = Dag()
            for job in chosen:  # dependencies are treated as done: the stage checks its inputs itself
                sub.jobs[job.name] = Job(**{**job.__dict__, "deps": ()})
                if force:
                    (layout.job_dir(out_dir, job.name) / layout.MANIFEST).unlink(missing_ok=True)
            outcome = _run_recorded(cfg, sub, out_dir, InlineBackend(cfg, out_dir, data_dir=data_dir,
                                                                     progress=progress), entry)
        _rerender_report(cfg, out_dir, outcome)
    return [outcome.outcomes[j.name] for j in chosen]
