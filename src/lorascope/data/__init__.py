"""Data: MRPC and SQuAD v2 from the hub or a local mirror, splits (§3), leakage checks, statistics, prompts (§4)."""

from lorascope.data.load import load_task
from lorascope.data.types import SPLITS, MrpcExample, SquadExample, TaskData

__all__ = ["SPLITS", "MrpcExample", "SquadExample", "TaskData", "load_task"]
