"""Report sections on the three research questions' measurements: drift (RQ1), weight structure (RQ3),
deployment (RQ2)."""

from __future__ import annotations

import statistics

from lorascope.report import fmt
from lorascope.report.blocks import Badge, Callout, Figure, Heading, Section, Table, Text
from lorascope.report.common import method_name, needs

DRIFT_FIGURES = (("drift_mean", "mean-pooled (the headline pooling)"), ("drift_last", "last-token"),
                 ("drift_token", "token-level"))
WEIGHT_FIGURES = (("singular_spectra", "singular-value spectra (energy curves) of ΔW"),
                  ("effective_rank", "effective rank of ΔW per layer"),
                  ("intruders", "intruder dimensions per layer"),
                  ("dare_curves", "validation metric after DARE drop / magnitude pruning of ΔW"))
SERVE_FIGURES = (("throughput", "output tokens/s vs batch size (fixed output length)"),
                 ("p95_latency", "p95 end-to-end latency vs batch size (fixed output length)"),
                 ("memory", "memory by scenario (max over batch sizes)"))


def _band(b: dict | None, fn=lambda x: fmt.num(x, 4)) -> str:
    if not b:
        return fmt.NONE
    clipped = b.get("clipped") or []
    tail = f"; t-interval clipped at the {' and '.join(clipped)} end of the range" if clipped else ""
    return f"{fmt.est_ci(b.get('mean'), [b.get('lo'), b.get('hi')], fn)} (n={b.get('n', '?')}{tail})"


def _drift_table(task: str, d: dict, stats_task: dict) -> Table:
    states = {(r.get("probe"), r.get("pooling")): r.get("state")
              for r in ((stats_task.get("drift") or {}).get("reductions") or [])}
    rows = []
    for r in sorted(d.get("reduction") or [], key=lambda r: (str(r.get("probe")), str(r.get("pooling")))):
        state = states.get((r.get("probe"), r.get("pooling")))
        rows.append([str(r.get("probe")), str(r.get("pooling")), _band(r.get("drift_ft")), _band(r.get("drift_lora")),
                     _band(r.get("paired"), fmt.pct), fmt.pct(r.get("reduction_of_means")),
                     Badge(state) if state else fmt.NONE])
    return Table(["probes", "pooling", "drift FT [95% CI]", "drift LoRA [95% CI]", "reduction, paired [95% CI]",
                  "reduction of means", "vs threshold (B)"], rows,
                 f"{task}: drift = mean over layers of (1 − debiased linear CKA) vs the base model; reduction = "
                 "1 − D_LoRA/D_FT per seed pair, its interval a t-interval of the mean log ratio mapped back (it "
                 "cannot pass 100%). Criterion B uses in-task probes, mean pooling.")


def _forgetting(task: str, d: dict) -> Table:
    by: dict[str, list[float]] = {}
    for f in d.get("forgetting") or []:
        if f.get("lm_loss") is not None:
            by.setdefault(str(f.get("method")), []).append(float(f["lm_loss"]))
    rows = []
    for method in sorted(by, key=lambda m: ("base", "ft", "lora").index(m) if m in ("base", "ft", "lora") else 9):
        v = by[method]
        sd = statistics.stdev(v) if len(v) > 1 else None
        rows.append([method_name(method), fmt.num(statistics.fmean(v), 4), fmt.num(sd, 4), str(len(v))])
    probes = d.get("probes") or {}
    texts = probes.get("forgetting_texts") or {}
    return Table(["model", "LM loss, mean (nats/token)", "sd over seeds", "models"], rows,
                 f"{task}: forgetting proxy — LM loss on {texts.get('n', '?')} out-of-task texts "
                 f"({texts.get('task', '?')} {texts.get('kind', '')}); lower = less forgetting.")


def drift(results: dict) -> Section:
    s = Section("drift", "RQ1: representation drift per layer (STUDY.md §8)")
    stats_tasks = (results.get("stats") or {}).get("tasks") or {}
    for task, t in results["tasks"].items():
        s.blocks.append(Heading(task))
        if not needs(s, results, ("drift",), task):
            continue
        d = t["drift"]
        probes = d.get("probes") or {}
        s.blocks.append(Text(
            f"Probes: in-task {fmt.plain((probes.get('in_task') or {}).get('n'))} inputs "
            f"(composition {fmt.plain((probes.get('in_task') or {}).get('composition'))}), out-of-task "
            f"{fmt.plain((probes.get('out_of_task') or {}).get('n'))} inputs of "
            f"{(probes.get('out_of_task') or {}).get('task', '?')}. Labels are never used."))
        for key, label in DRIFT_FIGURES:
            if key in t["figures"]:
                s.blocks.append(Figure(t["figures"][key], f"{task}: CKA and cosine similarity to the base model per "
                                                          f"layer, {label} representations; FT vs LoRA with 95% CI "
                                                          "bands over seeds, in-task vs out-of-task probes."))
        s.blocks.append(_drift_table(task, d, stats_tasks.get(task) or {}))
        s.blocks.append(_forgetting(task, d))
        if "forgetting" in t["figures"]:
            s.blocks.append(Figure(t["figures"]["forgetting"], f"{task}: forgetting proxy (LM loss on out-of-task "
                                                                "text) for the base, FT and LoRA models."))
    return s


def _mean(layers: list[dict], key: str) -> float | None:
    vals = [x[key] for x in layers if isinstance(x.get(key), (int, float))]
    return statistics.fmean(vals) if vals else None


def _dare_rows(dare: dict) -> list[list[str]]:
    rows = []
    for label, curves in sorted(dare.items()):
        dr, mg = curves.get("dare") or {}, curves.get("magnitude") or {}
        rows.append([label, fmt.pts(dr.get("0.0"))] + [fmt.pts(dr.get(p)) for p in ("0.5", "0.9", "0.99")]
                    + [fmt.pts(mg.get(p)) for p in ("0.5", "0.9", "0.99")])
    return rows


def _dare_rises(dare: dict, slack: float = 1.0) -> list[str]:
    """Where dropping most of ΔW *raises* the metric by more than ``slack`` points: a value that needs a comment.
    The tuned model is then worse than a model closer to the base — usually a run that learned little."""
    out = []
    for label, curves in sorted(dare.items()):
        for kind in ("dare", "magnitude"):
            c = curves.get(kind) or {}
            start, end = c.get("0.0"), c.get("0.99")
            if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end > start + slack:
                what = "DARE p = 0.99" if kind == "dare" else "keeping 1% of ΔW"
                out.append(f"{label}: {fmt.pts(start)} unpruned → {fmt.pts(end)} after {what}. Removing most of the "
                           "update moves the model towards the base model, so the tuned model is worse on validation "
                           "than one closer to the base: it learned little that helps this metric (compare the "
                           "zero-shot baseline and the validity gate).")
    return out


def weights(results: dict) -> Section:
    s = Section("weights", "RQ3: weight-update structure and DARE (STUDY.md §9)")
    for task, t in results["tasks"].items():
        s.blocks.append(Heading(task))
        if not needs(s, results, ("weights",), task):
            continue
        w = t["weights"]
        rows = []
        for label, run in sorted((w.get("runs") or {}).items()):
            layers = (w.get("layers") or {}).get(label) or []
            rows.append([f"{label} ({run})", fmt.pct(_mean(layers, "mean_relative_frobenius_norm"), 2),
                         fmt.num(_mean(layers, "mean_effective_rank"), 1), fmt.num(_mean(layers, "mean_stable_rank")),
                         fmt.num(_mean(layers, "mean_rank_at_energy"), 1),
                         fmt.num(_mean(layers, "mean_hoyer_sparsity")),
                         fmt.pct(_mean(layers, "near_zero_fraction"), 2),
                         fmt.plain((w.get("intruders_total") or {}).get(label))])
        s.blocks.append(Table(["method (run)", "‖ΔW‖/‖W‖", "effective rank", "stable rank", "rank at 90% energy",
                               "Hoyer sparsity (0–1)", "|ΔW| < 1e-3·max", "intruders"], rows,
                              f"{task}: ΔW = W_tuned − W_base per adapted module, averaged over modules and layers "
                              "(replicate 0)."))
        s.blocks.append(Table(["method", "no drop", "DARE p=0.5", "DARE p=0.9", "DARE p=0.99", "magnitude keep 50%",
                               "keep 10%", "keep 1%"], _dare_rows(w.get("dare") or {}),
                              f"{task}: validation primary metric (points) after dropping a fraction p of ΔW at "
                              "random and rescaling by 1/(1−p) (DARE), or keeping only the largest-magnitude entries."))
        odd = _dare_rises(w.get("dare") or {})
        if odd:
            s.blocks.append(Callout("note", f"{task}: pruning ΔW improved the validation metric", odd))
        for key, label in WEIGHT_FIGURES:
            if key in t["figures"]:
                s.blocks.append(Figure(t["figures"][key], f"{task}: {label}, FT vs LoRA."))
    return s


def _overhead_table(stats: dict) -> Table | None:
    rows_in = (stats.get("serve") or {}).get("overheads") or []
    if not rows_in:
        return None
    batches = sorted({int(r["batch_size"]) for r in rows_in})
    groups: dict[tuple, dict[int, str]] = {}
    for r in rows_in:
        key = (str(r.get("backend")), str(r.get("scenario")), str(r.get("output_mode")), str(r.get("metric")))
        groups.setdefault(key, {})[int(r["batch_size"])] = (fmt.est_ci(r.get("estimate"), r.get("ci"), fmt.pct)
                                                            if r.get("estimate") is not None else fmt.NONE)
    rows = [list(k) + [cells.get(b, fmt.NONE) for b in batches] for k, cells in sorted(groups.items())]
    return Table(["backend", "scenario", "output", "metric"] + [f"batch {b}" for b in batches], rows,
                 "Overhead over merged = stat(scenario)/stat(merged) − 1, as a percentage with a 95% percentile-"
                 "bootstrap CI over requests; p95_latency: p95 end-to-end latency; inverse_throughput: seconds "
                 "per output token.")


def _cell_rows(cells: list[dict]) -> list[list[str]]:
    rows = []
    for c in sorted(cells, key=lambda c: (str(c.get("backend")), str(c.get("scenario")), int(c.get("batch_size", 0)))):
        if c.get("status") != "ok" or c.get("output_mode") != "fixed":
            continue
        sm, mem = c.get("summary") or {}, c.get("memory") or {}
        memory = mem.get("peak_allocated_bytes", mem.get("rss_bytes"))
        rows.append([str(c.get("backend")), str(c.get("scenario")), fmt.plain(c.get("batch_size")),
                     fmt.ms(sm.get("p50_e2e_s")), fmt.ms(sm.get("p95_e2e_s")), fmt.ms(sm.get("p99_e2e_s")),
                     fmt.ms(sm.get("p95_ttft_s")), fmt.ms(sm.get("p95_tpot_s")), fmt.num(sm.get("tokens_per_s"), 0),
                     fmt.mib(memory)])
    return rows


def deployment(results: dict) -> Section:
    s = Section("deployment", "RQ2: deployment cost of unmerged adapters (STUDY.md §10)")
    serve, stats = results.get("serve"), results.get("stats") or {}
    if not needs(s, results, ("serve",)):
        return s
    hw = (serve.get("hardware") or {}).get("gpu") or {}
    cells = [c for c in serve.get("cells") or [] if c.get("status") == "ok"]
    per_cell = sorted({len(c.get("requests") or []) for c in cells})
    counts = "–".join(str(n) for n in (per_cell[:1] + per_cell[-1:] if len(per_cell) > 1 else per_cell)) or "0"
    prompts = serve.get("prompts") or {}
    s.blocks.append(Text(f"Device {serve.get('device', '?')} {hw.get('name', '')}, dtype {serve.get('dtype', '?')}; "
                         f"{sum(len(c.get('requests') or []) for c in cells)} timed requests over {len(cells)} "
                         f"measured cells ({counts} per cell, warm-ups excluded; STUDY.md §10 asks ≥ 30), drawn from a "
                         f"pool of {prompts.get('timed', '?')} test prompts (seed {prompts.get('seed', '?')}). "
                         "Latencies in ms, memory in MiB (GPU peak allocated, or process RSS on CPU)."))
    gates = sorted((serve.get("correctness") or {}).items())
    if gates:
        s.blocks.append(Table(["backend / scenario", "correctness gate (greedy = fp32 reference)"],
                              [[k, "✔ passed" if v == "passed" else f"✘ {v}"] for k, v in gates]))
    bad = [f"{c.get('backend')} {c.get('scenario')} batch {c.get('batch_size')} {c.get('output_mode')}: "
           f"{c.get('status')} — {c.get('reason')}" for c in serve.get("cells") or [] if c.get("status") != "ok"]
    if bad:
        s.blocks.append(Callout("note", f"{len(bad)} cells not measured", sorted(set(bad))[:40]))
    table = _overhead_table(stats)
    if table is not None:
        s.blocks.append(table)
    elif needs(s, results, ("stats",)):
        s.blocks.append(Text("stats.json has no overhead rows (no ok merged / unmerged cell pairs)."))
    s.blocks.append(Table(["backend", "scenario", "batch", "p50 e2e", "p95 e2e", "p99 e2e", "p95 TTFT", "p95 TPOT",
                           "tokens/s", "memory (MiB)"], _cell_rows(serve.get("cells") or []),
                          "Every measured cell at the fixed output length (ms unless stated)."))
    starts = [[b, sc, fmt.num(v, 2), fmt.num(((serve.get("adapter_load_s") or {}).get(b) or {}).get(sc), 2)]
              for b, per in sorted((serve.get("engine_start_s") or {}).items()) for sc, v in sorted(per.items())]
    if starts:
        s.blocks.append(Table(["backend", "scenario", "engine start (s)", "adapter load (s)"], starts))
    for key, label in SERVE_FIGURES:
        if key in results["serve_figures"]:
            s.blocks.append(Figure(results["serve_figures"][key], f"Serving: {label}; one line per scenario."))
    return s
