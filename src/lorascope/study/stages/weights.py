"""Stage ``weights`` (§9), per task: ΔW structure of the lowest replicate's selected FT and LoRA runs, and the
DARE / magnitude-pruning curves on validation (``lorascope.weights.analysis``)."""

from __future__ import annotations

from lorascope.io import atomic_write_json
from lorascope.manifest import run_manifest
from lorascope.results import layout
from lorascope.results.selection import lowest_replicate_runs
from lorascope.study.ingest import file_ingester, ingest_weights
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage

LABELS = {"ft": "FT", "lora": "LoRA"}


def run(ctx: JobContext, task: str) -> dict:
    from lorascope.train.run import default_device
    from lorascope.weights.analysis import analyse, write_figures

    cfg = ctx.cfg
    lowest = lowest_replicate_runs(ctx.out_dir, task, cfg.seeds.replicates)
    chosen = {m: lowest[m] for m in LABELS if m in lowest}
    if not chosen:
        raise FileNotFoundError(f"{layout.runs_dir(ctx.out_dir, task)}: no completed final FT or LoRA run")
    runs = {LABELS[m]: (layout.saved_model_dir(r["path"], m), m) for m, r in chosen.items()}
    folder = layout.weights_dir(ctx.out_dir, task)
    with run_manifest(folder, cfg, command=f"weights {task}", extra={
            "identity": ctx.job.key, "runs": {LABELS[m]: str(r["path"]) for m, r in chosen.items()}}) as manifest:
        summary = analyse(cfg, task, runs, {LABELS[m]: r["name"] for m, r in chosen.items()},
                          seed=cfg.seeds.bootstrap, device=default_device(), data_dir=ctx.data_dir, step=ctx.step)
        manifest["figures"] = [layout.relative(ctx.out_dir, p) for p in write_figures(summary, folder / "figures")]
        atomic_write_json(folder / "weights.json", summary)
    return {"task": task, "runs": summary["runs"], "intruders_total": summary["intruders_total"]}


ingest = file_ingester(ingest_weights, lambda out, p: layout.weights_dir(out, p["task"]) / "weights.json")


def _lowest_ft_or_lora(mine: dict, theirs: dict, cfg) -> bool:
    return theirs["method"] in LABELS and theirs["replicate"] == min(cfg.seeds.replicates)


STAGE = Stage(
    name="weights", title="weights", reads=("training", "seeds.bootstrap", "seeds.replicates"),
    fan_out=lambda cfg: [{"task": t} for t in cfg.data.tasks], job_name=lambda p: f"weights-{p['task']}",
    run=run, after=(After("train", ("task",), _lowest_ft_or_lora),), role="vm3", gpus=1,
    ingest=ingest,
    report=("weights",), include=lambda cfg: bool(set(cfg.train.methods) & set(LABELS)),
    cost=lambda model, p: model.weights(p["task"]))
