"""Metrics tracking: local JSONL always; wandb as well when enabled (§14).

wandb mode ``auto`` = ``online`` when ``WANDB_API_KEY`` is set, else ``offline``. The key is read by
wandb from the environment; lorascope never writes it anywhere (configs, manifests and logs hold no
environment variables).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lorascope.config.schema import TrackingConfig


def wandb_mode(cfg: TrackingConfig) -> str:
    if cfg.wandb != "auto":
        return cfg.wandb
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """``log(dict)`` appends one JSON line to ``metrics.jsonl`` (flushed) and forwards it to wandb."""

    def __init__(self, out_dir: Path, cfg: TrackingConfig, *, name: str, config: dict, enabled: bool = True,
                 group: str | None = None):
        self.enabled = enabled  # False on ranks other than 0
        self.path = Path(out_dir) / "metrics.jsonl"
        self.run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = wandb_mode(cfg)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, group=group, config=config,
                                  dir=str(out_dir), mode=mode, reinit="finish_previous")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def finish(self, status: str = "completed") -> None:
        if self.run is not None:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None

    @staticmethod
    def read(out_dir: Path) -> list[dict]:
        path = Path(out_dir) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
