"""The test split made unreadable: HPO and model selection receive data whose ``test`` raises on access.

Enforced in code, not by convention (§5): any read — iteration, indexing, ``len`` — raises.
"""

from __future__ import annotations

from dataclasses import replace

from lorascope.data.types import TaskData
from lorascope.errors import LorascopeError


class TestSplitAccessError(LorascopeError):
    """Something tried to read the test split where only train/validation are allowed."""


class HeldOut(list):
    """An empty list that raises on every read."""

    held_out = True

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def _deny(self, *args, **kwargs):
        raise TestSplitAccessError(self.reason)

    __iter__ = __getitem__ = __len__ = __contains__ = __reversed__ = __bool__ = _deny


def without_test(data: TaskData) -> TaskData:
    reason = f"the {data.task} test split is held out: HPO and selection use validation only (STUDY.md §5)"
    return replace(data, splits={**data.splits, "test": HeldOut(reason)})
