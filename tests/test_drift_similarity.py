"""Similarity measures of lorascope.drift (STUDY.md §8): CKA (linear, debiased, RBF), cosine, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from typer.testing import CliRunner

from lorascope.cli.similarity_cmd import register
from lorascope.drift import (
    CosineAccumulator,
    LinearCKAAccumulator,
    SimilarityInputError,
    cosine_similarity,
    hsic_unbiased,
    linear_cka,
    linear_cka_all,
    linear_cka_debiased,
    linear_cka_debiased_gram,
    linear_cka_gram,
    rbf_cka,
)

FAST = settings(max_examples=20, deadline=None)
MEASURES = {"linear": linear_cka, "debiased": linear_cka_debiased, "rbf": rbf_cka}


def pair(seed: int, n: int, dx: int, dy: int, offset: float = 0.0):
    """Related X (n, dx), Y (n, dy): Y is a noisy linear map of X; optional non-zero means."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dx)) * rng.uniform(0.5, 2.0, size=dx) + offset * rng.normal(size=dx)
    Y = X @ rng.normal(size=(dx, dy)) + rng.normal(size=(n, dy)) + offset * rng.normal(size=dy)
    return X, Y


def orthogonal(d: int, seed: int) -> np.ndarray:
    Q, R = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return Q * np.sign(np.diag(R))


shapes = st.tuples(st.integers(0, 10**6), st.integers(6, 40), st.integers(1, 12), st.integers(1, 12))


# ----------------------------------------------------------------------------- CKA properties


@FAST
@given(shapes)
def test_self_similarity_is_one_and_symmetric(s) -> None:
    X, Y = pair(*s)
    for name, f in MEASURES.items():
        assert f(X, X) == pytest.approx(1.0, abs=1e-12), name
        assert f(X, Y) == pytest.approx(f(Y, X), abs=1e-12), name


@FAST
@given(shapes, st.floats(1e-3, 1e3), st.floats(-5, 5))
def test_invariant_to_orthogonal_maps_isotropic_scaling_and_translation(s, scale, shift) -> None:
    X, Y = pair(*s)
    Xt = scale * X @ orthogonal(X.shape[1], s[0] + 1) + shift
    for name, f in MEASURES.items():
        assert f(Xt, Y) == pytest.approx(f(X, Y), abs=1e-10), name


def test_not_invariant_to_an_arbitrary_invertible_map() -> None:
    X, Y = pair(3, 80, 6, 5)
    A = np.random.default_rng(4).normal(size=(6, 6)) @ np.diag([1, 1, 1, 1, 1, 30.0])
    assert abs(np.linalg.det(A)) > 1e-3
    for name, f in MEASURES.items():
        assert abs(f(X @ A, Y) - f(X, Y)) > 1e-3, name


@FAST
@given(shapes, st.sampled_from([0.0, 3.0]))
def test_feature_space_agrees_with_gram_reference(s, offset) -> None:
    X, Y = pair(*s, offset=offset)
    assert linear_cka(X, Y) == pytest.approx(linear_cka_gram(X, Y), abs=1e-10)
    assert linear_cka_debiased(X, Y) == pytest.approx(linear_cka_debiased_gram(X, Y), abs=1e-10)


@FAST
@given(shapes, st.lists(st.integers(1, 9), min_size=1, max_size=12), st.sampled_from([0.0, 20.0]))
def test_streaming_equals_one_shot(s, sizes, offset) -> None:
    X, Y = pair(*s, offset=offset)
    acc, start = LinearCKAAccumulator(X.shape[1], Y.shape[1]), 0
    for size in itertools.cycle(sizes):
        if start >= len(X):
            break
        acc.update(X[start:start + size], Y[start:start + size])
        start += size
    got, want = acc.result(), linear_cka_all(X, Y)
    assert got["n"] == want["n"] == len(X)
    assert got["linear_cka"] == pytest.approx(want["linear_cka"], abs=1e-12)
    assert got["linear_cka_debiased"] == pytest.approx(want["linear_cka_debiased"], abs=1e-12)


def test_streaming_accepts_torch_and_float32() -> None:
    torch = pytest.importorskip("torch")
    X, Y = pair(5, 64, 7, 9)
    X32 = X.astype(np.float32)
    acc = LinearCKAAccumulator(7, 9)
    for i in range(0, 64, 10):
        acc.update(torch.from_numpy(X32[i:i + 10]), Y[i:i + 10])  # mixed backends; float32 → float64
    got, want = acc.result(), linear_cka_all(X32.astype(np.float64), Y)
    assert got["linear_cka"] == pytest.approx(want["linear_cka"], abs=1e-12)
    assert got["linear_cka_debiased"] == pytest.approx(want["linear_cka_debiased"], abs=1e-12)


# ----------------------------------------------------------------------------- the unbiased estimator


def hsic_u_loops(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012 closed form with every sum written as explicit loops over i ≠ j."""
    n = len(K)
    tr = sum(K[i, j] * L[i, j] for i in range(n) for j in range(n) if i != j)
    k_sum = sum(K[i, j] for i in range(n) for j in range(n) if i != j)
    l_sum = sum(L[i, j] for i in range(n) for j in range(n) if i != j)
    cross = sum(sum(K[i, j] for j in range(n) if j != i) * sum(L[i, j] for j in range(n) if j != i)
                for i in range(n))
    return (tr + k_sum * l_sum / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))  # exact on Fractions


def hsic_u_statistic(K: np.ndarray, L: np.ndarray) -> float:
    """The definition: U-statistic of E[k l] + E[k]E[l] − 2E[k l'] over distinct index tuples."""
    n, r = len(K), range(len(K))
    t1 = sum(K[i, j] * L[i, j] for i, j in itertools.permutations(r, 2)) / math.perm(n, 2)
    t2 = sum(K[i, j] * L[q, s] for i, j, q, s in itertools.permutations(r, 4)) / math.perm(n, 4)
    t3 = sum(K[i, j] * L[i, q] for i, j, q in itertools.permutations(r, 3)) / math.perm(n, 3)
    return t1 + t2 - 2.0 * t3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_debiased_equals_brute_force_definition(seed: int) -> None:
    X, Y = pair(seed, 7, 3, 4, offset=2.0)
    K, L = X @ X.T, Y @ Y.T
    for A, B in ((K, L), (K, K), (L, L)):
        assert hsic_u_loops(A, B) == pytest.approx(hsic_unbiased(A, B), abs=1e-10, rel=1e-10)
        assert hsic_u_statistic(A, B) == pytest.approx(hsic_unbiased(A, B), abs=1e-10, rel=1e-10)
    brute = hsic_u_statistic(K, L) / math.sqrt(hsic_u_statistic(K, K) * hsic_u_statistic(L, L))
    assert linear_cka_debiased(X, Y) == pytest.approx(brute, abs=1e-10)


def test_debiased_is_exact_with_a_large_mean_where_the_raw_gram_loses_digits() -> None:
    X, Y = pair(0, 6, 2, 1, offset=50.0)  # means ≈ 50 × spread: K = XXᵀ cancels ~8 digits
    exact = {}
    for name, (A, B) in {"xy": (X, Y), "xx": (X, X), "yy": (Y, Y)}.items():
        Af, Bf = (np.vectorize(Fraction, otypes=[object])(M) for M in (A, B))
        exact[name] = float(hsic_u_loops(Af @ Af.T, Bf @ Bf.T))
    want = exact["xy"] / math.sqrt(exact["xx"] * exact["yy"])
    assert linear_cka_debiased(X, Y) == pytest.approx(want, abs=1e-13)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)  # the Gram reference needs centred data to get there
    assert linear_cka_debiased_gram(Xc, Yc) == pytest.approx(want, abs=1e-12)


def test_unbiased_hsic_is_invariant_to_centering() -> None:
    X, Y = pair(9, 30, 5, 4, offset=10.0)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    raw, centred = hsic_unbiased(X @ X.T, Y @ Y.T), hsic_unbiased(Xc @ Xc.T, Yc @ Yc.T)
    assert raw == pytest.approx(centred, rel=1e-9)
    assert linear_cka_debiased(X, Y) == pytest.approx(linear_cka_debiased(Xc, Yc), abs=1e-12)
    # the biased estimator without its centring H would NOT be invariant: it needs H
    assert linear_cka_gram(X, Y) == pytest.approx(linear_cka_gram(Xc, Yc), abs=1e-12)


def test_independent_wide_gaussians_inflate_biased_but_not_debiased() -> None:
    rng = np.random.default_rng(2024)
    X, Y = rng.normal(size=(1000, 2048)), rng.normal(size=(1000, 2048))
    res = linear_cka_all(X, Y)
    assert res["linear_cka"] > 0.3  # ≈ d / (n + d) = 0.67: why §8 reports the debiased one
    assert abs(res["linear_cka_debiased"]) < 0.05


# ----------------------------------------------------------------------------- scale and errors


@pytest.mark.parametrize("sx, sy", [(1e-30, 1e-30), (1e-150, 1.0), (1e150, 1e-30), (1e300, 1e-300)])
def test_extreme_magnitudes_work_by_scale_invariance(sx: float, sy: float) -> None:
    X, Y = pair(11, 40, 6, 6, offset=1.0)
    for name, f in MEASURES.items():
        assert f(X * sx, Y * sy) == pytest.approx(f(X, Y), abs=1e-10), name
    assert cosine_similarity(X * sx, Y * sx)["cosine_mean"] == pytest.approx(cosine_similarity(X, Y)["cosine_mean"])


def test_large_mean_small_spread_is_not_constant() -> None:
    X, Y = pair(12, 50, 4, 4)
    for name, f in MEASURES.items():
        assert f(1e3 + 1e-3 * X, Y) == pytest.approx(f(X, Y), abs=1e-6), name


def raises(match: str):
    return pytest.raises(SimilarityInputError, match=match)


def test_error_cases_never_nan() -> None:
    X, Y = pair(13, 20, 5, 5)
    for f in MEASURES.values():
        with raises("rows"):
            f(X, Y[:-1])
        with raises("2-D"):
            f(X[:, 0], Y[:, 0])
        with raises("2-D"):
            f(X[None], Y[None])
        with raises("non-finite"):
            f(np.where(np.eye(20, 5) > 0, np.nan, X), Y)
        with raises("non-finite"):
            f(X, np.full_like(Y, np.inf))
        with raises("constant|zero"):
            f(np.full_like(X, 3.7), Y)
        with raises("constant|zero"):
            f(X, np.zeros_like(Y))
        with raises("constant|zero"):
            f(X, 1e6 + np.zeros_like(Y))
        with raises("subnormal"):
            f(X * 1e-310, Y)
        with raises("numeric"):
            f(X.astype(str), Y)
    with raises("at least 4"):
        linear_cka_debiased(X[:3], Y[:3])
    assert math.isfinite(linear_cka(X[:2], Y[:2]))
    with raises("at least 2"):
        linear_cka(X[:1], Y[:1])
    with raises("exceeds the limit"):
        rbf_cka(X, Y, max_n=10)
    with raises("positive"):
        rbf_cka(X, Y, sigma_factor=0.0)
    acc = LinearCKAAccumulator(5, 5)
    with raises("at least 2"):
        acc.result()
    with raises("widths"):
        acc.update(X[:, :4], Y)


def test_debiased_degenerate_self_hsic_is_an_error() -> None:
    # n = 4 with three identical rows: every term of the U-statistic vanishes, HSIC_u(K, K) = 0
    X, Y = np.array([[0.0], [0.0], [0.0], [1.0]]), np.arange(4.0)[:, None]
    assert hsic_unbiased(X @ X.T, X @ X.T) == pytest.approx(0.0, abs=1e-12)
    with raises("itself is ≤ 0"):
        linear_cka_debiased(X, Y)
    assert math.isfinite(linear_cka(X, Y))
    rng = np.random.default_rng(0)  # generic tiny samples stay finite and within [-1, 1]
    for _ in range(100):
        assert abs(linear_cka_debiased(rng.normal(size=(4, 1)), rng.normal(size=(4, 2)))) <= 1 + 1e-9


# ----------------------------------------------------------------------------- cosine


def test_cosine_standardization_removes_a_rogue_dimension() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 32))
    Y = X + rng.normal(size=(300, 32))
    plain = cosine_similarity(X, Y)["cosine_mean"]  # ≈ 0.7
    rogue = rng.normal(size=300) * 5 + 1000
    Xr, Yr = np.column_stack([rogue, X]), np.column_stack([rogue + rng.normal(size=300), Y])
    res = cosine_similarity(Xr, Yr)
    assert res["cosine_mean"] > 0.99  # the rogue dimension dominates raw cosine
    assert res["cosine_standardized_mean"] < 0.85
    assert abs(res["cosine_standardized_mean"] - plain) < 0.05
    lo, hi = res["cosine_standardized_ci95"]
    assert lo < res["cosine_standardized_mean"] < hi


def test_cosine_ci_and_two_pass_streaming() -> None:
    X, Y = pair(21, 57, 6, 6, offset=3.0)
    one = cosine_similarity(X, Y)
    c = np.sum(X * Y, 1) / np.linalg.norm(X, axis=1) / np.linalg.norm(Y, axis=1)
    want = stats.t.interval(0.95, len(c) - 1, loc=c.mean(), scale=stats.sem(c))
    assert one["cosine_mean"] == pytest.approx(c.mean(), abs=1e-14)
    assert one["cosine_ci95"] == pytest.approx(list(want), abs=1e-12)
    first = CosineAccumulator(6)
    for i in range(0, 57, 8):
        first.update(X[i:i + 8], Y[i:i + 8])
    mean, sd = first.base_stats()
    np.testing.assert_allclose(mean, X.mean(0), atol=1e-12)
    np.testing.assert_allclose(sd, X.std(0), atol=1e-12)
    second = CosineAccumulator(6, mean, sd)
    for i in range(0, 57, 5):
        second.update(X[i:i + 5], Y[i:i + 5])
    got = second.result()
    for key in ("cosine_mean", "cosine_sd", "cosine_standardized_mean", "cosine_standardized_sd"):
        assert got[key] == pytest.approx(one[key], abs=1e-12), key
    assert "cosine_standardized_mean" not in first.result()


def test_cosine_errors() -> None:
    X, Y = pair(22, 10, 4, 4)
    with raises("equal widths"):
        cosine_similarity(X, Y[:, :3])
    with raises("zero norm"):
        cosine_similarity(np.vstack([X[:9], np.zeros(4)]), Y)
    with raises("constant"):
        cosine_similarity(np.ones_like(X), Y)
    assert cosine_similarity(np.ones_like(X), Y, standardize=False)["n"] == 10
    with raises("at least 2"):
        cosine_similarity(X[:1], Y[:1])


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer from collapsing the app into one command
    def noop() -> None:
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def all_output(result) -> str:
    text = result.output
    try:
        if result.stderr and result.stderr not in text:
            text += result.stderr
    except ValueError:
        pass
    return text


def test_cli_json_equal_widths(cli, tmp_path) -> None:
    X, Y = pair(31, 60, 8, 8)
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", Y)
    result = cli("similarity", tmp_path / "x.npy", tmp_path / "y.npy", "--json", "--rbf-sigma-factor", "0.5")
    assert result.exit_code == 0, all_output(result)
    rep = json.loads(result.stdout)
    X = X.astype(np.float32).astype(np.float64)
    assert rep["n"] == 60 and rep["note"] is None
    assert rep["linear_cka"] == pytest.approx(linear_cka(X, Y), abs=1e-12)
    assert rep["linear_cka_debiased"] == pytest.approx(linear_cka_debiased(X, Y), abs=1e-12)
    assert rep["rbf_cka"] == pytest.approx(rbf_cka(X, Y, sigma_factor=0.5), abs=1e-12)
    assert rep["cosine_mean"] == pytest.approx(cosine_similarity(X, Y)["cosine_mean"], abs=1e-12)
    assert len(rep["cosine_ci95"]) == 2 and rep["cosine_standardized_mean"] is not None


def test_cli_text_unequal_widths_and_rbf_limit(cli, tmp_path) -> None:
    X, Y = pair(32, 30, 8, 5)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    result = cli("similarity", tmp_path / "x.npy", tmp_path / "y.npy", "--max-rbf-n", "10")
    assert result.exit_code == 0, all_output(result)
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("note"))
    assert float(lines["linear_cka_debiased"]) == pytest.approx(linear_cka_debiased(X, Y), abs=1e-6)
    assert lines["cosine_mean"] == "null" and lines["rbf_cka"] == "null"
    assert "equal widths" in result.stdout and "--max-rbf-n" in result.stdout


@pytest.mark.parametrize("problem, match", [
    ("missing", "file not found"), ("nan", "non-finite"), ("3d", "2-D"), ("object", "cannot load"),
    ("rows", "rows"), ("npz", ".npz"), ("constant", "constant"), ("garbage", "not a readable"),
])
def test_cli_errors_name_the_file(cli, tmp_path, problem: str, match: str) -> None:
    X, Y = pair(33, 12, 3, 3)
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, Y)
    if problem == "nan":
        X[2, 1] = np.nan
    if problem in ("nan", "rows", "constant", "3d"):
        np.save(bad, {"nan": X, "rows": X[:-2], "constant": np.ones_like(X), "3d": X[None]}[problem])
    elif problem == "object":
        np.save(bad, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif problem == "npz":
        np.savez(bad.with_suffix(".npz"), x=X)
        bad.with_suffix(".npz").rename(bad)
    elif problem == "garbage":
        bad.write_bytes(b"not numpy at all")
    result = cli("similarity", bad, good, "--json")
    assert result.exit_code == 2, all_output(result)
    text = " ".join(all_output(result).split())
    assert match in text and "bad.npy" in text


def test_standardized_cosine_is_undefined_when_the_base_has_a_constant_dimension() -> None:
    """A constant base dimension has no scale: the tuned model's movement there would swamp the rest (issue 13
    saw 1.7e-5 next to a raw cosine of 0.978). Undefined, with a note — never a silent number."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8))
    X[:, 3] = 2.0  # constant over the probes in the base
    Y = X + 0.05 * rng.normal(size=X.shape)  # the tuned model moves a little, there too
    res = cosine_similarity(X, Y)
    assert res["cosine_mean"] > 0.99
    assert res["cosine_standardized_mean"] is None and res["cosine_standardized_ci95"] is None
    assert "constant over the probes in 1 of 8 dimensions" in res["cosine_standardized_note"]
    X[:, 3] = rng.normal(size=50)  # the same data with that dimension varying: defined again
    assert cosine_similarity(X, X + 0.05 * rng.normal(size=X.shape))["cosine_standardized_mean"] > 0.9


def test_bands_say_where_the_t_interval_left_the_range() -> None:
    from lorascope.drift.aggregate import t_band

    band = t_band([0.001, 0.002, 0.12], bounds=(0.0, None))  # drift ≥ 0; the raw t-interval goes below 0
    assert band["lo"] == 0.0 and band["clipped"] == ["lower"] and band["hi"] > band["mean"]
    assert "clipped" not in t_band([0.5, 0.6, 0.7], bounds=(0.0, 1.0))
