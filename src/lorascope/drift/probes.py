"""Drift probe sets (§3, §8): prompts only, never labels.

in-task: ``n`` inputs drawn (probe seed) from validation, topped up from test inputs when validation is
smaller (MRPC: 408 + 592); out-of-task: ``n`` inputs of the other task drawn the same way. The
composition (how many from each split) is recorded with every drift result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lorascope.data.prompts import prompt
from lorascope.data.types import TaskData


@dataclass(frozen=True)
class ProbeSet:
    task: str
    split_scheme: str
    prompts: list[str]
    ids: list[str]
    composition: dict = field(default_factory=dict)


def probe_set(data: TaskData, n: int, seed: int) -> ProbeSet:
    """``n`` prompts: validation first (all of it if smaller than ``n``), topped up from test; seeded."""
    rng = np.random.default_rng([seed, 8])
    val, test = data["validation"], data["test"]
    if len(val) >= n:
        picks = [val[i] for i in np.sort(rng.choice(len(val), size=n, replace=False))]
        comp = {"validation": n, "test": 0}
    else:
        extra = min(n - len(val), len(test))
        picks = list(val) + [test[i] for i in np.sort(rng.choice(len(test), size=extra, replace=False))]
        comp = {"validation": len(val), "test": extra}
    return ProbeSet(task=data.task, split_scheme=data.split_scheme, prompts=[prompt(ex) for ex in picks],
                    ids=[ex.id for ex in picks], composition=comp)


def out_of_task_texts(data: TaskData, n: int, seed: int) -> list[str]:
    """Raw text of the other task for the forgetting proxy (§8): MRPC sentences or SQuAD contexts."""
    rng = np.random.default_rng([seed, 9])
    if data.task == "mrpc":
        texts = list(dict.fromkeys(s for ex in data["validation"] for s in (ex.sentence1, ex.sentence2)))
    else:
        texts = list(dict.fromkeys(ex.context for ex in data["validation"]))
    if len(texts) > n:
        texts = [texts[i] for i in np.sort(rng.choice(len(texts), size=n, replace=False))]
    return texts
