"""One entry point for task data: resolve hub vs mirror, read, split (§3), optionally subsample.

Source resolution: ``source="mirror"`` reads the mirror folder; ``"hub"`` uses HF ``datasets``;
``"auto"`` tries the hub only when it looks reachable (not offline, a quick TCP check) and otherwise
falls back to the mirror. The mirror folder is, in order: the ``data_dir`` argument (CLI
``--data-dir``), ``$LORASCOPE_DATA_DIR``, the config's ``data.data_dir``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np

from lorascope.config.schema import DataConfig
from lorascope.data import mrpc, squad
from lorascope.data.types import SPLITS, TaskData
from lorascope.errors import DataError

HUB_IDS = {"mrpc": ("nyu-mll/glue", "mrpc"), "squad_v2": ("rajpurkar/squad_v2", None)}


def resolve_data_dir(cfg: DataConfig, data_dir: str | Path | None = None) -> Path | None:
    for candidate in (data_dir, os.environ.get("LORASCOPE_DATA_DIR"), cfg.data_dir):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_dir():
                raise DataError("data directory not found", path=str(path))
            return path
    return None


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true") or os.environ.get("HF_DATASETS_OFFLINE") in ("1", "true"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_from_hub(task: str, cfg: DataConfig, seed: int, data_dir: Path | None) -> TaskData:
    import datasets  # heavy import, only when the hub is used

    repo, name = HUB_IDS[task]
    dd = datasets.load_dataset(repo, name)
    if task == "mrpc":
        return mrpc.load_mrpc_hub(dd, data_dir)
    return squad.load_squad_hub(dd, cfg.squad.validation_fraction, seed)


def _load_from_mirror(task: str, cfg: DataConfig, seed: int, data_dir: Path | None) -> TaskData:
    if data_dir is None:
        raise DataError("no mirror folder: pass --data-dir, set LORASCOPE_DATA_DIR or data.data_dir in the config")
    if task == "mrpc":
        return mrpc.load_mrpc_mirror(data_dir)
    return squad.load_squad_mirror(data_dir, cfg.squad.validation_fraction, cfg.squad.dev_only_articles, seed)


def subsample(data: TaskData, caps: dict, seed: int) -> TaskData:
    """Seeded sample of each capped split, keeping file order. Full sizes go in ``composition``."""
    if not any(caps.get(s) for s in SPLITS):
        return data
    splits, full = {}, data.sizes()
    for stream, name in enumerate(SPLITS):
        exs, cap = data.splits[name], caps.get(name)
        if cap is not None and cap < len(exs):
            # one stream per split (and apart from the split seed's other uses): changing the train cap must not
            # change which validation or test examples are drawn. Train (drawn first) keeps the stream all splits
            # used to share, so training sets recorded before the split streams were separated draw the same.
            rng = np.random.default_rng([seed, 7] if stream == 0 else [seed, 7, stream])
            keep = np.sort(rng.choice(len(exs), size=cap, replace=False))
            exs = [exs[i] for i in keep]
        splits[name] = exs
    composition = {**data.composition, "full_sizes": full, "subsample_caps": {k: v for k, v in caps.items() if v}}
    note = "subsampled (seeded) from full split sizes " + ", ".join(f"{k} {v}" for k, v in full.items())
    return replace(data, splits=splits, composition=composition, notes=[*data.notes, note])


def load_task(
    task: str, cfg: DataConfig, seed: int, data_dir: str | Path | None = None, apply_subsample: bool = False
) -> TaskData:
    """Load one task's train/validation/test as §3 defines them. ``seed`` is the split seed."""
    if task not in HUB_IDS:
        raise DataError(f"unknown task {task!r}; expected one of {sorted(HUB_IDS)}")
    folder = resolve_data_dir(cfg, data_dir)
    source = cfg.source
    if source == "auto":
        source = "hub" if hub_reachable() else "mirror"
    loader = _load_from_hub if source == "hub" else _load_from_mirror
    data = loader(task, cfg, seed, folder)
    return subsample(data, cfg.subsample_caps(task), seed) if apply_subsample else data


def task_data(cfg, task: str, *, data_dir: str | Path | None = None, subsample: bool = False) -> TaskData:
    """``task`` as the study config ``cfg`` (a ``StudyConfig``) defines it: its data settings and split seed;
    ``subsample`` applies the config's per-split caps (what training and evaluation use)."""
    return load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir, apply_subsample=subsample)
