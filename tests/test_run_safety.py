"""One writer per results folder, and workers that die with their driver (issue 13 item 5); the root manifest's
invocation history (item 6)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from lorascope.config import load_config
from lorascope.study.lock import LOCK_FILE, FolderLocked, folder_lock

REPO = Path(__file__).resolve().parents[1]


def test_a_live_holder_refuses_a_second_writer(tmp_path):
    with folder_lock(tmp_path, "first"):
        with pytest.raises(FolderLocked, match=rf"in use by another lorascope run \(pid {os.getpid()} on host"):
            with folder_lock(tmp_path, "second"):
                pass
    with folder_lock(tmp_path, "third"):  # released on exit: free again
        pass
    assert json.loads((tmp_path / LOCK_FILE).read_text())["released"] is not None


def test_a_dead_holders_lock_is_taken_over_with_a_message(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x",
                                                  "command": "lorascope run", "released": None}))
    notes: list[str] = []
    with folder_lock(tmp_path, "me", note=notes.append):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and "taking over" in notes[0] and str(dead.pid) in notes[0]


def test_the_lock_dies_with_its_holder(tmp_path):
    """A SIGKILLed holder cannot release anything: the kernel drops its flock, so the next run proceeds."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from lorascope.study.lock import folder_lock
        with folder_lock({str(tmp_path)!r}, "holder"):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderLocked):
        with folder_lock(tmp_path, "me"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    notes: list[str] = []
    with folder_lock(tmp_path, "me", note=notes.append):
        pass
    assert notes and "taking over" in notes[0]


DRIVER = """
import sys
from pathlib import Path
from lorascope.config import load_config
from lorascope.study.dag import Dag
from lorascope.study.engine import run_dag
from lorascope.study.executor_local import ProcessBackend
cfg = load_config(sys.argv[1])
dag = Dag()
for name in ("a", "b"):
    dag.add(name, "train", "tests.fake_jobs:fake_run", params={"task": "t", "value": 1, "sleep": 120})
out = Path(sys.argv[2])
run_dag(cfg, dag, out, ProcessBackend(cfg, out, 2, n_gpus=0, threads=1))
"""


def test_local_workers_die_with_their_driver(tmp_path):
    """A SIGKILLed driver's workers kept running jobs (and never exited): they must die with it."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO / "configs" / "demo.yaml"), str(tmp_path)],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"})
    deadline = time.time() + 120
    workers: list[psutil.Process] = []
    while time.time() < deadline:  # wait until both jobs run in worker processes
        if len(list((tmp_path / "executions").glob("*"))) == 2:
            workers = [c for c in psutil.Process(driver.pid).children(recursive=True)
                       if "multiprocessing" in " ".join(c.cmdline())]
            break
        time.sleep(0.1)
    assert workers, "the jobs never started"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:  # do not leave them behind whatever the outcome
        p.kill()
    assert not alive, f"{len(alive)} worker(s) outlived the driver"


def test_invocation_history_keeps_every_run(tmp_path):
    from lorascope.manifest import study_invocation

    cfg = load_config(REPO / "configs" / "demo.yaml")
    with study_invocation(tmp_path, cfg, command="run") as first:
        first["jobs"] = {"completed": 30, "skipped": 0, "failed": 0, "cancelled": 0}
    with pytest.raises(RuntimeError):
        with study_invocation(tmp_path, cfg.model_copy(update={"name": "renamed"}), command="run") as second:
            second["jobs"] = {"completed": 0, "skipped": 30, "failed": 0, "cancelled": 0}
            raise RuntimeError("boom")
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert [i["status"] for i in man["invocations"]] == ["completed", "failed"] and man["status"] == "failed"
    assert man["invocations"][0]["jobs"]["completed"] == 30 and man["invocations"][0]["finished"]
    assert man["invocations"][1]["config_changes"] == [{"key": "name", "before": "demo", "now": "renamed"}]
    assert "boom" in man["invocations"][1]["error"]


def test_a_folder_without_a_study_manifest_falls_back_once(tmp_path):
    from lorascope.manifest import study_invocation
    from lorascope.results.config import folder_config

    notes, calls = [], []

    def fallback():
        calls.append(1)
        return load_config(None, ["name=fallback"])

    cfg = folder_config(tmp_path, ["stats.confidence=0.9"], note=notes.append, fallback=fallback)
    assert (cfg.name, cfg.stats.confidence, len(calls)) == ("fallback", 0.9, 1)
    assert len(notes) == 1 and "has no study manifest" in notes[0]
    with study_invocation(tmp_path, load_config(None, ["name=recorded"]), command="run"):
        pass
    cfg = folder_config(tmp_path, note=notes.append, fallback=fallback)
    assert (cfg.name, len(calls), len(notes)) == ("recorded", 1, 1)  # the folder's own config; no fallback, no note
