"""Lightweight stand-ins for the study's job functions (sleep + write a file), for executor tests.

``fake_run`` behaves like a final training run as far as the engine can tell: it writes
``fake/<task>/runs/<name>/results.json`` (ingested into the store's runs/metrics tables) and returns its
``run_dir``. Its output digest depends only on its name, its params and its dependencies' digests, so
serial, parallel and distributed executions must produce identical files. Every execution appends a line to
``executions/<name>`` (one file per job, so concurrent writers never interleave), which lets a test count
attempts separately from results.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from lorascope.io import atomic_write_json
from lorascope.study.runner import JobContext, node_name


def fake_run(ctx: JobContext, *, task: str = "t", value: int = 0, sleep: float = 0.0, fail: bool = False,
             **_: object) -> dict:
    name = ctx.job.name
    log = ctx.out_dir / "executions" / name
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"{node_name()}\n")
    time.sleep(sleep)
    if fail:
        raise RuntimeError(f"boom in {name}")
    deps = [ctx.dep_result(d)["digest"] for d in ctx.job.deps]
    digest = hashlib.sha256(json.dumps([name, task, value, deps]).encode()).hexdigest()[:16]
    run_dir = f"fake/{task}/runs/{name}"
    atomic_write_json(ctx.out_dir / run_dir / "results.json",
                      {"name": name, "run": {"task": task, "method": "fake", "lr": 0.1, "replicate": value,
                                             "hpo": False},
                       "primary": "accuracy", "validation_best": float(value), "test": {"accuracy": float(value)},
                       "digest": digest})
    return {"digest": digest, "run_dir": run_dir, "node": node_name(), "pid": os.getpid()}
