"""Report sections before any training: research questions, setup and model, the study flow, data."""

from __future__ import annotations

from lorascope.report import fmt
from lorascope.report.blocks import Callout, Figure, Heading, Section, Svg, Table, Text
from lorascope.report.common import needs, shorten, study_config
from lorascope.report.diagram import node_states, study_flow_svg

SHEARED = "princeton-nlp/Sheared-LLaMA-1.3B"


def questions(results: dict) -> Section:
    cfg = (results.get("stats") or {}).get("config") or {}
    margin = cfg.get("equivalence_margin", 3.0)
    drift_t = cfg.get("drift_reduction_threshold", 0.2)
    over_t = cfg.get("overhead_threshold", 0.3)
    s = Section("questions", "Research questions (STUDY.md §1)")
    s.blocks += [
        Table(["", "question", "measured by"], [
            ["RQ1 Drift", "Does LoRA preserve the model's internal representations better than full fine-tuning "
                          "(FT), or does it cause comparable representational change?",
             "layer-wise CKA (debiased linear: headline) and cosine similarity against the base model (§8)"],
            ["RQ2 Deployment", "What does serving several LoRA adapters side by side (unmerged) cost in "
                               "throughput, tail latency and GPU memory, against weights with the adapter merged in?",
             "p95 latency, output tokens/s, memory per scenario × batch size (§10)"],
            ["RQ3 Structure", "How large, how low-rank and how sparse are the weight updates ΔW of FT vs LoRA; how "
                              "much of ΔW can be dropped (DARE) before the task metric falls?",
             "‖ΔW‖, effective rank, intruder dimensions, DARE / magnitude-pruning curves (§9)"],
        ]),
        Text(f"Success criteria per task (§12): A = LoRA's primary-metric drop vs FT ≤ {fmt.num(margin)} points "
             f"(upper 95% bound), AND (B = drift reduction ≥ {fmt.pct(drift_t, 0)} OR C = unmerged-serving "
             f"overhead ≤ {fmt.pct(over_t, 0)} at every batch size). Primary metric: MRPC accuracy, SQuAD v2 F1."),
    ]
    return s


def _grid(values) -> str:
    return ", ".join(fmt.lr(v) for v in values or []) or fmt.NONE


def setup(results: dict) -> Section:
    man = results.get("manifest") or {}
    cfg = study_config(results)
    s = Section("setup", "Setup and model")
    if not cfg:
        needs(s, results, ("manifest",))
        s.blocks.append(Text("No study manifest: the model, config and versions are unknown."))
        return s
    model, lora, train, data = (cfg.get(k) or {} for k in ("model", "lora", "train", "data"))
    rows = [["model", str(model.get("name_or_path"))], ["revision", fmt.plain(model.get("revision"))],
            ["dtype", fmt.plain(model.get("dtype"))], ["end token", fmt.plain(model.get("eos_token"))],
            ["config", f"{cfg.get('name')} (hash {man.get('config_hash', fmt.NONE)})"],
            ["tasks", fmt.plain(data.get("tasks"))],
            ["max length (tokens)", fmt.plain(data.get("max_length"))],
            ["subsample per split", fmt.plain(data.get("subsample") or "none (full splits)")],
            *([["subsample per task (replaces the above)", fmt.plain(data["subsample_by_task"])]]
              if data.get("subsample_by_task") else []),
            ["methods", fmt.plain(train.get("methods"))],
            ["LoRA", f"r = {lora.get('r')}, α = {lora.get('alpha')}, dropout {lora.get('dropout')}, "
                     f"preset {lora.get('preset')}"],
            ["learning-rate grids", f"FT {_grid((cfg.get('ft') or {}).get('lr_grid'))}; "
                                    f"LoRA {_grid(lora.get('lr_grid'))}"],
            ["effective batch / epochs", f"{train.get('effective_batch')} / {fmt.plain(train.get('epochs'))}"],
            ["seeds", ", ".join(f"{k} {fmt.plain(v)}" for k, v in sorted((man.get("seeds") or {}).items()))],
            ["Python", fmt.plain(man.get("python"))],
            ["packages", ", ".join(f"{k} {v or 'not installed'}" for k, v in sorted((man.get("packages") or {})
                                                                                      .items())) or fmt.NONE]]
    s.blocks.append(Table(["setting", "value"], rows, "From the root manifest (the resolved config)."))
    if model.get("name_or_path") == SHEARED:
        s.blocks.append(Callout("note", "Model assumption", [
            f"{SHEARED} stands in for a 'Llama-2 1.3B' (Llama-2 architecture and tokenizer, 1.3B parameters); "
            "there is no official Llama-2-1.3B (STUDY.md §2)."]))
    return s


def flow(results: dict) -> Section:
    s = Section("flow", "How the study flows (STUDY.md §14)")
    flow_spec = results.get("flow") or []
    if not flow_spec:
        s.blocks.append(Text("No stage declarations were given to the report, so there is no flow diagram."))
        return s
    states = node_states(flow_spec, results["missing"], len(results["tasks"]))
    s.blocks.append(Text("The study is a DAG of content-addressed jobs; a rerun skips finished jobs. Boxes are "
                         "coloured by whether their outputs are in this results folder; the small print is the "
                         "machine role each stage prefers (as `lorascope plan` lists it)."))
    s.blocks.append(Svg(study_flow_svg(flow_spec, states), "study_flow.svg",
                        "Study flow: " + " → ".join(n["title"] for n in flow_spec) + " (columns: dependency depth)."))
    return s


def _balance(labels: dict) -> str:
    names = [k for k in labels if not k.endswith("_pct")]
    return ", ".join(f"{k} {labels[k]} ({fmt.num(labels.get(k + '_pct'))}%)" for k in names)


def _split_rows(stats: dict, used: dict) -> list[list[str]]:
    """One row per split; where the study used a subsample, its size and label balance (they can differ from the
    full split's: 61.46% positive in a 96-example MRPC test sample against 66.49% in the full test set)."""
    rows = []
    for split, e in (stats.get("splits") or {}).items():
        sub = e.get("used") or {}
        lab = _balance(sub.get("labels") or e.get("labels") or {})
        tok = (e.get("tokens") or {}).get("sequence") or {}
        rows.append([split, fmt.plain(e.get("n")), fmt.plain(sub.get("n", used.get(split, e.get("n")))), lab,
                     f"{tok.get('p50', fmt.NONE)} / {tok.get('p95', fmt.NONE)} / {tok.get('p100', fmt.NONE)}",
                     f"{tok.get('over_limit', fmt.NONE)} (> {tok.get('limit', fmt.NONE)})"])
    return rows


def _sample_rows(stats: dict) -> list[list[str]]:
    rows = []
    for split, e in (stats.get("splits") or {}).items():
        for x in e.get("samples") or []:
            if "sentence1" in x:
                text = f"1: {shorten(x['sentence1'], 110)} / 2: {shorten(x.get('sentence2'), 110)}"
                label = {1: "paraphrase", 0: "not paraphrase"}.get(x.get("label"), fmt.plain(x.get("label")))
            else:
                text = f"Q: {shorten(x.get('question'), 90)} — context: {shorten(x.get('context'), 120)}"
                label = shorten(x["answers"][0], 40) if x.get("answers") else "unanswerable"
            rows.append([split, text, label])
    return rows


def _leakage(leak: dict) -> list:
    rows = []
    for pair, kinds in sorted((leak.get("pairs") or {}).items()):
        for kind, v in sorted(kinds.items()):
            rows.append([pair, kind, fmt.plain((v or {}).get("count"))])
    verdict = "passed" if leak.get("ok") else f"FAILED: {fmt.plain(leak.get('fatal'))}"
    return [Text(f"Leakage check (§3): {verdict}. Identical pairs / titles / contexts across splits are fatal; "
                 "shared single sentences and questions are only counted."),
            Table(["split pair", "overlap of", "count"], rows)]


def data(results: dict) -> Section:
    s = Section("data", "Dataset statistics (STUDY.md §3)")
    for task, t in results["tasks"].items():
        s.blocks.append(Heading(task))
        if not needs(s, results, ("data",), task):
            continue
        st = t["data"]
        first_run = (t.get("runs") or [{}])[0]
        used = (t.get("baselines") or {}).get("sizes") or (first_run.get("data") or {}).get("sizes") or {}
        s.blocks.append(
            Text(
                f"{task}: split scheme '{st.get('split_scheme')}', source {st.get('source')}, "
                f"tokenizer {st.get('tokenizer')}. Token counts are prompt + target; 'over max' "
                "examples are dropped from training and have their context cut at evaluation (§4)."
            )
        )
        notes = list(st.get("notes") or []) + list((t.get("baselines") or {}).get("notes") or [])
        if notes:
            s.blocks.append(Callout("note", f"{task}: data notes", sorted(set(notes))))
        s.blocks.append(
            Table(
                ["split", "n (full)", "n used", "labels of the examples used", "tokens p50 / p95 / max", "over max"],
                _split_rows(st, used),
            )
        )
        if "token_lengths" in (t.get("figures") or {}):
            s.blocks.append(
                Figure(t["figures"]["token_lengths"], f"{task}: token-length distribution per split (model tokenizer).")
            )
        if t.get("leakage"):
            s.blocks += _leakage(t["leakage"])
        else:
            needs(s, results, ("leakage",), task)
        samples = _sample_rows(st)
        if samples:
            s.blocks.append(
                Table(["split", "example (shortened)", "label / answer"], samples, f"{task}: sample examples (seeded).")
            )
    return s
