"""Seed-level statistics (STUDY.md §11): descriptive t-CI, paired t, exact Wilcoxon, d_z, Hedges' g, TOST.

Each is checked against a published textbook result and against an independent computation (brute-force
enumeration of sign flips, closed-form Gamma values, scipy one-sided t-tests), plus hypothesis properties.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from lorascope.errors import StatsInputError
from lorascope.stats.describe import describe, paired_t_detectable_dz, proportion_ci_halfwidth, wilcoxon_min_p
from lorascope.stats.paired import cohens_dz, hedges_correction, hedges_g, paired_t, tost_paired, wilcoxon_exact

# Student (1908) / Cushny & Peebles: extra hours of sleep under two drugs, 10 patients (R's `sleep`).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

paired_values = st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=3, max_size=8)


def test_sleep_paired_t_matches_published():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE): t = 4.0621 (2 − 1), df = 9, p = 0.002833,
    # 95% CI (0.7001142, 2.4598858), mean difference 1.58.
    r = paired_t(SLEEP_2, SLEEP_1)
    assert r["estimate"] == pytest.approx(1.58, abs=1e-12)
    assert r["statistic"] == pytest.approx(4.0621, abs=5e-5)
    assert r["df"] == 9
    assert r["p"] == pytest.approx(0.002833, abs=5e-7)
    assert r["ci"] == pytest.approx([0.7001142, 2.4598858], abs=5e-7)


def test_describe_t_interval_by_hand():
    x = np.array([61.0, 63.5, 60.25, 62.0, 64.0])
    d = describe(x)
    sd = math.sqrt(sum((v - x.mean()) ** 2 for v in x) / 4)
    half = sps.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert d["mean"] == pytest.approx(x.mean()) and d["sd"] == pytest.approx(sd)
    assert d["ci"] == pytest.approx([x.mean() - half, x.mean() + half])
    # the interval is the same as scipy's one-sample t-test CI
    ci = sps.ttest_1samp(x, 0).confidence_interval(0.95)
    assert d["ci"] == pytest.approx([ci.low, ci.high])


def test_describe_degenerate_values_are_defined():
    one = describe([3.0])
    assert one["sd"] is None and one["ci"] is None and "n=1" in one["note"]
    flat = describe([2.0, 2.0, 2.0])
    assert flat["ci"] == [2.0, 2.0] and "zero variance" in flat["note"]
    with pytest.raises(StatsInputError, match="non-finite"):
        describe([1.0, float("nan")])
    with pytest.raises(StatsInputError, match="at least 1"):
        describe([])


def brute_force_wilcoxon_p(d) -> float:
    """Exact two-sided p by enumerating all 2^n sign assignments of the mid-ranks of the nonzero |d|."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    ranks = sps.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    stats = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(d))]
    le = sum(s <= observed + 1e-9 for s in stats) / len(stats)
    ge = sum(s >= observed - 1e-9 for s in stats) / len(stats)
    return min(1.0, 2 * min(le, ge))


@pytest.mark.parametrize("a,b", [
    ([1.1, 2.3, 0.4, 5.0, 3.2, 0.9, 4.4], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),      # no ties, all positive
    ([1.0, -2.0, 3.5, -0.5, 4.0, 6.0], [0, 0, 0, 0, 0, 0]),                       # no ties, mixed signs
    ([1.0, -1.0, 2.0, 2.0, -3.0, 4.0, 0.0], [0, 0, 0, 0, 0, 0, 0]),               # ties and a zero
    (SLEEP_2, SLEEP_1),                                                            # ties (1.3, 1.3) and a zero
])
def test_wilcoxon_equals_enumeration(a, b):
    r = wilcoxon_exact(a, b)
    d = np.round(np.subtract(a, b), 9)
    assert r["p"] == pytest.approx(brute_force_wilcoxon_p(d), abs=1e-12)
    assert r["n_used"] == int(np.count_nonzero(d))
    assert r["method"] == ("exact-permutation" if r["ties"] else "exact")


def test_wilcoxon_sleep_and_small_n():
    r = wilcoxon_exact(SLEEP_2, SLEEP_1)  # 9 nonzero differences, all positive: p = 2 / 2^9
    assert r["ties"] and r["n_zero"] == 1 and r["p"] == pytest.approx(2 / 2**9)
    five = wilcoxon_exact([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])  # the most extreme outcome with n = 5
    assert five["p"] == pytest.approx(0.0625) and five["p"] == wilcoxon_min_p(5) and "cannot reach" in five["note"]
    assert wilcoxon_min_p(6) < 0.05 <= wilcoxon_min_p(5)
    zeros = wilcoxon_exact([1.0, 2.0], [1.0, 2.0])
    assert zeros["p"] == 1.0 and zeros["n_used"] == 0


def test_wilcoxon_float_noise_ties():
    # 100·k/96 points: equal differences computed from different operands must tie.
    a, b = [100 * 60 / 96, 100 * 61 / 96, 100 * 50 / 96], [100 * 59 / 96, 100 * 60 / 96, 100 * 48 / 96]
    assert wilcoxon_exact(a, b)["ties"]


def test_hedges_correction_closed_forms():
    assert hedges_correction(4) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-13)  # Γ(2)/(√2 Γ(3/2))
    assert hedges_correction(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-13)  # Γ(1)/(1·Γ(1/2))
    # the usual approximation 1 − 3/(4df − 1) is close, with an error that shrinks like 1/df²
    errors = [abs(hedges_correction(df) - (1 - 3 / (4 * df - 1))) for df in (10, 30, 100)]
    assert errors[0] < 5e-4 and errors[0] > errors[1] > errors[2] and errors[2] < 5e-6
    with pytest.raises(StatsInputError):
        hedges_correction(1)


def test_effect_sizes_by_hand():
    a, b = [5.0, 7.0, 6.0, 9.0, 8.0], [4.0, 4.5, 6.5, 6.0, 5.0]
    d = [1.0, 2.5, -0.5, 3.0, 3.0]
    mean, sd = sum(d) / 5, math.sqrt(sum((x - 1.8) ** 2 for x in d) / 4)
    assert cohens_dz(a, b) == pytest.approx(mean / sd)
    assert cohens_dz(a, b) == pytest.approx(paired_t(a, b)["statistic"] / math.sqrt(5))  # d_z = t/√n
    assert hedges_g(a, b) == pytest.approx(math.sqrt(2 / math.pi) * mean / sd)


@given(paired_values)
@settings(max_examples=40, deadline=None)
def test_swapping_arms_negates(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    try:
        ab, ba = paired_t(a, b), paired_t(b, a)
    except StatsInputError:
        return
    assert ba["estimate"] == pytest.approx(-ab["estimate"], abs=1e-9)
    assert ba["statistic"] == pytest.approx(-ab["statistic"], rel=1e-9, abs=1e-9)
    assert ba["p"] == pytest.approx(ab["p"], rel=1e-9, abs=1e-12)
    assert wilcoxon_exact(b, a)["p"] == pytest.approx(wilcoxon_exact(a, b)["p"])
    assert cohens_dz(b, a) == pytest.approx(-cohens_dz(a, b), rel=1e-9, abs=1e-12)


def test_tost_equals_two_one_sided_scipy_tests():
    rng = np.random.default_rng(5)
    a = rng.normal(80, 1, 8)
    b = a - rng.normal(0.5, 0.8, 8)
    for margin in (0.5, 1.5, 3.0):
        r = tost_paired(a, b, margin)
        lower = sps.ttest_rel(a, b - margin, alternative="greater")  # H1: μ_d > −margin
        upper = sps.ttest_rel(a, b + margin, alternative="less")  # H1: μ_d < +margin
        assert r["p_lower"] == pytest.approx(lower.pvalue, rel=1e-9)
        assert r["p_upper"] == pytest.approx(upper.pvalue, rel=1e-9)
        assert r["p"] == pytest.approx(max(lower.pvalue, upper.pvalue), rel=1e-9)
        # equivalent at α exactly when the (1 − 2α) CI lies inside (−margin, margin)
        lo, hi = r["ci"]
        assert r["equivalent"] == (-margin < lo and hi < margin)


@pytest.mark.parametrize("fn", [paired_t, cohens_dz, lambda a, b: tost_paired(a, b, 3.0)])
def test_degenerate_inputs_raise(fn):
    with pytest.raises(StatsInputError, match="length"):
        fn([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(StatsInputError, match="at least 2"):
        fn([1.0], [0.0])
    with pytest.raises(StatsInputError, match="zero variance"):
        fn([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    with pytest.raises(StatsInputError, match="non-finite"):
        fn([1.0, float("nan"), 2.0], [0.0, 1.0, 2.0])
    with pytest.raises(StatsInputError, match="at least 3"):
        hedges_g([1.0, 2.0], [0.0, 0.5])


def test_power_note_mrpc_halfwidth():
    # §11: at 85% accuracy on the 1,725 MRPC test pairs the 95% half-width is ≈ ±1.7 points.
    hw = 100 * proportion_ci_halfwidth(0.85, 1725)
    assert hw == pytest.approx(1.96 * math.sqrt(0.85 * 0.15 / 1725) * 100, rel=1e-4)
    assert round(hw, 1) == 1.7
    # the detectable effect shrinks with more seeds and is the noncentral-t solution: check power at it
    dz = paired_t_detectable_dz(5)
    nc = dz * math.sqrt(5)
    crit = sps.t.ppf(0.975, 4)
    power = sps.nct.sf(crit, 4, nc) + sps.nct.cdf(-crit, 4, nc)
    assert power == pytest.approx(0.8, abs=1e-4) and paired_t_detectable_dz(10) < dz


def test_wilcoxon_asymptotic_branch_uses_the_continuity_correction():
    import scipy.stats as sps

    from lorascope.stats.paired import wilcoxon_exact

    a = np.round(np.random.default_rng(0).normal(0.3, 1.0, 20), 1)  # ties, n > the permutation limit
    out = wilcoxon_exact(a, np.zeros(20))
    assert out["method"] == "asymptotic"
    nz = a[a != 0]
    assert out["p"] == pytest.approx(sps.wilcoxon(nz, method="asymptotic", correction=True).pvalue, rel=1e-12)
    assert out["p"] != pytest.approx(sps.wilcoxon(nz, method="asymptotic", correction=False).pvalue, rel=1e-6)
