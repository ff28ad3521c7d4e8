"""Descriptive statistics over seeds and the power notes (STUDY.md §11).

Units: whatever the input is in (task metrics are in points, 0–100). All sums in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sps

from lorascope.errors import StatsInputError
from lorascope.stats.checks import as_sample, check_confidence


def t_interval(mean: float, sd: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided t-CI of a mean: mean ± t_{(1+c)/2, n−1} · sd/√n (Student 1908). Needs n ≥ 2.

    Zero sd gives the degenerate interval [mean, mean] (a defined value, not NaN)."""
    check_confidence(confidence)
    if n < 2:
        raise StatsInputError(f"a t-interval needs n ≥ 2, got n={n}")
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def describe(values: Any, confidence: float = 0.95) -> dict:
    """n, mean, sd (ddof=1), se and the t-CI of a 1-D sample (e.g. one metric over seeds).

    n = 1: sd, se and ci are None with a note (undefined, never NaN)."""
    x = as_sample(values, "values")
    n = int(x.size)
    mean = float(np.mean(x, dtype=np.float64))
    out: dict = {"n": n, "mean": mean, "sd": None, "se": None, "ci": None, "confidence": confidence, "note": None}
    if n < 2:
        out["note"] = "n=1: sd and CI undefined"
        return out
    sd = float(np.std(x, ddof=1, dtype=np.float64))
    lo, hi = t_interval(mean, sd, n, confidence)
    out.update(sd=sd, se=sd / math.sqrt(n), ci=[lo, hi])
    if sd == 0.0:
        out["note"] = "zero variance: the CI collapses to the mean"
    return out


def proportion_ci_halfwidth(p: float, n: int, confidence: float = 0.95) -> float:
    """Normal-approximation (Wald) half-width z_{(1+c)/2}·√(p(1−p)/n) of a proportion, in p's units.

    At p = 0.85 on the 1,725 MRPC test pairs this is ≈ 0.0169, i.e. ±1.7 accuracy points (§11)."""
    check_confidence(confidence)
    if not 0.0 <= p <= 1.0:
        raise StatsInputError(f"p must be a proportion in [0, 1], got {p}")
    if n < 1:
        raise StatsInputError(f"n must be ≥ 1, got {n}")
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    return z * math.sqrt(p * (1.0 - p) / n)


def paired_t_detectable_dz(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |d_z| a two-sided paired t-test on n pairs detects with the given power (statsmodels' noncentral t)."""
    from statsmodels.stats.power import TTestPower

    if n < 2:
        raise StatsInputError(f"power of a paired t-test needs n ≥ 2 pairs, got {n}")
    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                          alternative="two-sided"))


def wilcoxon_min_p(n: int) -> float:
    """Smallest attainable two-sided exact Wilcoxon p with n untied nonzero differences: 2/2ⁿ (all signs equal).

    So p < 0.05 needs n ≥ 6 (n=5: 0.0625; n=6: 0.03125)."""
    if n < 1:
        raise StatsInputError(f"n must be ≥ 1, got {n}")
    return min(1.0, 2.0 ** (1 - n))
