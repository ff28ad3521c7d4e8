"""The weight-structure stage (§9): ΔW of FT and LoRA per adapted module, intruders, DARE curves.

For each task it takes replicate-0's FT and LoRA runs of the final grid (the seed is recorded), reports
the §9 metrics per module and per layer, and re-evaluates the validation metric after DARE (drop a
fraction p of ΔW's entries, rescale by 1/(1−p)) and after magnitude pruning ΔW to its top k%.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorascope.config import section_hash
from lorascope.config.schema import StudyConfig
from lorascope.data.load import load_task
from lorascope.io import atomic_write_json
from lorascope.manifest import is_completed, run_manifest
from lorascope.models.merge import load_tuned
from lorascope.models.tokenizer import load_tokenizer
from lorascope.study.selection import final_runs
from lorascope.train.evaluate import PRIMARY, evaluate
from lorascope.train.holdout import without_test
from lorascope.train.run import default_device
from lorascope.weights import figures
from lorascope.weights.dare import apply_delta_transform, dare_transform, magnitude_transform, resident_deltas
from lorascope.weights.delta import ft_deltas, lora_factors, weights_reports

DROP_FRACTIONS = (0.5, 0.9, 0.99)  # §9 DARE
KEEP_FRACTIONS = (0.5, 0.1, 0.01)  # magnitude pruning: keep the top 50% / 10% / 1%


def final_run(cfg: StudyConfig, out_dir: Path, task: str, method: str) -> Path | None:
    """The lowest replicate's completed final run of (task, method), at the selected learning rate."""
    runs = [r for r in final_runs(out_dir, task, cfg.seeds.replicates) if r["method"] == method]
    return runs[0]["path"] if runs else None


def _streamed(cfg: StudyConfig, run: Path, method: str, device):
    """Module by module, cast to float64 on ``device`` (read ahead by ``weights_reports``); LoRA as its factors."""
    base = cfg.model.name_or_path
    return (ft_deltas(base, run / "model", device=device) if method == "ft"
            else lora_factors(run / "adapter", base, device=device))


def dare_curves(cfg: StudyConfig, task: str, runs: dict[str, Path], *, seed: int, device, data_dir=None) -> dict:
    """Validation primary metric after each ΔW transform, per method (test is never read here)."""
    data = without_test(load_task(task, cfg.data, seed=cfg.seeds.split, data_dir=data_dir, apply_subsample=True))
    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.eos_token)
    ev = dict(batch_size=cfg.train.eval_batch_size, max_length=cfg.data.max_length,
              max_new_tokens=cfg.data.max_new_tokens, device=device, bf16=cfg.train.bf16_on_cuda)
    curves: dict = {}
    for label, run in runs.items():
        method = "ft" if label == "FT" else "lora"
        model = load_tuned(cfg.model, run, method).to(device)
        deltas = resident_deltas(_streamed(cfg, run, method, device), device)  # on the GPU when it fits: 6 passes
        score = lambda: evaluate(task, model, tok, data["validation"], **ev)[0][PRIMARY[task]]  # noqa: E731
        tuned_score = score()
        curves[label] = {"dare": {0.0: tuned_score}, "magnitude": {0.0: tuned_score}}
        gen = torch.Generator(device=device).manual_seed(seed)  # masks drawn where ΔW is: 1.2 G draws per pass
        for p in DROP_FRACTIONS:
            apply_delta_transform(model, deltas, dare_transform(p, gen), device=device)
            curves[label]["dare"][p] = score()
        for keep in KEEP_FRACTIONS:
            apply_delta_transform(model, deltas, magnitude_transform(keep), device=device)
            curves[label]["magnitude"][1.0 - keep] = score()
        del model, deltas
    return curves


def run_weights_stage(cfg: StudyConfig, out_dir: Path, *, device=None, progress=None, data_dir=None,
                      tasks: list[str] | None = None) -> dict:
    """§9 for ``tasks`` (default: every task of the config); a task without final runs is left out."""
    device = device or default_device()
    results = {}
    for task in tasks or cfg.data.tasks:
        runs = {label: final_run(cfg, out_dir, task, m) for label, m in (("FT", "ft"), ("LoRA", "lora"))}
        runs = {k: v for k, v in runs.items() if v is not None}
        folder = out_dir / task / "weights"
        if not runs:
            continue
        # Keyed by what it reads (the runs, the training config, the DARE seed), not the whole config: a change to the
        # serving or drift settings must not redo this stage.
        identity = f"weights:{section_hash(cfg)}:" + ",".join(f"{k}={v.name}" for k, v in sorted(runs.items()))
        if is_completed(folder, identity=identity) and (folder / "weights.json").is_file():
            results[task] = json.loads((folder / "weights.json").read_text())
            continue
        with run_manifest(folder, cfg, command=f"weights {task}", extra={"runs": {k: str(v) for k, v in runs.items()}, "identity": identity}):
            if progress:
                progress(f"{task}: weight structure (§9)")
            reports = weights_reports({k: _streamed(cfg, v, "ft" if k == "FT" else "lora", device)
                                       for k, v in runs.items()}, device=device)
            if progress:
                progress(f"{task}: DARE / magnitude-pruning curves")
            curves = dare_curves(cfg, task, runs, seed=cfg.seeds.bootstrap, device=device, data_dir=data_dir)
            figures.singular_spectra(reports, folder / "figures" / "singular_spectra.png")
            figures.effective_rank_per_layer(reports, folder / "figures" / "effective_rank.png")
            figures.intruder_counts_per_layer(reports, folder / "figures" / "intruders.png")
            figures.dare_curves({k: {t: {float(p): v for p, v in c.items()} for t, c in cv.items()} for k, cv in curves.items()},
                                folder / "figures" / "dare_curves.png", metric_name=f"validation {PRIMARY[task]}")
            summary = {"task": task, "runs": {k: v.name for k, v in runs.items()},
                       "layers": {k: r["layers"] for k, r in reports.items()},
                       "intruders_total": {k: sum(m.get("intruders", 0) or 0 for m in r["modules"]) for k, r in reports.items()},
                       "dare": {k: {t: {str(p): v for p, v in c.items()} for t, c in cv.items()} for k, cv in curves.items()},
                       "reports": reports}
            atomic_write_json(folder / "weights.json", summary)
        results[task] = summary
    return results


def weights_markdown(results: dict) -> str:
    lines = ["## Weight structure (§9)", "",
             "| task | method (run) | ‖ΔW‖/‖W‖ (mean over layers) | effective rank (mean) | intruders | "
             "DARE p=0.9 / 0.99 (validation) | magnitude keep 10% / 1% |", "|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        for label, run in r["runs"].items():
            layers = r["layers"][label]
            rel = sum(x["mean_relative_frobenius_norm"] for x in layers) / len(layers)
            er = sum(x["mean_effective_rank"] for x in layers) / len(layers)
            d, m = r["dare"][label]["dare"], r["dare"][label]["magnitude"]
            lines.append(f"| {task} | {label} ({run}) | {rel:.4f} | {er:.1f} | {r['intruders_total'][label]} | "
                         f"{d['0.0']:.2f} → {d['0.9']:.2f} / {d['0.99']:.2f} | {m['0.9']:.2f} / {m['0.99']:.2f} |")
    lines += ["", "Figures: `<task>/weights/figures/` (singular spectra, effective rank per layer, intruders, DARE curves)."]
    return "\n".join(lines) + "\n"
