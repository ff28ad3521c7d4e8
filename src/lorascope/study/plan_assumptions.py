"""The numbers behind ``lorascope plan`` (issue 15.4): every constant of the cost model, where it was measured,
and the same assumptions in words for the printed plan.

All measurements: NVIDIA H200, torch 2.11.0+cu130, 2026-11-29, a random-weight model at the Sheared-LLaMA-1.3B
shape (1,345 M parameters). Two kinds of constant:
- *rates* from dedicated benchmarks of one thing each (training tokens/s, decoding ms per step, §9 seconds per
  module, drift tokens/s, serving engine starts);
- *fixed costs* fitted to the per-job wall times of the two-node Ray study run (issue 15.3,
  ``per_job_times.json``) by ``plan_calibrate.calibrate`` (its docstring gives the rule for each), because no
  separate measurement exists: what a training run costs besides its steps, checkpoint write speed, the per-step
  overhead of short batches, an HPO search's own cost, the first job on a fresh node, the serving gates, the CPU
  stages. ``benchmarks/plan_vs_measured.py FILE`` re-derives them from a file and prints them next to these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Sources, cited below by these short names.
TORCHRUN = "torchrun_scaling: 16 × 512-token batches, compiled, one GPU"
RAY_RUN = "the two-node Ray study run (issue 15.3)"


@dataclass(frozen=True)
class Assumptions:
    gpu: str = "H200"
    # The model every rate below was measured on (Sheared-LLaMA-1.3B shape): another model's token rates are scaled
    # by reference / N (compute-bound) and §9's per-module time by (hidden / 2048)³ (d × d eigendecompositions).
    reference_params: float = 1_345_423_360
    reference_hidden: int = 2048
    # --- training --------------------------------------------------------------------------------------------
    # Tokens/s at long sequences: FT 62,518 (.device/1/torchrun_scaling.json, single-ft-1gpu: median step 0.2608 s
    # for 16,384 tokens, 46.7% MFU in train_fused.json); LoRA 52,492 (.device/2/torchrun_scaling.json,
    # single-lora-1gpu, lora_kernel fused; issue 17 found the default "peft" kernel no slower end to end).
    train_tokens_per_s: dict = field(default_factory=lambda: {"ft": 62_518.0, "lora": 52_492.0, "lora_qv": 52_492.0})
    # Per optimizer step on top of the tokens: launch-bound layers and the optimizer on short batches (1–2k tokens per
    # step). Ray run, warm final runs, uncompiled: median of (step seconds − tokens / rate) / steps.
    step_overhead_s: dict = field(default_factory=lambda: {"ft": 0.090, "lora": 0.208, "lora_qv": 0.208})
    # torch.compile once per training run (train.compile on CUDA): the first step of the torchrun runs less their
    # median step: FT 11.89 − 0.26 s, LoRA 18.68 − 0.31 s.
    compile_s: dict = field(default_factory=lambda: {"ft": 11.6, "lora": 18.4, "lora_qv": 18.4})
    # Besides its load, steps, evaluation and state writes, every training run (sanity, HPO trial, final run):
    # tokenization, optimizer set-up, bookkeeping. Ray run, warm final runs (with state_write_gb_per_s below).
    run_fixed_s: float = 3.4
    # An HPO search's own cost (Optuna study in SQLite, hpo.json): Ray run, mean HPO remainder over its trials.
    hpo_fixed_s: float = 8.9
    # The sanity gate stops at its loss threshold: the Ray run's mean steps (6–9; worst case sanity.max_steps).
    sanity_steps: float = 7.5
    # --- evaluation (greedy decoding and scoring with transformers) -------------------------------------------
    # Every forward (a prefill, an MRPC scoring pass, one decoded token) costs at least a launch-bound floor: HF
    # decoding at 1.3B, docs/benchmarks.md serving section: 18.7 ms base, 47.6 ms with an unmerged PEFT adapter
    # (batch 1). Analysis stages merge LoRA into the weights, so they pay the base floor.
    forward_floor_s: dict = field(default_factory=lambda: {"base": 0.0187, "lora": 0.0476})
    # Forward tokens/s: a forward is 2N of training's 6N FLOPs per token, so 3 × the FT training rate.
    forward_tokens_per_s: float = 3 * 62_518.0
    # --- state I/O --------------------------------------------------------------------------------------------
    # Model loads (weights to the GPU): the Ray run's warm zero-shot jobs less their evaluation, 2.69 GB of bf16
    # in a median 1.8 s.
    model_load_gb_per_s: float = 1.5
    # Checkpoints, best weights and saved models: the Ray run's warm final runs, FT's remainder over LoRA's per byte
    # written (FT: 2 checkpoints of weights + AdamW moments, the best weights, the final model: 21.5 GB in bf16).
    state_write_gb_per_s: float = 1.24
    # --- §9 weights, §8 drift ------------------------------------------------------------------------------------
    # FT and LoRA ΔW metrics together, per adapted module: .device/1/weights_gpu.json fast path, 23.3 s for 168.
    weights_module_s: float = 23.3 / 168
    # Per DARE / magnitude point (weights_gpu.json dare: 0.03 s and 0.19 s) and per resident ΔW load (1.81 s FT,
    # 1.0 s LoRA).
    weights_transform_s: dict = field(default_factory=lambda: {"dare": 0.03, "magnitude": 0.19})
    weights_resident_s: dict = field(default_factory=lambda: {"ft": 1.81, "lora": 1.0})
    # Drift, per tuned model: probe tokens at this rate for base + tuned forward and the accumulators
    # (docs/benchmarks.md drift section: 163,073 tokens in 28.3 s with all three poolings, 12.7 s mean-pooled).
    drift_tokens_per_s: dict = field(default_factory=lambda: {"token": 163_073 / 28.3, "pooled": 163_073 / 12.7})
    # --- §10 serving -------------------------------------------------------------------------------------------
    # Decoding ms per step: native = .device/2/serve/serve_gpu.json native-fused median TPOT over batch 1–16 (base,
    # merged 1.99–2.37; unmerged, multi 2.43–2.88); hf-peft = docs/benchmarks.md (base 18.7 / 16.0 / 17.9 at batch
    # 1 / 4 / 16; unmerged-1 and multi-2 47.6–78.0). vLLM was not measured: native's figures stand in.
    serve_decode_ms: dict = field(default_factory=lambda: {
        "hf-peft": {"merged": 17.5, "adapters": 57.6}, "native": {"merged": 2.15, "adapters": 2.65},
        "vllm": {"merged": 2.15, "adapters": 2.65}})
    # Engine start per scenario: the Ray run's report (hf-peft 1.11–1.22 s; native 2.9–30.0 s, mean 15.6).
    serve_engine_s: dict = field(default_factory=lambda: {"hf-peft": 1.18, "native": 15.55, "vllm": 15.55})
    # Per backend × scenario, the rest: fp32 gate engine, greedy and forced correctness gates, the fp32 CPU
    # reference. Ray run: the serving job less everything above, over its 6 backend × scenario pairs.
    serve_gate_s: float = 11.9
    # --- CPU stages and the cluster ------------------------------------------------------------------------------
    # Wall seconds, no GPU (Ray run, synthetic data: data 12.1 / 14.6 s, statistics 4.7 s, report 1.2 s).
    cpu_s: dict = field(default_factory=lambda: {"data": 13.3, "stats": 4.7, "report": 1.2})
    # The first GPU job on a fresh node (process pool, CUDA and library caches): Ray run, mean excess of the first
    # job on nodes A, B and B' over the model.
    node_cold_start_s: float = 24.0
    # --- data ----------------------------------------------------------------------------------------------------
    # Mean tokens per example (prompt + target), Llama tokenizer; the prompt is charged at the same length.
    tokens_per_example: dict = field(default_factory=lambda: {"mrpc": 80, "squad_v2": 220})
    # Full split sizes before any subsample cap (SQuAD v2: official train less 5% held out for validation).
    split_sizes: dict = field(default_factory=lambda: {
        "mrpc": {"train": 3668, "validation": 408, "test": 1725},
        "squad_v2": {"train": 123_803, "validation": 6_516, "test": 11_873}})

    def lines(self, model_line: str) -> list[str]:
        """The assumptions in words (no Python reprs), as ``lorascope plan`` prints them."""
        t, s, f = self.train_tokens_per_s, self.step_overhead_s, self.forward_floor_s
        hf, nat = self.serve_decode_ms["hf-peft"], self.serve_decode_ms["native"]
        return [
            model_line,
            f"GPU: one {self.gpu} per job; times are wall seconds measured on H200s (torch 2.11) at the 1.3B shape.",
            f"Training step: {s['ft']:.3f} s (FT) or {s['lora']:.3f} s (LoRA) per optimizer step, plus its tokens at "
            f"{t['ft']:,.0f} (FT) or {t['lora']:,.0f} (LoRA) tokens/s (rates from {TORCHRUN}; the per-step part "
            f"from {RAY_RUN}, uncompiled, so compiled runs are likely faster).",
            f"torch.compile adds {self.compile_s['ft']:.1f} s (FT) or {self.compile_s['lora']:.1f} s (LoRA) per "
            "training run when train.compile is on; a recompile for a second sequence length is not counted.",
            f"Each training run adds {self.run_fixed_s:.1f} s of fixed work, each HPO search {self.hpo_fixed_s:.1f} s; "
            f"the sanity gate is expected to stop after {self.sanity_steps:g} steps (worst case: sanity.max_steps).",
            f"Evaluation: every forward (prefill, MRPC scoring pass, or one decoded token) costs at least "
            f"{f['base'] * 1000:.1f} ms (base, FT or merged weights) or {f['lora'] * 1000:.1f} ms (unmerged LoRA "
            f"adapter), plus its tokens at {self.forward_tokens_per_s:,.0f} tokens/s (3 × the FT training rate). "
            "SQuAD decodes all max_new_tokens: an upper bound, decoding stops once every row has ended.",
            f"Every validation is assumed to set a new best (its weights are saved). Loading a model moves "
            f"{self.model_load_gb_per_s:.2f} GB/s; checkpoints and saved models are written at "
            f"{self.state_write_gb_per_s:.2f} GB/s (FT checkpoint: weights plus two AdamW moments, in the model's "
            "dtype; LoRA's are a few MB).",
            f"Weights (§9): {self.weights_module_s:.3f} s per adapted module for FT and LoRA together (the fast "
            "path), 7 validation evaluations per method (DARE and magnitude curves), the resident ΔW loads.",
            f"Drift (§8): per tuned model, its in-task and out-of-task probe tokens at "
            f"{self.drift_tokens_per_s['token']:,.0f} tokens/s (all poolings; "
            f"{self.drift_tokens_per_s['pooled']:,.0f} without token-level), one base pass, the forgetting-proxy "
            "forwards and a load per model.",
            f"Serving (§10): per backend and scenario an engine start (hf-peft {self.serve_engine_s['hf-peft']:.1f} s, "
            f"native {self.serve_engine_s['native']:.1f} s) and {self.serve_gate_s:.1f} s of correctness gates; "
            f"per batch, new_tokens + 1 decoding steps of {hf['merged']:g} or {hf['adapters']:g} ms (hf-peft, merged "
            f"or with adapters) and {nat['merged']:g} or {nat['adapters']:g} ms (native). vLLM was not measured "
            "(native's figures stand in); the natural output mode is charged the full new_tokens.",
            f"CPU stages (wall time, no GPU-hours): data {self.cpu_s['data']:.1f} s per task, statistics "
            f"{self.cpu_s['stats']:.1f} s, report {self.cpu_s['report']:.1f} s (measured on small synthetic data).",
            f"A GPU node's first job pays a cold start of {self.node_cold_start_s:.0f} s.",
            f"For a model other than the {self.reference_params / 1e6:,.0f} M-parameter one measured, token rates "
            f"scale by {self.reference_params / 1e6:,.0f} M / N and §9's per-module time by (hidden / "
            f"{self.reference_hidden})³; fixed costs and per-forward floors are not scaled.",
            "Mean tokens per example (prompt + target): "
            + ", ".join(f"{task} {n}" for task, n in self.tokens_per_example.items()) + ".",
            "Full split sizes (before subsample caps): "
            + "; ".join(f"{task} " + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
                        for task, sizes in self.split_sizes.items()) + ".",
            "Not modelled: failed or retried jobs, downloads from the hub, a busy host (in the Ray run, with two "
            "nodes on one host, decoding ran about twice as slow as alone), data parallelism (every job uses one GPU).",
        ]
