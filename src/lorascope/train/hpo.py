"""Learning-rate search on validation only (§5): Optuna with SQLite storage, safe across processes.

Every trial is a ``RunSpec(hpo=True)`` run: its data have an unreadable test split (``without_test``),
and its results carry only validation numbers. The full grid is the default (``sampler: grid``); TPE
with the same budget is available. Trials are content-addressed by their run folder, so a rerun skips
finished ones. Also exports a wandb sweep config whose agent calls ``lorascope sweep-run``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lorascope.config.schema import StudyConfig
from lorascope.data.load import load_task
from lorascope.io import atomic_write_json, atomic_write_text
from lorascope.train.holdout import without_test
from lorascope.train.run import RunSpec, run_training


def lr_grid(cfg: StudyConfig, method: str) -> list[float]:
    return list(cfg.ft.lr_grid if method == "ft" else cfg.lora.lr_grid)


def run_folder(root: Path, spec: RunSpec) -> Path:
    return root / spec.name


def run_hpo(cfg: StudyConfig, task: str, method: str, out_dir: Path, *, data_dir: str | None = None,
            device=None) -> dict:
    """Search the method's lr grid for ``task`` on validation; writes ``hpo.json`` with the best lr."""
    import optuna

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = lr_grid(cfg, method)
    data = without_test(load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir, apply_subsample=True))
    storage = cfg.hpo.storage or f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    # Grid mode enqueues every missing grid point (below), so the sampler never chooses; TPE chooses itself.
    sampler = (optuna.samplers.RandomSampler(seed=cfg.seeds.init) if cfg.hpo.sampler == "grid"
               else optuna.samplers.TPESampler(seed=cfg.seeds.init))
    study = optuna.create_study(study_name=f"{cfg.name}-{task}-{method}", storage=storage, sampler=sampler,
                                direction="maximize", load_if_exists=True)

    def objective(trial) -> float:
        lr = trial.suggest_categorical("lr", grid)
        spec = RunSpec(task, method, lr, replicate=cfg.hpo.replicate, hpo=True)
        res = run_training(cfg, spec, run_folder(out_dir, spec), data=data, device=device)
        trial.set_user_attr("run", spec.name)
        return float(res["validation_best"])

    budget = cfg.hpo.n_trials or len(grid)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if cfg.hpo.sampler == "grid":
        for lr in grid:  # enqueue what is missing so reruns and parallel workers finish the grid exactly
            if not any(t.params.get("lr") == lr for t in done):
                study.enqueue_trial({"lr": lr}, skip_if_exists=True)
        remaining = len(grid) - len({t.params["lr"] for t in done})
    else:
        remaining = budget - len(done)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    trials = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.params["lr"])
    best = max(trials, key=lambda t: (t.value, -t.params["lr"]))  # ties → the smaller lr
    summary = {"task": task, "method": method, "metric": "validation " + ("accuracy" if task == "mrpc" else "f1"),
               "split_scheme": data.split_scheme, "best_lr": best.params["lr"], "best_value": best.value,
               "trials": [{"lr": t.params["lr"], "value": t.value, "run": t.user_attrs.get("run")} for t in trials],
               "sampler": cfg.hpo.sampler, "storage": storage}
    atomic_write_json(out_dir / "hpo.json", summary)
    return summary


def wandb_sweep_config(cfg: StudyConfig, task: str, method: str, config_path: str) -> dict:
    """A wandb sweep over the lr grid; the agent runs ``lorascope sweep-run ... --lr=<value>``."""
    return {
        "program": "lorascope",
        "name": f"{cfg.name}-{task}-{method}",
        "project": cfg.tracking.project,
        "entity": cfg.tracking.entity,
        "method": "grid",
        "metric": {"name": "validation_best", "goal": "maximize"},
        "parameters": {"lr": {"values": lr_grid(cfg, method)}},
        "command": ["${env}", "lorascope", "sweep-run", "--config", config_path, "--task", task, "--method", method,
                    "${args}"],
    }


def write_sweep_config(cfg: StudyConfig, task: str, method: str, config_path: str, path: Path) -> Path:
    return atomic_write_text(path, yaml.safe_dump(wandb_sweep_config(cfg, task, method, config_path), sort_keys=False))
