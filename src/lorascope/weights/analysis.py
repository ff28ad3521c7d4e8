"""§9 for one task's final runs: ΔW metrics of every adapted module (FT and LoRA walked in lockstep, so the base
model's singular vectors are computed once per module), intruder dimensions, and the validation metric after
DARE (drop a fraction p of ΔW's entries, rescale by 1/(1−p)) and after magnitude-pruning ΔW to its top k%.

Input: ``runs = {label: (run folder's saved model or adapter, method)}`` (labels "FT", "LoRA"); the caller (the
study's weights stage) picks the runs and writes the outputs. The test split is never read here."""

from __future__ import annotations

from pathlib import Path

import torch

from lorascope.data.load import task_data
from lorascope.models.merge import load_tuned
from lorascope.models.tokenizer import tokenizer_for
from lorascope.train.evaluate import PRIMARY, evaluate
from lorascope.train.holdout import without_test
from lorascope.weights import figures
from lorascope.weights.dare import apply_delta_transform, dare_transform, magnitude_transform, resident_deltas
from lorascope.weights.delta import ft_deltas, lora_factors, weights_reports

DROP_FRACTIONS = (0.5, 0.9, 0.99)  # §9 DARE
KEEP_FRACTIONS = (0.5, 0.1, 0.01)  # magnitude pruning: keep the top 50% / 10% / 1%


def _streamed(base: str, saved: Path, method: str, device):
    """Module by module, cast to float64 on ``device`` (read ahead by ``weights_reports``); LoRA as its factors."""
    return ft_deltas(base, saved, device=device) if method == "ft" else lora_factors(saved, base, device=device)


def dare_curves(cfg, task: str, runs: dict[str, tuple[Path, str]], *, seed: int, device, data_dir=None) -> dict:
    """Validation primary metric after each ΔW transform, per label (test is never read here)."""
    data = without_test(task_data(cfg, task, data_dir=data_dir, subsample=True))
    tok = tokenizer_for(cfg.model)
    ev = dict(batch_size=cfg.train.eval_batch_size, max_length=cfg.data.max_length,
              max_new_tokens=cfg.data.max_new_tokens, device=device, bf16=cfg.train.bf16_on_cuda)
    curves: dict = {}
    for label, (saved, method) in runs.items():
        model = load_tuned(cfg.model, saved, method).to(device)
        deltas = resident_deltas(_streamed(cfg.model.name_or_path, saved, method, device), device)  # GPU if it fits
        def score(m=model) -> float:
            return evaluate(task, m, tok, data["validation"], **ev)[0][PRIMARY[task]]

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


def analyse(cfg, task: str, runs: dict[str, tuple[Path, str]], names: dict[str, str], *, seed: int, device,
            data_dir=None, step=lambda msg: None) -> dict:
    """Everything ``weights.json`` holds for one task (see the module docstring)."""
    step(f"{task}: weight structure (§9)")
    reports = weights_reports({label: _streamed(cfg.model.name_or_path, saved, method, device)
                               for label, (saved, method) in runs.items()}, device=device)
    step(f"{task}: DARE / magnitude-pruning curves")
    curves = dare_curves(cfg, task, runs, seed=seed, device=device, data_dir=data_dir)
    return {"task": task, "runs": names, "layers": {k: r["layers"] for k, r in reports.items()},
            "intruders_total": {k: sum(m.get("intruders", 0) or 0 for m in r["modules"]) for k, r in reports.items()},
            "dare": {k: {t: {str(p): v for p, v in c.items()} for t, c in cv.items()} for k, cv in curves.items()},
            "metric": f"validation {PRIMARY[task]}", "reports": reports}


def write_figures(summary: dict, folder: Path) -> list[Path]:
    reports = summary["reports"]
    curves = {k: {t: {float(p): v for p, v in c.items()} for t, c in cv.items()} for k, cv in summary["dare"].items()}
    made = [figures.singular_spectra(reports, folder / "singular_spectra.png"),
            figures.effective_rank_per_layer(reports, folder / "effective_rank.png"),
            figures.intruder_counts_per_layer(reports, folder / "intruders.png"),
            figures.dare_curves(curves, folder / "dare_curves.png", metric_name=summary["metric"])]
    return [p for p in made if p is not None]
