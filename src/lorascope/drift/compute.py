"""Per-layer drift between a base model and tuned models on one probe set (§8).

Two passes over the probes: (1) the base model alone, for the per-dimension mean/sd that standardized
cosine needs (a few "rogue" dimensions dominate raw cosine); (2) base and every tuned model, once per
batch each, feeding streaming accumulators per (model, pooling, layer). Pooled features are kept for
RBF CKA (n×n Gram matrices, pooled only, n ≤ ``rbf_max_n``).
"""

from __future__ import annotations

import numpy as np

from lorascope.drift.aggregate import drift_reduction, drift_score  # noqa: F401 — the §8 scores, re-exported
from lorascope.drift.capture import batches, hidden_states, pool
from lorascope.drift.cosine import CosineAccumulator
from lorascope.drift.gram import rbf_cka
from lorascope.drift.similarity import LinearCKAAccumulator, SimilarityInputError


def base_statistics(base, tokenizer, prompts, poolings, *, batch_size, max_length, device, bf16) -> dict:
    """Pass 1: the base model's per-dimension (mean, sd) per (layer, pooling) over the probes — what the
    standardized cosine needs. Depends on the base model and probes only, so one pass serves any number of
    ``layer_drift`` calls on the same probes (e.g. successive groups of tuned models)."""
    accs: dict = {}
    for ids, mask in batches(tokenizer, prompts, batch_size, max_length, device):
        for layer, h in enumerate(hidden_states(base, ids, mask, device, bf16)):
            for how in poolings:
                p = pool(h, mask, how)
                accs.setdefault((layer, how), CosineAccumulator(p.shape[1])).update(p, p)
    return {k: acc.base_stats() for k, acc in accs.items()}


def layer_drift(base, tuned: dict, tokenizer, prompts: list[str], *, batch_size: int, max_length: int, device,
                bf16: bool = True, poolings=("mean", "last", "token"), rbf: bool = True, rbf_max_n: int = 4096,
                sigma_factor: float = 0.8, progress=None, base_stats: dict | None = None) -> dict:
    """``{model name: {pooling: [per-layer metrics dict, layer 0 = embeddings]}}``.

    ``base_stats``: ``base_statistics`` of these probes, poolings and settings, when the caller already
    has them (else computed here)."""
    stats = base_stats if base_stats is not None else base_statistics(
        base, tokenizer, prompts, poolings, batch_size=batch_size, max_length=max_length, device=device, bf16=bf16)
    cka: dict = {}
    cos: dict = {}
    kept: dict = {}
    for b, (ids, mask) in enumerate(batches(tokenizer, prompts, batch_size, max_length, device)):
        hb = hidden_states(base, ids, mask, device, bf16)
        for name, model in tuned.items():
            ht = hidden_states(model, ids, mask, device, bf16)
            for layer, (xb, yt) in enumerate(zip(hb, ht)):
                for how in poolings:
                    px, py = pool(xb, mask, how), pool(yt, mask, how)
                    key = (name, how, layer)
                    if key not in cka:
                        mu, sd = stats[(layer, how)]
                        cka[key] = LinearCKAAccumulator(px.shape[1], py.shape[1])
                        try:
                            cos[key] = CosineAccumulator(px.shape[1], mu, sd)
                        except SimilarityInputError:  # base constant here (e.g. last token = ":" at layer 0)
                            cos[key] = CosineAccumulator(px.shape[1])
                    cka[key].update(px, py)
                    cos[key].update(px, py)
                    if rbf and how != "token":
                        kept.setdefault(key, ([], []))
                        kept[key][0].append(px.cpu().numpy().astype(np.float32))
                        kept[key][1].append(py.cpu().numpy().astype(np.float32))
        if progress:
            progress(b)
    out: dict = {}
    for (name, how, layer), acc in sorted(cka.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        row = {"layer": layer, **_safe(acc.result, "linear_cka"), **_safe(cos[(name, how, layer)].result, "cosine")}
        if (name, how, layer) in kept and len(prompts) <= rbf_max_n:
            X = np.concatenate(kept[(name, how, layer)][0])
            Y = np.concatenate(kept[(name, how, layer)][1])
            row.update(_safe(lambda X=X, Y=Y: {"rbf_cka": float(rbf_cka(X, Y, sigma_factor=sigma_factor,
                                                                         max_n=rbf_max_n))}, "rbf"))
        out.setdefault(name, {}).setdefault(how, []).append(row)
    return out


def _safe(fn, what: str) -> dict:
    """A measure that is undefined at this layer (constant representations) is recorded as a note, not NaN."""
    try:
        return fn()
    except SimilarityInputError as exc:
        return {f"{what}_note": str(exc)}
