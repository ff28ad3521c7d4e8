"""The GPU serving figures in docs/benchmarks.md ("Serving, one table", issue 16) are the rendering of the eight
runs' JSON kept in docs/results/: re-rendering them here must reproduce every line of the documented table (the
bootstrap is seeded), and the record itself holds what the docs claim of it (n ≥ 30 per timed cell, every gate
passed, every negative control failed)."""

import json
import subprocess
import sys

from tests.conftest import REPO

RESULTS = REPO / "docs" / "results"
RUNS = ([RESULTS / "serve_gpu_2026-11-29" / f"{name}.json" for name in ("native", "hf-peft", "vllm")]
        + [RESULTS / "serve_gpu_2026-11-30" / f"{name}.json" for name in ("hf4", "hf2", "hf1a", "hf1b", "vllm")])


def test_documented_table_is_the_rendering_of_the_kept_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_gpu.py"), "--render", *map(str, RUNS)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| backend")]
    assert len(rows) > 100  # 30 table rows + 120 cells
    missing = [line for line in rows if line not in doc]
    assert not missing, missing[:3]


def test_every_timed_cell_has_30_requests_and_passed_its_gate():
    cells = [c for path in RUNS for c in json.loads(path.read_text())["cells"] if c.get("status") == "ok"]
    by_backend = {}
    for c in cells:
        by_backend.setdefault(c["backend"], []).append(c)
    assert {b: len(v) for b, v in by_backend.items()} == {"native-fused": 30, "native-addmm": 30, "hf-peft": 34,
                                                         "vllm": 40}
    assert all(c["n"] >= 30 and c["gate"]["passed"] for c in cells)
    assert all(c["fp32_gate"]["passed"] for c in cells if c["backend"].startswith("native"))


def test_the_gate_failed_every_deliberately_wrong_engine_on_the_gpu():
    """Runs 4–8 gated the multi-8 engine once more with its slots shifted by one: it must have failed, far out."""
    controls = [(c["backend"], c["negative_control"]) for path in RUNS for c in json.loads(path.read_text())["cells"]
                if c.get("negative_control")]
    assert sorted(b for b, _ in controls) == ["hf-peft", "hf-peft", "hf-peft", "vllm"]
    assert all(not g["passed"] and g["worst_rms_ratio"] > 10 for _, g in controls)


def test_overheads_pair_a_cell_with_its_own_runs_reference_only():
    """A fill-in run that re-times a LoRA cell without its merged cell must not hide an earlier run's valid pair,
    and a cell is never compared with another run's merged cell."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_gpu_report import Cells

    def cell(run, sc, tpot):
        batch = {"e2e_s": [tpot * 10], "ttft_s": [0.0], "tpot_s": [tpot], "wall_s": 1.0, "out_tokens": [2]}
        return {"run": run, "backend": "x", "scenario": sc, "batch": 1, "status": "ok", "n": 30, "batches": [batch]}

    first_merged, first_lora, refill = cell(1, "merged", 1.0), cell(1, "unmerged-1", 1.2), cell(2, "unmerged-1", 5.0)
    cells = Cells([first_merged, first_lora, cell(2, "base", 0.9), refill])
    assert cells.latest[("x", "unmerged-1", 1)] is refill  # the summary's absolute figures: the latest run
    assert cells.ref(refill, "merged") is None  # no merged in run 2: no cross-run overhead
    assert cells.paired("x", "unmerged-1", 1) == (first_lora, first_merged)
    assert cells.paired("x", "base", 1) is None


def test_figures_quoted_in_the_prose_are_those_of_the_record():
    """The prose of the section quotes figures the tables do not show; each is recomputed here from the JSON."""
    import numpy as np

    doc = (REPO / "docs" / "benchmarks.md").read_text()
    cells = [c for path in RUNS for c in json.loads(path.read_text())["cells"] if c.get("status") == "ok"]
    assert f"every one of the {len(cells)} timed cells passed" in doc

    def worst(backend, key):
        return max(c["gate"][key] for c in cells if c["backend"] == backend)

    assert f"worst ratios {worst('hf-peft', 'worst_rms_ratio'):.2f} / {worst('hf-peft', 'worst_max_ratio'):.2f}" in doc
    assert f"Worst ratios {worst('vllm', 'worst_rms_ratio'):.2f} / {worst('vllm', 'worst_max_ratio'):.2f}" in doc
    run8 = json.loads(RUNS[-1].read_text())["cells"]
    ttft = max(t for c in run8 if c.get("status") == "ok" for b in c["batches"] for t in b["ttft_s"])
    assert f"waited\n  more than {ttft * 1e3:.0f} ms" in doc or f"more than {ttft * 1e3:.0f} ms" in doc
    stalled = [float(np.median([t for b in c["batches"] for t in b["ttft_s"]]))
               for c in json.loads(RUNS[2].read_text())["cells"] if c.get("status") == "ok"
               and max(t for b in c["batches"] for t in b["ttft_s"]) > 0.5]
    assert len(stalled) == 4 and f"cell median of {min(stalled) * 1e3:.0f}–{max(stalled) * 1e3:.0f} ms" in doc
