"""Drift (§8) of one task's final runs against the base model: the computation behind ``drift.json``.

Per task: the in-task probe set (validation inputs, topped up from test inputs; prompts only) and the
out-of-task probe set (the other task's inputs in its own prompt format) go through the base model and every
final run, in passes of ``drift.models_per_pass`` tuned models next to the base. Per layer (embeddings + every
block), pooling and probe set: linear / debiased linear / RBF CKA and raw / base-standardized cosine. Per model:
drift = mean over layers of (1 − debiased CKA); FT vs LoRA: drift reduction 1 − D_LoRA / D_FT (log-scale
interval, ``aggregate.ratio_reduction``). Forgetting proxy: LM loss on the other task's raw text.

The caller (the study's drift stage) chooses the runs (``results.selection``) and writes the files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from lorascope.config.protocol import OTHER_TASK
from lorascope.config.schema import StudyConfig
from lorascope.data.load import task_data
from lorascope.drift import figures
from lorascope.drift.aggregate import drift_scores, reduction_summary
from lorascope.drift.capture import lm_loss
from lorascope.drift.compute import base_statistics, layer_drift
from lorascope.drift.probes import ProbeSet, out_of_task_texts, probe_set
from lorascope.models.load import load_causal_lm
from lorascope.models.merge import load_tuned
from lorascope.models.tokenizer import tokenizer_for
from lorascope.results import layout

CSV_FIELDS = ("run", "method", "replicate", "probe", "pooling", "layer", "n", "linear_cka", "linear_cka_debiased",
              "rbf_cka", "cosine_mean", "cosine_ci95", "cosine_standardized_mean", "cosine_standardized_ci95")


def _probes(cfg: StudyConfig, task: str, data_dir) -> tuple[dict[str, ProbeSet], list[str], dict]:
    """In-task and out-of-task probe sets, and the forgetting proxy's out-of-task texts."""
    mine = task_data(cfg, task, data_dir=data_dir)
    other = task_data(cfg, OTHER_TASK[task], data_dir=data_dir)
    n = cfg.data.probe_size
    probes = {"in_task": probe_set(mine, n, cfg.seeds.probe), "out_of_task": probe_set(other, n, cfg.seeds.probe)}
    texts = out_of_task_texts(other, cfg.drift.forgetting_texts, cfg.seeds.probe)
    described = {k: {"task": p.task, "split_scheme": p.split_scheme, "n": len(p.prompts), "composition": p.composition}
                 for k, p in probes.items()}
    described["forgetting_texts"] = {"task": other.task, "n": len(texts),
                                     "kind": "sentences" if other.task == "mrpc" else "contexts"}
    return probes, texts, described


def _layer_rows(result: dict, runs: dict[str, dict], probe: str) -> list[dict]:
    rows = []
    for name, by_pooling in result.items():
        for pooling, layers in by_pooling.items():
            for r in layers:
                rows.append({"run": name, "method": runs[name]["method"], "replicate": runs[name]["replicate"],
                             "probe": probe, "pooling": pooling, **r})
    return rows


def measure(cfg: StudyConfig, task: str, runs: list[dict], *, device, data_dir=None, progress=None) -> dict:
    """Everything the stage records, without writing files (the stage writes; tests call this too)."""
    step = progress or (lambda msg: None)
    tok = tokenizer_for(cfg.model)
    probes, texts, described = _probes(cfg, task, data_dir)
    bf16 = cfg.drift.bf16_on_cuda
    base = load_causal_lm(cfg.model, device).eval()
    lm = dict(batch_size=cfg.drift.batch_size, max_length=cfg.drift.max_length, device=device, bf16=bf16)
    forgetting = [{"run": "base", "method": "base", "replicate": None, **lm_loss(base, tok, texts, **lm)}]
    layers: list[dict] = []
    by_name = {r["name"]: r for r in runs}
    poolings = tuple(cfg.drift.poolings)
    passes = dict(batch_size=cfg.drift.batch_size, max_length=cfg.drift.max_length, device=device, bf16=bf16)
    # The base model's statistics per probe set, once — not again for every group of tuned models.
    stats = {probe: base_statistics(base, tok, ps.prompts, poolings, **passes) for probe, ps in probes.items()}
    k = cfg.drift.models_per_pass
    for start in range(0, len(runs), k):
        chunk = runs[start : start + k]
        step(f"{task}: drift of {', '.join(r['name'] for r in chunk)}")
        tuned = {r["name"]: load_tuned(cfg.model, layout.saved_model_dir(r["path"], r["method"]), r["method"],
                                       device).eval() for r in chunk}
        for name, model in tuned.items():
            forgetting.append({"run": name, "method": by_name[name]["method"], "replicate": by_name[name]["replicate"],
                               **lm_loss(model, tok, texts, **lm)})
        for probe, ps in probes.items():
            result = layer_drift(base, tuned, tok, ps.prompts, poolings=poolings, rbf_max_n=cfg.drift.rbf_max_n,
                                 sigma_factor=cfg.drift.rbf_sigma_factor, base_stats=stats[probe], **passes)
            layers += _layer_rows(result, by_name, probe)
        del tuned
        if device.type == "cuda":
            torch.cuda.empty_cache()
    scores = drift_scores(layers)
    return {"task": task, "runs": [r["name"] for r in runs], "probes": described, "layers": layers,
            "scores": scores, "reduction": reduction_summary(scores, cfg.stats.confidence),
            "forgetting": forgetting, "settings": cfg.drift.model_dump(mode="json")}


def layers_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (";".join(f"{v:.6g}" for v in r[k]) if isinstance(r.get(k), list) else r.get(k))
                         for k in CSV_FIELDS})
    return buf.getvalue()


def write_figures(result: dict, folder: Path, cfg: StudyConfig) -> list[Path]:
    task, conf = result["task"], cfg.stats.confidence
    paths = [figures.similarity_per_layer(result["layers"], folder / "figures" / f"similarity_{pooling}.png",
                                          pooling=pooling, title=f"{task}: similarity to the base model",
                                          confidence=conf)
             for pooling in cfg.drift.poolings]
    other = result["probes"]["forgetting_texts"]
    paths.append(figures.forgetting(result["forgetting"], folder / "figures" / "forgetting.png", confidence=conf,
                                    title=f"{task} models: forgetting proxy on {other['n']} {other['task']} "
                                          f"{other['kind']}"))
    return paths
