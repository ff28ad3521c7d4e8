"""The report as plain data: sections of blocks (text, callouts, tables, figures, an SVG), rendered twice
(HTML and Markdown) by ``render.py``. Table cells are strings or ``Badge``s; numbers arrive pre-formatted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

STATES = ("met", "not met", "inconclusive", "missing", "not assessable", "passed")


@dataclass(frozen=True)
class Badge:
    """A criterion or verdict state, drawn as a coloured badge (HTML) or a marked word (Markdown)."""

    state: str

    @property
    def css(self) -> str:
        return "b-" + (self.state if self.state in STATES else "other").replace(" ", "-")

    @property
    def mark(self) -> str:
        return {"met": "✔", "not met": "✘", "inconclusive": "?", "missing": "∅", "not assessable": "⊘",
                "passed": "✔"}.get(self.state, "·")


Cell = Union[str, Badge]


@dataclass
class Text:
    text: str


@dataclass
class Heading:
    """A sub-heading inside a section (usually a task name)."""

    text: str


@dataclass
class Callout:
    """A boxed message: ``kind`` is "caveat" (the study's own warning), "invalid" (the validity gate failed: no
    verdict), "missing" or "note"."""

    kind: str
    title: str
    items: list[str] = field(default_factory=list)


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    caption: str | None = None


@dataclass
class Figure:
    """A PNG under the results folder: ``rel`` is its path relative to the results folder."""

    rel: str
    caption: str


@dataclass
class Svg:
    """An SVG made by the report; written next to report.md as ``file`` and inlined into the HTML."""

    svg: str
    file: str
    caption: str


Block = Union[Text, Heading, Callout, Table, Figure, Svg]


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # stages this section needs that did not run


@dataclass
class Report:
    title: str
    caveat: str | None
    missing: list[str]
    sections: list[Section]
    alerts: list[Callout] = field(default_factory=list)  # shown first, before anything else (the validity gate)
