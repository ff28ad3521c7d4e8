"""Fit the plan's fixed costs to a measured study run (``per_job_times.json``, as ``benchmarks/ray_multigpu.py``
writes it): the constants of ``plan_assumptions.Assumptions`` that no dedicated benchmark measures.

A measured job is a row: ``job`` (its DAG name), ``node``, ``start_s``, ``seconds``, ``attempts`` and, for training
jobs, ``training`` = {``steps``, ``tokens``, ``step_seconds``} (the optimizer steps' own time from metrics.jsonl).
*Warm* rows exclude each node's first GPU job (that one carries the node's cold start) and retried jobs (their
clock covers the last attempt only). Each rule takes the rates as given and fits one thing, in this order:

1. ``step_overhead_s[m]``: warm final runs of method m, median of (step seconds − tokens / rate) / steps.
2. ``model_load_gb_per_s``: warm zero-shot jobs, model bytes / median(seconds − the modelled evaluation).
3.–4. ``run_fixed_s`` and ``state_write_gb_per_s``: warm final runs, seconds − every other modelled part =
   fixed + bytes written / bandwidth, solved exactly from the means of the FT runs (GBs of checkpoints) and of
   the LoRA runs (a few MB): LoRA's remainder is the fixed part, FT's extra remainder over its extra bytes the
   bandwidth.
5. ``hpo_fixed_s``: warm HPO jobs, mean of seconds − every other part.
6. ``sanity_steps``: the sanity jobs' mean optimizer steps.
7. ``serve_gate_s``: the serving job's seconds − every other part, per backend × scenario.
8. ``cpu_s``: mean seconds of the data, statistics and report jobs.
9. ``node_cold_start_s``: each node's first GPU job, mean of seconds − its modelled time (all of the above fitted).
A constant whose rows are missing keeps its given value; ``calibrate`` says which were fitted from how many rows.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from lorascope.config.schema import StudyConfig
from lorascope.study.dag import Dag
from lorascope.study.plan import CostModel, ModelShape
from lorascope.study.plan_assumptions import Assumptions


def first_gpu_jobs(rows: list[dict], dag: Dag) -> set[str]:
    """Per node, the GPU job that started first: it pays the node's cold start."""
    first: dict[str, dict] = {}
    for r in rows:
        if r["job"] in dag.jobs and dag[r["job"]].num_gpus and r.get("node") is not None:
            if r["node"] not in first or r["start_s"] < first[r["node"]]["start_s"]:
                first[r["node"]] = r
    return {r["job"] for r in first.values()}


def warm_rows(rows: list[dict], dag: Dag, cold: set[str] | None = None) -> list[dict]:
    cold = first_gpu_jobs(rows, dag) if cold is None else cold
    return [r for r in rows if r["job"] in dag.jobs and r["job"] not in cold and (r.get("attempts") or 1) == 1]


def predicted_seconds(rows: list[dict], dag: Dag, model: CostModel, cold: set[str] | None = None) -> dict[str, float]:
    """The model's seconds per measured job, with the cold start charged to each node's first GPU job."""
    cold = first_gpu_jobs(rows, dag) if cold is None else cold
    return {r["job"]: model.job_seconds(dag[r["job"]]) + (model.a.node_cold_start_s if r["job"] in cold else 0.0)
            for r in rows if r["job"] in dag.jobs}


def _rest(model: CostModel, dag: Dag, row: dict, *leave_out: str) -> float:
    """Measured seconds less every modelled part except ``leave_out``."""
    parts = model.job_parts(dag[row["job"]])
    return row["seconds"] - sum(v for k, v in parts.items() if k not in leave_out)


def _fit_ok(x: float) -> bool:
    """A fitted time or rate must be positive and finite; else the coded value stays (and ``used`` says so)."""
    return math.isfinite(x) and x > 0


def calibrate(rows: list[dict], cfg: StudyConfig, dag: Dag, a: Assumptions | None = None,
              shape: ModelShape | None = None, cold: set[str] | None = None) -> tuple[Assumptions, dict[str, str]]:
    """``a`` (default: the coded assumptions) with the fixed costs fitted to ``rows``; and, per fitted constant,
    which rows it came from (module docstring). ``cold``: the jobs that ran first on their node, when ``rows`` is
    a subset of a run (default: found in ``rows``)."""
    a = a or Assumptions()
    used: dict[str, str] = {}
    cold = first_gpu_jobs(rows, dag) if cold is None else cold
    warm = warm_rows(rows, dag, cold)

    def of(kind: str, pred=lambda r: True) -> list[dict]:
        return [r for r in warm if dag[r["job"]].kind == kind and pred(r)]

    def model() -> CostModel:
        return CostModel(cfg, a, shape)

    overhead = dict(a.step_overhead_s)
    for method in ("ft", "lora"):
        runs = of("train", lambda r, m=method: dag[r["job"]].params["method"] == m and r.get("training"))
        if runs:
            rate = a.train_tokens_per_s[method] * model().rate_scale  # rates are per the reference model size
            overhead[method] = statistics.median(
                (r["training"]["step_seconds"] - r["training"]["tokens"] / rate) / r["training"]["steps"] for r in runs)
            used[f"step_overhead_s[{method}]"] = f"{len(runs)} warm final runs"
    overhead["lora_qv"] = overhead["lora"]
    a = replace(a, step_overhead_s=overhead)
    if zs := of("zero_shot"):
        m = model()
        load = statistics.median(_rest(m, dag, r, "load") for r in zs)
        if _fit_ok(load):
            a = replace(a, model_load_gb_per_s=m.n * m.weight_bytes / 1e9 / load)
            used["model_load_gb_per_s"] = f"{len(zs)} warm zero-shot jobs"
        else:
            used["model_load_gb_per_s"] = f"coded value kept: the zero-shot jobs leave {load:.2f} s for the load"
    ft = of("train", lambda r: dag[r["job"]].params["method"] == "ft")
    lora = of("train", lambda r: dag[r["job"]].params["method"] != "ft")
    if ft and lora:
        m = model()

        def means(group: list[dict]) -> tuple[float, float]:  # (GB written, seconds − other parts)
            gb = [m.job_parts(dag[r["job"]])["writes"] * a.state_write_gb_per_s for r in group]
            return statistics.mean(gb), statistics.mean(_rest(m, dag, r, "fixed", "writes") for r in group)

        (gb_ft, rest_ft), (gb_lora, rest_lora) = means(ft), means(lora)
        seconds_per_gb = (rest_ft - rest_lora) / (gb_ft - gb_lora) if gb_ft > gb_lora else float("nan")
        if _fit_ok(seconds_per_gb) and _fit_ok(rest_lora - gb_lora * seconds_per_gb):
            a = replace(a, state_write_gb_per_s=1 / seconds_per_gb, run_fixed_s=rest_lora - gb_lora * seconds_per_gb)
            used["run_fixed_s"] = f"{len(lora)} warm LoRA final runs"
            used["state_write_gb_per_s"] = f"{len(ft)} warm FT final runs"
        else:  # FT wrote no more than LoRA, or noise made the difference negative: no usable fit
            used["state_write_gb_per_s"] = "coded value kept: FT and LoRA final runs give no positive write time"
    if hpo := of("hpo"):
        a = replace(a, hpo_fixed_s=statistics.mean(_rest(model(), dag, r, "search fixed") for r in hpo))
        used["hpo_fixed_s"] = f"{len(hpo)} warm HPO jobs"
    sanity = [r for r in rows if r["job"] in dag.jobs and dag[r["job"]].kind == "sanity" and r.get("training")]
    if sanity:
        a = replace(a, sanity_steps=statistics.mean(r["training"]["steps"] for r in sanity))
        used["sanity_steps"] = f"{len(sanity)} sanity jobs"
    if serve := [r for r in rows if r["job"] in dag.jobs and dag[r["job"]].kind == "serve"]:
        s = cfg.serve
        pairs = len(s.backends) * len(s.scenarios)
        a = replace(a, serve_gate_s=statistics.mean(_rest(model(), dag, r, "gates") for r in serve) / pairs)
        used["serve_gate_s"] = f"{len(serve)} serving job, {pairs} backend × scenario pairs"
    cpu = dict(a.cpu_s)
    for kind in cpu:
        if found := [r["seconds"] for r in rows if r["job"] in dag.jobs and dag[r["job"]].kind == kind]:
            cpu[kind] = statistics.mean(found)
            used[f"cpu_s[{kind}]"] = f"{len(found)} {kind} jobs"
    a = replace(a, cpu_s=cpu)
    firsts = [r for r in rows if r["job"] in cold and (r.get("attempts") or 1) == 1]
    if firsts:
        m = model()
        a = replace(a, node_cold_start_s=statistics.mean(r["seconds"] - m.job_seconds(dag[r["job"]]) for r in firsts))
        used["node_cold_start_s"] = f"first GPU job on {len(firsts)} nodes"
    return a, used
