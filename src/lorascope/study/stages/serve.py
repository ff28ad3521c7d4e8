"""Stage ``serve`` (§10), one job: what serving the LoRA adapters unmerged costs against merging them
(``lorascope.serve.folder_bench``): ``serve/serve.json``, ``requests.csv`` and figures. Nothing to serve in a
study without LoRA, so the stage is left out there."""

from __future__ import annotations

from lorascope.results import layout
from lorascope.study.ingest import file_ingester, ingest_serve
from lorascope.study.runner import JobContext
from lorascope.study.stage import After, Stage


def run(ctx: JobContext) -> dict:
    from lorascope.serve.folder_bench import run_folder_benchmark

    run_folder_benchmark(ctx.cfg, ctx.out_dir, identity=ctx.job.key, progress=ctx.step, data_dir=ctx.data_dir)
    return {"path": layout.relative(ctx.out_dir, layout.serve_dir(ctx.out_dir) / "serve.json")}


ingest = file_ingester(ingest_serve, lambda out, p: layout.serve_dir(out) / "serve.json")


STAGE = Stage(
    name="serve", title="serving", reads=("training", "serve", "seeds.probe", "seeds.replicates"),
    fan_out=lambda cfg: [{}], job_name=lambda p: "serve", run=run, after=(After("train"),), role="vm3", gpus=1,
    ingest=ingest,
    report=("deployment",), include=lambda cfg: "lora" in cfg.train.methods,
    cost=lambda model, p: model.serve())
