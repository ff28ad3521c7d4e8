"""``lorascope plan``: what a study will run and a rough GPU-hour budget per stage (a documented cost model).

Cost model (every assumption is printed with the plan; override them by editing ``Assumptions``):
- training: 6·N FLOPs per trained token for FT (forward 2N + backward 4N); LoRA ≈ 4·N (no weight gradients
  for the frozen base); tokens = examples × epochs (capped by ``train.max_steps`` × effective batch) ×
  mean tokens per example; at ``train_mfu`` of the GPU's dense bf16 peak.
- evaluation (validation each ⅓ epoch, test once, zero-shot, DARE curves): 2·N FLOPs per token over
  prompt + ``max_new_tokens``, at ``eval_mfu`` (decoding is memory-bound, so a far lower utilisation).
- drift: per final run, the base pass plus base + tuned passes over the probes (3 forwards) and 2 forwards
  over the forgetting texts, at ``eval_mfu``.
- serving: cells (backends × scenarios × batch sizes × output modes) × (requests + warmup) × new tokens ×
  ``serve_ms_per_token`` of wall time.
- sanity: the worst case, ``sanity.max_steps`` steps over ``n_examples`` examples. Data, statistics and the
  report run on CPU (0 GPU-hours).
N comes from the model's ``config.json`` when it is a local folder, else from a table of known models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.study.dag import Dag, Job

KNOWN_PARAMS = {"princeton-nlp/Sheared-LLaMA-1.3B": 1.35e9}


@dataclass(frozen=True)
class Assumptions:
    gpu: str = "H200"
    peak_tflops: float = 989.0  # dense bf16
    train_mfu: float = 0.40  # docs/benchmarks.md measured 47.7% for FT on H200
    eval_mfu: float = 0.05
    lora_flops_per_token: float = 4.0  # × N, vs 6 for FT
    tokens_per_example: dict = field(default_factory=lambda: {"mrpc": 80, "squad_v2": 220})
    # Full split sizes before any subsample cap (SQuAD v2: official train less 5% held out for validation).
    split_sizes: dict = field(default_factory=lambda: {
        "mrpc": {"train": 3668, "validation": 408, "test": 1725},
        "squad_v2": {"train": 123_803, "validation": 6_516, "test": 11_873}})
    serve_ms_per_token: float = 20.0

    def lines(self, n_params: float, n_source: str) -> list[str]:
        return [
            f"model parameters N = {n_params / 1e6:,.1f} M ({n_source})",
            f"GPU {self.gpu}: {self.peak_tflops:g} TFLOP/s dense bf16; training MFU {self.train_mfu:.0%}, "
            f"evaluation/decoding MFU {self.eval_mfu:.0%}",
            f"FLOPs per trained token: FT 6·N, LoRA {self.lora_flops_per_token:g}·N; evaluation 2·N per token",
            "mean tokens per example (prompt + target): "
            + ", ".join(f"{t} {n}" for t, n in self.tokens_per_example.items()),
            "full split sizes (before subsample caps): "
            + "; ".join(
                f"{t} " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()) for t, sizes in self.split_sizes.items()
            ),
            f"serving: {self.serve_ms_per_token:g} ms per decoded token per request batch",
        ]


def model_params(cfg: StudyConfig) -> tuple[float, str]:
    """N from a local ``config.json`` (Llama-style shapes), else a known value, else 1.3e9."""
    path = Path(cfg.model.name_or_path) / "config.json"
    if path.is_file():
        c = json.loads(path.read_text())
        d, layers, inter, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        kv = d * c.get("num_key_value_heads", c["num_attention_heads"]) // c["num_attention_heads"]
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter
        emb = vocab * d * (1 if c.get("tie_word_embeddings", False) else 2)
        return float(layers * per_layer + emb), f"from {path}"
    if cfg.model.name_or_path in KNOWN_PARAMS:
        return KNOWN_PARAMS[cfg.model.name_or_path], "known model"
    return 1.3e9, "assumed: model not local and not known"


class CostModel:
    def __init__(self, cfg: StudyConfig, a: Assumptions | None = None) -> None:
        self.cfg, self.a = cfg, a or Assumptions()
        self.n, self.n_source = model_params(cfg)

    def _hours(self, flops: float, mfu: float) -> float:
        return flops / (self.a.peak_tflops * 1e12 * mfu) / 3600

    def size(self, task: str, split: str) -> int:
        full = self.a.split_sizes[task][split]
        cap = self.cfg.data.subsample_caps(task).get(split)
        return min(full, cap) if cap else full

    def eval_hours(self, task: str, n: int) -> float:
        tokens = n * (self.a.tokens_per_example[task] + self.cfg.data.max_new_tokens)
        return self._hours(2 * self.n * tokens, self.a.eval_mfu)

    def train_hours(self, task: str, method: str, *, test: bool) -> float:
        t = self.cfg.train
        examples = self.size(task, "train") * t.epochs[task]
        if t.max_steps:
            examples = min(examples, t.max_steps * t.effective_batch)
        per_token = 6.0 if method == "ft" else self.a.lora_flops_per_token
        hours = self._hours(per_token * self.n * examples * self.a.tokens_per_example[task], self.a.train_mfu)
        evals = max(1, round(t.evals_per_epoch * t.epochs[task]))
        hours += evals * self.eval_hours(task, self.size(task, "validation"))
        return hours + (self.eval_hours(task, self.size(task, "test")) if test else 0.0)

    def sanity_hours(self, task: str, method: str) -> float:
        s = self.cfg.sanity
        per_token = 6.0 if method == "ft" else self.a.lora_flops_per_token
        tokens = s.max_steps * s.n_examples * self.a.tokens_per_example[task]
        return self._hours(per_token * self.n * tokens, self.a.train_mfu) + self.eval_hours(task, s.n_examples)

    def hpo_hours(self, task: str, method: str) -> float:
        grid = self.cfg.ft.lr_grid if method == "ft" else self.cfg.lora.lr_grid
        return len(grid) * self.train_hours(task, method, test=False)

    def weights_hours(self, task: str) -> float:
        """Re-evaluations of the DARE / magnitude curves (2 methods × 7 points) dominate; the §9 metrics
        themselves take seconds (docs/benchmarks.md)."""
        return 2 * 7 * self.eval_hours(task, self.size(task, "validation"))

    def drift_hours(self, task: str) -> float:
        cfg = self.cfg
        runs = len(cfg.train.methods) * len(cfg.seeds.replicates)
        probes = 3 * self.eval_hours(task, cfg.data.probe_size)
        return runs * (probes + 2 * self.eval_hours(task, cfg.drift.forgetting_texts))

    def serve_hours(self) -> float:
        s = self.cfg.serve
        cells = len(s.backends) * len(s.scenarios) * len(s.batch_sizes) * len(s.output_modes)
        return cells * (s.requests + s.warmup) * s.new_tokens * self.a.serve_ms_per_token / 1000 / 3600

    def job_hours(self, job: Job) -> float:
        """GPU-hours of one job, by its stage's declared cost (``study/stages/``); CPU stages cost 0."""
        from lorascope.study.stages import BY_NAME

        stage = BY_NAME.get(job.kind)
        return stage.cost(self, job.params) if stage is not None and stage.cost is not None else 0.0


def estimate(cfg: StudyConfig, dag: Dag, assumptions: Assumptions | None = None) -> dict:
    """Per job and per stage (kind): count, roles, GPU-hours; plus the assumptions as printable lines."""
    model = CostModel(cfg, assumptions)
    jobs = [
        {
            "name": j.name,
            "kind": j.kind,
            "role": j.role,
            "num_gpus": j.num_gpus,
            "deps": list(j.deps),
            "gpu_hours": model.job_hours(j) if j.num_gpus else 0.0,
        }
        for j in dag.topological()
    ]
    stages: dict[str, dict] = {}
    for j in jobs:
        s = stages.setdefault(j["kind"], {"jobs": 0, "roles": set(), "gpu_hours": 0.0})
        s["jobs"] += 1
        s["roles"].add(j["role"])
        s["gpu_hours"] += j["gpu_hours"]
    for s in stages.values():
        s["roles"] = sorted(s["roles"])
    return {
        "jobs": jobs,
        "stages": stages,
        "total_gpu_hours": sum(j["gpu_hours"] for j in jobs),
        "assumptions": model.a.lines(model.n, model.n_source),
    }
