"""Learning-rate search on validation only (§5): Optuna with SQLite storage, safe across processes.

Every trial is a ``RunSpec(hpo=True)`` run: its data have an unreadable test split (``without_test``),
and its results carry only validation numbers. The full grid is the default (``sampler: grid``); TPE
with the same budget is available. Trials are content-addressed by their run folder, so a rerun skips
finished ones. Also exports a wandb sweep config whose agent calls ``lorascope sweep-run``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lorascope.config import result_hash
from lorascope.config.protocol import PRIMARY_METRIC
from lorascope.config.schema import StudyConfig
from lorascope.data.load import task_data
from lorascope.io import atomic_write_json, atomic_write_text
from lorascope.logs import quiet_optuna
from lorascope.manifest import run_manifest
from lorascope.train.holdout import without_test
from lorascope.train.loop import TrainingDiverged
from lorascope.train.run import RunSpec, run_training


def lr_grid(cfg: StudyConfig, method: str) -> list[float]:
    return list(cfg.ft.lr_grid if method == "ft" else cfg.lora.lr_grid)


def run_folder(root: Path, spec: RunSpec) -> Path:
    return root / spec.name


def run_hpo(cfg: StudyConfig, task: str, method: str, out_dir: Path, *, data_dir: str | None = None,
            device=None) -> dict:
    """Search the method's lr grid for ``task`` on validation; writes ``hpo.json`` with the best lr."""
    import optuna

    quiet_optuna()  # per-trial INFO lines off (lorascope.logs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = lr_grid(cfg, method)
    data = without_test(task_data(cfg, task, data_dir=data_dir, subsample=True))
    with run_manifest(out_dir, cfg, command=f"hpo {task} {method}", extra={"grid": grid}) as manifest:
        storage = cfg.hpo.storage or f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
        # Grid mode enqueues every missing grid point (below), so the sampler never chooses; TPE chooses itself.
        sampler = (optuna.samplers.RandomSampler(seed=cfg.seeds.init) if cfg.hpo.sampler == "grid"
                   else optuna.samplers.TPESampler(seed=cfg.seeds.init))
        # The config hash names the study: trials of another config (another grid, model, data...) never count.
        study = optuna.create_study(study_name=f"{cfg.name}-{task}-{method}-{result_hash(cfg)}", storage=storage,
                                    sampler=sampler, direction="maximize", load_if_exists=True)

        def objective(trial) -> float:
            lr = trial.suggest_categorical("lr", grid)
            spec = RunSpec(task, method, lr, replicate=cfg.hpo.replicate, hpo=True)
            trial.set_user_attr("run", spec.name)
            try:
                res = run_training(cfg, spec, run_folder(out_dir, spec), data=data, device=device)
            except TrainingDiverged as exc:  # a diverging lr is a result of the search, not a crash of it
                trial.set_user_attr("diverged", str(exc))
                return float("-inf")
            return float(res["validation_best"])

        def complete():
            return [
                t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.params.get("lr") in grid
            ]

        if cfg.hpo.sampler == "grid":
            # Enqueue each grid point not yet COMPLETE (a killed or failed trial is retried) unless one waits already.
            waiting = {t.params.get("lr") for t in study.trials if t.state == optuna.trial.TrialState.WAITING}
            missing = [lr for lr in grid if lr not in {t.params["lr"] for t in complete()}]
            for lr in missing:
                if lr not in waiting:
                    study.enqueue_trial({"lr": lr})
            remaining = len(missing)
        else:
            remaining = (cfg.hpo.n_trials or len(grid)) - len(complete())
        if remaining > 0:
            study.optimize(objective, n_trials=remaining)
        trials = sorted(complete(), key=lambda t: t.params["lr"])
        if cfg.hpo.sampler == "grid":  # one entry per grid point (the latest if a point was run twice)
            trials = sorted(
                {t.params["lr"]: t for t in sorted(complete(), key=lambda t: t.number)}.values(),
                key=lambda t: t.params["lr"],
            )
        finite = [t for t in trials if t.value != float("-inf")]
        if not finite:
            raise TrainingDiverged(
                {
                    "step": 0,
                    "loss": float("nan"),
                    "lr": float(grid[0]),
                    "recent": [f"every lr of the grid diverged for {task}/{method}"],
                }
            )
        best = max(finite, key=lambda t: (t.value, -t.params["lr"]))  # ties → the smaller lr
        summary = {
            "task": task,
            "method": method,
            "metric": "validation " + PRIMARY_METRIC[task],
            "split_scheme": data.split_scheme,
            "best_lr": best.params["lr"],
            "best_value": best.value,
            "trials": [
                {
                    "lr": t.params["lr"],
                    "value": t.value if t.value != float("-inf") else None,
                    "run": t.user_attrs.get("run"),
                    "diverged": t.user_attrs.get("diverged"),
                }
                for t in trials
            ],
            "sampler": cfg.hpo.sampler,
            "storage": storage,
        }
        atomic_write_json(out_dir / "hpo.json", summary)
        manifest["best_lr"] = summary["best_lr"]
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
        "command": [
            "${env}",
            "lorascope",
            "sweep-run",
            "--config",
            config_path,
            "--task",
            task,
            "--method",
            method,
            "${args}",
        ],
    }


def write_sweep_config(cfg: StudyConfig, task: str, method: str, config_path: str, path: Path) -> Path:
    return atomic_write_text(path, yaml.safe_dump(wandb_sweep_config(cfg, task, method, config_path), sort_keys=False))
