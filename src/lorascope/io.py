"""Atomic file writes: a result file either exists complete or not at all (temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask, read without changing it (Linux ≥ 4.7 shows it in /proc); elsewhere by the classic
    set-and-restore, which is not thread-safe but leaves the mask as it found it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; a result file gets the mode open() would give it (0666 & ~umask), so
        # colleagues on a shared results folder can read it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _check_finite(obj: Any, where: str = "$") -> None:
    """NaN/inf must never become a recorded number: fail loudly, naming where it is."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number {obj!r} at {where}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def atomic_write_json(path: str | Path, obj: Any, *, allow_nan: bool = False) -> Path:
    if not allow_nan:
        _check_finite(obj)
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=allow_nan, default=str) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty sibling temp folder to fill; on success it replaces ``path`` (a crash leaves the old one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def read_json(path: str | Path) -> Any:
    """A JSON result file's content; a missing or malformed file is a ``DataError`` naming it."""
    from lorascope.errors import DataError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON ({exc})", path=str(path)) from None
