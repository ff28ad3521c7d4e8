"""Per-example paired tests on the test set, for one FT/LoRA seed pair (STUDY.md §11).

- MRPC: McNemar's test on per-example correctness (0/1), exact binomial when discordant pairs are few.
- SQuAD v2: a paired bootstrap of the mean per-example difference (EM or F1).
Rows are aligned by example id with ``align_by_id`` first, so both arms score the same examples.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from lorascope.errors import StatsInputError
from lorascope.stats.checks import as_pair, check_confidence, check_resamples, check_rng

EXACT_BELOW = 25  # discordant pairs b + c below this: exact binomial McNemar (a common rule of thumb)
BOOTSTRAP_CHUNK = 500  # resamples drawn at once: memory chunk × n indices
BOOTSTRAP_P_DEFINITION = (
    "two-sided, null imposed by centring: p = (1 + #{b : |m*_b − m| ≥ |m|}) / (B + 1), m the observed mean "
    "difference and m*_b the b-th resampled mean, i.e. resampling the differences translated to mean 0 "
    "(Efron & Tibshirani 1993, ch. 16); the +1 as in Davison & Hinkley 1997, §4.2; smallest p = 1/(B + 1)")


def align_by_id(rows_a: Mapping[str, float], rows_b: Mapping[str, float],
                names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Values of the two arms on the same example ids, in sorted id order; differing id sets are an error."""
    ids_a, ids_b = set(rows_a), set(rows_b)
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise StatsInputError(f"per-example rows do not pair up: {len(only_a)} id(s) only in {names[0]} "
                              f"(e.g. {only_a[:3]}), {len(only_b)} only in {names[1]} (e.g. {only_b[:3]})")
    ids = sorted(ids_a)
    return (np.array([rows_a[i] for i in ids], dtype=np.float64),
            np.array([rows_b[i] for i in ids], dtype=np.float64), ids)


def mcnemar_test(correct_a: Any, correct_b: Any, exact_below: int = EXACT_BELOW) -> dict:
    """McNemar's test of equal accuracy on paired 0/1 correctness (``statsmodels ... mcnemar``).

    Table [[both right, only a right], [only b right, both wrong]]; only the discordant counts
    b = only-a and c = only-b matter. b + c < ``exact_below``: exact two-sided binomial p =
    min(1, 2·P(X ≤ min(b, c))), X ~ Bin(b + c, ½); else χ² = (|b − c| − 1)² / (b + c) with continuity
    correction (Edwards 1948), 1 df. b + c = 0 gives p = 1 (statsmodels' value; no discordant pairs).
    ``estimate`` = accuracy(a) − accuracy(b) in points = 100·(b − c)/n."""
    from statsmodels.stats.contingency_tables import mcnemar

    x, y = as_pair(correct_a, correct_b, ("correct_a", "correct_b"), min_n=1)
    for name, arr in (("correct_a", x), ("correct_b", y)):
        if not np.isin(arr, (0.0, 1.0)).all():
            raise StatsInputError(f"{name}: correctness must be 0 or 1")
    both = int(np.sum((x == 1) & (y == 1)))
    only_a = int(np.sum((x == 1) & (y == 0)))
    only_b = int(np.sum((x == 0) & (y == 1)))
    neither = int(np.sum((x == 0) & (y == 0)))
    exact = only_a + only_b < exact_below
    res = mcnemar([[both, only_a], [only_b, neither]], exact=exact, correction=True)
    n = int(x.size)
    return {"test": "mcnemar", "n": n, "table": [[both, only_a], [only_b, neither]], "only_a": only_a,
            "only_b": only_b, "method": "exact-binomial" if exact else "chi2-continuity-corrected",
            "statistic": float(res.statistic), "p": float(res.pvalue), "estimate": 100.0 * (only_a - only_b) / n,
            "estimate_kind": "accuracy(a) − accuracy(b), points",
            "note": "no discordant pairs: p = 1" if only_a + only_b == 0 else None}


BOOTSTRAP_P_GREATER = (
    "one-sided (H1: mean(a − b) > 0), null imposed by centring: p = (1 + #{b : m*_b − m ≥ m}) / (B + 1) (the "
    "shift method, Efron & Tibshirani 1993, ch. 16); m ≤ 0 gives p ≥ about ½")


def paired_bootstrap(a: Any, b: Any, *, resamples: int = 10_000, rng: np.random.Generator,
                     confidence: float = 0.95, alternative: str = "two-sided") -> dict:
    """Paired (example-level) bootstrap of mean(a − b) (Efron & Tibshirani 1993; Koehn 2004 for NLP).

    ``a``, ``b``: per-example scores of the two arms on the same examples (any unit; the mean difference
    is in that unit). Each resample draws n example indices with replacement (the same indices for both
    arms, which keeps the pairing). CI: percentile interval of the resampled means (numpy's default
    linear quantile). p: ``BOOTSTRAP_P_DEFINITION``, or ``BOOTSTRAP_P_GREATER`` for ``alternative="greater"``.
    Randomness only from ``rng``."""
    if alternative not in ("two-sided", "greater"):
        raise StatsInputError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    check_confidence(confidence)
    resamples = check_resamples(resamples)
    rng = check_rng(rng)
    x, y = as_pair(a, b, ("a", "b"), min_n=2)
    d = x - y
    n = int(d.size)
    mean = float(np.mean(d, dtype=np.float64))
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        m = min(BOOTSTRAP_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        means[start:start + m] = d[idx].mean(axis=1, dtype=np.float64)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    # ≥ with a relative slack of 1e-12 so that exact ties (discrete scores) count as "as extreme".
    if alternative == "greater":
        extreme = int(np.count_nonzero(means - mean >= mean - abs(mean) * 1e-12))
    else:
        extreme = int(np.count_nonzero(np.abs(means - mean) >= abs(mean) * (1.0 - 1e-12)))
    return {"test": "paired_bootstrap", "n": n, "resamples": resamples, "estimate": mean,
            "estimate_kind": "mean of a − b over examples", "alternative": alternative,
            "ci": [float(lo), float(hi)], "confidence": confidence, "se": float(np.std(means, ddof=1)),
            "p": (1.0 + extreme) / (resamples + 1.0),
            "p_definition": BOOTSTRAP_P_GREATER if alternative == "greater" else BOOTSTRAP_P_DEFINITION, "note": None}
