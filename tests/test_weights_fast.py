"""§9 fast path (``lorascope.weights.spectra`` and ``weights_reports(path="fast")``) against the float64 SVD
reference, on small matrices where the reference is cheap. Tolerances are relative to the spectrum's scale and
derived from float64 rounding (eps = 2.2e-16); each assertion says why it holds on any x86-64 CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.weights import (
    LLAMA_MODULE_TYPES,
    LoraFactors,
    ModuleDelta,
    apply_delta_transform,
    intruder_dimensions,
    left_singular_vectors,
    lora_deltas,
    lora_factors,
    magnitude_transform,
    module_report,
    resident_deltas,
    weights_reports,
)
from lorascope.weights.intruders import refined_top_left, top_left_singular_vectors
from lorascope.weights.prefetch import Prefetched
from lorascope.weights.spectra import gram_or_svd_singular_values, left_singular_basis, lowrank_singular_values
from tests.weights_cases import W_BASE, N, S, V, X, tiny_llama

EPS = torch.finfo(torch.float64).eps


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- spectra

@pytest.mark.parametrize("shape", [(40, 70), (70, 40), (48, 48)])
def test_gram_singular_values_match_the_svd(shape):
    w = _randn(*shape, seed=1)
    ref = torch.linalg.svdvals(w)
    fast, route = gram_or_svd_singular_values(w)
    assert route == "gram" and fast.shape == ref.shape
    # Gram route: |δσ_i| ≲ n·eps·σ_1²/σ_i. A Gaussian matrix has σ_min/σ_1 ≥ ~1/(4n) here (48 × 48 is the worst
    # case), so the relative error is ≤ 48·eps·(200)² ≈ 4e-10; 1e-8 leaves 25× of margin.
    torch.testing.assert_close(fast, ref, rtol=1e-8, atol=0)


@pytest.mark.parametrize("noise, route", [(1e-3, "gram"), (1e-6, "svd")])
def test_low_rank_plus_small_noise_keeps_the_metrics(noise, route):
    # The FT-like hard case: a rank-4 update (σ_1 ≈ 60) plus dense noise. At 1e-3 the noise's σ sit ~1e-5·σ_1,
    # above the Gram's resolution (2·60·eps·λ_1, i.e. σ ≈ 1.6e-7·σ_1), with relative error ≈ n·eps·(σ_1/σ)² ≈ 1e-4:
    # effective rank (all σ, the noise's carry ~1e-4 of the mass) moves by ≪ 1e-6 relative, energy-based
    # metrics (σ² directly, absolute error ~n·eps) not at all. At 1e-6 the noise is below the resolution: SVD.
    d = _randn(60, 4, seed=2) @ _randn(4, 50, seed=3) + noise * _randn(60, 50, seed=4)
    sigma, used = gram_or_svd_singular_values(d)
    assert used == route
    base = _randn(60, 50, seed=5)
    fast, ref = module_report(base, delta=d, sigma=sigma), module_report(base, delta=d)
    assert fast["effective_rank"] == pytest.approx(ref["effective_rank"], rel=1e-6)
    assert fast["stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-12)
    assert fast["rank_at_energy"] == ref["rank_at_energy"] and fast["numerical_rank"] == ref["numerical_rank"] == 50
    np.testing.assert_allclose(fast["energy_curve"], ref["energy_curve"], rtol=0, atol=1e-12)


def test_rank_deficient_delta_falls_back_to_the_svd():
    # A merged LoRA seen as FT: rank 3. Its other σ are rounding noise ~1e-16·σ_1, which the Gram cannot resolve
    # (its noise is ~1e-8·σ_1): the route must be the SVD, so the numerical rank is the reference's.
    d = _randn(40, 3, seed=6) @ _randn(3, 30, seed=7)
    sigma, route = gram_or_svd_singular_values(d)
    assert route == "svd"
    rep = module_report(torch.eye(40, 30), delta=d, sigma=sigma)
    assert rep["numerical_rank"] == module_report(torch.eye(40, 30), delta=d)["numerical_rank"] == 3
    zero, route = gram_or_svd_singular_values(torch.zeros(5, 7))
    assert route == "gram" and torch.equal(zero, torch.zeros(5, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 24), n=st.integers(1, 24), r=st.integers(1, 6), scaling=st.floats(0.1, 8.0),
       seed=st.integers(0, 2**16))
def test_lowrank_singular_values_are_those_of_the_product(m, n, r, scaling, seed):
    b, a = _randn(m, r, seed=seed), _randn(r, n, seed=seed + 1)       # non-zero A and B
    ref = torch.linalg.svdvals(scaling * (b @ a))
    fast = lowrank_singular_values(b, a, scaling)
    assert fast.shape == ref.shape
    assert torch.count_nonzero(fast[min(r, m, n):]) == 0              # exactly zero beyond the rank
    # Both are backward stable on the same product: |δσ| ≤ c·eps·σ_1 with c ~ the dimension (≤ 24); 1e3·eps·σ_1
    # covers c ≤ 1000. (The SVD's "zero" singular values are its own rounding noise, inside the same bound.)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e3 * EPS * float(ref[0]))


@pytest.mark.parametrize("shape", [(40, 70), (70, 40), (48, 48)])
def test_left_singular_basis_matches_the_svd(shape):
    w = _randn(*shape, seed=8)
    u_ref = torch.linalg.svd(w, full_matrices=False).U
    u = left_singular_basis(w)
    k = min(shape)
    assert u.shape == (shape[0], k)
    # orthonormal to rounding
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-12)
    # Same vectors up to sign: error ≈ eps·λ_1 / (eigenvalue gap) ≤ ~1e-11 for these simple spectra.
    torch.testing.assert_close((u * u_ref).sum(0).abs(), torch.ones(k, dtype=torch.float64), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- intruders with the fast basis

# the base matrix and its orthogonal directions: tests/weights_cases.py (as in test_weights.py)


@pytest.mark.parametrize("transpose", [False, True], ids=["tall", "wide"])
def test_intruders_with_the_fast_basis_equal_the_svd_basis(transpose):
    # A rank-4 LoRA along directions new to W_base: 3 intruders in the top 10 (test_weights.py derives them).
    t = torch.tensor([25.0, 15.0, 7.5, 0.5], dtype=torch.float64)
    b, a = X[:, :4] @ torch.diag(t), V[:, N - 4 :].T
    base = W_BASE.T if transpose else W_BASE
    tuned = base + ((b @ a).T if transpose else b @ a)
    ref = intruder_dimensions(None, tuned, U_base=left_singular_vectors(base))
    fast = intruder_dimensions(None, tuned, U_base=left_singular_basis(base))
    assert fast.count == ref.count and fast.best_index == ref.best_index and fast.is_intruder == ref.is_intruder
    np.testing.assert_allclose(fast.max_cos, ref.max_cos, rtol=0, atol=1e-9)
    if not transpose:
        assert fast.count == 3


@pytest.mark.parametrize("shape", [(60, 90), (90, 60)])
def test_gram32_top_vectors_are_within_their_bound_of_the_float64_ones(shape):
    w = _randn(*shape, seed=9)  # Gaussian: a flat top spectrum, the hard case for gaps
    exact, s_exact, _ = top_left_singular_vectors(w, 10, method="gram")
    res = refined_top_left(w, 10)
    assert res is not None
    u, s, bound = res
    err = torch.linalg.vector_norm(u - exact * torch.sign((u * exact).sum(0)), dim=0)
    assert (err <= bound).all() and float(bound.max()) < 1e-3  # the certificate holds and is informative
    torch.testing.assert_close(s, s_exact, rtol=1e-10, atol=0)  # Ritz values: error ~ residual² / gap


@pytest.mark.parametrize("t_over_s, method", [(3.0, "gram32"), (math.sqrt(3.0), "gram")])
def test_gram32_redoes_in_float64_a_decision_at_the_threshold(t_over_s, method):
    # W_base + t·x·v_0ᵀ with x ⊥ W_base's columns: the top tuned vector is (s_0 u_0 + t x)/√(s_0² + t²), whose
    # max |cos| with W_base's vectors is s_0/√(s_0² + t²): 0.316 for t = 3·s_0 (clear), exactly 0.5 = ε for
    # t = √3·s_0 — within any bound of ε, so gram32 must hand the module to the float64 route.
    tuned = W_BASE + float(t_over_s * S[0]) * X[:, :1] @ V[:, :1].T
    ub = left_singular_basis(W_BASE)
    res = intruder_dimensions(None, tuned, U_base=ub, method="gram32")
    ref = intruder_dimensions(None, tuned, U_base=ub, method="gram")
    assert res.method == method and res.is_intruder == ref.is_intruder
    assert res.max_cos[0] == pytest.approx(1 / math.sqrt(1 + t_over_s**2), abs=1e-6)


def test_gram32_in_a_whole_report_gives_the_reference_decisions(tuned_pair):
    fast = weights_reports(_items(tuned_pair), intruder_method="gram32")
    ref = weights_reports(_items(tuned_pair), path="reference")
    for label in ("FT", "LoRA"):
        for f, r in zip(fast[label]["modules"], ref[label]["modules"]):
            assert f["intruder_detail"]["is_intruder"] == r["intruder_detail"]["is_intruder"], f["name"]


# ---------------------------------------------------------------- whole reports, fast vs reference


@pytest.fixture(scope="module")
def tuned_pair(tmp_path_factory):
    """(base state dict, FT state dict, LoRA adapter folder): FT = base + rank-2 + dense noise; LoRA with
    non-zero A and B, scaled so some modules get intruders."""
    from peft import LoraConfig, get_peft_model

    tmp = tmp_path_factory.mktemp("fast")
    base = tiny_llama(0)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    ft_sd = dict(base_sd)
    for k, v in base_sd.items():
        if k.endswith("proj.weight"):
            lr = torch.randn(v.shape[0], 2, generator=g) @ torch.randn(2, v.shape[1], generator=g)
            ft_sd[k] = v + 0.05 * lr + 0.002 * torch.randn(v.shape, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = get_peft_model(base, LoraConfig(target_modules=list(LLAMA_MODULE_TYPES), r=4, lora_alpha=8))
    for i, (name, p) in enumerate(model.named_parameters()):
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * (0.05 if i % 4 else 1.5)  # big in some modules
    model.save_pretrained(tmp / "adapter")
    return base_sd, ft_sd, tmp / "adapter"


def _items(pair):
    base_sd, ft_sd, adapter = pair
    from lorascope.weights import ft_deltas

    return {"FT": ft_deltas(base_sd, ft_sd), "LoRA": lora_factors(adapter, base_sd)}


def test_fast_report_equals_the_reference_report(tuned_pair):
    fast = weights_reports(_items(tuned_pair))
    ref = weights_reports(_items(tuned_pair), path="reference")
    assert fast["LoRA"]["settings"]["path"] == "fast" and ref["LoRA"]["settings"]["path"] == "reference"
    n_intruders = 0
    for label in ("FT", "LoRA"):
        assert [m["name"] for m in fast[label]["modules"]] == [m["name"] for m in ref[label]["modules"]]
        for f, r in zip(fast[label]["modules"], ref[label]["modules"]):
            assert f["spectrum_route"] == ("lowrank" if label == "LoRA" else "gram") and r["spectrum_route"] == "svd"
            scale = r["sigma_max"]
            # σ: Gram route ≲ n·eps·σ_1²/σ_i (well-conditioned ΔW here), low-rank route ≲ n·eps·σ_1 (exact zeros
            # against the SVD's rounding noise). 1e-9·σ_1 absolute covers both with margin.
            np.testing.assert_allclose(f["singular_values"], r["singular_values"], rtol=0, atol=1e-9 * scale)
            np.testing.assert_allclose(f["energy_curve"], r["energy_curve"], rtol=0, atol=1e-12)
            assert f["effective_rank"] == pytest.approx(r["effective_rank"], rel=1e-9)
            assert f["stable_rank"] == pytest.approx(r["stable_rank"], rel=1e-12)
            for key in ("rank_at_energy", "numerical_rank", "intruders", "shape", "n_params", "near_zero_fraction"):
                assert f[key] == r[key], (f["name"], key)
            # Same ΔW entries (formed identically); norms differ only in reduction order.
            for key in ("hoyer_sparsity", "frobenius_norm", "relative_frobenius_norm"):
                assert f[key] == pytest.approx(r[key], rel=1e-12)
            fd, rd = f["intruder_detail"], r["intruder_detail"]
            assert fd["is_intruder"] == rd["is_intruder"] and fd["best_index"] == rd["best_index"]
            np.testing.assert_allclose(fd["max_cos"], rd["max_cos"], rtol=0, atol=1e-9)
            n_intruders += f["intruders"]
        assert fast[label]["layers"][0]["intruders"] == ref[label]["layers"][0]["intruders"]
    assert n_intruders > 0  # the big-B modules produce intruders: the comparison covers both outcomes
    lora = next(m for m in fast["LoRA"]["modules"] if m["frobenius_norm"] > 0)
    assert lora["numerical_rank"] == 4 and lora["singular_values"][4:] == [0.0] * (len(lora["singular_values"]) - 4)


def test_lora_factors_form_the_same_delta_as_lora_deltas(tuned_pair):
    base_sd, _, adapter = tuned_pair
    for f, d in zip(lora_factors(adapter, base_sd), lora_deltas(adapter, base_sd)):
        assert f.name == d.name and torch.equal(f.base, d.base) and torch.equal(f.as_delta().delta, d.delta)
        assert f.b.abs().max() > 0 and f.a.abs().max() > 0


def test_transform_from_factors_on_resident_list_equals_the_delta_list(tuned_pair):
    base_sd, _, adapter = tuned_pair
    ref, got = tiny_llama(0), tiny_llama(0)
    apply_delta_transform(ref, list(lora_deltas(adapter, base_sd)), magnitude_transform(0.1))
    resident = resident_deltas(lora_factors(adapter, base_sd), "cpu")
    assert all(isinstance(r, ModuleDelta) for r in resident)
    apply_delta_transform(got, resident, magnitude_transform(0.1), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), got.state_dict().values()))
    apply_delta_transform(got, lora_factors(adapter, base_sd), None)  # factors accepted directly
    assert isinstance(next(lora_factors(adapter, base_sd)), LoraFactors)


def test_resident_deltas_spill_to_the_cpu_beyond_the_budget():
    items = [
        ModuleDelta(f"m{i}", torch.ones(4, 4, dtype=torch.float64), torch.ones(4, 4, dtype=torch.float64))
        for i in range(3)
    ]
    per_item = 2 * 16 * 8
    out = resident_deltas(items, "meta", max_bytes=2 * per_item)  # "meta": a device that is not the CPU
    assert [m.delta.device.type for m in out] == ["meta", "meta", "cpu"]


def test_prefetched_keeps_order_and_reraises_errors():
    def gen():
        yield from range(5)
        raise RuntimeError("disk gone")

    p = Prefetched(gen(), lambda x: 10 * x)
    assert [p.next() for _ in range(5)] == [0, 10, 20, 30, 40]
    with pytest.raises(RuntimeError, match="disk gone"):
        p.next()
    q = Prefetched(iter([1]))
    assert q.next() == 1 and q.next() is None and q.next() is None
    r = Prefetched(iter(range(100)), depth=1)
    assert r.next() == 0
    r.close()
    r._thread.join(timeout=5)
    assert not r._thread.is_alive()  # a consumer that stops early does not leave a thread blocked on put
