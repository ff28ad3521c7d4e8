"""``lorascope plan`` against a measured study run, stage by stage (issue 15.4). CPU only, no GPU, a few seconds.
Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED if run on the GPU image (lorascope.config needs pydantic);
it is meant for this machine's .venv, where everything is installed.

    python benchmarks/plan_vs_measured.py /work/.device/4/per_job_times.json [--json OUT.json]

Input: the ``per_job_times.json`` that ``benchmarks/ray_multigpu.py`` writes (issue 15.3's two-node Ray run): its
``config`` (the override list the run applied to ``configs/study.yaml``) and per job the worker-side seconds, node,
start, attempts and, for training jobs, steps / tokens / step seconds.

What it does:
1. Rebuilds the run's config (``configs/study.yaml`` + the file's overrides) and its DAG; job names must match.
   Two things about the run that the config does not say are taken from the file, and printed: the model shape
   (the run's model folder lived on the GPU machine; the Sheared-LLaMA-1.3B shape, which the run used) and the
   synthetic data's mean tokens per example (training tokens / (steps × batch)); the split sizes are the
   subsample caps (the synthetic mirror is larger than every cap).
2. Predicts every job with the plan's coded assumptions (``plan_assumptions.py``), the cold start charged to each
   node's first GPU job, and prints per stage: jobs, measured s, predicted s, ratio, within ±30%; then per job.
   Measured = the job's own clock on its last attempt (a killed attempt's lost seconds are listed, not added).
3. Re-fits the fixed costs on this file (``plan_calibrate``) and prints them next to the coded values.
4. Cross-task check (out of sample): fixed costs fitted on one task's jobs only, predicting the other task's.
5. The simulated 2-GPU schedule (``study/schedule.py``) against the measured study span.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lorascope.config import load_config  # noqa: E402  (after the sys.path set-up above)
from lorascope.study.jobs import build_study_dag  # noqa: E402
from lorascope.study.plan import SHEARED_1P3B, CostModel  # noqa: E402
from lorascope.study.plan_assumptions import Assumptions  # noqa: E402
from lorascope.study.plan_calibrate import calibrate, first_gpu_jobs, predicted_seconds  # noqa: E402
from lorascope.study.schedule import simulate  # noqa: E402

TOLERANCE = 0.30
STAGE_ORDER = ("data", "sanity", "zero_shot", "hpo", "train", "weights", "drift", "serve", "stats", "report")


def run_assumptions(cfg, rows: list[dict], base: Assumptions) -> Assumptions:
    """The coded assumptions with the run's data: synthetic tokens per example, split sizes = the caps."""
    tokens = dict(base.tokens_per_example)
    for task in cfg.data.tasks:
        mine = [r["training"] for r in rows if r.get("task") == task and r.get("kind") in ("train", "hpo")
                and r.get("training")]
        if mine:
            batch = cfg.train.effective_batch
            tokens[task] = round(sum(t["tokens"] for t in mine) / sum(t["steps"] * batch for t in mine), 1)
    sizes = {task: {split: cfg.data.subsample_caps(task).get(split) or base.split_sizes[task][split]
                    for split in ("train", "validation", "test")} for task in base.split_sizes}
    return replace(base, tokens_per_example=tokens, split_sizes=sizes)


def stage_table(rows: list[dict], predicted: dict[str, float], dag) -> list[dict]:
    out = []
    for kind in sorted({dag[r["job"]].kind for r in rows}, key=lambda k: (STAGE_ORDER + (k,)).index(k)):
        mine = [r for r in rows if dag[r["job"]].kind == kind]
        measured, pred = sum(r["seconds"] for r in mine), sum(predicted[r["job"]] for r in mine)
        ratio = pred / measured if measured else float("nan")
        out.append({"stage": kind, "jobs": len(mine), "measured_s": measured, "predicted_s": pred, "ratio": ratio,
                    "within": abs(ratio - 1) <= TOLERANCE})
    return out


def print_stage_table(table: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| stage | jobs | measured s | predicted s | ratio | within ±30%? |")
    print("|---|---:|---:|---:|---:|---|")
    for t in table:
        print(f"| {t['stage']} | {t['jobs']} | {t['measured_s']:.1f} | {t['predicted_s']:.1f} | {t['ratio']:.2f} | "
              f"{'yes' if t['within'] else '**no**'} |")
    m, p = sum(t["measured_s"] for t in table), sum(t["predicted_s"] for t in table)
    print(f"| all | {sum(t['jobs'] for t in table)} | {m:.1f} | {p:.1f} | {p / m:.2f} | "
          f"{'yes' if abs(p / m - 1) <= TOLERANCE else '**no**'} |")


def print_jobs(rows: list[dict], predicted: dict[str, float], model: CostModel, dag) -> None:
    cold = first_gpu_jobs(rows, dag)
    print("\nPer job (cold = the node's first GPU job, charged the cold start)\n")
    print("| job | node | measured s | predicted s | ratio | largest predicted parts |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        parts = sorted(model.job_parts(dag[r["job"]]).items(), key=lambda kv: -kv[1])[:3]
        note = ", ".join(f"{k} {v:.1f}" for k, v in parts if v >= 0.05)
        note += ", cold start" if r["job"] in cold else ""
        lost = (r.get("killed_attempt") or {}).get("lost_seconds")
        extra = f" (retried; killed attempt lost {lost} s)" if lost else ""
        print(f"| {r['job']}{extra} | {r.get('node')} | {r['seconds']:.1f} | {predicted[r['job']]:.1f} | "
              f"{predicted[r['job']] / r['seconds']:.2f} | {note} |")


def print_constants(coded: Assumptions, fitted: Assumptions, used: dict[str, str]) -> None:
    print("\nFixed costs: coded (plan_assumptions.py) vs fitted on this file (plan_calibrate.py)\n")
    print("| constant | coded | fitted here | from |")
    print("|---|---:|---:|---|")
    for key, source in used.items():
        name, _, sub = key.partition("[")
        c, f = getattr(coded, name), getattr(fitted, name)
        if sub:
            c, f = c[sub.rstrip("]")], f[sub.rstrip("]")]
        print(f"| {key} | {c:.3g} | {f:.3g} | {source} |")


def cross_task(rows: list[dict], cfg, dag, base: Assumptions, all_fitted: list[str]) -> list[dict]:
    """Fixed costs fitted on one task's jobs (plus the task-less ones), predicting the other task's jobs. A constant
    the subset cannot fit keeps its coded value (``kept``)."""
    out = []
    tasks = list(cfg.data.tasks)
    cold = first_gpu_jobs(rows, dag)  # the run's first job per node, whichever task it belongs to
    for fit_on, other in ((tasks[0], tasks[1]), (tasks[1], tasks[0])) if len(tasks) == 2 else ():
        fit_rows = [r for r in rows if r.get("task") in (fit_on, None)]
        fitted, used = calibrate(fit_rows, cfg, dag, base, SHEARED_1P3B, cold=cold)
        kept = [k for k in all_fitted if k not in used]
        test_rows = [r for r in rows if r.get("task") == other]
        pred = predicted_seconds(rows, dag, CostModel(cfg, fitted, SHEARED_1P3B), cold)
        for t in stage_table(test_rows, pred, dag):
            out.append({"fitted_on": fit_on, "predicts": other, "kept": kept, **t})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("per_job_times", type=Path, help="per_job_times.json of a measured study run")
    p.add_argument("--json", type=Path, help="also write the tables here")
    args = p.parse_args()
    doc = json.loads(args.per_job_times.read_text())
    cfg = load_config(REPO / "configs" / "study.yaml", doc["config"])
    dag = build_study_dag(cfg, Path("/nonexistent/study"))
    rows = [r for r in doc["jobs"] if r["job"] in dag.jobs]
    missing = sorted(set(dag.jobs) - {r["job"] for r in rows})
    unknown = sorted({r["job"] for r in doc["jobs"]} - set(dag.jobs))
    print(f"{args.per_job_times}: {doc.get('machine', '?')}; {len(rows)} jobs matched to the rebuilt DAG"
          + (f"; not in the file: {', '.join(missing)}" if missing else "")
          + (f"; not in the DAG (ignored): {', '.join(unknown)}" if unknown else ""))
    a = run_assumptions(cfg, rows, Assumptions())
    model = CostModel(cfg, a, SHEARED_1P3B)
    per_example = ", ".join(f"{t} {n:.1f}" for t, n in a.tokens_per_example.items() if t in cfg.data.tasks)
    sizes = "; ".join(f"{t} " + ", ".join(f"{split} {n:,}" for split, n in s.items())
                      for t, s in a.split_sizes.items() if t in cfg.data.tasks)
    print(f"Run data taken from the file: tokens per example {per_example}; split sizes = subsample caps "
          f"({sizes}); model shape {SHEARED_1P3B.source} "
          f"({model.n / 1e6:,.1f} M parameters, {cfg.model.dtype}); train.compile={cfg.train.compile}.")
    predicted = predicted_seconds(rows, dag, model)
    table = stage_table(rows, predicted, dag)
    print_stage_table(table, "Plan vs measured per stage (sum of the stage's job seconds)")
    print_jobs(rows, predicted, model, dag)
    fitted, used = calibrate(rows, cfg, dag, a, SHEARED_1P3B)
    print_constants(a, fitted, used)
    cross = cross_task(rows, cfg, dag, a, list(used))
    if cross:
        print("\nCross-task check: fixed costs fitted on one task's jobs (+ serving, statistics, report), predicting "
              "the other task's")
        for fit_on in dict.fromkeys(c["fitted_on"] for c in cross):
            kept = next(c["kept"] for c in cross if c["fitted_on"] == fit_on)
            print(f"  fitted on {fit_on}: " + (f"not fittable from its jobs, kept as coded: {', '.join(kept)}"
                                               if kept else "every constant fitted"))
        print()
        print("| fitted on → predicts | stage | jobs | measured s | predicted s | ratio | within ±30%? |")
        print("|---|---|---:|---:|---:|---:|---|")
        for c in cross:
            print(f"| {c['fitted_on']} → {c['predicts']} | {c['stage']} | {c['jobs']} | {c['measured_s']:.1f} | "
                  f"{c['predicted_s']:.1f} | {c['ratio']:.2f} | {'yes' if c['within'] else '**no**'} |")
    seconds = {name: model.job_seconds(dag[name]) for name in dag.jobs}
    sched = simulate(dag, seconds, 2, cold_start_s=a.node_cold_start_s).summary()
    span = max(r["end_s"] for r in rows) - min(r["start_s"] for r in rows)
    print(f"\nSchedule: simulated on 2 GPUs {sched['wall_s']:.0f} s (no node kill) vs measured study span {span:.0f} s "
          f"(first job start to last job end; the run lost node B mid-training and replaced it).")
    if args.json:
        args.json.write_text(json.dumps({"stages": table, "predicted": predicted, "cross_task": cross,
                                         "fitted": asdict(fitted), "fitted_from": used, "schedule_2gpu": sched,
                                         "measured_span_s": span}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
