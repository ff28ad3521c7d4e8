"""The package map (docs/design.md): who may import whom. Library packages never import the study package or the
CLI, and no two packages import each other (no cycles): the data flow is one way."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lorascope"
BASE = {"errors", "io", "config", "manifest", "logs", "lorascope"}  # the foundation every package may use
ALLOWED = {
    "errors": set(), "io": {"errors"}, "config": {"errors"}, "manifest": {"config", "io", "lorascope"},
    "results": {"manifest"},
    "data": set(), "metrics": {"data"}, "models": set(),
    "baselines": {"data", "metrics"},
    "train": {"data", "metrics", "models", "results"},  # results.layout: the run folder it writes
    "drift": {"data", "models", "results", "train"},
    "weights": {"data", "models", "results", "train"},
    "serve": {"data", "models", "results"},
    "stats": {"results", "drift"},
    "report": {"results", "stats"},
    "study": {"results", "data", "metrics", "models", "baselines", "train", "drift", "weights", "serve", "stats",
              "report"},
    "cli": {"results", "data", "metrics", "models", "baselines", "train", "drift", "weights", "serve", "stats",
            "report", "study"},
}


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        pkg = parts[0] if parts[0] != "__init__" else "lorascope"
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                bits = name.split(".")
                if bits[0] == "lorascope":
                    target = bits[1] if len(bits) > 1 else "lorascope"
                    if target != pkg:
                        edges[pkg].add(target)
    return edges


def test_every_package_imports_only_what_the_map_allows():
    graph = import_graph()
    assert set(graph) <= set(ALLOWED), f"packages missing from the map: {set(graph) - set(ALLOWED)}"
    bad = {pkg: sorted(targets - ALLOWED[pkg] - BASE) for pkg, targets in graph.items()
           if targets - ALLOWED[pkg] - BASE}
    assert not bad, f"imports the package map forbids: {bad}"
    libraries = set(ALLOWED) - {"study", "cli"}
    assert not any({"study", "cli"} & graph.get(pkg, set()) for pkg in libraries)


def test_no_import_cycles_between_packages():
    graph = import_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(pkg for pkg in graph if reaches(pkg, pkg, {pkg}))
    assert not cycles, f"packages on an import cycle: {cycles}"


def test_statistics_and_the_report_do_not_load_torch():
    """`lorascope stats` / `report` and the plan read JSON: importing them must not pay for torch (~1 s)."""
    import subprocess
    import sys

    code = ("import sys, lorascope.stats.study_stats, lorascope.report.write, lorascope.study.plan; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
