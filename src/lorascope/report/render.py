"""Render a ``Report`` twice: one self-contained HTML page (CSS inline, PNGs as base64 data URIs, the SVG
inline, no network reference) through a Jinja2 template, and a Markdown twin whose figures are relative
paths from the report folder."""

from __future__ import annotations

import base64
from pathlib import Path

import jinja2

from lorascope.report.blocks import Badge, Callout, Figure, Heading, Report, Svg, Table, Text

TEMPLATES = Path(__file__).parent / "templates"


def _md_cell(cell) -> str:
    text = f"**{cell.mark} {cell.state}**" if isinstance(cell, Badge) else str(cell)
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def _md_block(block, fig_prefix: str) -> list[str]:
    if isinstance(block, Heading):
        return [f"### {block.text}", ""]
    if isinstance(block, Text):
        return [block.text, ""]
    if isinstance(block, Callout):
        return [f"> **{block.title}**", ">"] + [f"> - {item}" for item in block.items] + [""]
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |", "|" + "---|" * len(block.header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return lines + ([""] + [f"*{block.caption}*"] if block.caption else []) + [""]
    if isinstance(block, Figure):
        return [f"![{Path(block.rel).stem}]({fig_prefix}{block.rel})", "", f"*{block.caption}*", ""]
    if isinstance(block, Svg):
        return [f"![{Path(block.file).stem}]({block.file})", "", f"*{block.caption}*", ""]
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_markdown(report: Report, fig_prefix: str = "../") -> str:
    """Markdown; ``fig_prefix`` leads from the report folder to the results folder."""
    lines = [f"# {report.title}", ""]
    if report.caveat:
        lines += [f"> **Caveat:** {report.caveat}", ""]
    for alert in report.alerts:
        lines += [f"> **⊘ {alert.title}**", ">"] + [f"> - {item}" for item in alert.items] + [""]
    if report.missing:
        lines += _md_block(Callout("missing", "Missing stages", report.missing), fig_prefix)
    lines += ["## Contents", ""] + [f"{i}. [{s.title}](#{s.id})" for i, s in enumerate(report.sections, 1)] + [""]
    return "\n".join(lines) + "\n" + sections_markdown(report.sections, fig_prefix, anchors=True)


def sections_markdown(sections, fig_prefix: str = "../", anchors: bool = False) -> str:
    """Sections alone (the CLI prints the ones a command produced)."""
    lines: list[str] = []
    for s in sections:
        lines += ([f'<a id="{s.id}"></a>', ""] if anchors else []) + [f"## {s.title}", ""]
        for block in s.blocks:
            lines += _md_block(block, fig_prefix)
    return "\n".join(lines).rstrip() + "\n"


def _data_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def _html_block(block, root: Path) -> dict:
    if isinstance(block, Table):
        cells = [[{"text": c.state, "badge": c.css, "mark": c.mark} if isinstance(c, Badge) else {"text": str(c)}
                  for c in row] for row in block.rows]
        return {"kind": "table", "header": block.header, "rows": cells, "caption": block.caption}
    if isinstance(block, Figure):
        return {"kind": "figure", "src": _data_uri(root / block.rel), "caption": block.caption, "rel": block.rel}
    if isinstance(block, Svg):
        return {"kind": "svg", "svg": block.svg, "caption": block.caption}
    if isinstance(block, Callout):
        return {"kind": "callout", "style": block.kind, "title": block.title, "lines": block.items}
    if isinstance(block, Heading):
        return {"kind": "heading", "text": block.text}
    if isinstance(block, Text):
        return {"kind": "text", "text": block.text}
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_html(report: Report, results_root: Path) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    sections = [{"id": s.id, "title": s.title, "missing": sorted(set(s.missing)),
                 "blocks": [_html_block(b, results_root) for b in s.blocks]} for s in report.sections]
    css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    return env.get_template("report.html.j2").render(report=report, sections=sections, css=css)
