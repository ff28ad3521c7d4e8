"""``lorascope plan``: what a study will run, seconds per job, GPU-hours per stage, and the wall clock and GPU-hours
on 1, 2 and 3 GPUs (``study/schedule.py``) — from a cost model calibrated on measured H200 runs (issue 15.4).

The model charges each job its parts in wall seconds (``CostModel``; each stage declares which in its ``cost``):
fixed costs (model loads, torch.compile, a training run's bookkeeping, engine starts) plus rate terms (optimizer
steps and training tokens per method, forwards for evaluation, checkpoint bytes, §9 modules, drift probe tokens,
serving decode steps). A flop/MFU model alone ignored the fixed costs, which dominate short jobs (the plan said
0.7–2.7 s for sanity jobs that took 7–33 s). Every constant, with its measurement, is in ``plan_assumptions.py``;
``benchmarks/plan_vs_measured.py`` compares the model with a measured run stage by stage.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lorascope.config.protocol import OTHER_TASK
from lorascope.config.schema import StudyConfig
from lorascope.study.dag import Dag, Job
from lorascope.study.plan_assumptions import Assumptions

Parts = dict[str, float]  # a job's seconds by part ("steps", "evaluation", ...)

HEALTH_PROMPTS = 8  # train/collapse.py PROBE_PROMPTS: one forward before training and before each validation
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MRPC_SECOND_VERBALIZER_TOKENS = 1  # " yes" / " no": one token each with Llama-2's tokenizer (train/evaluate.py)
DARE_POINTS, MAGNITUDE_POINTS = 3, 3  # weights/analysis.py DROP_FRACTIONS, KEEP_FRACTIONS (+ the unpruned score)


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's shape; the parameter count and the number of adapted linear modules follow."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False
    source: str = ""

    @property
    def params(self) -> float:
        kv = self.hidden * self.kv_heads // self.heads
        per_layer = 2 * self.hidden**2 + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return float(self.layers * per_layer + self.hidden + self.vocab * self.hidden * (1 if self.tied else 2))

    @property
    def linear_modules(self) -> int:
        return 7 * self.layers  # q, k, v, o, gate, up, down

    def lora_params(self, r: int, preset: str) -> float:
        d, f, kv = self.hidden, self.intermediate, self.hidden * self.kv_heads // self.heads
        attention = (d + d) + (d + kv) * 2 + (d + d)  # q, k, v, o: r × (in + out) each
        per_layer = r * ((d + d) + (d + kv) if preset == "lora_qv" else attention + 2 * (d + f) + (f + d))
        return float(self.layers * per_layer)


SHEARED_1P3B = ModelShape(24, 2048, 5504, 32000, 16, 16, source="Sheared-LLaMA-1.3B shape")
KNOWN_SHAPES = {"princeton-nlp/Sheared-LLaMA-1.3B": SHEARED_1P3B}


def model_shape(cfg: StudyConfig) -> ModelShape:
    """From a local ``config.json`` (Llama-style keys), else a known model, else the 1.3B shape (said so)."""
    path = Path(cfg.model.name_or_path) / "config.json"
    if path.is_file():
        c = json.loads(path.read_text())
        return ModelShape(c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], c["vocab_size"],
                          c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"]),
                          bool(c.get("tie_word_embeddings", False)), source=f"from {path}")
    if cfg.model.name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[cfg.model.name_or_path]
    return ModelShape(**{**SHEARED_1P3B.__dict__, "source": "assumed: the model is neither local nor known, "
                                                             "so the Sheared-LLaMA-1.3B shape"})


def _eval_weights(method: str) -> str:
    """Training evaluates LoRA unmerged (PEFT modules: the slower forward floor)."""
    return "base" if method == "ft" else "lora"


def _count(total: int, every: int) -> int:
    """How many of steps 1..total are multiples of ``every`` or the last (train/loop.py's eval/checkpoint rule)."""
    return total // every + (1 if total % every else 0)


class CostModel:
    """Seconds per job by part. ``shape`` overrides the model shape (e.g. a run whose model folder is elsewhere)."""

    def __init__(self, cfg: StudyConfig, a: Assumptions | None = None, shape: ModelShape | None = None) -> None:
        self.cfg, self.a = cfg, a or Assumptions()
        self.shape = shape or model_shape(cfg)
        self.n = self.shape.params
        self.weight_bytes = DTYPE_BYTES[cfg.model.dtype]
        self.rate_scale = self.a.reference_params / self.n  # token rates measured at the reference size

    # -- sizes -------------------------------------------------------------------------------------------------
    def size(self, task: str, split: str) -> int:
        full = self.a.split_sizes[task][split]
        cap = self.cfg.data.subsample_caps(task).get(split)
        return min(full, cap) if cap else full

    def tokens(self, task: str, max_length: int | None = None) -> int:
        return min(self.a.tokens_per_example[task], max_length or self.cfg.data.max_length)

    def train_shape(self, task: str) -> tuple[int, int, int]:
        """(optimizer steps, validations, checkpoints) of one training run (train/loop.py's rules)."""
        t = self.cfg.train
        per_epoch = max(1, self.size(task, "train") // t.effective_batch)  # incomplete batches are dropped
        steps = math.ceil(t.epochs[task] * per_epoch)
        steps = min(steps, t.max_steps) if t.max_steps else steps
        eval_every = max(1, round(per_epoch / t.evals_per_epoch))
        return steps, _count(steps, eval_every), _count(steps, t.checkpoint_every or eval_every)

    # -- primitives --------------------------------------------------------------------------------------------
    def forwards_s(self, forwards: int, tokens: float, weights: str) -> float:
        return forwards * self.a.forward_floor_s[weights] + tokens / (self.a.forward_tokens_per_s * self.rate_scale)

    def eval_s(self, task: str, n: int, weights: str = "base") -> float:
        """One evaluation of ``n`` examples: MRPC scores both verbalizers in one forward per batch; SQuAD prefills,
        then decodes ``max_new_tokens`` (train/evaluate.py)."""
        batches, prompt = math.ceil(n / self.cfg.train.eval_batch_size), self.tokens(task)
        if task == "mrpc":  # one packed row per pair: the prompt once, then both verbalizers (tokens() has one)
            return self.forwards_s(batches, n * (prompt + MRPC_SECOND_VERBALIZER_TOKENS), weights)
        new = self.cfg.data.max_new_tokens
        return self.forwards_s(batches * (1 + new), n * (prompt + new), weights)

    def load_s(self, models: int = 1) -> float:
        return models * self.n * self.weight_bytes / 1e9 / self.a.model_load_gb_per_s

    def write_bytes(self, method: str, checkpoints: int, saves: int) -> float:
        """FT: a checkpoint is the weights and AdamW's two moments (the model's dtype), a save the weights; LoRA's
        adapter and its moments are a few MB."""
        preset = "lora_qv" if method == "lora_qv" else self.cfg.lora.preset  # models/lora.py: the ablation is q,v
        params = self.n if method == "ft" else self.shape.lora_params(self.cfg.lora.r, preset)
        return params * self.weight_bytes * (3 * checkpoints + saves)

    def _run(self, task: str, method: str, *, steps: float, batch: int, compile_: bool) -> Parts:
        """What every training run pays: a model load, compile, its optimizer steps and tokens, fixed work."""
        return {"load": self.load_s(), "compile": self.a.compile_s[method] if compile_ else 0.0,
                "steps": steps * self.a.step_overhead_s[method],
                "tokens": steps * batch * self.tokens(task) / (self.a.train_tokens_per_s[method] * self.rate_scale),
                "health": 0.0, "evaluation": 0.0, "writes": 0.0, "fixed": self.a.run_fixed_s}

    # -- stages (seconds by part) ----------------------------------------------------------------------------
    def train_run(self, task: str, method: str, *, test: bool = True) -> Parts:
        """One final run (or, ``test=False``, one HPO trial): steps, validations with their health checks and best
        saves (every validation assumed a new best), checkpoints, the final model, the test evaluation."""
        steps, evals, checkpoints = self.train_shape(task)
        p = self._run(task, method, steps=steps, batch=self.cfg.train.effective_batch, compile_=self.cfg.train.compile)
        w = _eval_weights(method)
        p["health"] = (evals + 1) * self.forwards_s(1, HEALTH_PROMPTS * self.tokens(task), w)
        p["evaluation"] = evals * self.eval_s(task, self.size(task, "validation"), w)
        p["evaluation"] += self.eval_s(task, self.size(task, "test"), w) if test else 0.0
        p["writes"] = self.write_bytes(method, checkpoints, evals + 1) / 1e9 / self.a.state_write_gb_per_s
        return p

    def sanity(self, task: str, method: str) -> Parts:
        """Memorise ``n_examples`` (one batch) until the loss threshold, one checkpoint, score them; no compile."""
        s = self.cfg.sanity
        p = self._run(task, method, steps=min(s.max_steps, self.a.sanity_steps), batch=s.n_examples, compile_=False)
        p["evaluation"] = self.eval_s(task, s.n_examples, _eval_weights(method))
        p["writes"] = self.write_bytes(method, 1, 0) / 1e9 / self.a.state_write_gb_per_s
        return p

    def hpo(self, task: str, method: str) -> Parts:
        h = self.cfg.hpo
        grid = self.cfg.ft.lr_grid if method == "ft" else self.cfg.lora.lr_grid
        trials = len(grid) if h.sampler == "grid" else (h.n_trials or len(grid))
        out = {k: trials * v for k, v in self.train_run(task, method, test=False).items()}
        return {**out, "search fixed": self.a.hpo_fixed_s}

    def zero_shot(self, task: str) -> Parts:
        return {"load": self.load_s(), "evaluation": self.eval_s(task, self.size(task, "test"))}

    def weights(self, task: str) -> Parts:
        """§9 for the FT and LoRA runs present: ΔW metrics per module, the resident ΔW, the DARE / magnitude
        transforms and their 7 validation scores per method (on merged weights)."""
        methods = [m for m in ("ft", "lora") if m in self.cfg.train.methods]
        per_method_points = 1 + DARE_POINTS + MAGNITUDE_POINTS
        return {"load": self.load_s(len(methods)),
                "metrics": self.a.weights_module_s * (self.shape.hidden / self.a.reference_hidden) ** 3
                * self.shape.linear_modules * len(methods) / 2,
                "resident": sum(self.a.weights_resident_s[m] for m in methods),
                "transforms": len(methods) * (DARE_POINTS * self.a.weights_transform_s["dare"]
                                              + MAGNITUDE_POINTS * self.a.weights_transform_s["magnitude"]),
                "evaluation": len(methods) * per_method_points * self.eval_s(task, self.size(task, "validation"))}

    def drift(self, task: str) -> Parts:
        """§8: every final run (merged) against the base, on in-task and out-of-task probes, plus the forgetting
        proxy's forwards; one base statistics pass; a load per model."""
        d, cfg = self.cfg.drift, self.cfg
        runs = len(cfg.train.methods) * len(cfg.seeds.replicates)
        sizes = self.a.split_sizes
        probe_tokens = sum(min(cfg.data.probe_size, sizes[t]["validation"] + sizes[t]["test"])
                           * self.tokens(t, d.max_length) for t in (task, OTHER_TASK[task]))
        rate = self.a.drift_tokens_per_s["token" if "token" in d.poolings else "pooled"] * self.rate_scale
        batches = 2 * math.ceil(cfg.data.probe_size / d.batch_size)
        texts = d.forgetting_texts * self.tokens(OTHER_TASK[task], d.max_length)
        return {"load": self.load_s(1 + runs), "probes": runs * probe_tokens / rate,
                "base pass": self.forwards_s(batches, probe_tokens, "base"),
                "forgetting": (1 + runs) * self.forwards_s(math.ceil(d.forgetting_texts / d.batch_size), texts, "base")}

    def serve(self) -> Parts:
        """§10: per backend × scenario an engine start and the correctness gates; per cell, warm-up and timed
        batches of ``new_tokens`` decoding steps plus a prefill (serve/bench.py)."""
        s, a = self.cfg.serve, self.a
        decode = 0.0
        for backend in s.backends:
            for scenario in s.scenarios:
                ms = a.serve_decode_ms[backend]["merged" if scenario in ("base", "merged") else "adapters"]
                batches = sum(s.warmup + math.ceil(s.requests / b) for b in s.batch_sizes) * len(s.output_modes)
                decode += batches * (s.new_tokens + 1) * ms / 1000
        return {"load": self.load_s(), "engines": sum(len(s.scenarios) * a.serve_engine_s[b] for b in s.backends),
                "gates": len(s.backends) * len(s.scenarios) * a.serve_gate_s, "decoding": decode}

    def cpu(self, kind: str) -> Parts:
        return {"cpu": self.a.cpu_s[kind]}

    # -- jobs ---------------------------------------------------------------------------------------------------
    def job_parts(self, job: Job) -> Parts:
        """Seconds of one job by part, from its stage's declared cost (``study/stages/``); {} when undeclared."""
        from lorascope.study.stages import BY_NAME

        stage = BY_NAME.get(job.kind)
        return stage.cost(self, job.params) if stage is not None and stage.cost is not None else {}

    def job_seconds(self, job: Job) -> float:
        return sum(self.job_parts(job).values())


def model_line(model: CostModel) -> str:
    s = model.shape
    return (f"Model: {model.n / 1e6:,.1f} M parameters, {s.layers} layers, {s.linear_modules} adapted linear modules "
            f"({s.source}); weights in {model.cfg.model.dtype} ({model.weight_bytes} bytes per parameter).")


def estimate(cfg: StudyConfig, dag: Dag, assumptions: Assumptions | None = None, *, shape: ModelShape | None = None,
             gpu_counts: tuple[int, ...] = (1, 2, 3)) -> dict:
    """Per job (seconds, parts, GPU-hours) and per stage; the schedule on each GPU count; the assumptions in words."""
    from lorascope.study.schedule import assumption_lines, critical_path, simulate

    model = CostModel(cfg, assumptions, shape)
    jobs = []
    for j in dag.topological():
        parts = model.job_parts(j)
        seconds = sum(parts.values())
        jobs.append({"name": j.name, "kind": j.kind, "role": j.role, "num_gpus": j.num_gpus, "deps": list(j.deps),
                     "seconds": seconds, "parts": parts, "gpu_hours": seconds * j.num_gpus / 3600})
    stages: dict[str, dict] = {}
    for j in jobs:
        s = stages.setdefault(j["kind"], {"jobs": 0, "roles": set(), "seconds": 0.0, "gpu_hours": 0.0,
                                          "gpus": j["num_gpus"]})
        s["jobs"] += 1
        s["roles"].add(j["role"])
        s["seconds"] += j["seconds"]
        s["gpu_hours"] += j["gpu_hours"]
    for s in stages.values():
        s["roles"] = sorted(s["roles"])
    seconds = {j["name"]: j["seconds"] for j in jobs}
    cold = model.a.node_cold_start_s
    return {
        "jobs": jobs,
        "stages": stages,
        "total_gpu_hours": sum(j["gpu_hours"] for j in jobs),
        "critical_path_s": critical_path(dag, seconds),
        "gpu_counts": [simulate(dag, seconds, g, cold_start_s=cold).summary() for g in gpu_counts],
        "assumptions": model.a.lines(model_line(model)) + assumption_lines(cold),
    }
