"""The study's flow (STUDY.md §14) as an inline SVG, drawn without any network or plotting library:
data → baselines → sanity → HPO → final training → evaluation → {drift, weights, serving} → statistics → report.
Each box is coloured by whether its stage's outputs are in the results folder (legend in the figure)."""

from __future__ import annotations

from xml.sax.saxutils import escape

# (node id, label, preferred machine §14, results stages that feed it, column, row)
NODES = (
    ("data", "data", "any", ("data", "leakage"), 0, 1),
    ("baselines", "baselines", "vm1", ("baselines", "zero-shot"), 1, 1),
    ("sanity", "sanity gate", "vm1 / vm2", ("sanity",), 2, 1),
    ("hpo", "HPO", "vm2", ("hpo",), 3, 1),
    ("training", "final training", "vm1 FT · vm2 LoRA", ("training",), 4, 1),
    ("evaluation", "evaluation", "vm3", ("training",), 5, 1),
    ("drift", "drift", "vm3", ("drift",), 6, 0),
    ("weights", "weights", "vm3", ("weights",), 6, 1),
    ("serving", "serving", "vm3", ("serve",), 6, 2),
    ("stats", "statistics", "driver", ("stats",), 7, 1),
    ("report", "report", "driver", (), 8, 1),
)
EDGES = (("data", "baselines"), ("baselines", "sanity"), ("sanity", "hpo"), ("hpo", "training"),
         ("training", "evaluation"), ("evaluation", "drift"), ("evaluation", "weights"), ("evaluation", "serving"),
         ("drift", "stats"), ("weights", "stats"), ("serving", "stats"), ("stats", "report"))
FILL = {"done": ("#d9f2e0", "#2e7d4f", ""), "partial": ("#fff2cc", "#9a7400", "6 3"),
        "missing": ("#eeeeee", "#888888", "4 4")}
LEGEND = (("done", "outputs present"), ("partial", "present for some tasks"), ("missing", "missing"))
W, H, GAP_X, GAP_Y, PAD = 118, 46, 30, 22, 12


def node_states(missing: list[dict], n_tasks: int) -> dict[str, str]:
    """done / partial / missing per node, from the loader's missing-stage entries."""
    states = {}
    for node, _, _, stages, _, _ in NODES:
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


def study_flow_svg(states: dict[str, str]) -> str:
    """The DAG with a legend; ``states`` maps node id → done / partial / missing (absent: done)."""
    pos = {node: (col, row) for node, _, _, _, col, row in NODES}
    width = PAD * 2 + 9 * W + 8 * GAP_X
    legend_y = PAD + 3 * (H + GAP_Y) + 4
    height = legend_y + 26
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" font-family="Helvetica, Arial, sans-serif" role="img" '
             f'aria-label="Study flow: stages of the lorascope study and whether their outputs are present">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    parts += [_edge(pos[a], pos[b]) for a, b in EDGES]
    parts += [_box(label, machine, col, row, states.get(node, "done")) for node, label, machine, _, col, row in NODES]
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
