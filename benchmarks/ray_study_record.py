"""What a finished (or stopped) study folder says about its run on Ray: per-job times and placement, training
throughput, the integrity checks after a node kill, GPU utilisation per node over time, and the report's verdict;
and, before the run, a simulated schedule of the study DAG on two one-GPU nodes (the printed plan).

Used by benchmarks/ray_multigpu.py after the study; also runs on its own over a copied study folder
(``python benchmarks/ray_study_record.py STUDY_DIR``: the checks and per-job times, no GPU samples). Sources:
- ``<study>/jobs/<job>/manifest.json`` — status, attempt, node, Ray GPU ids, ``started``/``finished`` (ISO, 1 s);
- the driver's events — the same run_job's sub-second ``started``/``finished`` and the submission time;
- ``<task>/{runs,hpo,sanity}/.../metrics.jsonl`` — one line per optimizer step (``grad_norm`` marks a step line);
- ``results.db`` (SQLite, read with the standard library) — the rows the driver ingested;
- ``report/report.md`` — the verdict section.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed — this file imports nothing from lorascope.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import sys
from datetime import datetime
from pathlib import Path

FINAL_KINDS = ("data", "sanity", "zero_shot", "hpo", "train", "weights", "drift", "serve", "stats", "report")


def iso_ts(s: str | None) -> float | None:
    try:
        return datetime.fromisoformat(s).timestamp() if s else None
    except ValueError:
        return None


def manifests(study: Path) -> dict[str, dict]:
    out = {}
    for man in sorted((study / "jobs").glob("*/manifest.json")):
        try:
            out[man.parent.name] = json.loads(man.read_text())
        except (OSError, ValueError):
            out[man.parent.name] = {"status": "unreadable"}
    return out


def _records(path: Path) -> list[dict]:
    """Every parseable JSON line of a metrics.jsonl (none when the file is absent; a torn last line is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def step_lines(path: Path) -> list[dict]:
    """The optimizer-step records of a metrics.jsonl (validation and event lines carry no ``grad_norm``)."""
    return [r for r in _records(path) if "grad_norm" in r]


def _events(path: Path) -> list[dict]:
    return [r for r in _records(path) if "event" in r]


def run_folders(study: Path, job: dict) -> list[Path]:
    """The folders a training-kind job wrote its metrics.jsonl into."""
    p = (job.get("job") or {}).get("params") or {}
    kind, task, method = (job.get("job") or {}).get("kind"), p.get("task"), p.get("method")
    if kind == "train":
        return sorted((study / task / "runs").glob(f"{task}-{method}-*-r{p['replicate']}"))
    if kind == "hpo":
        return sorted(d for d in (study / task / "hpo" / method).glob("*") if (d / "metrics.jsonl").is_file())
    if kind == "sanity":
        return [study / task / "sanity" / method]
    return []


def throughput(study: Path, job: dict) -> dict | None:
    """Steps, trained tokens and summed step seconds (forward + backward + optimizer, no I/O) of a training job."""
    folders = run_folders(study, job)
    steps = [r for f in folders for r in step_lines(f / "metrics.jsonl")]
    if not steps:
        return None
    secs = sum(r.get("step_time_s", 0.0) for r in steps)
    tokens = sum(r.get("tokens", 0) for r in steps)
    return {"steps": len(steps), "tokens": tokens, "step_seconds": round(secs, 3),
            "tokens_per_s": round(tokens / secs) if secs > 0 else None,
            "peak_mem_gib": max((r.get("peak_mem_gib") or 0.0) for r in steps) or None}


def job_table(study: Path, events: list[dict], labels: dict[str, str], node_gpu: dict[str, int | None],
              t0: float, samples: list[tuple] = (), kill: dict | None = None, predicted: dict | None = None) -> list[dict]:
    """One row per job folder: placement, attempts, times (s from ``t0``), utilisation of its GPU, throughput."""
    submitted = {e["job"]: e["t"] for e in events if e["event"] == "started"}
    outcome = {e["job"]: e for e in events if e["event"] in ("completed", "failed")}
    rows = []
    for name, rec in manifests(study).items():
        job = rec.get("job") or {}
        ev = outcome.get(name, {})
        start = ev.get("started") or iso_ts(rec.get("started"))
        end = ev.get("finished") or iso_ts(rec.get("finished"))
        label = labels.get(rec.get("node"), (rec.get("node") or "?")[:12])
        row = {"job": name, "kind": job.get("kind"), "task": (job.get("params") or {}).get("task"),
               "method": (job.get("params") or {}).get("method"), "role": job.get("role"),
               "status": rec.get("status"), "node": label, "gpu": node_gpu.get(label), "ray_gpu_ids": rec.get("gpus"),
               "attempts": rec.get("attempt"), "submitted_s": _rel(submitted.get(name), t0),
               "start_s": _rel(start, t0), "end_s": _rel(end, t0),
               "seconds": round(end - start, 2) if start and end else None,
               "manifest_seconds": _span(rec.get("started"), rec.get("finished"))}
        if row["submitted_s"] is not None and row["start_s"] is not None:
            row["queued_s"] = round(row["start_s"] - row["submitted_s"], 2)
        if kill and kill.get("job") == name:
            row["killed_attempt"] = {"node": "B", "started_s": _rel(kill.get("attempt1_started"), t0),
                                     "killed_s": _rel(kill.get("killed_at"), t0),
                                     "lost_seconds": round(kill["killed_at"] - kill["attempt1_started"], 2)
                                     if kill.get("attempt1_started") and kill.get("killed_at") else None}
        if samples and row["gpu"] is not None and start and end:
            u = [s[2] for s in samples if start <= s[0] <= end and s[1] == row["gpu"]]
            row["gpu_util_mean"] = round(statistics.mean(u), 1) if u else None
        if row["kind"] in ("train", "hpo", "sanity"):
            row["training"] = throughput(study, rec)
        if predicted and name in predicted:
            row["plan_predicted_s"] = round(predicted[name], 1)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["start_s"] is None, r["start_s"] or 0.0, r["job"]))


def _rel(t: float | None, t0: float) -> float | None:
    return round(t - t0, 2) if t else None


def _span(a: str | None, b: str | None) -> float | None:
    ta, tb = iso_ts(a), iso_ts(b)
    return round(tb - ta, 1) if ta and tb else None


def stage_table(rows: list[dict]) -> dict[str, dict]:
    """Per kind: jobs, first start → last end (span) and the sum of job seconds."""
    stages: dict[str, dict] = {}
    for r in rows:
        if r["start_s"] is None or r["end_s"] is None:
            continue
        st = stages.setdefault(r["kind"], {"jobs": 0, "first_start_s": r["start_s"], "last_end_s": r["end_s"],
                                           "job_seconds": 0.0, "predicted_s": 0.0})
        st["jobs"] += 1
        st["first_start_s"] = min(st["first_start_s"], r["start_s"])
        st["last_end_s"] = max(st["last_end_s"], r["end_s"])
        st["job_seconds"] = round(st["job_seconds"] + (r["seconds"] or 0.0), 1)
        st["predicted_s"] = round(st["predicted_s"] + (r.get("plan_predicted_s") or 0.0), 1)
    for st in stages.values():
        st["span_s"] = round(st["last_end_s"] - st["first_start_s"], 1)
    order = {k: i for i, k in enumerate(FINAL_KINDS)}
    return dict(sorted(stages.items(), key=lambda kv: (order.get(kv[0], 99), kv[1]["first_start_s"])))


# -- the plan: a simulated schedule ------------------------------------------------------------------------------

ROLE_NODE = {"vm1": "A", "vm3": "A", "vm2": "B"}


def job_estimate(job, table: dict) -> float:
    return table.get(f"{job.kind}/{job.params.get('method')}", table.get(job.kind, 10.0))


def simulate(dag, table: dict, kill_extra_s: float = 0.0) -> dict[str, tuple[float, float, str]]:
    """Greedy list schedule like the Ray executor's: ≤ 1 GPU job per node, a job on its role's node when that is
    free first, else on the other (soft placement); CPU jobs start when ready. The first final run on node B loses
    ``kill_extra_s`` (the killed attempt's work + the time until B' joins). Returns job → (start, end, node)."""
    free = {"A": 0.0, "B": 0.0}
    done: dict[str, tuple[float, float, str]] = {}
    killed = kill_extra_s <= 0
    order = {j.name: i for i, j in enumerate(dag.topological())}
    pending = list(dag.topological())
    while pending:
        ready = [(max((done[d][1] for d in j.deps), default=0.0), order[j.name], j) for j in pending
                 if all(d in done for d in j.deps)]
        t_ready, _, job = min(ready, key=lambda x: x[:2])
        pending.remove(job)
        dur = job_estimate(job, table)
        if not job.num_gpus:
            done[job.name] = (t_ready, t_ready + dur, ROLE_NODE[job.role])
            continue
        pref = ROLE_NODE[job.role]
        other = "B" if pref == "A" else "A"
        node = pref if max(t_ready, free[pref]) <= max(t_ready, free[other]) else other
        start = max(t_ready, free[node])
        if not killed and job.kind == "train" and node == "B":
            killed, dur = True, dur + kill_extra_s
        done[job.name] = (start, start + dur, node)
        free[node] = start + dur
    return done



# -- integrity after the kill -----------------------------------------------------------------------------------

def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def integrity(study: Path, expected_jobs: list[str], events: list[dict], tasks: list[str], methods: list[str],
              replicates: list[int], max_steps: int | None, killed_job: str | None = None) -> list[dict]:
    """Nothing lost, nothing duplicated: every job completed exactly once; each final run has one folder with one
    results.json, one metrics line per step 1..N, the expected attempt count; the store holds each run once."""
    checks = []
    done = [e["job"] for e in events if e["event"] == "completed"]
    bad = [e["job"] for e in events if e["event"] in ("failed", "cancelled")]
    missing = sorted(set(expected_jobs) - set(done))
    twice = sorted({j for j in done if done.count(j) > 1})
    checks.append(_check("every DAG job completed exactly once", not missing and not twice and not bad,
                         f"{len(set(done))}/{len(expected_jobs)} completed; missing {missing or 'none'}; "
                         f"reported twice {twice or 'none'}; failed/cancelled {bad or 'none'}"))
    mans = manifests(study)
    for task in tasks:
        for method in methods:
            for rep in replicates:
                checks.append(_final_run_check(study, mans, task, method, rep, max_steps, killed_job))
    checks += _store_checks(study, expected_jobs, methods, len(tasks) * len(methods) * len(replicates))
    return checks


def _final_run_check(study: Path, mans: dict, task: str, method: str, rep: int, max_steps: int | None,
                     killed_job: str | None) -> dict:
    job = f"train-{task}-{method}-r{rep}"
    folders = sorted((study / task / "runs").glob(f"{task}-{method}-*-r{rep}"))
    results = [f for f in folders if (f / "results.json").is_file()]
    problems = []
    if len(folders) != 1 or len(results) != 1:
        problems.append(f"{len(folders)} run folder(s), {len(results)} results.json")
    steps_done = None
    if results:
        res = json.loads((results[0] / "results.json").read_text())
        steps_done = res.get("steps")
        if max_steps is not None and steps_done != max_steps:
            problems.append(f"results.json says {steps_done} steps, config {max_steps}")
        lines = [r["step"] for r in step_lines(results[0] / "metrics.jsonl")]
        if lines != list(range(1, (steps_done or 0) + 1)):
            dup = sorted({s for s in lines if lines.count(s) > 1})
            problems.append(f"metrics.jsonl has {len(lines)} step lines for {steps_done} steps"
                            f"{f' (repeated steps {dup[:8]})' if dup else ''}")
    rec = mans.get(job, {})
    want = "≥ 2" if job == killed_job else "1"
    attempts = rec.get("attempt")
    if rec.get("status") != "completed":
        problems.append(f"job manifest status {rec.get('status')}")
    if (job == killed_job and (attempts or 0) < 2) or (job != killed_job and attempts != 1):
        problems.append(f"attempt {attempts}, expected {want}")
    resumed = [r.get("step") for r in _events(results[0] / "metrics.jsonl") if r.get("event") == "resumed"] if results else []
    detail = (f"{results[0].name if results else '-'}: {steps_done} steps, one metrics line each, attempt {attempts}"
              + (f", resumed from step {resumed}" if resumed else "") if not problems else "; ".join(problems))
    return _check(f"{job}: one results.json, one metrics line per step, attempts {want}", not problems, detail)


def _store_checks(study: Path, expected_jobs: list[str], methods: list[str], n_final: int) -> list[dict]:
    path = study / "results.db"
    if not path.is_file():
        return [_check("results.db holds each job and run once", False, "no results.db")]
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        jobs = con.execute("SELECT name, status FROM jobs").fetchall()
        marks = ",".join("?" * len(methods))  # zero-shot rows (method base_zero_shot) are not final runs
        runs = con.execute(f"SELECT name, path FROM runs WHERE hpo = 0 AND method IN ({marks})", methods).fetchall()
        preds = con.execute("SELECT run, COUNT(*), COUNT(DISTINCT example_id) FROM predictions GROUP BY run").fetchall()
    finally:
        con.close()
    names = [n for n, _ in jobs]
    not_done = sorted(n for n, s in jobs if s != "completed")
    dup = sorted({n for n in names if names.count(n) > 1})
    missing = sorted(set(expected_jobs) - set(names))
    finals = [r for r, _ in runs]
    counts = {r: (n, d) for r, n, d in preds}
    # Each final run's predictions: unique example ids, exactly as many as its predictions_test.jsonl has lines.
    off = [f"{r} ({counts.get(r, (0, 0))[0]} rows, {_lines(study / path / 'predictions_test.jsonl')} in the file)"
           for r, path in runs if counts.get(r, (0, 0))[0] != counts.get(r, (0, -1))[1]
           or counts.get(r, (0, 0))[0] != _lines(study / path / "predictions_test.jsonl")]
    return [_check("results.db: one completed row per job", not (not_done or dup or missing),
                   f"{len(names)} rows; not completed {not_done or 'none'}; duplicated {dup or 'none'}; "
                   f"missing {missing or 'none'}"),
            _check("results.db: each final run once, one prediction per test example", len(finals) == n_final
                   and len(set(finals)) == len(finals) and not off,
                   f"{len(finals)} final runs (expected {n_final}); predictions off: {off or 'none'}")]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


# -- GPU utilisation, verdict ------------------------------------------------------------------------------------

def util_bins(samples: list[tuple], t0: float, t1: float, bin_s: float = 10.0) -> dict[int, list[dict]]:
    """Per GPU: mean utilisation and max memory in ``bin_s`` windows from ``t0`` (samples: ts, gpu, util, mem)."""
    out: dict[int, list[dict]] = {}
    for gpu in sorted({s[1] for s in samples}):
        mine = [s for s in samples if s[1] == gpu and t0 <= s[0] <= t1]
        bins: dict[int, list] = {}
        for s in mine:
            bins.setdefault(int((s[0] - t0) // bin_s), []).append(s)
        out[gpu] = [{"from_s": k * bin_s, "util": round(statistics.mean(x[2] for x in v), 1),
                     "mem_gib": round(max(x[3] for x in v) / 1024, 1)} for k, v in sorted(bins.items())]
    return out


def util_summary(samples: list[tuple], t0: float, t1: float) -> dict[int, dict]:
    out = {}
    for gpu in sorted({s[1] for s in samples}):
        s = [x for x in samples if x[1] == gpu and t0 <= x[0] <= t1]
        if s:
            out[gpu] = {"samples": len(s), "mean_util": round(statistics.mean(x[2] for x in s), 1),
                        "busy_fraction": round(sum(1 for x in s if x[2] > 0) / len(s), 2),
                        "max_util": max(x[2] for x in s), "max_mem_gib": round(max(x[3] for x in s) / 1024, 1)}
    return out


def verdict_page(report_md: Path) -> str | None:
    """The report's verdict: the callouts under the title (caveat, per-task gate) and the '## Verdict' section."""
    if not report_md.is_file():
        return None
    text = report_md.read_text()
    top = text.split("## Contents", 1)[0]
    m = re.search(r"^## Verdict.*?(?=^<a id=|^## (?!Verdict))", text, flags=re.DOTALL | re.MULTILINE)
    return (top.strip() + "\n\n" + (m.group(0).strip() if m else "(no '## Verdict' section in report.md)")).strip()


if __name__ == "__main__":
    study = Path(sys.argv[1])
    starts = [t for t in (iso_ts(m.get("started")) for m in manifests(study).values()) if t]
    rows = job_table(study, [], {}, {}, min(starts) if starts else 0.0)
    print(json.dumps({"jobs": rows, "stages": stage_table(rows)}, indent=1, default=str))
