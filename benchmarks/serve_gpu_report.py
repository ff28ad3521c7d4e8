"""Helpers of ``serve_gpu.py``: a per-kernel profile of one decode step, overheads with bootstrap CIs, the table.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed (imported by ``serve_gpu.py``, never run alone).
"""

from __future__ import annotations

import re
import time

import numpy as np
import torch

CATEGORIES = [("fused LoRA projection (Triton)", r"_fused_lora_linear"),  # first match wins
              ("attention", r"fmha|flash|attention|sdpa|softmax"),
              ("GEMM (cuBLAS/CUTLASS)", r"gemm|gemv|xmma|cutlass|sm90_|sm80_|ampere|cublas|splitk"),
              ("norm / reductions", r"norm|reduce|argmax|arg_max"),
              ("copies / index", r"copy|index|fill|cat|memcpy|memset|gather|scatter"),
              ("elementwise", r"elementwise|vectorized|mul|add|silu|unrolled")]


def profile_step(engine, prompts, adapter_ids, reps: int = 5) -> dict:
    """torch.profiler over ``reps`` decode steps (CUDA graph replays; the eager step if the profiler sees no kernel
    inside a graph): per-kernel device time per step, by category, and the step's wall time from CUDA events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for graph in (True, False):
        step = engine.decode_step_fn(prompts, adapter_ids, graph=graph)
        step()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            step()
        end.record()
        end.synchronize()
        step_us = start.elapsed_time(end) * 1e3 / reps
        step = engine.decode_step_fn(prompts, adapter_ids, graph=graph)
        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                step()
            torch.cuda.synchronize()
        kernels: dict[str, list] = {}
        for e in prof.events():
            if e.device_type == DeviceType.CUDA and "Memcpy" not in e.name:
                k = kernels.setdefault(e.name, [0, 0.0])
                k[0] += 1
                k[1] += e.time_range.elapsed_us()
        if kernels or not graph:
            out = {"graph": graph, "step_us": step_us, "kernels_per_step": sum(c for c, _ in kernels.values()) / reps,
                   "kernel_us_per_step": sum(t for _, t in kernels.values()) / reps,
                   "top": sorted(([n[:90], c / reps, t / reps] for n, (c, t) in kernels.items()),
                                 key=lambda x: -x[2])[:14],
                   "by_category": _categories(kernels, reps)}
            if graph:
                out["graph_step_us"] = step_us
            break
        out["graph_step_us"] = step_us
    time.sleep(0)
    return out


def _categories(kernels: dict, reps: int) -> dict:
    cats: dict[str, list] = {}
    for name, (count, us) in kernels.items():
        label = next((lab for lab, pat in CATEGORIES if re.search(pat, name, re.I)), "other")
        c = cats.setdefault(label, [0.0, 0.0])
        c[0] += count / reps
        c[1] += us / reps
    ordered = sorted(cats.items(), key=lambda x: -x[1][1])
    return {k: {"kernels": round(v[0], 1), "us": round(v[1], 1)} for k, v in ordered}


# ----- statistics -----------------------------------------------------------------------------------------------
def _matrix(cell: dict, key: str) -> np.ndarray:
    """(batches, rows) of one per-request quantity: every batch of a fixed-length cell has the same rows."""
    return np.array([b[key] for b in cell["batches"]], dtype=float)


def p95(cell: dict) -> float:
    return float(np.percentile(_matrix(cell, "e2e_s"), 95))


def tpot(cell: dict) -> float:
    return float(np.median(_matrix(cell, "tpot_s")))


def overhead(cell: dict, ref: dict, key: str = "e2e_s", q: float = 95, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """q-th percentile of ``key`` in cell over ref, minus 1, and a 95% percentile-bootstrap CI resampling each
    cell's batches (a batch's requests ran together: batches, not requests, are the independent units)."""
    rng = np.random.default_rng(seed)
    a, b = _matrix(cell, key), _matrix(ref, key)
    point = np.percentile(a, q) / np.percentile(b, q) - 1
    ia = rng.integers(0, len(a), (resamples, len(a)))
    ib = rng.integers(0, len(b), (resamples, len(b)))
    boots = (np.percentile(a[ia].reshape(resamples, -1), q, axis=1)
             / np.percentile(b[ib].reshape(resamples, -1), q, axis=1) - 1)
    return float(point), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


# ----- rendering --------------------------------------------------------------------------------------------------
def environment() -> str:
    """Hardware and versions of the machine that measures (stored in the results, so a re-render elsewhere keeps
    them)."""
    import peft
    import transformers
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return (f"{gpu}, CUDA {torch.version.cuda}, torch {torch.__version__}, triton {triton.__version__}, "
            f"transformers {transformers.__version__}, peft {peft.__version__}")


def _versions(results: dict) -> str:
    env = results.get("environment") or "environment not recorded (results from before it was stored)"
    return (f"{env}; bf16; prompts {results['config']['prompt_len']} tokens, {results['config']['new_tokens']} new "
            f"tokens (EOS ignored); script {results.get('total_s', 0):.0f} s")


def _gate_text(cell: dict) -> str:
    g, f = cell.get("gate"), cell.get("fp32_gate")
    parts = []
    if g:
        verdict = "pass" if g["passed"] else "FAIL"
        parts.append(f"{verdict} (×{g['worst_rms_ratio']:.2f} rms, ×{g['worst_max_ratio']:.2f} max)")
    if f:
        parts.append("fp32 " + f["status"].split(":")[0])
    return "; ".join(parts) or "—"


SCENARIO_ORDER = ("base", "merged", "unmerged-1", "multi-2", "multi-4", "multi-8")


class Cells:
    """The cells of one or several runs. ``latest``: per (backend, scenario, batch) the last timed cell (a later run
    re-measuring a cell supersedes it in the summary tables); ``ref``: the cell's merged or base counterpart from
    the SAME run — overheads are never taken across runs (separate processes, maybe separate machines)."""

    def __init__(self, cells: list[dict]):
        self.all = cells
        self.latest = {(c["backend"], c["scenario"], c["batch"]): c for c in cells if c.get("status") == "ok"}
        self._by_run = {(c["backend"], c["scenario"], c["batch"], c.get("run")): c for c in cells
                        if c.get("status") == "ok"}
        self.status = {(c["backend"], c["scenario"], c["batch"]): c for c in cells}

    def ref(self, cell: dict, scenario: str) -> dict | None:
        return self._by_run.get((cell["backend"], scenario, cell["batch"], cell.get("run")))

    def paired(self, backend: str, scenario: str, batch: int, ref: str = "merged") -> tuple[dict, dict] | None:
        """The latest timed cell of (backend, scenario, batch) whose own run also timed ``ref`` at that batch, and
        that reference: a later fill-in run without ``ref`` does not hide an earlier run's valid pair."""
        for c in reversed(self.all):
            if (c["backend"], c["scenario"], c["batch"]) == (backend, scenario, batch) and c.get("status") == "ok":
                r = self.ref(c, ref)
                if r is not None:
                    return c, r
        return None


def tpot_table(ok: dict, backends: list[str], batches: list[int]) -> list[str]:
    """Median time per output token (ms) of every timed cell, engine × scenario × batch ("—": not timed)."""
    lines = ["", "## Median time per output token, ms", "", "| engine | scenario | " + " | ".join(
        f"b={b}" for b in batches) + " |", "|---|---|" + "---:|" * len(batches)]
    for be in backends:
        for sc in SCENARIO_ORDER:
            row = [f"{tpot(ok[(be, sc, b)]) * 1e3:.2f}" if (be, sc, b) in ok else "—" for b in batches]
            if any(x != "—" for x in row):
                lines.append(f"| {be} | {sc} | " + " | ".join(row) + " |")
    return lines


def overhead_ranges(cells: Cells, backends: list[str], batches: list[int]) -> list[str]:
    """Per engine and LoRA scenario, the range over batch sizes of the p95 and median-TPOT overheads vs merged."""
    lines = ["", "## Overheads over merged (same engine), ranges over the batch sizes timed", "",
             "| engine | scenario | batch sizes | p95 end-to-end | median TPOT |", "|---|---|---|---|---|"]
    for be in backends:
        for sc in SCENARIO_ORDER[2:]:
            pairs = [(b, *pair) for b in batches if (pair := cells.paired(be, sc, b))]
            if not pairs:
                continue
            e2e = [overhead(c, m)[0] for _, c, m in pairs]
            tp = [overhead(c, m, key="tpot_s", q=50)[0] for _, c, m in pairs]
            sizes = ", ".join(str(b) for b, _, _ in pairs)
            lines.append(f"| {be} | {sc} | {sizes} | {min(e2e):+.1%} to {max(e2e):+.1%} | "
                         f"{min(tp):+.1%} to {max(tp):+.1%} |")
    return lines


def _kernel_check_text(checks: list[dict]) -> str:
    return "; ".join(f"{'/'.join(map(str, c['widths']))} × K {c['k']}: {c['worst_err_over_bound']:.2f}"
                     if "worst_err_over_bound" in c else f"error: {c.get('error', 'not recorded')}" for c in checks)


def _negative_controls(cells: Cells) -> list[str]:
    """The gate's negative control per engine: the multi-8 engine with every slot shifted by one must fail."""
    done = [c for c in cells.all if c.get("negative_control")]
    if not done:
        return []
    lines = ["", "## Negative control of the gate (the multi-8 engine, slots shifted by one: must FAIL)", ""]
    for c in done:
        g = c["negative_control"]
        if "error" in g:
            lines.append(f"- {c['backend']} b={c['batch']}: did not run ({g['error'][:100]})")
            continue
        verdict = "failed, as it must" if not g["passed"] else "PASSED — the gate has no power here"
        lines.append(f"- {c['backend']} b={c['batch']}: {verdict} (worst ratios ×{g['worst_rms_ratio']:.1f} rms, "
                     f"×{g['worst_max_ratio']:.1f} max; bounds 2 / 3)")
    return lines


def render(results: dict) -> str:
    cells = Cells(results["cells"])
    ok = cells.latest
    backends = list(dict.fromkeys(c["backend"] for c in results["cells"]))
    batches = sorted({c["batch"] for c in results["cells"]})
    lines = ["# Serving overhead (§10): one table", "", _versions(results), ""]
    if results.get("kernel_check"):
        lines += ["Fused kernel vs its PyTorch reference on the real shapes (mixed 8-adapter batch; worst error over "
                  f"the rounding bound, ≤ 1 when correct): {_kernel_check_text(results['kernel_check'])}", ""]
    lines += ["## p95 end-to-end latency overhead vs merged (same engine, same batch, same run), 95% CI over batches; "
              "n = timed requests per cell", "", "| backend | scenario | " + " | ".join(f"b={b}" for b in batches) + " |",
              "|---|---|" + "---|" * len(batches)]
    aims = {}
    for be in backends:
        for sc in SCENARIO_ORDER:
            row = []
            for b in batches:
                pair = cells.paired(be, sc, b)
                c, m = pair if pair else (ok.get((be, sc, b)), None)
                if c is None:
                    st = cells.status.get((be, sc, b), {})
                    row.append(st.get("status", "—") if st else "—")
                elif sc == "merged":
                    row.append(f"{tpot(c) * 1e3:.2f} ms/tok, n={c['n']}")
                elif m is None:
                    row.append(f"n={c['n']}")
                else:
                    o, lo, hi = overhead(c, m)
                    row.append(f"{o:+.1%} [{lo:+.1%}, {hi:+.1%}] n={c['n']}")
                    if sc != "base" and be.startswith("native"):
                        aim = 0.05 if sc == "unmerged-1" else 0.10
                        aims.setdefault((be, sc), []).append(o <= aim)
            lines.append(f"| {be} | {sc} | " + " | ".join(row) + " |")
    lines += ["", "Aim of the native engine (unmerged-1 ≤ +5%, multi-k ≤ +10% over merged at every batch size): " + "; ".join(
        f"{be} {sc}: {'met' if all(v) and len(v) == len(batches) else 'NOT met'}" for (be, sc), v in aims.items())]
    lines += tpot_table(ok, backends, batches) + overhead_ranges(cells, backends, batches) + _negative_controls(cells)
    runs = any("run" in c for c in cells.all)
    lines += ["", "## Every cell" + (" (a cell re-measured in a later run appears once per run; the tables above use "
              "the latest)" if runs else ""), "", "| " + ("run | " if runs else "") + "backend | scenario | batch | n | "
              "p95 e2e ms | p50 TPOT ms | tok/s | p95 vs merged | p95 vs base | TPOT vs merged | gate (bf16 "
              "teacher-forced; fp32 tokens) |", "|" + ("---|" if runs else "") + "---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells.all:
        be, sc, b = c["backend"], c["scenario"], c["batch"]
        run = f"{c.get('run', '')} | " if runs else ""
        if c.get("status") != "ok":
            lines.append(f"| {run}{be} | {sc} | {b} | 0 | | | | | | | {c.get('status')}: {c.get('reason', '')[:80]} |")
            continue
        m, base = cells.ref(c, "merged"), cells.ref(c, "base")
        wall = sum(x["wall_s"] for x in c["batches"])
        toks = sum(sum(x["out_tokens"]) for x in c["batches"])
        vs_m = "" if m is None or sc == "merged" else "{:+.1%} [{:+.1%}, {:+.1%}]".format(*overhead(c, m))
        vs_b = "" if base is None or sc == "base" else "{:+.1%} [{:+.1%}, {:+.1%}]".format(*overhead(c, base))
        t_m = "" if m is None or sc == "merged" else "{:+.1%} [{:+.1%}, {:+.1%}]".format(
            *overhead(c, m, key="tpot_s", q=50))
        lines.append(f"| {run}{be} | {sc} | {b} | {c['n']} | {p95(c) * 1e3:.1f} | {tpot(c) * 1e3:.3f} | {toks / wall:.0f} | "
                     f"{vs_m} | {vs_b} | {t_m} | {_gate_text(c)} |")
    lines += ["", "## Per-kernel profile of one decode step (µs per step)", ""]
    for c in cells.all:
        be, sc, b, prof = c["backend"], c["scenario"], c["batch"], c.get("profile")
        if not prof:
            continue
        cats = ", ".join(f"{k} {v['us']:.0f} ({v['kernels']:.0f})" for k, v in prof["by_category"].items())
        lines.append(f"- **{be} {sc} b={b}**: step {prof.get('graph_step_us', prof['step_us']):.0f} µs (graph), "
                     f"{prof['kernels_per_step']:.0f} kernels, {prof['kernel_us_per_step']:.0f} µs of kernel time "
                     f"({'in the graph' if prof['graph'] else 'eager step'}); by category: {cats}")
        lines += [f"    - {t:7.1f} µs ×{n:4.0f}  {name}" for name, n, t in prof["top"][:8]]
    if results.get("tuning"):
        lines += ["", "## Fused kernel tiles (tuned per shape, unmerged-1 rows) vs cuBLAS, µs per call", ""]
        for t in results["tuning"]:
            best = min(t["fused_us"].values()) if t["fused_us"] else float("nan")
            lines.append(f"- widths {t['widths']}, K {t['k']}: fused {best:.1f} (best of {len(t['fused_us'])}: "
                         f"{t['best']}), cuBLAS W alone {t['cublas_base_us']:.1f}"
                         + (f", cuBLAS [W;A] + addmm_ {t['cublas_addmm_path_us']:.1f}" if "cublas_addmm_path_us" in t
                            else "") + (f"; errors {t['errors']}" if t["errors"] else ""))
    return "\n".join(lines) + "\n"
