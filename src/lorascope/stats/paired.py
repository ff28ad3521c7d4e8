"""FT vs LoRA paired over seeds (STUDY.md §11): paired t, exact Wilcoxon, d_z, Hedges' g, TOST.

Inputs ``a`` and ``b`` are per-seed values of one metric (points), paired by replicate (same data-order
seed): ``a[i]`` and ``b[i]`` come from replicate i. Every result is about the difference d = a − b, so
swapping the arms negates estimate, statistic and effect sizes and keeps p.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special
from scipy import stats as sps

from lorascope.errors import StatsInputError
from lorascope.stats.checks import as_pair, check_confidence
from lorascope.stats.describe import t_interval, wilcoxon_min_p

# Differences are rounded to this many decimals before ranking, so that differences that are equal in
# exact arithmetic (e.g. 100·k/96 − 100·j/96 computed from different operands) tie instead of differing
# in the last bit. 1e-9 points is far below any meaningful metric resolution.
RANK_DECIMALS = 9
MAX_EXACT_PERMUTATION_N = 16  # 2^16 sign flips enumerated at most


def _differences(a: Any, b: Any, min_n: int) -> np.ndarray:
    x, y = as_pair(a, b, ("a", "b"), min_n=min_n)
    return x - y


def _require_variance(d: np.ndarray, what: str) -> float:
    sd = float(np.std(d, ddof=1, dtype=np.float64))
    if np.ptp(d) == 0.0 or sd == 0.0:
        raise StatsInputError(f"{what}: the {d.size} paired differences are all equal ({d[0]:g}); "
                              "the statistic is undefined with zero variance")
    return sd


def paired_t(a: Any, b: Any, confidence: float = 0.95) -> dict:
    """Paired t-test of mean(a − b) = 0 (``scipy.stats.ttest_rel``), with the t-CI of the mean difference.

    Needs n ≥ 2 pairs and non-constant differences."""
    check_confidence(confidence)
    x, y = as_pair(a, b, ("a", "b"), min_n=2)
    d = x - y
    _require_variance(d, "paired t-test")
    res = sps.ttest_rel(x, y)
    ci = res.confidence_interval(confidence_level=confidence)
    return {"test": "paired_t", "n": int(d.size), "df": int(res.df), "statistic": float(res.statistic),
            "p": float(res.pvalue), "estimate": float(np.mean(d, dtype=np.float64)), "estimate_kind": "mean of a − b",
            "ci": [float(ci.low), float(ci.high)], "confidence": confidence, "note": None}


def wilcoxon_exact(a: Any, b: Any) -> dict:
    """Two-sided Wilcoxon signed-rank test of the paired differences, with an exact null distribution.

    - Zero differences are dropped (Wilcoxon's 1945 convention, scipy ``zero_method="wilcox"``); ``n_used``
      counts the rest. All differences zero: statistic 0 and p = 1 (no evidence either way), with a note.
    - No ties among |d|: ``scipy.stats.wilcoxon(method="exact")``, the exact distribution of W⁺.
    - Ties: scipy's "exact" table assumes distinct ranks (it rounds the statistic conservatively), so the
      exact null is built instead by enumerating all 2^n_used sign flips of the mid-ranks
      (``scipy.stats.PermutationMethod`` with n_resamples = 2^n_used; deterministic, no RNG). Above
      n_used = 16 the normal approximation with tie and continuity correction is used (noted).
    - With n_used untied differences the smallest attainable p is 2/2^n_used: p < 0.05 needs n_used ≥ 6.
    ``statistic`` is scipy's min(W⁺, W⁻); ``w_plus`` is the sum of ranks of positive differences."""
    d = np.round(_differences(a, b, min_n=1), RANK_DECIMALS)
    nonzero = d[d != 0.0]
    n_used = int(nonzero.size)
    out: dict = {"test": "wilcoxon_signed_rank", "n": int(d.size), "n_used": n_used, "n_zero": int(d.size - n_used),
                 "ties": False, "method": None, "statistic": None, "w_plus": None, "p": None,
                 "min_attainable_p": None, "estimate": float(np.median(d)), "estimate_kind": "median of a − b",
                 "note": None}
    if n_used == 0:
        out.update(method="none", statistic=0.0, w_plus=0.0, p=1.0, note="all differences are zero: p = 1")
        return out
    ranks = sps.rankdata(np.abs(nonzero))
    out["w_plus"] = float(ranks[nonzero > 0].sum(dtype=np.float64))
    out["min_attainable_p"] = wilcoxon_min_p(n_used)
    out["ties"] = bool(np.unique(np.abs(nonzero)).size < n_used)
    if not out["ties"]:
        method: Any = "exact"
        out["method"] = "exact"
    elif n_used <= MAX_EXACT_PERMUTATION_N:
        method = sps.PermutationMethod(n_resamples=2**n_used)
        out["method"] = "exact-permutation"
    else:
        method = "asymptotic"
        out["method"] = "asymptotic"
        out["note"] = f"ties with n_used={n_used} > {MAX_EXACT_PERMUTATION_N}: normal approximation"
    # correction=True: the continuity correction the docstring promises for the normal approximation
    # (scipy's default is False; it has no effect on the exact and permutation methods).
    res = sps.wilcoxon(nonzero, method=method, alternative="two-sided", correction=(method == "asymptotic"))
    out.update(statistic=float(res.statistic), p=float(res.pvalue))
    if out["min_attainable_p"] >= 0.05 and out["note"] is None:
        out["note"] = (f"n_used={n_used} < 6: the exact test cannot reach p < 0.05 "
                       f"(smallest attainable p = {out['min_attainable_p']:.4g})")
    return out


def cohens_dz(a: Any, b: Any) -> float:
    """Cohen's d_z = mean(d) / sd(d) with d = a − b and sd with ddof = 1 (Lakens 2013, "d_z"; equals t/√n)."""
    d = _differences(a, b, min_n=2)
    sd = _require_variance(d, "Cohen's d_z")
    return float(np.mean(d, dtype=np.float64)) / sd


def hedges_correction(df: float) -> float:
    """Exact small-sample correction J(df) = Γ(df/2) / (√(df/2) · Γ((df−1)/2)) (Hedges 1981;
    Hedges & Olkin 1985, ch. 5), computed with log-gamma. The usual approximation 1 − 3/(4·df − 1) is
    not used (its error is O(1/df²), ≈ 3e-4 at df = 10). df must be > 1 (at df = 1, Γ(0) is infinite and J = 0)."""
    if not df > 1:
        raise StatsInputError(f"Hedges' correction needs df > 1 (n ≥ 3 pairs), got df={df}")
    return math.exp(special.gammaln(df / 2.0) - 0.5 * math.log(df / 2.0) - special.gammaln((df - 1.0) / 2.0))


def hedges_g(a: Any, b: Any) -> float:
    """Hedges' g for paired data: J(n − 1) · d_z (the bias-corrected d_z; Lakens 2013 §"Hedges' g"). n ≥ 3."""
    d = _differences(a, b, min_n=3)
    return hedges_correction(d.size - 1) * cohens_dz(a, b)


def tost_paired(a: Any, b: Any, margin: float, alpha: float = 0.05) -> dict:
    """TOST equivalence of the paired means within ±margin (Schuirmann 1987; Lakens 2017).

    Two one-sided paired t-tests on d = a − b, df = n − 1, se = sd(d)/√n:
      lower: H0 μ_d ≤ −margin vs H1 μ_d > −margin,  t_L = (d̄ + margin)/se,  p_L = P(T ≥ t_L);
      upper: H0 μ_d ≥ +margin vs H1 μ_d < +margin,  t_U = (d̄ − margin)/se,  p_U = P(T ≤ t_U).
    p = max(p_L, p_U); equivalent when p < alpha, i.e. when the (1 − 2α) t-CI lies inside (−margin, margin)."""
    if not margin > 0:
        raise StatsInputError(f"equivalence margin must be positive, got {margin}")
    check_confidence(1.0 - 2.0 * alpha)
    d = _differences(a, b, min_n=2)
    sd = _require_variance(d, "TOST")
    n = int(d.size)
    mean = float(np.mean(d, dtype=np.float64))
    se = sd / math.sqrt(n)
    t_lower = (mean + margin) / se
    t_upper = (mean - margin) / se
    p_lower = float(sps.t.sf(t_lower, df=n - 1))
    p_upper = float(sps.t.cdf(t_upper, df=n - 1))
    p = max(p_lower, p_upper)
    return {"test": "tost_paired", "n": n, "df": n - 1, "margin": float(margin), "alpha": alpha,
            "estimate": mean, "estimate_kind": "mean of a − b", "t_lower": t_lower, "p_lower": p_lower,
            "t_upper": t_upper, "p_upper": p_upper,
            "statistic": t_lower if p_lower >= p_upper else t_upper, "p": p, "equivalent": bool(p < alpha),
            "ci": list(t_interval(mean, sd, n, 1.0 - 2.0 * alpha)), "confidence": 1.0 - 2.0 * alpha, "note": None}
