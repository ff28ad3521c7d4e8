"""Local backends: jobs in this process (``parallel`` = 1), or in ``parallel`` spawned worker processes.

Spawned workers, not forked: a fork of a process that already ran torch (threads, CUDA) is unsafe. Each
worker limits torch to ``cores // parallel`` threads, so two jobs on two cores do not oversubscribe.
GPU jobs (``num_gpus`` > 0) run one per device when CUDA devices exist: the scheduler hands each a free
device index and the worker makes it current. On a machine without GPUs every job is a CPU job.

Results do not depend on the parallelism: a job reads only its inputs (config, data, its dependencies'
outputs) and its own seeds, never another job's in-flight state. (Caveat, docs/cluster.md: float sums in
CPU kernels may depend on the thread count, so bit-identical *training* needs the same thread count.)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from pathlib import Path
from typing import Callable

from lorascope.config.schema import StudyConfig
from lorascope.study.dag import Job
from lorascope.study.runner import run_job


def die_with_parent(parent: int) -> None:
    """A worker must not outlive its driver: a SIGKILLed driver left its workers running jobs into a folder no
    one watches. Linux: the kernel sends SIGKILL to this process when the parent dies (PR_SET_PDEATHSIG); and
    everywhere a watchdog thread exits the process once the parent pid changes (re-parented to init)."""
    import ctypes
    import signal
    import threading
    import time

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="lorascope-parent-watchdog", daemon=True).start()


def _init_worker(threads: int, parent: int) -> None:
    from lorascope.logs import quiet_third_party

    die_with_parent(parent)
    quiet_third_party()
    # Before torch is imported in this fresh (spawned) process, so its thread pools start at this size.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _failed(job: Job, error: str) -> dict:
    return {"name": job.name, "key": job.key, "kind": job.kind, "status": "failed", "skipped": False, "node": None,
            "attempt": None, "started": None, "finished": None, "result": None, "error": error, "traceback": None}


def cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class InlineBackend:
    """One job at a time, in this process: stage progress messages reach the display directly."""

    def __init__(self, cfg: StudyConfig, out_dir: Path, *, data_dir: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.cfg, self.out_dir, self.data_dir, self.progress = cfg, out_dir, data_dir, progress
        self.queue: list[Job] = []

    def can_start(self, job: Job) -> bool:
        return not self.queue

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def wait(self) -> list[dict]:
        job = self.queue.pop(0)
        return [run_job(job, self.cfg, self.out_dir, data_dir=self.data_dir, progress=self.progress)]

    def close(self) -> None:
        self.queue.clear()


class ProcessBackend:
    """Up to ``parallel`` jobs at once in spawned processes; GPU jobs also need a free device."""

    def __init__(self, cfg: StudyConfig, out_dir: Path, parallel: int, *, data_dir: str | None = None,
                 n_gpus: int | None = None, threads: int | None = None) -> None:
        self.cfg_json = cfg.model_dump(mode="json")
        self.out_dir, self.data_dir, self.parallel = str(out_dir), data_dir, parallel
        self.n_gpus = cuda_devices() if n_gpus is None else n_gpus
        threads = threads or max(1, (os.cpu_count() or 1) // parallel)
        self.threads = threads
        self.pool = self._new_pool()
        self.running: dict[cf.Future, tuple[Job, int | None]] = {}
        self.free_gpus = list(range(self.n_gpus))

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.parallel, mp_context=mp.get_context("spawn"),
                                      initializer=_init_worker, initargs=(self.threads, os.getpid()))

    def _needs_gpu(self, job: Job) -> bool:
        return job.num_gpus > 0 and self.n_gpus > 0

    def can_start(self, job: Job) -> bool:
        return len(self.running) < self.parallel and (not self._needs_gpu(job) or bool(self.free_gpus))

    def submit(self, job: Job) -> None:
        gpu = self.free_gpus.pop(0) if self._needs_gpu(job) else None
        fut = self.pool.submit(run_job, job.to_dict(), self.cfg_json, self.out_dir, data_dir=self.data_dir, gpu=gpu)
        self.running[fut] = (job, gpu)

    def wait(self) -> list[dict]:
        done, _ = cf.wait(list(self.running), return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for fut in done:
            job, gpu = self.running.pop(fut)
            if gpu is not None:
                self.free_gpus.append(gpu)
            try:
                outcomes.append(fut.result())
            except Exception as exc:  # noqa: BLE001 — a worker that died (OOM kill, segfault): the job failed
                outcomes.append(_failed(job, f"worker process died: {type(exc).__name__}: {exc}"))
                if isinstance(exc, cf.process.BrokenProcessPool) and not self.running:
                    self.pool = self._new_pool()  # a dead worker breaks the whole pool; later jobs need a new one
        return outcomes

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def local_backend(cfg: StudyConfig, out_dir: Path, *, parallel: int | None = None, data_dir: str | None = None,
                  progress: Callable[[str], None] | None = None):
    parallel = parallel or cfg.executor.parallel
    if parallel <= 1:
        return InlineBackend(cfg, out_dir, data_dir=data_dir, progress=progress)
    return ProcessBackend(cfg, out_dir, parallel, data_dir=data_dir)
