"""The training stage of the study (§5, §6): sanity gate → HPO on validation → final runs × seeds.

Order matters and only this module (and later the DAG) knows it: a failed sanity gate stops the study
before any grid runs; final runs use each (task, method)'s HPO-selected learning rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorascope.config.schema import StudyConfig
from lorascope.train.hpo import run_hpo
from lorascope.train.run import RunSpec, run_training
from lorascope.train.sanity import SanityGateFailed, run_sanity
from lorascope.train.zero_shot import run_zero_shot


def sanity_stage(cfg: StudyConfig, out_dir: Path, *, data_dir=None, progress=None) -> dict:
    verdicts = {}
    for task in cfg.data.tasks:
        for method in cfg.train.methods:
            if progress:
                progress(f"{task}: sanity gate ({method})")
            v = run_sanity(cfg, task, method, out_dir / task / "sanity" / method, data_dir=data_dir)
            verdicts[f"{task}/{method}"] = {k: v[k] for k in ("passed", "score", "metric", "steps", "final_loss", "lr")}
            if not v["passed"]:
                raise SanityGateFailed(
                    f"sanity gate failed for {task}/{method}: {v['metric']} {v['score']:.0f}% after {v['steps']} steps "
                    f"(final loss {v['final_loss']:.4f}); loss curve in {out_dir / task / 'sanity' / method / 'sanity.json'}")
    return verdicts


def hpo_stage(cfg: StudyConfig, out_dir: Path, *, data_dir=None, progress=None) -> dict:
    chosen = {}
    for task in cfg.data.tasks:
        for method in cfg.train.methods:
            if progress:
                progress(f"{task}: HPO ({method}, {len(cfg.ft.lr_grid if method == 'ft' else cfg.lora.lr_grid)} lrs)")
            chosen[f"{task}/{method}"] = run_hpo(cfg, task, method, out_dir / task / "hpo" / method, data_dir=data_dir)
    return chosen


def final_stage(cfg: StudyConfig, out_dir: Path, hpo: dict, *, data_dir=None, progress=None) -> dict:
    runs: dict[str, list[dict]] = {}
    for task in cfg.data.tasks:
        for method in cfg.train.methods:
            lr = hpo[f"{task}/{method}"]["best_lr"]
            for rep in cfg.seeds.replicates:
                spec = RunSpec(task, method, lr, replicate=rep)
                if progress:
                    progress(f"{task}: final run {spec.name}")
                runs.setdefault(f"{task}/{method}", []).append(
                    run_training(cfg, spec, out_dir / task / "runs" / spec.name, data_dir=data_dir))
    return runs


def final_table(runs: dict[str, list[dict]]) -> list[str]:
    lines = ["| task | method | lr | seeds | validation (best) | test primary, mean ± sd | per seed |",
             "|---|---|---|---:|---|---|---|"]
    for key, results in runs.items():
        task, method = key.split("/")
        prim = results[0]["primary"]
        test = np.array([r["test"][prim] for r in results], dtype=np.float64)
        val = np.array([r["validation_best"] for r in results], dtype=np.float64)
        sd = test.std(ddof=1) if len(test) > 1 else 0.0
        lines.append(f"| {task} | {method} | {results[0]['run']['lr']:g} | {len(results)} | {val.mean():.2f} | "
                     f"{prim} {test.mean():.2f} ± {sd:.2f} | {', '.join(f'{x:.2f}' for x in test)} |")
    return lines


def zero_shot_stage(cfg: StudyConfig, out_dir: Path, *, data_dir=None, progress=None) -> dict:
    out = {}
    for task in cfg.data.tasks:
        if progress:
            progress(f"{task}: base model zero-shot")
        out[task] = run_zero_shot(cfg, task, out_dir / task / "zero_shot", data_dir=data_dir)
    return out


def training_markdown(sanity: dict, hpo: dict, runs: dict, zero_shot: dict | None = None) -> str:
    lines = ["## Training", "", "### Sanity gate (§6)", "", "| task/method | lr | steps | final loss | score | passed |",
             "|---|---|---:|---:|---|---|"]
    for key, v in sanity.items():
        lines.append(f"| {key} | {v['lr']:g} | {v['steps']} | {v['final_loss']:.4f} | {v['metric']} {v['score']:.0f}% | "
                     f"{'yes' if v['passed'] else 'NO'} |")
    lines += ["", "### HPO on validation (§5)", "", "| task/method | lr → validation | chosen |", "|---|---|---|"]
    for key, h in hpo.items():
        trials = ", ".join(f"{t['lr']:g} → " + ("diverged" if t["value"] is None else f"{t['value']:.2f}")
                           for t in h["trials"])
        lines.append(f"| {key} | {trials} | {h['best_lr']:g} |")
    lines += ["", "### Final runs (test split)", ""] + final_table(runs)
    if zero_shot:
        lines += ["", "Base model zero-shot, same prompts (§7): " + "; ".join(
            f"{t} {r['primary']} {r['test'][r['primary']]:.2f}" for t, r in zero_shot.items())]
    return "\n".join(lines) + "\n"


def run_training_stage(cfg: StudyConfig, out_dir: Path, *, data_dir=None, progress=None) -> dict:
    sanity = sanity_stage(cfg, out_dir, data_dir=data_dir, progress=progress)
    zero = zero_shot_stage(cfg, out_dir, data_dir=data_dir, progress=progress)
    hpo = hpo_stage(cfg, out_dir, data_dir=data_dir, progress=progress)
    runs = final_stage(cfg, out_dir, hpo, data_dir=data_dir, progress=progress)
    return {"sanity": sanity, "zero_shot": zero, "hpo": hpo, "runs": runs,
            "markdown": training_markdown(sanity, hpo, runs, zero)}
