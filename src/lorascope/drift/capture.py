"""Hidden-state capture for drift (§8): base and tuned models on the same probe prompts, batch by batch.

Per batch, the base model and every tuned model run once (``output_hidden_states``: after the embeddings
and after every block, L+1 points); each representation is pooled three ways and fed to streaming
accumulators, so neither an n×n Gram matrix nor all token activations are ever held:
- ``mean``: mean over non-pad prompt tokens (the default, §8);
- ``last``: the last prompt token;
- ``token``: every non-pad token (feature-space accumulators only).
Pooled (n, d) features are also kept (float32) for the RBF CKA, which needs Gram matrices.
"""

from __future__ import annotations

from typing import Iterator

import torch

from lorascope.train.evaluate import autocast_ctx
from lorascope.train.loss import unwrap_causal_lm

POOLINGS = ("mean", "last", "token")


def batches(tokenizer, prompts: list[str], batch_size: int, max_length: int, device) -> Iterator[tuple]:
    """Right-padded (ids, mask) batches of prompts cut to their first ``max_length`` tokens.

    Prompts are grouped by length (sorted) so batches carry little padding — attention over pad tokens
    is most of the cost on CPU. Row order does not matter for any drift measure as long as base and tuned
    models see the same batches, which they do (they consume the same iterator order).
    """
    enc = [tokenizer(p)["input_ids"][:max_length] for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: (len(enc[i]), i))
    for start in range(0, len(order), batch_size):
        chunk = [enc[i] for i in order[start : start + batch_size]]
        T = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), T), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        yield ids.to(device), mask.to(device)


@torch.no_grad()
def hidden_states(model, ids: torch.Tensor, mask: torch.Tensor, device, bf16: bool) -> list[torch.Tensor]:
    """L+1 tensors (b, T, d) in float32."""
    lm = unwrap_causal_lm(model)
    with autocast_ctx(device, bf16):
        out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return [h.float() for h in out.hidden_states]


def pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(b, T, d) → (b, d) for ``mean`` / ``last``; (n_tokens, d) for ``token``."""
    m = mask.to(h.dtype).unsqueeze(-1)
    if how == "mean":
        return (h * m).sum(1) / m.sum(1).clamp_min(1)
    if how == "last":
        last = mask.sum(1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    if how == "token":
        return h[mask.bool()]
    raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")


@torch.no_grad()
def lm_loss(model, tokenizer, texts: list[str], *, batch_size: int, max_length: int, device, bf16: bool) -> dict:
    """Forgetting proxy (§8): token-weighted mean next-token NLL on raw out-of-task text."""
    lm = unwrap_causal_lm(model)
    total, count = 0.0, 0
    for ids, mask in batches(tokenizer, texts, batch_size, max_length, device):
        with autocast_ctx(device, bf16):
            logits = lm(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = ids[:, 1:]
        valid = mask[:, 1:].bool()
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        total += float(nll[valid].double().sum())
        count += int(valid.sum())
    return {"lm_loss": total / max(count, 1), "tokens": count, "texts": len(texts)}
