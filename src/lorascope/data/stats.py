"""Dataset statistics for the report (§3): sizes, label / answerable balance, token-length
distributions with the model's tokenizer (quantiles, truncation counts) and sample examples.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from lorascope.data.tokenize import token_lengths
from lorascope.data.types import SPLITS, TaskData

QUANTILES = (0, 50, 90, 95, 99, 100)


def label_balance(data: TaskData, split: str) -> dict:
    exs = data.splits[split]
    n = len(exs)
    if data.task == "mrpc":
        pos = sum(ex.label for ex in exs)
        counts = {"positive": pos, "negative": n - pos}
    else:
        ans = sum(not ex.is_impossible for ex in exs)
        counts = {"answerable": ans, "unanswerable": n - ans}
    return {**counts, **{f"{k}_pct": round(100.0 * v / n, 2) if n else None for k, v in counts.items()}}


def length_summary(lengths: list[int], limit: int) -> dict:
    """Quantiles of a token-length list and how many exceed ``limit``."""
    if not lengths:
        return {"n": 0}
    arr = np.asarray(lengths, dtype=np.float64)
    qs = np.percentile(arr, QUANTILES)
    return {
        "n": len(lengths),
        "mean": round(float(arr.mean()), 2),
        **{f"p{q}": int(round(v)) for q, v in zip(QUANTILES, qs)},
        "over_limit": int((arr > limit).sum()),
        "limit": limit,
    }


def split_token_lengths(data: TaskData, tokenizer) -> dict[str, tuple[list[int], list[int]]]:
    """Per split: (prompt lengths, full training-sequence lengths) — one tokenizer pass for the statistics and
    the histogram figure alike."""
    return {split: token_lengths(tokenizer, data.splits[split]) for split in SPLITS}


def dataset_stats(data: TaskData, *, seed: int, n_samples: int = 3, tokenizer=None, max_length: int = 1024,
                  max_new_tokens: int = 32, used: TaskData | None = None,
                  lengths: dict[str, tuple[list[int], list[int]]] | None = None) -> dict:
    """Statistics of every split. With a tokenizer: token lengths of prompts and of full training sequences
    (``lengths``: those of ``split_token_lengths``, when the caller has them already).

    ``sequence.over_limit`` counts training examples that §4 drops; ``prompt.over_limit`` counts evaluation
    prompts whose context will be truncated (limit = max_length − max_new_tokens for SQuAD generation).
    ``used``: the examples the study actually trains and evaluates on (a seeded subsample); where a split was
    cut, ``used`` gives its size and label balance, which can differ from the full split's.
    """
    if lengths is None and tokenizer is not None:
        lengths = split_token_lengths(data, tokenizer)
    rng = np.random.default_rng([seed, 11])
    out = {**data.describe(), "composition": data.composition, "splits": {}}
    eval_limit = max_length - (max_new_tokens if data.task == "squad_v2" else 0)
    for split in SPLITS:
        exs = data.splits[split]
        entry = {"n": len(exs), "labels": label_balance(data, split)}
        if data.task == "squad_v2":
            entry["articles"] = len({ex.title for ex in exs})
            entry["contexts"] = len({ex.context for ex in exs})
        if lengths is not None:
            p_len, f_len = lengths[split]
            entry["tokens"] = {
                "prompt": length_summary(p_len, eval_limit),
                "sequence": length_summary(f_len, max_length),
            }
        picks = rng.choice(len(exs), size=min(n_samples, len(exs)), replace=False) if exs else []
        entry["samples"] = [asdict(exs[i]) for i in sorted(int(i) for i in picks)]
        if used is not None and len(used.splits[split]) != len(exs):
            entry["used"] = {"n": len(used.splits[split]), "labels": label_balance(used, split)}
        out["splits"][split] = entry
    if tokenizer is not None:
        out["tokenizer"] = getattr(tokenizer, "name_or_path", None)
    return out
