"""Report sections that conclude: the verdict (§12), the reproducibility manifest (§13), limitations."""

from __future__ import annotations

from lorascope.config.protocol import departures
from lorascope.report import fmt
from lorascope.report.blocks import Badge, Callout, Section, Table
from lorascope.report.common import describe_missing, needs, study_config
from lorascope.stats.verdict import MISSING, NOT_ASSESSABLE, STATES, study_verdict

PROTOCOL_SEEDS = 5


def _criterion_estimate(name: str, c: dict) -> str:
    if name == "A":
        return fmt.est_ci(c.get("estimate"), c.get("ci"))
    if name == "B":
        return fmt.est_ci(c.get("estimate"), c.get("ci"), fmt.pct)
    return ", ".join(c.get("backend") or []) or fmt.NONE


def validity_alerts(results: dict) -> list[Callout]:
    """The report's first words when a task is not assessable: which method, its score, the baseline's."""
    alerts = []
    for task, t in sorted(((results.get("stats") or {}).get("tasks") or {}).items()):
        gate = t.get("validity") or {}
        if gate.get("state") == NOT_ASSESSABLE:
            alerts.append(Callout("invalid", f"{task}: not assessable — a method did not beat the strongest trivial "
                                  "baseline (STUDY.md §12 validity gate)", list(gate.get("failed") or [])
                                  + ["No criterion (A, B, C) decides this task: their states in the verdict table "
                                     "are computed for information only, because a comparison of models that did "
                                     "not learn the task says nothing about LoRA vs full fine-tuning."]))
    return alerts


def verdict(results: dict) -> Section:
    s = Section("verdict", "Verdict: validity gate, then A ∧ (B ∨ C) (STUDY.md §12)")
    stats = results.get("stats") or {}
    tasks = list(results["tasks"]) or list((stats.get("tasks") or {}))
    header = ["task", "validity gate", "A: drop ≤ margin", "B: drift reduction", "C: serving overhead", "verdict"]
    if not needs(s, results, ("stats",)) or not tasks:
        s.blocks.append(Table(header, [[t] + [Badge(MISSING)] * 5 for t in tasks]))
        return s
    rows, detail, states, gates = [], [], [], []
    for task in tasks:
        t = (stats.get("tasks") or {}).get(task) or {}
        v, gate = t.get("verdict") or {}, t.get("validity") or {}
        crit = v.get("criteria") or {}
        state = v.get("state", MISSING)
        states.append(state if state in STATES + (NOT_ASSESSABLE,) else MISSING)
        rows.append([task, Badge(gate.get("state", MISSING))]
                    + [Badge((crit.get(k) or {}).get("state", MISSING)) for k in "ABC"]
                    + [Badge(state), v.get("reason", "no verdict in stats.json")])
        gates += [[task, Badge(gate.get("state", MISSING)), line] for line in
                  (gate.get("failed") or []) + (gate.get("passed") or []) + (gate.get("missing") or [])]
        for k in "ABC":
            c = crit.get(k) or {}
            detail.append([task, f"{k} ({c.get('stage', '?')})", Badge(c.get("state", MISSING)),
                           _criterion_estimate(k, c), c.get("reason", fmt.NONE)])
    overall = stats.get("overall") or study_verdict(states)
    s.blocks.append(Table(header + ["why"], rows + [["all tasks", "", "", "", "", Badge(overall),
                                                     "every task must pass the gate and meet A ∧ (B ∨ C)"]]))
    if gates:
        s.blocks.append(Table(["task", "gate", "method vs the strongest trivial baseline (same test examples)"], gates,
                              "Validity gate: each method's test primary metric (mean over its seeds) must beat the "
                              "strongest trivial baseline — majority class / stratified random (MRPC), always-no-answer"
                              " / random spans (SQuAD v2) — in a one-sided paired bootstrap over test examples, Holm-"
                              "corrected over tasks × methods. A task that fails it is not assessable: its A, B "
                              "and C are still computed and shown, but they do not count."))
    s.blocks.append(Table(["task", "criterion", "state", "estimate [95% CI]", "reason"], detail,
                          "A: drop = FT − LoRA primary metric (points), met when the upper 95% bound ≤ margin. "
                          "B: drift reduction 1 − D_LoRA/D_FT (in-task, mean pooling), met when the lower bound ≥ "
                          "threshold. C: overhead of every unmerged scenario over merged ≤ threshold at every batch "
                          "size, per backend (the deciding backend is named), with ≥ 30 timed requests per cell. "
                          "Inconclusive and missing propagate; a zero-width interval is no evidence."))
    return s


def _short(commit: str | None) -> str:
    return (commit or fmt.NONE)[:12]


def provenance_mismatches(results: dict) -> list[str]:
    """Stage manifests made with another config hash than the study's, or from a dirty / other git commit."""
    man = results.get("manifest") or {}
    want, commit = man.get("config_hash"), (man.get("git") or {}).get("commit")
    manifests = [m for t in results["tasks"].values() for m in t["manifests"]] + results["global_manifests"]
    other_cfg = sorted(rel for rel, m in manifests if want and m.get("config_hash") not in (None, want))
    other_git = sorted(rel for rel, m in manifests
                       if commit and (m.get("git") or {}).get("commit") not in (None, commit)
                       or (m.get("git") or {}).get("dirty"))
    out = []
    if other_cfg:
        out.append(f"made with another config hash than the study's ({want}): {', '.join(other_cfg)}")
    if other_git:
        out.append(f"made from another git commit or a dirty tree: {', '.join(other_git)}")
    return out


def reproducibility(results: dict) -> Section:
    s = Section("reproducibility", "Reproducibility manifest (STUDY.md §13)")
    man = results.get("manifest") or {}
    if not needs(s, results, ("manifest",)):
        return s
    git, hw = man.get("git") or {}, man.get("hardware") or {}
    gpu = hw.get("gpu") or {}
    s.blocks.append(Table(["item", "value"], [
        ["config hash", fmt.plain(man.get("config_hash"))], ["lorascope", fmt.plain(man.get("lorascope_version"))],
        ["git commit", f"{git.get('commit', fmt.NONE)} ({'dirty' if git.get('dirty') else 'clean'})"],
        ["Python", fmt.plain(man.get("python"))], ["CPU", f"{hw.get('cpu', fmt.NONE)} × {hw.get('cpu_count', '?')}"],
        ["GPU", f"{gpu.get('name')} × {gpu.get('count')}, {gpu.get('memory_gib')} GiB" if gpu else "none"],
        ["CUDA / driver", f"{fmt.plain(hw.get('torch_cuda'))} / {fmt.plain(hw.get('driver'))}"],
        ["platform", fmt.plain(hw.get("platform"))], ["status", fmt.plain(man.get("status"))],
        ["started", fmt.plain(man.get("started"))], ["finished", fmt.plain(man.get("finished"))]]))
    invocations = [i for i in man.get("invocations") or [] if isinstance(i, dict)]
    if invocations:
        rows = []
        for inv in invocations:
            jobs = inv.get("jobs") or {}
            changes = "; ".join(f"{c.get('key')}: {fmt.plain(c.get('before'))} → {fmt.plain(c.get('now'))}"
                                for c in inv.get("config_changes") or []) or fmt.NONE
            rows.append([fmt.plain(inv.get("started")), fmt.plain(inv.get("finished")), str(inv.get("status")),
                         fmt.plain(jobs.get("completed")), fmt.plain(jobs.get("skipped")),
                         fmt.plain((jobs.get("failed") or 0) + (jobs.get("cancelled") or 0) if jobs else None),
                         f"{inv.get('host', '?')}", changes])
        s.blocks.append(Table(["started", "finished", "status", "jobs run", "skipped", "failed / cancelled", "host",
                               "config changes vs the previous invocation"], rows,
                              "Invocations of lorascope on this folder (the results come from those that ran jobs)."))
    manifests = [rm for t in results["tasks"].values() for rm in t["manifests"]] + list(results["global_manifests"])
    stage_rows = [_manifest_row(rel, m) for rel, m in manifests]
    mismatches = provenance_mismatches(results)
    if mismatches:
        s.blocks.append(Callout("missing", "Provenance differs between stages", mismatches))
    if stage_rows:
        s.blocks.append(
            Table(
                ["folder", "command", "status", "started", "finished", "config hash", "git"],
                stage_rows,
                "Stage manifests (each output folder records how it was made).",
            )
        )
    files = sorted(
        {
            (f.get("path"), f.get("sha256"), f.get("bytes"))
            for t in results["tasks"].values()
            for f in ((t.get("manifest") or {}).get("data_files") or []) + (man.get("data_files") or [])
        },
        key=lambda f: str(f[0]),
    )
    if files:
        s.blocks.append(Table(["data file", "sha256", "bytes"], [[str(p), str(h), fmt.plain(b)] for p, h, b in files]))
    return s


def _subsample_notes(results: dict) -> list[str]:
    notes = set()
    for task, t in results["tasks"].items():
        for src in (t.get("data"), t.get("baselines"), *((r.get("data") or {}) for r in t["runs"][:1])):
            for n in (src or {}).get("notes") or []:
                if "subsampled" in n:
                    notes.add(f"{task}: {n}")
    return sorted(notes)


def _value(x) -> str:
    """A config value in words: an empty subsample is the full splits, None the tokenizer's default."""
    if x == {}:
        return "full splits"
    if x is None:
        return "default"
    if isinstance(x, dict):  # per-task subsample caps: a null cap is that split whole
        x = {k: ({s: "whole" if c is None else c for s, c in v.items()} if isinstance(v, dict) else v)
             for k, v in x.items()}
    return fmt.plain(x)


def _manifest_row(rel: str, m: dict) -> list[str]:
    git = m.get("git") or {}
    return [rel, str(m.get("command")), str(m.get("status")), fmt.plain(m.get("started")),
            fmt.plain(m.get("finished")), fmt.plain(m.get("config_hash")),
            _short(git.get("commit")) + (" dirty" if git.get("dirty") else "")]


def limitations(results: dict) -> Section:
    s = Section("limitations", "Limitations")
    cfg, items = study_config(results), []
    model = str((cfg.get("model") or {}).get("name_or_path", ""))
    if "stories260k" in model.lower():
        items.append(
            "The model is stories260K, a 260K-parameter Llama trained on children's stories: every number "
            "here illustrates the pipeline only and says nothing about LoRA vs FT at 1.3B (STUDY.md §2)."
        )
    for task, t in results["tasks"].items():
        if (t.get("data") or {}).get("split_scheme") == "dev-only":
            items.append(
                f"{task}: 'dev-only' split (the offline mirror holds only the official dev set, split by "
                "article): numbers are not comparable to published SQuAD v2 results."
            )
        seeds = sorted({(r.get("run") or {}).get("replicate") for r in t["runs"]} - {None})
        if 0 < len(seeds) < PROTOCOL_SEEDS:
            items.append(f"{task}: {len(seeds)} seeds (protocol: {PROTOCOL_SEEDS}, minimum 3): low statistical power.")
        power = ((((results.get("stats") or {}).get("tasks") or {}).get(task) or {}).get("power") or {}).get("text")
        if power:
            items.append(f"{task} power: {power}.")
        truncated = max((int((r.get("test") or {}).get("truncated") or 0) for r in t["runs"]), default=0)
        if truncated:
            n_test = t["runs"][0].get("test") or {}
            items.append(
                f"{task}: up to {truncated} of {n_test.get('n', n_test.get('total', '?'))} test prompts "
                "per run had their context cut to fit the max length (§4)."
            )
    items += (
        [
            f"Departs from the protocol: {d['key']} = {_value(d['value'])} (STUDY.md {d['section']}: "
            f"{_value(d['protocol'])})."
            for d in departures(cfg)
        ]
        if cfg
        else []
    )
    items += _subsample_notes(results) + provenance_mismatches(results)
    items += [f"Missing: {describe_missing(m)}" for m in results["missing"]]
    items += list(results.get("notes") or []) + [f"stats: {n}" for n in (results.get("stats") or {}).get("notes") or []]
    s.blocks.append(Callout("note", "Read the results with these in mind", items or ["none recorded"]))
    return s
