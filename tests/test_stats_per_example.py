"""Per-example paired tests (McNemar, paired bootstrap) and Holm–Bonferroni (STUDY.md §11), each against
an independent computation: the binomial and χ² formulas, closed-form bootstrap distributions, a hand
Holm step-down."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from lorascope.errors import StatsInputError
from lorascope.stats.multitest import apply_holm, holm
from lorascope.stats.per_example import align_by_id, mcnemar_test, paired_bootstrap


def _correctness(both: int, only_a: int, only_b: int, neither: int, seed: int = 0):
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    order = np.random.default_rng(seed).permutation(len(a))
    return np.array(a)[order], np.array(b)[order]


@pytest.mark.parametrize("only_a,only_b", [(7, 2), (0, 5), (3, 3), (12, 11), (1, 0)])
def test_mcnemar_exact_is_the_binomial_formula(only_a, only_b):
    a, b = _correctness(50, only_a, only_b, 20)
    r = mcnemar_test(a, b)
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert r["method"] == "exact-binomial" and r["p"] == pytest.approx(p, rel=1e-12)
    assert (r["only_a"], r["only_b"]) == (only_a, only_b)
    assert r["estimate"] == pytest.approx(100 * (only_a - only_b) / len(a))


def test_mcnemar_chi2_with_continuity_correction():
    a, b = _correctness(900, 40, 22, 30)
    r = mcnemar_test(a, b)
    chi2 = (abs(40 - 22) - 1) ** 2 / 62
    assert r["method"] == "chi2-continuity-corrected"
    assert r["statistic"] == pytest.approx(chi2) and r["p"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))


def test_mcnemar_edge_cases():
    a, b = _correctness(10, 0, 0, 5)
    assert mcnemar_test(a, b)["p"] == 1.0 and "no discordant" in mcnemar_test(a, b)["note"]
    with pytest.raises(StatsInputError, match="0 or 1"):
        mcnemar_test([0, 1, 2], [0, 1, 1])
    with pytest.raises(StatsInputError, match="length"):
        mcnemar_test([0, 1], [0, 1, 1])


def test_align_by_id():
    a, b, ids = align_by_id({"x": 1.0, "y": 0.0}, {"y": 1.0, "x": 0.5})
    assert ids == ["x", "y"] and a.tolist() == [1.0, 0.0] and b.tolist() == [0.5, 1.0]
    with pytest.raises(StatsInputError, match="only in"):
        align_by_id({"x": 1.0}, {"z": 1.0})


def test_bootstrap_constant_differences_closed_form():
    r = paired_bootstrap(np.full(40, 0.7), np.full(40, 0.5), resamples=999, rng=np.random.default_rng(0))
    assert r["ci"] == pytest.approx([0.2, 0.2]) and r["estimate"] == pytest.approx(0.2)
    assert r["p"] == pytest.approx(1 / 1000)  # no resample is as far from 0.2 as 0.2 is from 0
    same = paired_bootstrap(np.ones(30), np.ones(30), resamples=999, rng=np.random.default_rng(0))
    assert same["p"] == 1.0 and same["ci"] == [0.0, 0.0]


def test_bootstrap_binary_differences_match_the_binomial():
    # d_i ∈ {0, 1}: the resampled mean is exactly Binomial(n, p̂)/n, so its quantiles and sd are known.
    n, k = 200, 30
    a = np.r_[np.ones(k), np.zeros(n - k)]
    r = paired_bootstrap(a, np.zeros(n), resamples=20_000, rng=np.random.default_rng(1))
    ph = k / n
    assert r["se"] == pytest.approx(math.sqrt(ph * (1 - ph) / n), rel=0.03)
    assert r["ci"][0] == pytest.approx(sps.binom.ppf(0.025, n, ph) / n, abs=1.01 / n)
    assert r["ci"][1] == pytest.approx(sps.binom.ppf(0.975, n, ph) / n, abs=1.01 / n)
    # the centred p-value: P(|X/n − p̂| ≥ p̂) with X ~ Bin(n, p̂), i.e. X ≤ 0 or X ≥ 2k
    p_exact = sps.binom.cdf(0, n, ph) + sps.binom.sf(2 * k - 1, n, ph)
    assert r["p"] == pytest.approx(p_exact, abs=0.002)


def test_bootstrap_is_seeded_symmetric_and_leaves_global_state_alone():
    rng = np.random.default_rng(7)
    a, b = rng.random(300), rng.random(300)
    state = np.random.get_state()[1].copy()
    r1 = paired_bootstrap(a, b, resamples=2000, rng=np.random.default_rng(3))
    r2 = paired_bootstrap(a, b, resamples=2000, rng=np.random.default_rng(3))
    swapped = paired_bootstrap(b, a, resamples=2000, rng=np.random.default_rng(3))
    assert r1 == r2 and np.array_equal(state, np.random.get_state()[1])
    assert swapped["estimate"] == pytest.approx(-r1["estimate"])
    assert swapped["ci"] == pytest.approx([-r1["ci"][1], -r1["ci"][0]]) and swapped["p"] == r1["p"]
    with pytest.raises(StatsInputError, match="Generator"):
        paired_bootstrap(a, b, resamples=100, rng=3)
    with pytest.raises(StatsInputError, match="length"):
        paired_bootstrap(a, b[:-1], resamples=100, rng=np.random.default_rng(0))


def hand_holm(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


@given(st.lists(st.floats(0, 1), min_size=1, max_size=15))
@settings(max_examples=40, deadline=None)
def test_holm_matches_step_down_and_never_lowers_p(p):
    adj = holm(p)
    assert adj == pytest.approx(hand_holm(p), abs=1e-12)
    assert all(q >= r - 1e-15 and q <= 1.0 for q, r in zip(adj, p))


def test_apply_holm_within_families_only():
    tests = [{"family": "f", "p": 0.01}, {"family": "f", "p": 0.04}, {"family": "g", "p": 0.04},
             {"family": "f", "p": None}]
    apply_holm(tests)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.02, 0.04, 0.04, None])
    assert tests[0]["family_size"] == 2 and tests[2]["family_size"] == 1


def test_one_sided_bootstrap_p():
    """H1: mean(a − b) > 0. A clear positive difference gets a small p, a negative one p ≥ ½, and the count is
    the shift method's: #{m*_b − m ≥ m}."""
    rng = np.random.default_rng(0)
    a, b = rng.random(200) + 0.2, rng.random(200)
    up = paired_bootstrap(a, b, resamples=2000, rng=np.random.default_rng(1), alternative="greater")
    down = paired_bootstrap(b, a, resamples=2000, rng=np.random.default_rng(1), alternative="greater")
    assert up["p"] < 0.01 and down["p"] > 0.5 and up["alternative"] == "greater"
    # by hand with the same resampling indices
    d, gen = a - b, np.random.default_rng(1)
    means = np.concatenate([d[gen.integers(0, 200, size=(500, 200))].mean(1) for _ in range(4)])
    m = d.mean()
    assert up["p"] == pytest.approx((1 + np.count_nonzero(means - m >= m)) / 2001)
    with pytest.raises(StatsInputError):
        paired_bootstrap(a, b, rng=np.random.default_rng(1), alternative="less")
