"""Divergence that is not NaN: a model whose outputs collapsed must fail its run, never become a result.

With lr 1e6, one AdamW step destroys the weights without a single NaN: every test example then gets the
uniform distribution over the vocabulary (MRPC log-prob −2·ln 512 for " yes" + end and " no" + end alike),
the tie rule predicts "no", and the run "completed" with 38.54 accuracy. Two checks, both cheap:

- ``loss_exploded``: a step's loss above ``factor`` × the first step's (training loss only falls or wobbles
  in a healthy run; 4× its start means the optimiser threw the model away);
- ``output_collapse``: at each validation point, the next-token distributions at the end of a few
  validation prompts are (a) near uniform — mean entropy ≥ 99% of ln |V| (a language model, pretrained or
  fine-tuned, is far from uniform after a prompt) — or (b) the same for every prompt up to rounding
  (max |Δ log-prob| ≤ 1e-6 of their scale: the model no longer reads its input). A model that learned to
  answer "yes" to everything still depends on its input far above that level, so the majority-class runs
  the validity gate judges are not flagged here.

Both output checks are relative to the model the run started from (``baseline``, measured before the first
step): a random-weight model is near uniform before any training, and that is not a collapse of training.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lorascope.train.loss import unwrap_causal_lm

UNIFORM_FRACTION = 0.99  # of ln |V|
SAME_OUTPUT_RTOL = 1e-6
PROBE_PROMPTS = 8


def loss_exploded(loss: float, first_loss: float | None, factor: float | None) -> str | None:
    """Why the step's loss is a divergence, or None."""
    if factor is None or first_loss is None or first_loss <= 0:
        return None
    if loss > factor * first_loss:
        return f"loss {loss:.4g} exceeds {factor:g}× the first step's loss {first_loss:.4g}"
    return None


@torch.no_grad()
def output_collapse(model, tokenizer, prompts: Sequence[str], *, device: torch.device, max_length: int,
                    baseline: dict | None = None) -> dict:
    """Diagnostics of the next-token distributions after ``prompts`` (eval mode); ``collapsed`` says whether
    they became uniform or input-independent (module docstring), ``reason`` why. ``baseline``: this function's
    result on the starting model; a property the starting model already had is not a collapse."""
    lm = unwrap_causal_lm(model)
    was_training = lm.training
    lm.eval()
    try:
        seqs = [tokenizer(p)["input_ids"][-max_length:] for p in prompts[:PROBE_PROMPTS]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = torch.tensor([len(s) - 1 for s in seqs], device=logits.device)
        logp = torch.log_softmax(logits[torch.arange(len(seqs), device=logits.device), last].double(), dim=-1)
    finally:
        lm.train(was_training)
    vocab = logp.shape[-1]
    entropy = float(-(logp.exp() * logp).sum(-1).mean())
    normalized = entropy / math.log(vocab)
    spread = float((logp - logp.mean(0)).abs().max())
    scale = float(logp.abs().max())
    out = {"prompts": len(seqs), "mean_entropy_nats": entropy, "entropy_fraction_of_uniform": normalized,
           "max_logprob_spread_across_prompts": spread, "collapsed": False, "reason": None}
    was_uniform = baseline is not None and baseline["entropy_fraction_of_uniform"] >= UNIFORM_FRACTION
    was_blind = baseline is not None and baseline.get("input_blind", False)
    out["input_blind"] = len(seqs) > 1 and spread <= SAME_OUTPUT_RTOL * scale
    if normalized >= UNIFORM_FRACTION and not was_uniform:
        out.update(collapsed=True, reason=f"next-token distributions are near uniform (entropy {normalized:.1%} of "
                                          f"ln {vocab})")
    elif out["input_blind"] and not was_blind:
        out.update(collapsed=True, reason=f"the same next-token distribution after {len(seqs)} different prompts "
                                          f"(max difference {spread:.2e}): the model ignores its input")
    return out
