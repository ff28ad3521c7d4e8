"""Serving overhead with bootstrap CIs (STUDY.md §10): point estimates by direct computation, CIs against
closed forms (constant cells; the delta-method standard error of a ratio of means)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorascope.errors import StatsInputError
from lorascope.stats.overhead import overhead, overhead_inverse_throughput


def test_point_estimate_is_the_ratio_of_quantiles():
    rng = np.random.default_rng(0)
    t, r = rng.gamma(4.0, 0.05, 60), rng.gamma(4.0, 0.04, 45)
    res = overhead(t, r, "p95", resamples=500, rng=np.random.default_rng(1))
    assert res["estimate"] == pytest.approx(np.quantile(t, 0.95) / np.quantile(r, 0.95) - 1)
    assert res["ci"][0] <= res["ci"][1] and (res["n_treatment"], res["n_reference"]) == (60, 45)
    p50 = overhead(t, r, "p50", resamples=500, rng=np.random.default_rng(1))
    assert p50["estimate"] == pytest.approx(np.median(t) / np.median(r) - 1)


def test_constant_cells_give_a_degenerate_ci():
    res = overhead(np.full(30, 1.3), np.full(30, 1.0), "p95", resamples=200, rng=np.random.default_rng(0))
    assert res["estimate"] == pytest.approx(0.3) and res["ci"] == pytest.approx([0.3, 0.3])


def test_ratio_of_means_ci_matches_delta_method():
    # For stat="mean" with large n the bootstrap SE of T̄/R̄ is the delta-method
    # R·√(s_t²/(n_t T̄²) + s_r²/(n_r R̄²)); the 95% percentile CI is then ≈ ±1.96 SE wide.
    rng = np.random.default_rng(2)
    t, r = rng.normal(1.2, 0.2, 800), rng.normal(1.0, 0.15, 600)
    res = overhead(t, r, "mean", resamples=4000, rng=np.random.default_rng(3))
    ratio = t.mean() / r.mean()
    se = ratio * math.sqrt(t.var(ddof=1) / (800 * t.mean() ** 2) + r.var(ddof=1) / (600 * r.mean() ** 2))
    lo, hi = res["ci"]
    assert hi - lo == pytest.approx(2 * 1.959964 * se, rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(ratio - 1, abs=0.2 * se)


def test_inverse_throughput():
    rng = np.random.default_rng(4)
    te, re_ = rng.uniform(1.0, 2.0, 40), rng.uniform(0.8, 1.5, 40)
    tk, rk = rng.integers(40, 65, 40), rng.integers(40, 65, 40)
    res = overhead_inverse_throughput(te, tk, re_, rk, resamples=500, rng=np.random.default_rng(5))
    assert res["estimate"] == pytest.approx((te.sum() / tk.sum()) / (re_.sum() / rk.sum()) - 1)
    # with equal token counts it is the ratio of mean latencies
    k = np.full(40, 64)
    same = overhead_inverse_throughput(te, k, re_, k, resamples=500, rng=np.random.default_rng(5))
    assert same["estimate"] == pytest.approx(te.mean() / re_.mean() - 1)


def test_seeded_and_errors():
    t, r = np.linspace(1, 2, 31), np.linspace(0.9, 1.5, 31)
    assert overhead(t, r, resamples=300, rng=np.random.default_rng(9)) == overhead(
        t, r, resamples=300, rng=np.random.default_rng(9))
    with pytest.raises(StatsInputError, match="Generator"):
        overhead(t, r, resamples=300, rng=None)
    with pytest.raises(StatsInputError, match="unknown statistic"):
        overhead(t, r, "p90", resamples=300, rng=np.random.default_rng(0))
    with pytest.raises(StatsInputError, match="positive"):
        overhead(t, np.zeros(10), resamples=300, rng=np.random.default_rng(0))
    with pytest.raises(StatsInputError, match="at least 2"):
        overhead([1.0], r, resamples=300, rng=np.random.default_rng(0))
    with pytest.raises(StatsInputError, match="≥ 1 token"):
        overhead_inverse_throughput(t, np.zeros(31), r, np.ones(31), resamples=300, rng=np.random.default_rng(0))
