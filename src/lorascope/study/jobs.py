"""The study's jobs (§14): ``build_study_dag`` wires the existing stage functions into one DAG.

data (per task: load, leakage, stats, baselines) → sanity (task × method) → HPO (task × method) → final
runs (task × method × replicate) → weights (per task), drift (per task), serving → statistics → report;
zero-shot (per task) needs only the data. Every HPO job depends on *every* sanity gate, so a failed gate
cancels the whole grid before any of it runs (a failed gate stops the study).

The analysis stages (drift, serving, statistics, report) are included only when their module is
importable (``find_spec``) and are imported only inside the job, where it runs.

Config each kind reads (its ``relevant`` hash, part of the key): data → model, data, split/baseline seeds,
baselines; training kinds and weights → ``result_hash`` (what the runs' own identities use); drift, serve,
stats → ``section_hash`` over their section; report → all analysis sections and the output note.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lorascope.config import config_hash, result_hash, section_hash
from lorascope.config.schema import StudyConfig
from lorascope.errors import LorascopeError
from lorascope.study.dag import Dag
from lorascope.study.runner import JobContext

HERE = "lorascope.study.jobs"
OPTIONAL_STAGES = {"drift": ("lorascope.study.drift_stage", "run_drift_stage"),
                   "serve": ("lorascope.serve.stage", "run_serve_stage"),
                   "stats": ("lorascope.stats.stage", "run_stats_stage"),
                   "report": ("lorascope.report.stage", "run_report_stage")}
METHOD_ROLE = {"ft": "vm1", "lora": "vm2", "lora_qv": "vm2"}  # vm1: FT training; vm2: LoRA training + HPO


def stage_available(kind: str) -> bool:
    module = OPTIONAL_STAGES[kind][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package does not exist yet
        return False


def _optional_stage(kind: str):
    module, fn = OPTIONAL_STAGES[kind]
    return getattr(importlib.import_module(module), fn)


def data_hash(cfg: StudyConfig) -> str:
    """What the data stage reads: the model (tokenizer), data settings, its seeds and the baselines."""
    tree = cfg.model_dump(mode="json")
    return config_hash({"model": tree["model"], "data": tree["data"], "baselines": tree["baselines"],
                        "seeds": {k: tree["seeds"][k] for k in ("split", "baselines")}})


def build_study_dag(cfg: StudyConfig, out_dir: str | Path | None = None) -> Dag:
    """The whole study as a DAG. ``out_dir`` is where it will run; it is part of no key (a moved study keeps them)."""
    dag, tasks, methods, reps = Dag(), cfg.data.tasks, cfg.train.methods, cfg.seeds.replicates
    rh = result_hash(cfg)
    for task in tasks:
        dag.add(f"data-{task}", "data", f"{HERE}:data_job", params={"task": task}, role="vm1", relevant=data_hash(cfg))
    sanity = [dag.add(f"sanity-{t}-{m}", "sanity", f"{HERE}:sanity_job", params={"task": t, "method": m},
                      deps=[f"data-{t}"], role=METHOD_ROLE[m], num_gpus=1, relevant=rh).name
              for t in tasks for m in methods]
    for task in tasks:
        dag.add(f"zero_shot-{task}", "zero_shot", f"{HERE}:zero_shot_job", params={"task": task},
                deps=[f"data-{task}"], role="vm3", num_gpus=1, relevant=rh)
    for t in tasks:
        for m in methods:
            dag.add(f"hpo-{t}-{m}", "hpo", f"{HERE}:hpo_job", params={"task": t, "method": m},
                    deps=[f"data-{t}", *sanity], role="vm2", num_gpus=1, relevant=rh)
    train = {(t, m, r): dag.add(f"train-{t}-{m}-r{r}", "train", f"{HERE}:train_job",
                                params={"task": t, "method": m, "replicate": r}, deps=[f"hpo-{t}-{m}"],
                                role=METHOD_ROLE[m], num_gpus=1, relevant=rh).name
             for t in tasks for m in methods for r in reps}
    analysis = []
    for t in tasks:
        # The weights stage reads the lowest replicate's FT and LoRA runs (weights_stage.final_run).
        firsts = [train[(t, m, min(reps))] for m in ("ft", "lora") if m in methods]
        if firsts:
            analysis.append(dag.add(f"weights-{t}", "weights", f"{HERE}:weights_job", params={"task": t},
                                    deps=firsts, role="vm3", num_gpus=1, relevant=section_hash(cfg)).name)
        if stage_available("drift"):
            analysis.append(dag.add(f"drift-{t}", "drift", f"{HERE}:drift_job", params={"task": t},
                                    deps=[n for (tt, _, _), n in train.items() if tt == t], role="vm3",
                                    num_gpus=1, relevant=section_hash(cfg, "drift")).name)
    # Serving compares LoRA adapters with their merged weights: nothing to serve in an FT-only study.
    if stage_available("serve") and "lora" in methods:
        analysis.append(dag.add("serve", "serve", f"{HERE}:serve_job", deps=list(train.values()), role="vm3",
                                num_gpus=1, relevant=section_hash(cfg, "serve")).name)
    upstream = [j.name for j in dag.topological()]
    if stage_available("stats"):
        dag.add("stats", "stats", f"{HERE}:stats_job", deps=upstream, role="vm3", relevant=section_hash(cfg, "stats"))
    if stage_available("report"):
        note = config_hash({"note": cfg.output.note, "analysis": section_hash(cfg, "drift", "serve", "stats")})
        dag.add("report", "report", f"{HERE}:report_job", deps=[j.name for j in dag.topological()], role="vm3",
                relevant=note)
    return dag


# -- job functions: thin wrappers over the stages; each returns a small JSON summary ---------------------------

def data_job(ctx: JobContext, task: str) -> dict:
    from lorascope.models.tokenizer import load_tokenizer
    from lorascope.study.foundation import run_task_data_stage

    cfg = ctx.cfg
    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.eos_token)
    res = run_task_data_stage(cfg, task, ctx.out_dir / task, data_dir=ctx.data_dir, tokenizer=tok,
                              progress=ctx.progress)
    return {"task": task, "split_scheme": res["data"]["split_scheme"], "sizes": res["data"]["sizes"],
            "leakage_ok": res["leakage"]["ok"]}


def sanity_job(ctx: JobContext, task: str, method: str) -> dict:
    from lorascope.train.sanity import SanityGateFailed, run_sanity

    folder = ctx.out_dir / task / "sanity" / method
    if ctx.progress:
        ctx.progress(f"{task}: sanity gate ({method})")
    v = run_sanity(ctx.cfg, task, method, folder, data_dir=ctx.data_dir)
    if not v["passed"]:
        loss = "n/a" if v["final_loss"] is None else f"{v['final_loss']:.4f}"
        raise SanityGateFailed(
            f"sanity gate failed for {task}/{method}: {v['metric']} {v['score']:.0f}% after {v['steps']} steps "
            f"(final loss {loss}); loss curve in {folder / 'sanity.json'}")
    return {k: v[k] for k in ("passed", "score", "metric", "steps", "final_loss", "lr")}


def zero_shot_job(ctx: JobContext, task: str) -> dict:
    from lorascope.train.zero_shot import run_zero_shot

    if ctx.progress:
        ctx.progress(f"{task}: base model zero-shot")
    r = run_zero_shot(ctx.cfg, task, ctx.out_dir / task / "zero_shot", data_dir=ctx.data_dir)
    return {"primary": r["primary"], "test": r["test"]}


def hpo_job(ctx: JobContext, task: str, method: str) -> dict:
    from lorascope.train.hpo import run_hpo

    if ctx.progress:
        ctx.progress(f"{task}: HPO ({method})")
    h = run_hpo(ctx.cfg, task, method, ctx.out_dir / task / "hpo" / method, data_dir=ctx.data_dir)
    return {k: h[k] for k in ("task", "method", "metric", "best_lr", "best_value", "trials")}


def train_job(ctx: JobContext, task: str, method: str, replicate: int) -> dict:
    from lorascope.study.selection import hpo_choice
    from lorascope.train.run import RunSpec, run_training

    # The learning rate is chosen at run time by this (task, method)'s HPO job, a dependency of this one.
    lr = hpo_choice(ctx.out_dir, task, method)
    if lr is None:
        raise LorascopeError(f"{ctx.out_dir / task / 'hpo' / method / 'hpo.json'} not found: run the HPO job first")
    spec = RunSpec(task, method, lr, replicate=replicate)
    if ctx.progress:
        ctx.progress(f"{task}: final run {spec.name}")
    r = run_training(ctx.cfg, spec, ctx.out_dir / task / "runs" / spec.name, data_dir=ctx.data_dir)
    return {"run": spec.name, "run_dir": f"{task}/runs/{spec.name}", "lr": lr, "primary": r["primary"],
            "validation_best": r["validation_best"], "test_primary": r["test"][r["primary"]]}


def weights_job(ctx: JobContext, task: str) -> dict:
    from lorascope.study.weights_stage import run_weights_stage

    res = run_weights_stage(ctx.cfg, ctx.out_dir, progress=ctx.progress, data_dir=ctx.data_dir,
                            tasks=[task]).get(task)
    return {"task": task, "runs": res["runs"], "intruders_total": res["intruders_total"]} if res else {"task": task}


def drift_job(ctx: JobContext, task: str) -> dict:
    _optional_stage("drift")(ctx.cfg, ctx.out_dir, task, data_dir=ctx.data_dir, progress=ctx.progress)
    return {"task": task, "path": f"{task}/drift/drift.json"}


def serve_job(ctx: JobContext) -> dict:
    _optional_stage("serve")(ctx.cfg, ctx.out_dir, progress=ctx.progress)
    return {"path": "serve/serve.json"}


def stats_job(ctx: JobContext) -> dict:
    _optional_stage("stats")(ctx.cfg, ctx.out_dir)
    return {}


def report_job(ctx: JobContext) -> dict:
    path = _optional_stage("report")(ctx.cfg, ctx.out_dir)
    return {"path": str(Path(path).relative_to(ctx.out_dir))} if isinstance(path, (str, Path)) else {}
