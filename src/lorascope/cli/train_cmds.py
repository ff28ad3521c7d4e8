"""Training commands: train, sanity, hpo, sweep (export / run), merge."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorascope.cli.common import (
    ConfigOpt,
    DataDirOpt,
    MethodOpt,
    OverridesArg,
    TaskOpt,
    console,
    print_json,
    resolve_config,
    user_errors,
)
from lorascope.results import layout


def register(app: typer.Typer) -> None:
    @app.command("train")
    @user_errors
    def train(task: str = TaskOpt, method: str = MethodOpt, lr: float = typer.Option(..., "--lr"),
              seed: int = typer.Option(0, "--seed", help="Replicate index (named seeds derive from it)."),
              out: Optional[Path] = typer.Option(None, "--out"), config: Optional[Path] = ConfigOpt,
              data_dir: Optional[Path] = DataDirOpt, overrides: Optional[list[str]] = OverridesArg):
        """Train one run; resumes from its latest checkpoint if interrupted. Prints results JSON."""
        from lorascope.train.run import RunSpec, run_training
        from lorascope.train.torchrun import launch_if_distributed

        cfg = resolve_config(config, overrides)
        spec = RunSpec(task, method, lr, replicate=seed)
        out_dir = out or layout.run_dir(cfg.output.root, task, spec.name)
        results = launch_if_distributed(cfg, spec, out_dir, data_dir)
        if results is None:
            results = run_training(cfg, spec, out_dir, data_dir=data_dir)
        if results:  # ranks other than 0 return {} and print nothing
            print_json(results)

    @app.command("sanity")
    @user_errors
    def sanity(task: str = TaskOpt, method: str = MethodOpt, lr: Optional[float] = typer.Option(None, "--lr"),
               out: Optional[Path] = typer.Option(None, "--out"), config: Optional[Path] = ConfigOpt,
               data_dir: Optional[Path] = DataDirOpt, overrides: Optional[list[str]] = OverridesArg):
        """The §6 gate: memorise 10 training examples, then get all right. Exit 1 on failure."""
        from lorascope.train.sanity import run_sanity

        cfg = resolve_config(config, overrides)
        out_dir = out or layout.sanity_dir(cfg.output.root, task, method)
        verdict = run_sanity(cfg, task, method, out_dir, data_dir=data_dir, lr=lr)
        print_json({k: v for k, v in verdict.items() if k != "records"})
        if not verdict["passed"]:
            console.print(
                f"[bold red]sanity gate failed[/] for {task}/{method}: {verdict['metric']} {verdict['score']}"
            )
            raise typer.Exit(1)

    @app.command("hpo")
    @user_errors
    def hpo(
        task: str = TaskOpt,
        method: str = MethodOpt,
        out: Optional[Path] = typer.Option(None, "--out"),
        config: Optional[Path] = ConfigOpt,
        data_dir: Optional[Path] = DataDirOpt,
        overrides: Optional[list[str]] = OverridesArg,
    ):
        """Learning-rate search on validation (Optuna, SQLite storage; the test split is unreadable)."""
        from lorascope.train.hpo import run_hpo

        cfg = resolve_config(config, overrides)
        print_json(run_hpo(cfg, task, method, out or layout.hpo_dir(cfg.output.root, task, method), data_dir=data_dir))

    @app.command("sweep")
    @user_errors
    def sweep(
        task: str = TaskOpt,
        method: str = MethodOpt,
        out: Path = typer.Option(Path("sweep.yaml"), "--out"),
        config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c"),
    ):
        """Export a wandb sweep config (then: ``wandb sweep sweep.yaml`` and ``wandb agent ID``)."""
        from lorascope.train.hpo import write_sweep_config

        cfg = resolve_config(config, [])
        console.print(f"sweep config written to {write_sweep_config(cfg, task, method, str(config), out)}")

    @app.command("sweep-run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @user_errors
    def sweep_run(
        ctx: typer.Context,
        task: str = TaskOpt,
        method: str = MethodOpt,
        config: Optional[Path] = ConfigOpt,
        data_dir: Optional[Path] = DataDirOpt,
    ):
        """What a ``wandb agent`` calls: hyper-parameters arrive as ``--lr=VALUE`` (validation only)."""
        from lorascope.train.hpo import run_folder
        from lorascope.train.run import RunSpec, run_training

        params = {}
        for arg in ctx.args:
            key, sep, value = arg.lstrip("-").partition("=")
            if not sep:
                raise typer.BadParameter(f"expected --key=value, got {arg!r}")
            params[key] = value
        if set(params) != {"lr"}:
            raise typer.BadParameter(f"sweep-run takes exactly --lr=VALUE, got {sorted(params)}")
        cfg = resolve_config(config, [])
        spec = RunSpec(task, method, float(params["lr"]), replicate=cfg.hpo.replicate, hpo=True)
        out_dir = run_folder(layout.task_dir(cfg.output.root, task) / "sweep" / method, spec)
        res = run_training(cfg, spec, out_dir, data_dir=data_dir)
        print_json({"validation_best": res["validation_best"], "run": spec.name})

    @app.command("merge")
    @user_errors
    def merge(
        adapter: Path = typer.Argument(..., help="PEFT adapter folder (a run's adapter/)."),
        out: Path = typer.Option(..., "--out", help="Folder for the merged HF model."),
        config: Optional[Path] = ConfigOpt,
        overrides: Optional[list[str]] = OverridesArg,
    ):
        """Merge a LoRA adapter into the base model and write a plain HF model folder."""
        from lorascope.models.merge import merge_adapter

        cfg = resolve_config(config, overrides)
        console.print(f"merged model written to {merge_adapter(cfg.model, adapter, out)}")
