"""Small helpers shared by the section builders: the study config, missing-stage callouts, short text."""

from __future__ import annotations

from typing import Any

from lorascope.report.blocks import Callout, Section
from lorascope.report.load import missing_stages

METHOD_NAMES = {"ft": "FT", "lora": "LoRA", "lora_qv": "LoRA (q,v)", "base": "base"}


def study_config(results: dict) -> dict:
    """The resolved config the study ran with (root manifest), else the one the report was given."""
    return ((results.get("manifest") or {}).get("config")) or results.get("config") or {}


def method_name(method: Any) -> str:
    return METHOD_NAMES.get(str(method), str(method))


def describe_missing(m: dict) -> str:
    where = f" ({m['task']})" if m.get("task") else ""
    return f"{m['stage']}{where}: {m['reason']}"


def needs(section: Section, results: dict, stages: tuple[str, ...], task: str | None = None) -> bool:
    """Add a "missing" callout for any of ``stages`` that did not run; True when none is missing."""
    gone = missing_stages(results, task, stages)
    if not gone:
        return True
    lines = [describe_missing(m) for m in gone]
    section.missing += lines
    section.blocks.append(Callout("missing", "Missing stages for this section", lines))
    return False


def shorten(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"
