"""The §10 benchmark on a results folder: the selected adapters (lowest replicate), seeded prompts, outputs.

Writes under ``<results>/serve/`` (inside a manifest): ``serve.json`` (cells, engine start / adapter load
times, correctness gates, hardware, prompt composition), ``requests.csv`` (raw per-request timings, the input
of the bootstrap CIs), ``figures/*.png``, ``adapters/`` (the perturbed copies) and ``merged/`` (vLLM only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lorascope.config.schema import StudyConfig
from lorascope.data.load import task_data
from lorascope.data.tokenize import encode_eval_prompt
from lorascope.manifest import hardware_info, run_manifest
from lorascope.models.load import load_causal_lm
from lorascope.models.tokenizer import tokenizer_for
from lorascope.results import layout
from lorascope.results.adapters import is_adapter_folder
from lorascope.results.selection import lowest_replicate_run
from lorascope.serve import figures
from lorascope.serve.adapters import adapter_name, adapter_pool
from lorascope.serve.bench import BenchSettings, run_benchmark
from lorascope.serve.engines import EngineSpec, adapters_needed
from lorascope.serve.report import overhead_vs_merged, write_results
from lorascope.serve.types import ServeError

PROMPT_POOL = 64  # distinct prompts per task in the timed stream (cycled); the gate uses others


def task_adapters(results_dir: Path, tasks: list[str], replicates: list[int] | None = None) -> dict[str, Path]:
    """The final LoRA adapter of the lowest replicate of each task that has one, at the selected learning
    rate (``results.selection``: the HPO choice), so a stale run at another lr is never served."""
    found = {}
    for task in tasks:
        run = lowest_replicate_run(results_dir, task, "lora", replicates)
        if run is not None and is_adapter_folder(layout.saved_model_dir(run["path"], "lora")):
            found[task] = layout.saved_model_dir(run["path"], "lora")
    if not found:
        raise ServeError(f"{results_dir}: no completed final LoRA run with an adapter "
                         "(<task>/runs/<task>-lora-lr*-r*/adapter) found")
    return found


def draw_prompts(cfg: StudyConfig, tokenizer, tasks: list[str], n_per_task: int, n_gate: int, budget: int,
                 data_dir=None) -> tuple[list[list[int]], list[list[int]], dict]:
    """Seeded draw (seeds.probe) of test inputs, tasks interleaved; the gate prompts are disjoint from the
    timed ones. Contexts are cut from the end to fit ``budget`` tokens (§4)."""
    rng = np.random.default_rng([cfg.seeds.probe, 10])
    composition, per_task = {}, []
    for task in tasks:
        test = task_data(cfg, task, data_dir=data_dir)["test"]
        take = min(len(test), n_per_task + n_gate)
        idx = rng.choice(len(test), size=take, replace=False)
        enc = [encode_eval_prompt(tokenizer, test[i], budget) for i in idx]
        composition[task] = {"drawn": take, "truncated": sum(t for _, t in enc),
                             "mean_tokens": float(np.mean([len(ids) for ids, _ in enc]))}
        per_task.append([ids for ids, _ in enc])
    mixed = [p[i] for i in range(max(map(len, per_task))) for p in per_task if i < len(p)]  # mrpc, squad, ...
    gate, timed = mixed[:n_gate], mixed[n_gate:]
    return timed or gate, gate, composition


def _dtype(cfg: StudyConfig, device: torch.device) -> torch.dtype:
    if cfg.serve.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.serve.dtype]


def _skips(backends: list[str]) -> dict[str, str]:
    if "vllm" not in backends:
        return {}
    from lorascope.serve.vllm_backend import vllm_available

    ok, why = vllm_available()
    return {} if ok else {"vllm": why}


def run_folder_benchmark(cfg: StudyConfig, results_dir: Path, *, identity: str | None = None, progress=None,
                         device=None, data_dir=None) -> dict:
    """Benchmark the folder's adapters; writes ``<results>/serve/`` under a manifest (``identity``: the job key)."""
    results_dir = Path(results_dir)
    folder = layout.serve_dir(results_dir)
    s = cfg.serve
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    adapters = task_adapters(results_dir, list(cfg.data.tasks), cfg.seeds.replicates)
    with run_manifest(folder, cfg, command=f"serve-bench {results_dir}",
                      extra={"adapters": {k: str(v) for k, v in adapters.items()}, "identity": identity}) as manifest:
        k_max = max(max(map(adapters_needed, s.scenarios)), 1)
        pool = adapter_pool(list(adapters.values()), k_max, folder / "adapters", s.perturb_scale, cfg.seeds.init)
        tok = tokenizer_for(cfg.model)
        budget = cfg.data.max_length - s.new_tokens
        timed, gate, composition = draw_prompts(cfg, tok, list(adapters), PROMPT_POOL, s.correctness_prompts,
                                                budget, data_dir)
        fp32_model = cfg.model.model_copy(update={"dtype": "float32"})
        dtype = _dtype(cfg, device)
        spec = EngineSpec(load_hf=lambda: load_causal_lm(fp32_model, "cpu"), model_dir=_local(cfg.model.name_or_path),
                          device=device, dtype=dtype, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                          max_prompt=budget, max_new=s.new_tokens, cuda_graphs=s.cuda_graphs, seed=cfg.seeds.init,
                          merged_dir=lambda a: _merged(cfg, a, folder / "merged"))
        gate_spec = None if dtype == torch.float32 else EngineSpec(**{**spec.__dict__, "dtype": torch.float32,
                                                                      "cuda_graphs": False})
        settings = BenchSettings(
            backends=list(s.backends),
            scenarios=list(s.scenarios),
            batch_sizes=list(s.batch_sizes),
            output_modes=list(s.output_modes),
            new_tokens=s.new_tokens,
            requests=s.requests,
            warmup=s.warmup,
            correctness_prompts=s.correctness_prompts,
        )
        bench = run_benchmark(
            settings, spec, pool, timed, gate, gate_spec=gate_spec, skip=_skips(list(s.backends)), progress=progress
        )
        result = {
            "hardware": hardware_info(),
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
            "task_adapters": {k: str(v) for k, v in adapters.items()},
            "adapter_pool": [str(p) for p in pool],
            "prompts": {"timed": len(timed), "gate": len(gate), "tasks": composition, "seed": cfg.seeds.probe},
            **bench,
            "overhead_p95_vs_merged": overhead_vs_merged(bench["cells"]),
        }
        if len(adapters) == 1:
            result["note"] = f"only {next(iter(adapters))} has a LoRA adapter: multi-k uses it and its perturbed copies"
        write_results(folder, result)
        figs = folder / "figures"
        made = [
            figures.throughput_vs_batch(bench["cells"], figs / "throughput_vs_batch.png"),
            figures.p95_latency_vs_batch(bench["cells"], figs / "p95_latency_vs_batch.png"),
            figures.memory_by_scenario(bench["cells"], figs / "memory_by_scenario.png"),
        ]
        manifest["figures"] = [str(p) for p in made if p is not None]
    return result


def _local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _merged(cfg: StudyConfig, adapter: Path, root: Path) -> Path:
    from lorascope.models.merge import merge_adapter

    out = root / adapter_name(adapter)
    return out if (out / "config.json").is_file() else merge_adapter(cfg.model, adapter, out)
