"""The literature table (STUDY.md §7): published numbers of *other models*, with citations.

Rows live in ``literature.yaml`` next to this file (shipped as package data). Each row is validated:
task, model, metric, value, split (dev/test), a full citation (authors, year, title, venue, where),
a note, and whether the number was verified against the source text. Every row is labelled
``"other models"`` so a report can never mistake it for this study's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorascope.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("literature.yaml")
OTHER_MODELS = "other models"


class Citation(BaseModel):
    """Where a number comes from."""

    model_config = ConfigDict(extra="forbid")
    authors: str = Field(min_length=1)
    year: int = Field(ge=1950, le=2100)
    title: str = Field(min_length=1)
    venue: str = Field(min_length=1)
    where: str = Field(min_length=1, description="table or section in the paper")


class LiteratureRow(BaseModel):
    """One published number of another model."""

    model_config = ConfigDict(extra="forbid")
    task: Literal["mrpc", "squad_v2"]
    model: str = Field(min_length=1)
    metric: Literal["accuracy", "f1", "mcc", "exact"]
    value: float = Field(ge=-100, le=100)
    split: Literal["dev", "test"]
    citation: Citation
    note: str = Field(min_length=1)
    verified: bool
    checked_in: str = ""
    scope: Literal["other models"] = OTHER_MODELS

    def cite(self) -> str:
        """Short citation, e.g. "Devlin et al. (2019), NAACL-HLT 2019, Table 1"."""
        authors = self.citation.authors.split(",")
        first = authors[0].strip() + (
            " et al." if len(authors) > 2 else f" and {authors[1].strip()}" if len(authors) == 2 else ""
        )
        return f"{first} ({self.citation.year}), {self.citation.venue}, {self.citation.where}"


def load_literature(path: str | Path | None = None) -> list[LiteratureRow]:
    """Read and validate the table; errors name the file and the row index."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot read the literature table ({e})") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{p}: the literature table must be a YAML list of rows")
    rows = []
    for i, item in enumerate(raw):
        try:
            rows.append(LiteratureRow.model_validate(item))
        except ValidationError as e:
            raise ConfigError(f"{p}, row {i}: {e}") from None
    return rows


def literature_for(task: str, path: str | Path | None = None) -> list[dict]:
    """JSON-ready rows for one task, each with a short ``cite`` string."""
    return [{**r.model_dump(), "cite": r.cite()} for r in load_literature(path) if r.task == task]
