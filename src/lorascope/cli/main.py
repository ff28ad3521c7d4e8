"""The ``lorascope`` command line: a thin layer over the library; each command names its stage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lorascope.cli import report_cmd, run_cmd, serve_cmd, similarity_cmd, stats_cmd, train_cmds
from lorascope.cli.common import console, print_json, resolve_config, results_config, user_errors
from lorascope.config import config_hash

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: statistics and leakage checks (STUDY.md §3).")
metrics_app = typer.Typer(no_args_is_help=True, help="Official metrics on prediction files.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(data_app, name="data")
app.add_typer(metrics_app, name="metrics")
app.add_typer(config_app, name="config")
train_cmds.register(app)
similarity_cmd.register(app)
run_cmd.register(app)
stats_cmd.register(app)
serve_cmd.register(app)
report_cmd.register(app)

ConfigOpt = typer.Option(None, "--config", "-c", help="Study YAML (default: configs/demo.yaml if present).")
DataDirOpt = typer.Option(None, "--data-dir", help="Local mirror folder (else $LORASCOPE_DATA_DIR, else config).")
TaskOpt = typer.Option(..., "--task", "-t", help="mrpc or squad_v2.")
JsonOpt = typer.Option(False, "--json", help="Print JSON to stdout.")
OverridesArg = typer.Argument(None, help="Dotted KEY=VALUE overrides, e.g. data.max_length=256.")


@config_app.command("show")
@user_errors
def config_show(config: Optional[Path] = typer.Argument(None), overrides: Optional[list[str]] = OverridesArg):
    """Print the resolved config and its hash."""
    cfg = resolve_config(config, overrides)
    print_json({"config_hash": config_hash(cfg), "config": cfg.model_dump(mode="json")})


@data_app.command("stats")
@user_errors
def data_stats(task: str = TaskOpt, as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt,
               data_dir: Optional[Path] = DataDirOpt, overrides: Optional[list[str]] = OverridesArg):
    """Split sizes, label balance, token lengths (model tokenizer) and sample examples."""
    from lorascope.data.load import load_task
    from lorascope.data.stats import dataset_stats
    from lorascope.models.tokenizer import load_tokenizer

    cfg = resolve_config(config, overrides)
    data = load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir)
    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.eos_token)
    stats = dataset_stats(data, seed=cfg.seeds.split, n_samples=cfg.data.stats_samples, tokenizer=tok,
                          max_length=cfg.data.max_length, max_new_tokens=cfg.data.max_new_tokens)
    if as_json:
        print_json(stats)
        return
    console.print(f"[bold]{task}[/] split [bold]{data.split_scheme}[/] ({data.source})")
    for note in data.notes:
        console.print(f"[yellow]note:[/] {note}")
    for split, entry in stats["splits"].items():
        console.print(f"  {split:<10} n={entry['n']:<6} {entry['labels']}")


@data_app.command("leakage")
@user_errors
def data_leakage(task: str = TaskOpt, config: Optional[Path] = ConfigOpt, data_dir: Optional[Path] = DataDirOpt,
                 overrides: Optional[list[str]] = OverridesArg):
    """Overlaps between every pair of splits; exits 1 on a fatal overlap (§3)."""
    from lorascope.data.leakage import check_leakage
    from lorascope.data.load import load_task

    cfg = resolve_config(config, overrides)
    data = load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir)
    report = check_leakage(data, raise_on_error=False)
    print_json(report)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("baselines")
@user_errors
def baselines(task: str = TaskOpt, as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt,
              data_dir: Optional[Path] = DataDirOpt, overrides: Optional[list[str]] = OverridesArg):
    """Baselines that need no neural model (§7), scored on the test split."""
    from lorascope.baselines.run import baselines_markdown, run_baselines
    from lorascope.data.load import load_task

    cfg = resolve_config(config, overrides)
    data = load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir)
    result = run_baselines(data, cfg.baselines, seed=cfg.seeds.baselines)
    if as_json:
        print_json(result)
    else:
        console.print(baselines_markdown(result), highlight=False)


@metrics_app.command("squad-v2")
@user_errors
def metrics_squad_v2(data_json: Path = typer.Argument(..., help="SQuAD v2 data in the official JSON layout."),
                     preds_json: Path = typer.Argument(..., help="JSON object {question id: predicted text}.")):
    """Official SQuAD 2.0 EM/F1 (percentages, official keys); a missing prediction is an error."""
    from lorascope.metrics.squad_v2 import evaluate_official, load_dataset_json, load_predictions

    print_json(evaluate_official(load_dataset_json(data_json), load_predictions(preds_json)))


@app.command("weights")
@user_errors
def weights(results_dir: Path = typer.Argument(..., help="A study results folder (with <task>/runs/)."),
            config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg):
    """ΔW structure of the final FT and LoRA runs (§9): metrics, intruders, DARE curves, figures."""
    from lorascope.study.weights_stage import run_weights_stage, weights_markdown

    cfg = results_config(results_dir, config, overrides)
    console.print(weights_markdown(run_weights_stage(cfg, results_dir)), highlight=False)


@app.command("drift")
@user_errors
def drift(results_dir: Path = typer.Argument(..., help="A study results folder (with <task>/runs/)."),
          task: Optional[str] = typer.Option(None, "--task", help="One task (default: every task of the config)."),
          config: Optional[Path] = ConfigOpt, data_dir: Optional[Path] = DataDirOpt,
          overrides: Optional[list[str]] = OverridesArg):
    """Representation drift of every final run vs the base model (§8): per-layer CKA / cosine tables,
    figures (FT vs LoRA, in- vs out-of-task), drift and drift reduction, the forgetting proxy."""
    from lorascope.study.drift_stage import drift_markdown, run_drift_stage

    cfg = results_config(results_dir, config, overrides)
    results = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        job = bar.add_task("starting", total=None)
        for t in [task] if task else cfg.data.tasks:
            res = run_drift_stage(cfg, results_dir, t, data_dir=data_dir,
                                  progress=lambda msg: bar.update(job, description=msg))
            if res is None:
                console.print(f"[yellow]{t}: no completed final runs in {results_dir / t / 'runs'}[/]")
            else:
                results[t] = res
    if not results:
        raise typer.Exit(1)
    console.print(drift_markdown(results), highlight=False)
    for t in results:
        console.print(f"tables and figures: {results_dir / t / 'drift'}")


if __name__ == "__main__":
    app()
