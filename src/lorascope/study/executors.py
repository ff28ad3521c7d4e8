"""Executing a study DAG: the scheduling loop shared by every backend (local inline, local processes, Ray).

The loop owns the study-level semantics, so they are the same everywhere:
- jobs already done (job manifest completed with their key) are skipped up front and never submitted;
- a job is submitted once all its dependencies completed, in topological order (deterministic);
- a failed job cancels every job downstream of it (e.g. a failed sanity gate: no HPO, no final run) while
  independent jobs go on, so a rerun has less to do; the study then fails with every error listed.

A backend only starts jobs and reports finished ones; ``on_event(event, job, outcome)`` tells the driver
(store, progress display) what happened: ``skipped``, ``started``, ``completed``, ``failed``, ``cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from lorascope.errors import LorascopeError
from lorascope.study.dag import Dag, Job, is_done, job_record

EventFn = Callable[[str, Job, dict | None], None]
FINISHED_OK = ("completed", "skipped")


class Backend(Protocol):
    def can_start(self, job: Job) -> bool: ...

    def submit(self, job: Job) -> None: ...

    def wait(self) -> list[dict]:
        """Block until at least one submitted job finished; return their outcomes (``runner.run_job``)."""
        ...

    def close(self) -> None: ...


class StudyFailed(LorascopeError):
    """Some jobs failed; their dependents were cancelled. The message lists every failure."""


@dataclass
class StudyOutcome:
    status: dict[str, str] = field(default_factory=dict)  # job name → skipped/completed/failed/cancelled
    outcomes: dict[str, dict] = field(default_factory=dict)
    ingest_errors: list[str] = field(default_factory=list)  # filled by the driver's recorder (engine.py)

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.status.items() if s == "failed"]

    def error_message(self) -> str:
        lines = [f"{len(self.failed)} job(s) failed; {self.count('cancelled')} dependent job(s) cancelled:"]
        for name in self.failed:
            lines.append(f"  {name}: {self.outcomes[name].get('error')}")
        lines += [f"  {msg}" for msg in self.ingest_errors]
        return "\n".join(lines)


def _skipped_outcome(out_dir: Path, job: Job) -> dict:
    rec = job_record(out_dir, job.name) or {}
    return {"name": job.name, "key": job.key, "kind": job.kind, "status": "completed", "skipped": True,
            "node": rec.get("node"), "attempt": rec.get("attempt"), "started": None, "finished": None,
            "result": rec.get("result"), "error": None, "traceback": None}


def execute(dag: Dag, backend: Backend, out_dir: str | Path, *, on_event: EventFn | None = None) -> StudyOutcome:
    """Run every job of ``dag`` that is not done yet; never raises for a job's failure (see ``StudyOutcome``)."""
    emit = on_event or (lambda event, job, outcome: None)
    out_dir = Path(out_dir)
    res = StudyOutcome()
    order = dag.topological()
    for job in order:
        if is_done(out_dir, job):
            res.status[job.name] = "skipped"
            res.outcomes[job.name] = _skipped_outcome(out_dir, job)
            emit("skipped", job, res.outcomes[job.name])
    pending = [j.name for j in order if j.name not in res.status]
    running: set[str] = set()
    try:
        while pending or running:
            for name in list(pending):
                job = dag[name]
                if all(res.status.get(d) in FINISHED_OK for d in job.deps) and backend.can_start(job):
                    backend.submit(job)
                    pending.remove(name)
                    running.add(name)
                    res.status[name] = "running"
                    emit("started", job, None)
            if not running:
                break  # what is left waits on failed or cancelled jobs: nothing can start
            for outcome in backend.wait():
                name = outcome["name"]
                running.discard(name)
                res.outcomes[name] = outcome
                ok = outcome["status"] == "completed"
                res.status[name] = "completed" if ok else "failed"
                emit(res.status[name], dag[name], outcome)
                if not ok:
                    _cancel_downstream(dag, name, pending, res, emit)
    finally:
        backend.close()
    for name in pending:  # unreachable in a consistent DAG; kept so no job is ever silently dropped
        res.status[name] = "cancelled"
    return res


def _cancel_downstream(dag: Dag, failed: str, pending: list[str], res: StudyOutcome, emit: EventFn) -> None:
    for name in [n for n in pending if n in dag.descendants(failed)]:
        pending.remove(name)
        res.status[name] = "cancelled"
        res.outcomes[name] = {"name": name, "key": dag[name].key, "status": "cancelled",
                              "error": f"cancelled: {failed} failed"}
        emit("cancelled", dag[name], res.outcomes[name])
