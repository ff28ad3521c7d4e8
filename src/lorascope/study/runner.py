"""Run one job wherever it lands (this process, a spawned worker, a Ray worker): the same code path for all.

``run_job`` is the only thing executors call. It skips a job that is already done (the driver checks too;
this second check makes a retried or duplicated submission harmless), wraps the job function in a job
manifest (``running`` → ``completed`` / ``failed``, identity = the job key, attempt count, node), and never
raises for a failure of the job itself: it returns an outcome dict, so errors cross process boundaries as
plain text instead of exceptions that may not unpickle.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lorascope.config.schema import StudyConfig
from lorascope.manifest import run_manifest
from lorascope.study.dag import Job, is_done, job_dir, job_record


@dataclass
class JobContext:
    """What a job function gets besides its params: the config, the artifact root, and its dependencies."""

    job: Job
    cfg: StudyConfig
    out_dir: Path
    data_dir: str | None = None
    progress: Callable[[str], None] | None = None

    def step(self, msg: str) -> None:
        """A progress message for the display (nothing when the job runs without one)."""
        if self.progress is not None:
            self.progress(msg)

    def dep_result(self, name: str) -> dict:
        """The summary a dependency returned (from its job manifest on the artifact root)."""
        rec = job_record(self.out_dir, name)
        if rec is None or rec.get("status") != "completed":
            raise RuntimeError(f"job {self.job.name}: dependency {name} has no completed record")
        return rec.get("result") or {}


def stage_view(job: Job, cfg: StudyConfig):
    """The config as the job's stage may read it (``stage.ConfigView``); a job of no declared stage sees it all."""
    from lorascope.study.stage import ConfigView
    from lorascope.study.stages import BY_NAME

    stage = BY_NAME.get(job.kind)
    return cfg if stage is None else ConfigView(cfg, stage.reads, stage.name)


def resolve(fn: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function (imported lazily, where the job runs)."""
    module, _, attr = fn.partition(":")
    return getattr(importlib.import_module(module), attr)


def node_name() -> str:
    """The Ray node id inside a Ray worker, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            return ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 — a best-effort label, never a reason to fail the job
            pass
    return socket.gethostname()


def gpu_ids() -> list[str]:
    """The GPUs this job may use (recorded in its manifest): Ray's assignment in a Ray task, else
    CUDA_VISIBLE_DEVICES."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            return [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # noqa: BLE001 — a best-effort label, never a reason to fail the job
            pass
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g for g in env.split(",") if g] if env else []


def _outcome(
    job: Job,
    status: str,
    *,
    node: str,
    attempt: int | None,
    started: float | None = None,
    result: dict | None = None,
    error: str | None = None,
    tb: str | None = None,
    skipped: bool = False,
) -> dict:
    return {
        "name": job.name,
        "key": job.key,
        "kind": job.kind,
        "status": status,
        "skipped": skipped,
        "node": node,
        "attempt": attempt,
        "started": started,
        "finished": time.time(),
        "result": result,
        "error": error,
        "traceback": tb,
    }


def run_job(
    job: Job | dict,
    cfg: StudyConfig | dict,
    out_dir: str | Path,
    *,
    data_dir: str | None = None,
    gpu: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run ``job`` unless done; returns an outcome dict (status ``completed`` or ``failed``)."""
    job = Job.from_dict(job) if isinstance(job, dict) else job
    cfg = StudyConfig.model_validate(cfg) if isinstance(cfg, dict) else cfg
    out_dir = Path(out_dir)
    node = node_name()
    if is_done(out_dir, job):
        rec = job_record(out_dir, job.name) or {}
        return _outcome(
            job,
            "completed",
            node=rec.get("node", node),
            attempt=rec.get("attempt"),
            result=rec.get("result"),
            skipped=True,
        )
    prev = job_record(out_dir, job.name)
    # A previous attempt of this same job (killed with its node, or failed) counts; another key's does not.
    attempt = int(prev.get("attempt") or 0) + 1 if prev and prev.get("identity") == job.key else 1
    started = time.time()
    try:
        if gpu is not None:
            import torch

            torch.cuda.set_device(gpu)  # stages use torch.device("cuda"), i.e. the current device
        with run_manifest(
            job_dir(out_dir, job.name),
            cfg,
            command=f"job {job.name}",
            extra={"identity": job.key, "job": job.to_dict(), "attempt": attempt, "node": node, "gpus": gpu_ids()},
        ) as man:
            ctx = JobContext(job, stage_view(job, cfg), out_dir, data_dir, progress)
            result = resolve(job.fn)(ctx, **job.params) or {}
            man["result"] = result
    except Exception as exc:  # noqa: BLE001 — reported as the job's failure; the manifest says failed
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return _outcome(
            job, "failed", node=node, attempt=attempt, started=started, error=error, tb=traceback.format_exc()
        )
    return _outcome(job, "completed", node=node, attempt=attempt, started=started, result=result)
