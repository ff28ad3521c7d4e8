"""The ``lorascope`` command line: a thin layer over the library; each command names its stage."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorascope.cli import folder_cmds, run_cmd, similarity_cmd, train_cmds
from lorascope.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    OverridesArg,
    TaskOpt,
    print_json,
    print_markdown,
    resolve_config,
    user_errors,
)
from lorascope.config import config_hash

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _quiet() -> None:
    """Third-party progress bars and advisory warnings off (lorascope reports its own progress)."""
    from lorascope.logs import quiet_third_party

    quiet_third_party()

data_app = typer.Typer(no_args_is_help=True, help="Datasets: statistics and leakage checks (STUDY.md §3).")
metrics_app = typer.Typer(no_args_is_help=True, help="Official metrics on prediction files.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(data_app, name="data")
app.add_typer(metrics_app, name="metrics")
app.add_typer(config_app, name="config")
train_cmds.register(app)
similarity_cmd.register(app)
run_cmd.register(app)
folder_cmds.register(app)


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
    from lorascope.data.load import task_data
    from lorascope.data.stats import dataset_stats
    from lorascope.models.tokenizer import tokenizer_for

    cfg = resolve_config(config, overrides)
    data = task_data(cfg, task, data_dir=data_dir)
    tok = tokenizer_for(cfg.model)
    stats = dataset_stats(data, seed=cfg.seeds.split, n_samples=cfg.data.stats_samples, tokenizer=tok,
                          max_length=cfg.data.max_length, max_new_tokens=cfg.data.max_new_tokens)
    if as_json:
        print_json(stats)
        return
    print_markdown(_sections(["data"], {task: {"data": stats}}))


def _sections(names: list[str], per_task: dict) -> str:
    """Report sections for data held in memory (a command that writes no results folder)."""
    from lorascope.report.build import build_section
    from lorascope.report.render import sections_markdown

    results = {"root": Path("."), "tasks": per_task, "missing": [], "notes": [], "manifest": None}
    return sections_markdown([build_section(n, results) for n in names], fig_prefix="")


@data_app.command("leakage")
@user_errors
def data_leakage(task: str = TaskOpt, config: Optional[Path] = ConfigOpt, data_dir: Optional[Path] = DataDirOpt,
                 overrides: Optional[list[str]] = OverridesArg):
    """Overlaps between every pair of splits; exits 1 on a fatal overlap (§3)."""
    from lorascope.data.leakage import check_leakage
    from lorascope.data.load import task_data

    cfg = resolve_config(config, overrides)
    data = task_data(cfg, task, data_dir=data_dir)
    report = check_leakage(data, raise_on_error=False)
    print_json(report)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("baselines")
@user_errors
def baselines(task: str = TaskOpt, as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt,
              data_dir: Optional[Path] = DataDirOpt, overrides: Optional[list[str]] = OverridesArg):
    """Baselines that need no neural model (§7), scored on the test split."""
    from lorascope.baselines.run import run_baselines
    from lorascope.data.load import task_data

    cfg = resolve_config(config, overrides)
    data = task_data(cfg, task, data_dir=data_dir)
    result = run_baselines(data, cfg.baselines, seed=cfg.seeds.baselines)
    if as_json:
        print_json(result)
    else:
        print_markdown(_sections(["baselines"], {task: {"baselines": result}}))


@metrics_app.command("squad-v2")
@user_errors
def metrics_squad_v2(data_json: Path = typer.Argument(..., help="SQuAD v2 data in the official JSON layout."),
                     preds_json: Path = typer.Argument(..., help="JSON object {question id: predicted text}.")):
    """Official SQuAD 2.0 EM/F1 (percentages, official keys); a missing prediction is an error."""
    from lorascope.metrics.squad_v2 import evaluate_official, load_dataset_json, load_predictions

    print_json(evaluate_official(load_dataset_json(data_json), load_predictions(preds_json)))


if __name__ == "__main__":
    app()
