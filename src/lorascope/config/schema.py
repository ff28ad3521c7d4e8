"""The study configuration schema (pydantic v2). Every number STUDY.md fixes is a default here.

All models forbid unknown keys, so a typo in YAML or an override is an error, not a silent no-op.
Defaults describe the *real* study (§2–§6); ``configs/demo.yaml`` shrinks it for 2 CPU cores.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorascope.config.baselines import BaselinesConfig


class _Strict(BaseModel):
    # strict: no silent coercion (``micro_batch: true`` is not 1, ``"3"`` is not 3); allow_inf_nan=False: a
    # ``.inf``/``.nan`` in YAML is an error here, not a crash when the config is written as JSON.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


# Constrained value types (pydantic ``Annotated``), so every list or dict entry is checked like a field.
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
LrGrid = Annotated[list[PositiveFloat], Field(min_length=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
_SCENARIO = re.compile(r"^(base|merged|unmerged-1|multi-([2-9]|[1-9][0-9]+))$")


def _distinct(values: list, what: str) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat a value")
    return values


class ModelConfig(_Strict):
    """A causal LM by hub id or local folder (§2)."""

    name_or_path: str = "princeton-nlp/Sheared-LLaMA-1.3B"
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # The token that ends every target and stops generation (§4: EOS). None = the tokenizer's EOS. The demo
    # model (llama2.c stories260K) never learned </s>: its stories end with <s>, so the demo uses that.
    eos_token: str | None = None


class SquadSplitConfig(_Strict):
    """How SQuAD v2 splits are made (§3). Fractions/counts are of *articles* (titles)."""

    validation_fraction: float = Field(0.05, gt=0, lt=1)
    # strict=False: a YAML/JSON list is accepted for the tuple (strict mode would demand a Python tuple).
    dev_only_articles: tuple[PositiveInt, PositiveInt, PositiveInt] = Field((25, 5, 5), strict=False)


class DataConfig(_Strict):
    """Where data comes from and how it is cut and tokenized (§3, §4)."""

    tasks: list[Literal["mrpc", "squad_v2"]] = ["mrpc", "squad_v2"]
    # auto: hub when reachable, else the mirror in data_dir. CLI --data-dir / LORASCOPE_DATA_DIR win.
    source: Literal["auto", "hub", "mirror"] = "auto"
    data_dir: str | None = None
    max_length: int = Field(1024, ge=16)
    max_new_tokens: int = Field(32, ge=1)
    squad: SquadSplitConfig = SquadSplitConfig()
    # Optional per-split caps (None = all). The demo uses them to fit 2 CPU cores; each cap is a
    # seeded sample, recorded in every output.
    subsample: dict[Literal["train", "validation", "test"], PositiveInt | None] = {}
    # Per-task caps that replace ``subsample``'s for that task, split by split (a null here = that split whole).
    # The demo gives MRPC its full dev and test sets (what the validity gate needs) and keeps SQuAD small.
    subsample_by_task: dict[Literal["mrpc", "squad_v2"],
                            dict[Literal["train", "validation", "test"], PositiveInt | None]] = {}
    probe_size: int = Field(1000, ge=1)
    stats_samples: int = Field(3, ge=0)

    def subsample_caps(self, task: str) -> dict[str, int | None]:
        """The caps that apply to ``task``: ``subsample``, overridden split by split by ``subsample_by_task``."""
        return {**self.subsample, **self.subsample_by_task.get(task, {})}

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError("tasks must be a non-empty list without repeats")
        return v


class SeedsConfig(_Strict):
    """Named seeds (§5). Per-replicate seeds are derived from these and the replicate index."""

    split: int = 0
    init: int = 0
    data: int = 0
    dropout: int = 0
    probe: int = 0
    bootstrap: int = 0
    baselines: int = 0
    replicates: list[Annotated[int, Field(ge=0)]] = [0, 1, 2, 3, 4]

    @field_validator("replicates")
    @classmethod
    def _replicates(cls, v: list[int]) -> list[int]:
        if len(v) < 1 or len(set(v)) != len(v):
            raise ValueError("replicates must be a non-empty list of distinct ints ≥ 0")
        return v


class FTConfig(_Strict):
    """Full fine-tuning (§5)."""

    lr_grid: LrGrid = [1e-5, 2e-5, 5e-5]
    weight_decay: float = Field(0.01, ge=0)

    _grid = field_validator("lr_grid")(lambda v: _distinct(v, "lr_grid"))


class LoRAConfig(_Strict):
    """LoRA (§5). ``preset`` picks target modules: ``lora`` = all linear layers, ``lora_qv`` = q,v."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    preset: Literal["lora", "lora_qv"] = "lora"
    target_modules: list[str] | None = Field(None, min_length=1)
    lr_grid: LrGrid = [1e-4, 2e-4, 5e-4, 1e-3]
    weight_decay: float = Field(0.0, ge=0)

    _grid = field_validator("lr_grid")(lambda v: _distinct(v, "lr_grid"))


class TrainConfig(_Strict):
    """Shared optimisation settings (§5)."""

    methods: list[Literal["ft", "lora", "lora_qv"]] = Field(["ft", "lora"], min_length=1)
    effective_batch: int = Field(16, ge=1)
    micro_batch: int = Field(16, ge=1)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    epochs: dict[Literal["mrpc", "squad_v2"], PositiveFloat] = {"mrpc": 3, "squad_v2": 2}
    evals_per_epoch: int = Field(3, ge=1)
    bf16_on_cuda: bool = True
    eval_batch_size: int = Field(16, ge=1)
    # Under torchrun: ddp (LoRA, and FT when it fits a GPU) or fsdp (FT that does not fit). The global batch
    # is effective_batch whatever the world size; accumulation = effective / (micro × world).
    strategy: Literal["single", "ddp", "fsdp"] = "single"
    # On CUDA: torch.compile each decoder layer (1.6–2× faster training, ~10–16 s compile; docs/benchmarks.md).
    compile: bool = True
    # LoRA training kernels: "fused" = Triton kernels with PEFT's semantics (CUDA, bf16 autocast; docs/fused_lora.md),
    # "peft" = PEFT's modules; "auto" = fused where it applies (CUDA, bf16, not FSDP) and passes its self-check.
    # Default "peft": on an H200 the fused path was exact but slower end to end (docs/benchmarks.md, issue 17).
    lora_kernel: Literal["auto", "peft", "fused"] = "peft"
    checkpoint_every: int | None = Field(None, ge=1)  # steps; None = at each validation and at the end
    # Cap on optimizer steps: total = min(max_steps, epochs × steps per epoch); None = epochs decide.
    max_steps: int | None = Field(None, ge=1)
    # A step loss above this × the first step's loss fails the run as diverged (train/collapse.py); None = off.
    divergence_factor: float | None = Field(4.0, gt=1)

    _methods = field_validator("methods")(lambda v: _distinct(v, "methods"))

    @model_validator(mode="after")
    def _accumulation(self) -> "TrainConfig":
        if self.effective_batch % self.micro_batch:
            raise ValueError(
                f"effective_batch ({self.effective_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        return self


class SanityConfig(_Strict):
    """The sanity gate (§6): memorise a few training examples, then get all of them right."""

    n_examples: int = Field(10, ge=1)
    max_steps: int = Field(300, ge=1)
    loss_threshold: float = Field(0.05, gt=0)
    lr: dict[Literal["ft", "lora", "lora_qv"], PositiveFloat] = {"ft": 5e-5, "lora": 1e-3, "lora_qv": 1e-3}


class HPOConfig(_Strict):
    """Learning-rate search on validation only (§5): the full grid by default, or Optuna TPE."""

    sampler: Literal["grid", "tpe"] = "grid"
    n_trials: PositiveInt | None = None  # TPE budget; None = the grid's size
    replicate: int = Field(0, ge=0)  # HPO runs at seed 0 (§5)
    storage: str | None = None  # optuna URL; None = sqlite in the study folder


class TrackingConfig(_Strict):
    """wandb (online with a key, offline without, or disabled) plus local JSONL always (§14)."""

    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "NLP"
    entity: str = "galavny-tel-aviv-university"


class OutputConfig(_Strict):
    root: str = "results/study"
    # A caveat printed at the top of every summary/report built from this config (e.g. the demo's tiny model).
    note: str | None = None


class DriftConfig(_Strict):
    """Representation drift (§8): probe prompts through the base and every tuned model."""

    poolings: list[Literal["mean", "last", "token"]] = Field(["mean", "last", "token"], min_length=1)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(512, ge=8)  # probe prompts are cut here (equal for base and tuned)
    rbf_sigma_factor: float = Field(0.8, gt=0)  # σ = factor × median pairwise distance (§8)
    rbf_max_n: int = Field(4096, ge=2)  # RBF CKA needs n×n Gram matrices: pooled features only, n ≤ this
    forgetting_texts: int = Field(200, ge=1)  # out-of-task texts for the LM-loss forgetting proxy
    # Tuned models held at once next to the base (each pass re-runs the base): memory vs base forwards.
    models_per_pass: int = Field(4, ge=1)
    bf16_on_cuda: bool = True


class ServeConfig(_Strict):
    """Deployment benchmark (§10): scenarios × batch sizes × backends."""

    backends: list[Literal["hf-peft", "native", "vllm"]] = Field(["hf-peft", "native"], min_length=1)
    scenarios: list[str] = Field(["base", "merged", "unmerged-1", "multi-2", "multi-4", "multi-8"], min_length=1)
    batch_sizes: list[PositiveInt] = Field([1, 2, 4, 8, 16], min_length=1)
    output_modes: list[Literal["fixed", "natural"]] = ["fixed", "natural"]
    new_tokens: int = Field(64, ge=2)
    requests: int = Field(30, ge=1)  # timed requests per cell (§10: ≥ 30)
    warmup: int = Field(2, ge=0)
    correctness_prompts: int = Field(4, ge=1)
    perturb_scale: float = Field(0.1, ge=0)  # relative noise on the copies of the task adapters (multi-k)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    cuda_graphs: bool = True

    _backends = field_validator("backends")(lambda v: _distinct(v, "backends"))
    _batches = field_validator("batch_sizes")(lambda v: _distinct(v, "batch_sizes"))

    @field_validator("scenarios")
    @classmethod
    def _scenarios(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not _SCENARIO.match(s)]
        if bad:
            raise ValueError(f"unknown scenario {', '.join(bad)}: expected base, merged, unmerged-1 or multi-<k>, "
                             "k ≥ 2")
        return _distinct(v, "scenarios")


class StatsConfig(_Strict):
    """Statistics and success criteria (§11, §12)."""

    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_resamples: int = Field(10_000, ge=100)
    equivalence_margin: float = Field(3.0, gt=0)  # points (criterion A, TOST)
    drift_reduction_threshold: float = Field(0.2, gt=0, lt=1)  # criterion B (a reduction is at most 100%)
    overhead_threshold: float = Field(0.3, gt=0)  # criterion C
    # §10: a serving cell needs ≥ 30 timed requests; with fewer, criterion C is at most inconclusive.
    min_timed_requests: int = Field(30, ge=2)
    # The validity gate (§12): each method must beat the strongest trivial baseline at this one-sided level
    # (Holm-corrected over tasks × methods); 0.05 = 1 − the default confidence.
    validity_alpha: float = Field(0.05, gt=0, lt=1)


class ExecutorConfig(_Strict):
    """How ``lorascope run`` executes the study DAG (§14). Execution only: never part of a result's hash."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: cluster address ("auto" inside a cluster); None = start a local Ray
    parallel: int = Field(1, ge=1)  # local: jobs at once (CPU-only jobs; GPU jobs one per device)
    max_retries: int = Field(3, ge=0)  # ray: a job whose node died is retried this many times


class StudyConfig(_Strict):
    """The whole study. ``name`` labels outputs; everything else is grouped by stage."""

    name: str = "study"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    seeds: SeedsConfig = SeedsConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    ft: FTConfig = FTConfig()
    lora: LoRAConfig = LoRAConfig()
    train: TrainConfig = TrainConfig()
    sanity: SanityConfig = SanityConfig()
    hpo: HPOConfig = HPOConfig()
    tracking: TrackingConfig = TrackingConfig()
    output: OutputConfig = OutputConfig()
    drift: DriftConfig = DriftConfig()
    serve: ServeConfig = ServeConfig()
    stats: StatsConfig = StatsConfig()
    executor: ExecutorConfig = ExecutorConfig()
