"""The study's flow (STUDY.md §14) as an inline SVG, drawn without any network or plotting library, from the
study's own stage declarations (``results["flow"]``: name, title, role, the stages each comes after — the same
declarations that build the DAG and the plan). Columns are dependency depth; each box is coloured by whether
its stage's outputs are in the results folder (legend in the figure) and names its §14 role."""

from __future__ import annotations

from xml.sax.saxutils import escape

# The report loader's names for missing outputs, by the stage that writes them.
MISSING_OF = {"data": ("data", "leakage", "baselines"), "zero_shot": ("zero-shot",), "train": ("training",)}
FILL = {"done": ("#d9f2e0", "#2e7d4f", ""), "partial": ("#fff2cc", "#9a7400", "6 3"),
        "missing": ("#eeeeee", "#888888", "4 4")}
LEGEND = (("done", "outputs present"), ("partial", "present for some tasks"), ("missing", "missing"))
W, H, GAP_X, GAP_Y, PAD = 118, 46, 30, 22, 12


def node_states(flow: list[dict], missing: list[dict], n_tasks: int) -> dict[str, str]:
    """done / partial / missing per stage, from the loader's missing-stage entries."""
    states = {}
    for node in (n["name"] for n in flow):
        stages = MISSING_OF.get(node, (node,))
        hits = [m for m in missing if m["stage"] in stages]
        if not hits:
            states[node] = "done"
        elif any(m["task"] is None for m in hits) or len({m["task"] for m in hits}) >= max(n_tasks, 1):
            states[node] = "missing"
        else:
            states[node] = "partial"
    return states


def _xy(col: int, row: int) -> tuple[int, int]:
    return PAD + col * (W + GAP_X), PAD + row * (H + GAP_Y)


def _box(label: str, machine: str, col: int, row: int, state: str) -> str:
    x, y = _xy(col, row)
    fill, stroke, dash = FILL[state]
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="7" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="1.5"{dash_attr}/>'
            f'<text x="{x + W // 2}" y="{y + 20}" text-anchor="middle" font-size="13" font-weight="600" '
            f'fill="#222">{escape(label)}</text>'
            f'<text x="{x + W // 2}" y="{y + 36}" text-anchor="middle" font-size="10" fill="#555">'
            f'{escape(machine)}</text>')


def _edge(a: tuple[int, int], b: tuple[int, int]) -> str:
    (xa, ya), (xb, yb) = _xy(*a), _xy(*b)
    x1, y1, x2, y2 = xa + W, ya + H // 2, xb - 2, yb + H // 2
    mid = (x1 + x2) // 2
    return (f'<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" fill="none" stroke="#555" '
            f'stroke-width="1.3" marker-end="url(#arrow)"/>')


def layout_flow(flow: list[dict]) -> dict[str, tuple[int, int]]:
    """(column, row) per stage: column = the longest chain of stages before it; rows in declaration order."""
    col: dict[str, int] = {}
    for node in flow:  # declaration order is a topological order
        col[node["name"]] = max((col[a] + 1 for a in node["after"] if a in col), default=0)
    rows: dict[int, int] = {}
    pos = {}
    for node in flow:
        c = col[node["name"]]
        pos[node["name"]] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    return pos


def study_flow_svg(flow: list[dict], states: dict[str, str]) -> str:
    """The stages with their dependency edges and a legend; ``states`` maps stage → done / partial / missing."""
    pos = layout_flow(flow)
    n_cols = max(c for c, _ in pos.values()) + 1
    n_rows = max(r for _, r in pos.values()) + 1
    width = PAD * 2 + n_cols * W + (n_cols - 1) * GAP_X
    legend_y = PAD + n_rows * (H + GAP_Y) + 4
    height = legend_y + 26
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" font-family="Helvetica, Arial, sans-serif" role="img" '
             f'aria-label="Study flow: stages of the lorascope study and whether their outputs are present">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    for node in flow:
        for a in node["after"]:
            if a in pos:
                parts.append(_edge(pos[a], pos[node["name"]]))
    parts += [_box(n["title"], n["role"], *pos[n["name"]], states.get(n["name"], "done")) for n in flow]
    x = PAD
    parts.append(f'<text x="{x}" y="{legend_y + 13}" font-size="12" fill="#222">legend:</text>')
    x += 56
    for state, text in LEGEND:
        fill, stroke, dash = FILL[state]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<rect x="{x}" y="{legend_y + 2}" width="22" height="14" rx="3" fill="{fill}" '
                     f'stroke="{stroke}"{dash_attr}/>'
                     f'<text x="{x + 28}" y="{legend_y + 13}" font-size="12" fill="#222">{escape(text)}</text>')
        x += 40 + 7 * len(text)
    parts.append(f'<text x="{width - PAD}" y="{legend_y + 13}" font-size="11" fill="#555" text-anchor="end">'
                 'small print: preferred machine (§14 roles)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
