"""Stage ``data`` (§3, §7), per task: load, leakage checks (fatal overlaps stop the study), statistics and the
token-length figure, and the model-free baselines — scored on the same (possibly subsampled) splits as the
tuned models, so the validity gate and the report compare like with like."""

from __future__ import annotations

from lorascope.baselines.run import run_baselines
from lorascope.data.figures import length_histogram
from lorascope.data.leakage import check_leakage
from lorascope.data.load import subsample, task_data
from lorascope.data.stats import dataset_stats, split_token_lengths
from lorascope.io import atomic_write_json
from lorascope.manifest import run_manifest
from lorascope.models.tokenizer import tokenizer_for
from lorascope.results import layout
from lorascope.study.runner import JobContext
from lorascope.study.stage import Stage


def run(ctx: JobContext, task: str) -> dict:
    cfg, out = ctx.cfg, layout.task_dir(ctx.out_dir, task)
    step = ctx.step
    with run_manifest(out, cfg, command=f"data-stage {task}", extra={"identity": ctx.job.key}) as manifest:
        step(f"{task}: loading data")
        data = task_data(cfg, task, data_dir=ctx.data_dir)
        manifest["data"] = data.describe()
        manifest["data_files"] = [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in data.files]
        step(f"{task}: leakage checks")
        leakage = check_leakage(data)
        atomic_write_json(layout.data_file(ctx.out_dir, task, "leakage"), leakage)
        step(f"{task}: statistics")
        tokenizer = tokenizer_for(cfg.model)
        scored = subsample(data, cfg.data.subsample_caps(task), cfg.seeds.split)  # = task_data(..., subsample=True)
        lengths = split_token_lengths(data, tokenizer)
        stats = dataset_stats(data, seed=cfg.seeds.split, n_samples=cfg.data.stats_samples, tokenizer=tokenizer,
                              max_length=cfg.data.max_length, max_new_tokens=cfg.data.max_new_tokens, used=scored,
                              lengths=lengths)
        atomic_write_json(layout.data_file(ctx.out_dir, task, "data_stats"), stats)
        length_histogram({split: full for split, (_, full) in lengths.items()}, cfg.data.max_length,
                         f"{task} ({data.split_scheme}): token lengths", out / layout.TOKEN_LENGTHS_FIGURE)
        step(f"{task}: baselines")
        baselines = run_baselines(scored, cfg.baselines, seed=cfg.seeds.baselines)
        atomic_write_json(layout.data_file(ctx.out_dir, task, "baselines"), baselines)
    return {"task": task, "split_scheme": data.split_scheme, "sizes": data.sizes(), "leakage_ok": leakage["ok"]}


STAGE = Stage(
    name="data", title="data", reads=("model", "data", "baselines", "seeds.split", "seeds.baselines"),
    fan_out=lambda cfg: [{"task": t} for t in cfg.data.tasks], job_name=lambda p: f"data-{p['task']}", run=run,
    role="vm1", report=("data", "baselines"), cost=lambda model, p: model.cpu("data"))
