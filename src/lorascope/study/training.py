"""Markdown of the training stage (§5, §6) for the study summary: sanity gate, HPO, final runs.

The order of the stage itself (sanity gate → HPO → final runs × seeds) lives in the study DAG
(``study/jobs.py``); this module only reports what those jobs wrote.
"""

from __future__ import annotations

import numpy as np


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
