"""Teacher-forced gate of a low-precision engine — the very engine that is timed (§10).

Greedy tokens cannot gate a bf16 engine: near-ties flip argmaxes (on random weights the top-1/top-2 logit gap
has a median of ≈ 0.09 and gets as small as 3e-4), and one flipped token sends the rest of the sequence
elsewhere. So the gate feeds every row the fp32 reference's own greedy tokens (transformers + PEFT, the row's
single adapter) and compares the engine's logits at every position with the reference's, through the timed
engine's code path: its dtype, its CUDA graphs, its batch size, its routing of every resident adapter.

Tolerance, from bf16 rounding measured rather than guessed: the same teacher-forced logits computed by
transformers + PEFT *in bf16* (the reference's model cast to bf16, same adapter, same tokens) deviate from fp32
by the error that bf16 rounding of weights and activations causes in this model on these tokens — an error
that grows with depth and logit scale in ways a formula in ε_bf16 = 2⁻⁸ only bounds loosely (ε · logit
scale · √depth would have to guess the constant). A correct bf16 engine rounds the same weights and the same
kind of activations, in a different order, so its deviation is of the same size: per row, both the RMS and the
maximum of |engine − fp32| must stay within ``TAU_RMS`` = 2× and ``TAU_MAX`` = 3× those of bf16 transformers +
PEFT. RMS is over n × vocab values, a stable statistic: correct engines sit at ratios ≈ 0.6–1.1 on the tiny
model (tests); the max of a heavy-tailed error over a few thousand values is noisier (one correct row of the
tiny model reached 1.6 while its RMS ratio was 1.03), hence its wider bound — it is there to catch one bad
position (a wrong cache column, a stale graph input) that RMS would dilute. A row routed to a wrong adapter
lands at ratios ≈ 17–30 (tests), because a LoRA update moves logits far more than rounding does.

An engine that exposes no logits (vLLM: ``decode_logprobs``) is gated on its own greedy tokens instead: it decodes
through its timed path and reports the log-probability of each token it chose; the reference computes the
log-probabilities of those same tokens teacher-forced, in fp32 and in bf16. Forcing the engine's tokens rather
than the reference's is as valid — at every position both see the same prefix — and it is the only way to reach
the decode path (vLLM's prompt log-probabilities would gate its prefill instead). Same ratios, same bounds, on n
values per row rather than n × vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from lorascope.serve.correctness import Reference
from lorascope.serve.types import ServeError

TAU_RMS, TAU_MAX = 2.0, 3.0
# The engine's log-probabilities come from an fp32 log-softmax (vLLM's "raw_logprobs"): they carry rounding of a
# few fp32 ulps of the logits' magnitude, 2⁻²⁴ ≈ 6e-8 relative, whatever the bf16 scale model does. Where the
# model is all but certain (p ≈ 1 at every position), bf16's own deviation of log p shrinks like (1 − p) · δ and
# could fall below that: the scale is floored at 16 such ulps (2⁻²⁰ × (1 + max |logit|)) so that fp32 rounding
# alone can never fail a correct engine.
FP32_LOGPROB_FLOOR = 2.0 ** -20


@dataclass
class GateResult:
    passed: bool
    worst_rms_ratio: float
    worst_max_ratio: float
    rows: list[dict] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        if self.passed:
            return None
        bad = next(r for r in self.rows if r["rms_ratio"] > TAU_RMS or r["max_ratio"] > TAU_MAX)
        return (f"teacher-forced gate, row {bad['row']} (adapter {bad['adapter']}): |engine − fp32| rms "
                f"{bad['rms']:.3g} / max {bad['max']:.3g} vs bf16 transformers+PEFT {bad['scale_rms']:.3g} / "
                f"{bad['scale_max']:.3g}: ratios {bad['rms_ratio']:.2f} / {bad['max_ratio']:.2f} exceed "
                f"{TAU_RMS} / {TAU_MAX}")

    def summary(self) -> dict:
        return {"passed": self.passed, "worst_rms_ratio": self.worst_rms_ratio, "worst_max_ratio": self.worst_max_ratio,
                "rows": len(self.rows), "reason": self.reason}

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "GateResult":
        """The verdict over rows (each with ``rms_ratio`` and ``max_ratio``): every row within both bounds."""
        worst_rms = max(r["rms_ratio"] for r in rows)
        worst_max = max(r["max_ratio"] for r in rows)
        return cls(passed=worst_rms <= TAU_RMS and worst_max <= TAU_MAX, worst_rms_ratio=worst_rms,
                   worst_max_ratio=worst_max, rows=rows)


def deviation(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """RMS and max of |got − want| over every position and vocabulary entry (float64)."""
    diff = got.double() - want.double().to(got.device)
    return float(diff.pow(2).mean().sqrt()), float(diff.abs().max())


def _row(i: int, adapter: int | None, dev: tuple[float, float], scale: tuple[float, float]) -> dict:
    """One gated row: the engine's (rms, max) deviation from fp32 over the bf16 scale's (rms, max)."""
    (rms, mx), (s_rms, s_max) = dev, scale
    return {"row": i, "adapter": adapter, "rms": rms, "max": mx, "scale_rms": s_rms, "scale_max": s_max,
            "rms_ratio": rms / max(s_rms, 1e-30), "max_ratio": mx / max(s_max, 1e-30)}


def teacher_forced_gate(backend, reference: Reference, prompts: Sequence[Sequence[int]],
                        engine_ids: Sequence[int | None] | None, reference_ids: Sequence[int | None], n_new: int,
                        dtype: torch.dtype) -> GateResult:
    """Run ``prompts`` as ONE batch of ``backend.forced_logits`` fed with the reference's fp32 greedy tokens
    (fixed length, EOS ignored) and compare each row with fp32, relative to bf16 transformers + PEFT."""
    forced = [reference.one(p, a, n_new, False) for p, a in zip(prompts, reference_ids)]
    got = backend.forced_logits(prompts, engine_ids, forced)
    rows = []
    for i, (p, a, toks) in enumerate(zip(prompts, reference_ids, forced)):
        want = reference.forced(p, a, toks)
        rows.append(_row(i, a, deviation(got[i], want), deviation(reference.forced(p, a, toks, dtype), want)))
    return GateResult.from_rows(rows)


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    """(n,) float64 log-probabilities of ``tokens`` under (n, vocab) ``logits`` (position i predicts tokens[i])."""
    idx = torch.tensor(list(tokens), device=logits.device).unsqueeze(1)
    return torch.log_softmax(logits.double(), dim=-1).gather(1, idx).squeeze(1)


def engine_token_gate(backend, reference: Reference, prompts: Sequence[Sequence[int]],
                      engine_ids: Sequence[int | None] | None, reference_ids: Sequence[int | None], n_new: int,
                      dtype: torch.dtype) -> GateResult:
    """The gate of an engine with ``decode_logprobs`` (no logits): its log-probabilities of its own greedy tokens
    against the reference's, teacher-forced on those tokens, relative to bf16 transformers + PEFT."""
    tokens, got = backend.decode_logprobs(prompts, engine_ids, n_new)
    if len(tokens) != len(prompts) or any(len(t) != n_new or len(g) != n_new for t, g in zip(tokens, got)):
        counts = ", ".join(f"{len(t)}/{len(g)}" for t, g in zip(tokens, got))
        raise ServeError(f"the engine returned {len(tokens)} rows for {len(prompts)} prompts; tokens/log-probabilities "
                         f"per row: {counts or 'none'}; expected {n_new} of each")
    rows = []
    for i, (p, a, toks) in enumerate(zip(prompts, reference_ids, tokens)):
        logits = reference.forced(p, a, toks)
        want = token_logprobs(logits, toks).cpu()
        s_rms, s_max = deviation(token_logprobs(reference.forced(p, a, toks, dtype), toks).cpu(), want)
        floor = FP32_LOGPROB_FLOOR * (1.0 + float(logits.abs().max()))
        rows.append(_row(i, a, deviation(torch.tensor(got[i], dtype=torch.float64), want),
                         (max(s_rms, floor), max(s_max, floor))))
    return GateResult.from_rows(rows)


def gate_cell(backend, reference: Reference, prompts: Sequence[Sequence[int]], k: int, batch: int, n_new: int,
              dtype: torch.dtype, *, merged: bool = False) -> GateResult:
    """The gate of one timed cell: batches of exactly ``batch`` rows (so the cell's own CUDA graph runs), row g
    on prompt g mod |prompts| and adapter g mod k (the timed stream's round-robin), at least k rows so that
    every resident adapter is checked (multi-8 at batch 1: eight batches). ``merged``: an engine without
    adapters whose reference is adapter 0."""
    n_rows = -(-max(batch, k, 1) // batch) * batch
    gate = teacher_forced_gate if hasattr(backend, "forced_logits") else engine_token_gate
    rows: list[dict] = []
    for start in range(0, n_rows, batch):
        chunk = [prompts[g % len(prompts)] for g in range(start, start + batch)]
        ids = [g % k for g in range(start, start + batch)] if k else None
        ref_ids = [0] * batch if merged else (ids or [None] * batch)
        part = gate(backend, reference, chunk, ids, ref_ids, n_new, dtype)
        rows += [{**r, "row": start + r["row"]} for r in part.rows]
    return GateResult.from_rows(rows)
