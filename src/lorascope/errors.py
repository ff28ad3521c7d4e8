"""Error types that carry where the problem is (file, row, field), so the CLI can print them plainly."""

from __future__ import annotations


class LorascopeError(Exception):
    """Base class: a user-facing error whose message is complete on its own."""


class ConfigError(LorascopeError):
    """A config file or override is malformed, names an unknown key or has a bad type."""


class DataError(LorascopeError):
    """A data file is missing, malformed or inconsistent. The message names the file and row."""

    def __init__(self, message: str, *, path: str | None = None, row: str | int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.row = row


class LeakageError(DataError):
    """Identical examples (MRPC pairs, SQuAD titles or contexts) occur in two splits."""


class MetricInputError(LorascopeError):
    """Predictions and references do not line up (a missing id, a bad label)."""


class StatsInputError(LorascopeError):
    """Input to a statistic is degenerate or malformed (too few values, NaN, zero variance, unequal lengths)."""


class ReportError(LorascopeError):
    """A results file the report reads is corrupt (not JSON, wrong shape). The message names the file."""


class AdapterError(LorascopeError):
    """A LoRA adapter folder is missing, malformed or of a kind lorascope cannot read. The message names it."""
