"""Holm–Bonferroni within a family of tests (Holm 1979; ``statsmodels.stats.multitest.multipletests``).

A family is the set of tests that answer one question with one test on one task (e.g. "MRPC, McNemar,
FT vs LoRA, every seed pair"); alternative tests of the same hypothesis (paired t vs Wilcoxon) are
robustness checks reported side by side, each in its own family, not pooled.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from lorascope.errors import StatsInputError
from lorascope.stats.checks import as_sample


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order: p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j))."""
    from statsmodels.stats.multitest import multipletests

    p = as_sample(pvalues, "pvalues")
    if ((p < 0) | (p > 1)).any():
        raise StatsInputError("p-values must lie in [0, 1]")
    return [float(v) for v in multipletests(p, method="holm")[1]]


def apply_holm(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``p_holm`` on every test dict with a ``family`` and a numeric ``p``, adjusting within each family.

    Tests without a p (undefined, see their note) get ``p_holm`` None and do not count in m."""
    families: dict[str, list[dict]] = defaultdict(list)
    for t in tests:
        t.setdefault("p_holm", None)
        if t.get("family") is not None and t.get("p") is not None:
            families[t["family"]].append(t)
    for members in families.values():
        for t, adj in zip(members, holm(np.array([m["p"] for m in members]))):
            t["p_holm"] = adj
            t["family_size"] = len(members)
    return tests
