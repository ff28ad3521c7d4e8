"""One writer per results folder: ``lorascope run`` holds an exclusive lock on ``<out>/.lorascope.lock`` for
its whole run.

Two drivers on one folder both executed every job (each step twice in ``metrics.jsonl``, four Optuna trials
for a two-point grid). The lock is an OS file lock (``fcntl.flock``) on the lock file, so the kernel releases
it when its holder dies, however it dies; the file's content names the holder (host, pid, start time, command)
for the error message. On taking the lock:

- held by a live process → ``FolderLocked`` (a clear error, exit code 3), nothing written;
- free, but the file names another holder → that holder died (or, on a file system without cross-host locks,
  ran on another host and is gone): the lock is taken over, with a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

from lorascope.errors import LorascopeError
from lorascope.results import layout

LOCK_FILE = layout.LOCK


class FolderLocked(LorascopeError):
    """Another ``lorascope run`` is writing this results folder."""

    exit_code = 3


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive_lorascope(pid: int) -> bool:
    """A live process with that pid that is a lorascope run (a recycled pid of another program is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        return b"lorascope" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: assume it is


def _describe(h: dict) -> str:
    return (f"pid {h.get('pid', '?')} on host {h.get('host', '?')}, running {h.get('command', 'lorascope run')!r} "
            f"since {h.get('started', '?')}")


@contextlib.contextmanager
def folder_lock(out_dir: str | Path, command: str, note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the folder's lock for the body; raise ``FolderLocked`` if another live process holds it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLocked(f"{out} is in use by another lorascope run ({_describe(_holder(path))}); wait for it "
                               f"to finish or stop it. Nothing was written.") from None
        previous = _holder(path)
        host = socket.gethostname()
        if previous.get("pid") and (previous.get("host") != host or previous["pid"] != os.getpid()):
            if (
                previous.get("host") == host
                and _alive_lorascope(int(previous["pid"]))
                and previous.get("released") is None
            ):
                # the flock is ours, yet a live process on this host claims the folder: a file system that
                # ignores flock (some network mounts). Refuse rather than risk two writers.
                raise FolderLocked(
                    f"{out} is claimed by a live process ({_describe(previous)}) and this file system "
                    "did not enforce the lock; stop that process first. Nothing was written."
                )
            if previous.get("released") is None and note is not None:
                note(
                    f"taking over the lock of {out} from a run that ended without releasing it ({_describe(previous)})"
                )
        me = {
            "host": host,
            "pid": os.getpid(),
            "command": command,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "released": None,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        try:
            yield path
        finally:
            me["released"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
