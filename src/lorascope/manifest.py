"""Run manifests (§13): every output directory records how its contents were made.

``run_manifest(out_dir, config, ...)`` is a context manager: it writes ``manifest.json`` with status
``running`` on entry and ``completed`` (or ``failed`` with the error) on exit, so a directory whose
manifest does not say ``completed`` never counts as a result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

from lorascope import __version__
from lorascope.config.load import config_hash
from lorascope.config.schema import StudyConfig
from lorascope.io import atomic_write_json

MANIFEST = "manifest.json"
PACKAGES = (
    "torch", "transformers", "peft", "datasets", "tokenizers", "accelerate", "safetensors", "numpy", "scipy",
    "scikit-learn", "statsmodels", "pandas", "matplotlib", "pydantic", "optuna", "wandb", "ray", "vllm",
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_info() -> dict:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    info: dict = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                           "count": torch.cuda.device_count()}
            drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            info["driver"] = drv.stdout.strip().splitlines()[0] if drv.returncode == 0 and drv.stdout else None
    except (ImportError, OSError, subprocess.TimeoutExpired):
        pass
    return info


def build_manifest(config: StudyConfig | None, *, command: str, seeds: dict | None = None,
                   data_files: list | None = None, extra: dict | None = None) -> dict:
    cfg = config.model_dump(mode="json") if config is not None else None
    return {
        "lorascope_version": __version__,
        "command": command,
        "status": "running",
        "started": _now(),
        "finished": None,
        "config": cfg,
        "config_hash": config_hash(cfg) if cfg is not None else None,
        "seeds": seeds if seeds is not None else (config.seeds.model_dump() if config is not None else {}),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "hardware": hardware_info(),
        "git": git_info(),
        "data_files": data_files or [],
        **(extra or {}),
    }


def read_manifest(folder: str | Path) -> Any | None:
    """The JSON in ``folder``'s manifest; None when it is absent or unreadable (not valid JSON): such a folder
    counts as having no record, never as a result."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _study_root(out: Path) -> tuple[Path, dict] | None:
    """The nearest enclosing study folder (its manifest has ``invocations``) above ``out``, and its manifest."""
    for folder in list(out.resolve().parents)[:4]:
        man = read_manifest(folder)
        if isinstance(man, dict) and "invocations" in man:
            return folder, man
    return None


def differences_from_study(out: Path, config: StudyConfig | None) -> list[dict] | None:
    """How this folder's config differs from its study's (e.g. ``lorascope stats DIR stats.confidence=0.9``):
    ``[{"key", "study", "here"}]``; None when the folder is not inside a study folder."""
    from lorascope.config.load import config_diff

    found = _study_root(out)
    if found is None or config is None or not isinstance(found[1].get("config"), dict):
        return None
    here = config.model_dump(mode="json")
    return [{"key": k, "study": a, "here": b} for k, a, b in config_diff(found[1]["config"], here)
            if not k.startswith("output.")]


@contextlib.contextmanager
def run_manifest(out_dir: str | Path, config: StudyConfig | None, *, command: str, seeds: dict | None = None,
                 data_files: list | None = None, extra: dict | None = None) -> Iterator[dict]:
    """Write the manifest as ``running``; the body may add keys (e.g. ``data_files``) to the yielded dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(config, command=command, seeds=seeds, data_files=data_files, extra=extra)
    diff = differences_from_study(out, config)
    if diff:
        manifest["config_vs_study"] = diff
    atomic_write_json(out / MANIFEST, manifest)
    try:
        yield manifest
    except BaseException as exc:
        manifest.update(status="failed", finished=_now(),
                        error="".join(traceback.format_exception_only(type(exc), exc)).strip())
        atomic_write_json(out / MANIFEST, manifest)
        raise
    manifest.update(status="completed", finished=_now())
    atomic_write_json(out / MANIFEST, manifest)


def is_completed(out_dir: str | Path, config: StudyConfig | None = None, identity: str | None = None) -> bool:
    """True when the folder's manifest says ``completed`` (and, given ``config`` / ``identity``, for those)."""
    man = read_manifest(out_dir)
    if man is None:
        return False
    if man.get("status") != "completed":
        return False
    if identity is not None and man.get("identity") != identity:
        return False
    return config is None or man.get("config_hash") == config_hash(config.model_dump(mode="json"))


@contextlib.contextmanager
def study_invocation(out_dir: str | Path, config: StudyConfig, *, command: str, extra: dict | None = None,
                     defines_study: bool = True) -> Iterator[dict]:
    """The study folder's root manifest across invocations of ``lorascope run``: the resolved config, versions
    and hardware of the latest one, and ``invocations`` — every run so far, each with its start, end, status,
    the jobs it ran and skipped, and how its config differed from the previous invocation's — so a no-op rerun adds
    a line instead of erasing the record of the run that produced the results. Yields the new invocation's
    entry; the body fills ``jobs``. The root's ``status`` is the latest invocation's. ``defines_study=False`` (one
    stage re-run on the folder, e.g. ``lorascope stats DIR stats.confidence=0.9``) records the invocation but keeps
    the study's own config, versions and status at the top: an analysis override does not redefine the study."""
    import socket

    from lorascope.config.load import config_diff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(out)
    if previous is None:
        previous = {}
    history = list(previous.get("invocations") or [])
    if previous and not history and previous.get("started"):  # a root manifest from before the history existed
        history.append({k: previous.get(k) for k in ("command", "started", "finished", "status")})
    fresh = build_manifest(config, command=command, extra=extra)
    manifest = fresh if defines_study or not previous else {**previous}
    before = previous.get("config") if isinstance(previous.get("config"), dict) else fresh["config"]
    entry = {"command": command, "started": fresh["started"], "finished": None, "status": "running",
             "host": socket.gethostname(), "pid": os.getpid(), "config_hash": fresh["config_hash"],
             "git_commit": fresh["git"].get("commit"), "jobs": None,
             "config_changes": [{"key": k, "before": a, "now": b} for k, a, b in config_diff(before, fresh["config"])
                                if not k.startswith("output.")]}
    history.append(entry)
    manifest["invocations"] = history

    def write(status: str, error: str | None = None) -> None:
        entry.update(status=status, finished=None if status == "running" else _now(), **({"error": error} if error
                                                                                          else {}))
        if manifest is fresh:
            manifest.update(status=status, finished=entry["finished"], **({"error": error} if error else {}))
        atomic_write_json(out / MANIFEST, manifest)

    write("running")
    try:
        yield entry
    except BaseException as exc:
        write("failed", "".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    write("completed")
