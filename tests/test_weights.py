"""§9 weight structure: metrics on hand-computed spectra, intruders on synthetic matrices with known
answers, ΔW of LoRA against PEFT's own merge, DARE / magnitude pruning, and figure smoke tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorascope.weights import (
    LLAMA_MODULE_TYPES,
    apply_delta_transform,
    dare,
    dare_mask,
    effective_rank,
    energy_curve,
    ft_deltas,
    hoyer_sparsity,
    intruder_dimensions,
    kept_count,
    left_singular_vectors,
    lora_deltas,
    magnitude_prune,
    module_report,
    near_zero_fraction,
    rank_at_energy,
    stable_rank,
    top_left_singular_vectors,
    weights_report,
    weights_reports,
)
from tests.conftest import assert_close_to_scale
from tests.weights_cases import W_BASE, N, S, U, V, X, tiny_llama


def _diag(values, shape=None) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float64)
    m, n = shape or (len(values), len(values))
    out = torch.zeros(m, n, dtype=torch.float64)
    out[range(len(values)), range(len(values))] = values
    return out


# ---------------------------------------------------------------- metrics on hand-computed spectra

def test_effective_rank_of_equal_singular_values_is_the_rank():
    for r in (1, 3, 7):
        assert effective_rank([2.5] * r + [0.0] * 4) == pytest.approx(r, rel=1e-12)
        rep = module_report(torch.eye(12), delta=_diag([0.3] * r, (12, 12)))
        assert rep["effective_rank"] == pytest.approx(r, rel=1e-12)
    p = np.array([0.75, 0.25])  # Roy & Vetterli on σ = [3, 1]
    assert effective_rank([3.0, 1.0]) == pytest.approx(math.exp(-np.sum(p * np.log(p))))


def test_stable_rank_and_rank_at_90_percent_energy():
    # σ = [3, 1, 1, 1]: Σσ² = 12, σ₁² = 9 → stable rank 4/3; energy 0.75, 0.833, 0.917, 1 → k = 3.
    assert stable_rank([3, 1, 1, 1]) == pytest.approx(4 / 3)
    assert energy_curve([3, 1, 1, 1]) == pytest.approx([0.75, 10 / 12, 11 / 12, 1.0])
    assert rank_at_energy([3, 1, 1, 1]) == 3
    assert rank_at_energy([3, 1]) == 1          # 9/10 = 0.9 exactly: ≥ holds at k = 1
    assert rank_at_energy([1, 1, 1, 1], 0.5) == 2
    assert rank_at_energy([1, 3, 1, 1]) == 3    # order of the input does not matter
    rep = module_report(torch.zeros(5, 4), torch.as_tensor(_diag([3, 1, 1, 1], (5, 4)), dtype=torch.float32))
    assert rep["stable_rank"] == pytest.approx(4 / 3) and rep["rank_at_energy"] == 3
    assert rep["singular_values"] == pytest.approx([3, 1, 1, 1]) and rep["shape"] == [5, 4]
    assert rep["numerical_rank"] == 4 and rep["frobenius_norm"] == pytest.approx(math.sqrt(12))


def test_hoyer_sparsity_and_near_zero_fraction():
    assert hoyer_sparsity([0, 0, 5.0, 0, 0]) == pytest.approx(1.0)
    assert hoyer_sparsity(torch.full((4, 6), -0.7)) == pytest.approx(0.0, abs=1e-12)
    assert hoyer_sparsity([1, 1, 0, 0]) == pytest.approx(2 - math.sqrt(2))  # (√4 − 2/√2)/(√4 − 1)
    x = np.array([1.0, 1e-4, 5e-4, 2e-3, 0.0])
    assert near_zero_fraction(x) == pytest.approx(3 / 5)
    assert near_zero_fraction(x, factor=1e-2) == pytest.approx(4 / 5)


def test_relative_norm_numpy_torch_and_bf16_agree():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, generator=g)
    d = 0.01 * torch.randn(8, 6, generator=g)
    a = module_report(w.numpy(), (w + d).numpy())
    b = module_report(w, delta=d)
    # numpy route: ΔW = float32(w + d) − w, so each entry carries the rounding of w + d (≤ eps32/2 · |w + d|): the
    # relative error of ‖ΔW‖ is ≤ eps32/2 · ‖w + d‖/‖d‖ (≈ 100 here). Tolerances are multiples of that bound.
    bound = 0.5 * 2.0**-23 * float((w + d).norm() / d.norm())
    assert a["relative_frobenius_norm"] == pytest.approx(float(d.norm() / w.norm()), rel=4 * bound)
    # the entropy of the normalized spectrum changes by a few times the relative perturbation of ΔW
    assert a["effective_rank"] == pytest.approx(b["effective_rank"], rel=64 * bound)
    assert module_report(w.bfloat16(), delta=d.bfloat16())["shape"] == [8, 6]


def test_zero_delta_is_defined_never_nan():
    rep = module_report(torch.randn(6, 4), delta=torch.zeros(6, 4))
    numbers = [v for v in rep.values() if isinstance(v, float)] + rep["energy_curve"] + rep["singular_values"]
    assert not any(math.isnan(v) for v in numbers)
    assert rep["is_zero"] and "zero" in rep["note"]
    assert (rep["effective_rank"], rep["stable_rank"], rep["rank_at_energy"], rep["numerical_rank"]) == (0, 0, 0, 0)
    assert rep["hoyer_sparsity"] == 1.0 and rep["near_zero_fraction"] == 1.0 and rep["relative_frobenius_norm"] == 0
    with pytest.raises(ValueError):
        module_report(torch.zeros(3, 3), delta=torch.zeros(3, 4))


# ---------------------------------------------------------------- intruders on synthetic matrices



def test_perturbation_inside_the_base_singular_directions_has_no_intruders():
    J, c = [20, 30, 40], torch.tensor([30.0, 15.0, 7.0], dtype=torch.float64)
    tuned = W_BASE + U[:, J] @ torch.diag(c) @ V[:, J].T    # same singular vectors, re-ordered values
    res = intruder_dimensions(W_BASE, tuned)
    assert res.count == 0 and res.k == 10
    assert min(res.max_cos) == pytest.approx(1.0, abs=1e-8)
    assert res.best_index[:2] == [20, 30]                    # the boosted directions now rank first


@pytest.mark.parametrize("method", ["full", "gram", "randomized"])
def test_new_orthogonal_directions_are_exactly_the_intruders_in_the_top_10(method):
    # Rank-4 update along X (⊥ every left singular vector of W_base) with right factors v_60..v_63, W_base's
    # weakest right singular vectors. W_tuned·V then has orthogonal columns, so its SVD is exact: the new
    # left vectors are (s_i u_i + t x)/√(s_i² + t²), whose max |cos| with W_base's is s_i/√(s_i² + t²) ≪ 0.5.
    t = torch.tensor([25.0, 15.0, 7.5, 0.5], dtype=torch.float64)
    tuned = W_BASE + X[:, :4] @ torch.diag(t) @ V[:, N - 4:].T
    # Tuned spectrum: 25, 15, 10, 9, 8.1, 7.5, 7.29, … → intruders at 0, 1 and 5; t = 0.5 is not in the top 10.
    res = intruder_dimensions(W_BASE, tuned, k=10, epsilon=0.5, method=method)
    assert res.count == 3 and res.intruder_indices == [0, 1, 5]
    assert res.tuned_singular_values[:2] == pytest.approx([25.0, 15.0], abs=1e-3)
    expected = [S[60 + i] / math.hypot(S[60 + i], float(t[i])) for i in range(3)]
    assert [res.max_cos[j] for j in (0, 1, 5)] == pytest.approx(expected, rel=1e-6)
    assert [res.best_index[j] for j in (0, 1, 5)] == [60, 61, 62]
    assert min(res.max_cos[j] for j in range(10) if j not in (0, 1, 5)) > 0.99
    again = intruder_dimensions(None, tuned, U_base=left_singular_vectors(W_BASE), method=method)
    assert again.to_dict() == res.to_dict()
    assert intruder_dimensions(W_BASE, tuned, k=40).count == 4   # σ ≈ 0.5 ranks 30th: between s_28, s_29


@pytest.mark.parametrize("shape", [(40, 70), (70, 40)])
def test_gram_route_matches_the_svd(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u1, s1, _ = top_left_singular_vectors(w, 10, method="full")
    u2, s2, used = top_left_singular_vectors(w, 10, method="gram")
    assert used == "gram" and torch.allclose(s1, s2, rtol=1e-10)
    assert torch.allclose((u1 * u2).sum(0).abs(), torch.ones(10, dtype=torch.float64), atol=1e-8)
    assert top_left_singular_vectors(torch.zeros(*shape), 3, method="gram")[2] == "full"  # rank-deficient


# ---------------------------------------------------------------- ΔW of FT and LoRA on a tiny Llama

LORA_VARIANTS = [dict(r=4, lora_alpha=8),
                 dict(r=4, lora_alpha=16, use_rslora=True, rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 3})]


@pytest.mark.parametrize("variant", LORA_VARIANTS, ids=["alpha_over_r", "rslora_patterns"])
def test_lora_delta_equals_peft_merge_minus_base(tmp_path, variant):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(0)
    base.save_pretrained(tmp_path / "base", safe_serialization=True)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = get_peft_model(base, LoraConfig(target_modules=list(LLAMA_MODULE_TYPES), **variant))
    g = torch.Generator().manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:      # PEFT initialises B = 0; a non-zero B makes the check meaningful
            p.data = torch.randn(p.shape, generator=g) * 0.2
    model.save_pretrained(tmp_path / "adapter")
    merged = model.merge_and_unload().state_dict()
    seen = []
    for src in (base_sd, tmp_path / "base"):
        for name, wb, d in lora_deltas(tmp_path / "adapter", src):
            expected = merged[name + ".weight"].double() - base_sd[name + ".weight"].double()
            assert torch.equal(wb, base_sd[name + ".weight"].double())
            # ``expected`` comes from PEFT's float32 merge: ΔW = (B·A)·s in float32 (r-term sums, then a product,
            # each rounded), then W + ΔW rounded once more — a few eps32 of the merged weights' scale.
            assert d.abs().max() > 1e-3
            assert_close_to_scale(d, expected, ulps=0, floor=4 * 2.0**-23 * float(merged[name + ".weight"].abs().max()))
            seen.append(name)
    assert len(seen) == 2 * 2 * 7 and seen[0] == "model.layers.0.self_attn.q_proj"
    # FT route on the merged model gives the same ΔW (the merge is stored in float32).
    for (n1, _, d1), (n2, _, d2) in zip(ft_deltas(base_sd, merged), lora_deltas(tmp_path / "adapter", base_sd)):
        assert n1 == n2  # d1 = PEFT's float32 merge − base (as above), d2 = B·A·s in float64
        assert_close_to_scale(d1, d2, ulps=0, floor=4 * 2.0**-23 * float(merged[n1 + ".weight"].abs().max()))


def test_ft_deltas_report_and_apply_transform(tmp_path):
    base, tuned = tiny_llama(0), tiny_llama(0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "layers.1.mlp" in name:
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    tuned.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    items = list(ft_deltas(base, tmp_path / "tuned"))
    assert [n for n, _, _ in items][:7] == [f"model.layers.0.{'self_attn' if i < 4 else 'mlp'}.{t}"
                                            for i, t in enumerate(LLAMA_MODULE_TYPES)]
    assert all((d.abs().max() > 0) == (".layers.1.mlp." in n) for n, _, d in items)
    rep = weights_report(items)
    assert len(rep["modules"]) == 14 and [r["layer"] for r in rep["layers"]] == [0, 1]
    m = rep["modules"][-1]
    assert (m["layer"], m["module_type"], m["shape"]) == (1, "down_proj", [32, 48]) and m["intruder_detail"]["k"] == 10
    assert rep["layers"][0]["frobenius_norm"] == 0 and rep["layers"][0]["intruders"] == 0
    assert rep["layers"][1]["relative_frobenius_norm_layer"] > 0
    # Several tuned models of one base share W_base's SVD; a subset of modules (like lora_qv) is fine.
    qv = [it for it in items if it.name.endswith(("q_proj", "v_proj"))]
    both = weights_reports({"FT": iter(items), "qv": iter(qv)})
    assert both["FT"]["modules"] == rep["modules"] and len(both["qv"]["modules"]) == 4
    assert both["qv"]["modules"][1] == rep["modules"][2]
    other = [it._replace(base=it.base + 1) for it in items]
    with pytest.raises(ValueError, match="share W_base"):
        weights_reports({"a": items, "b": other})
    target = tiny_llama(0)
    apply_delta_transform(target, items, None)                       # W_base + ΔW = W_tuned
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), tuned.state_dict().values()))
    apply_delta_transform(target, items, torch.zeros_like)           # back to W_base
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), base.state_dict().values()))
    written = apply_delta_transform(target, items, lambda d: magnitude_prune(d, 0.1))
    assert len(written) == 14


# ---------------------------------------------------------------- DARE and magnitude pruning

def test_dare_is_unbiased_keeps_the_right_fraction_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(20, 30, generator=g, dtype=torch.float64) + 0.5
    p, draws = 0.5, 2000
    mean = sum(dare(delta, p, g) for _ in range(draws)) / draws
    se = delta.abs() * math.sqrt(p / (1 - p) / draws)       # sd of the mean of Bernoulli-rescaled draws
    assert ((mean - delta).abs() <= 5 * se + 1e-12).all()
    big = torch.ones(1000, 1000)
    for p in (0.5, 0.9, 0.99):
        kept = int((dare(big, p, torch.Generator().manual_seed(7)) != 0).sum())
        n, q = big.numel(), 1 - p
        assert abs(kept - n * q) <= 5 * math.sqrt(n * q * (1 - q))
        assert torch.allclose(dare(big, p, torch.Generator().manual_seed(7)).max(), torch.tensor(1 / q))
    a = dare_mask((50, 40), 0.9, torch.Generator().manual_seed(11))
    assert torch.equal(a, dare_mask((50, 40), 0.9, torch.Generator().manual_seed(11)))
    assert not torch.equal(a, dare_mask((50, 40), 0.9, torch.Generator().manual_seed(12)))
    state = torch.random.get_rng_state()
    dare(big, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is never touched
    with pytest.raises(ValueError):
        dare(big, 1.0, g)
    with pytest.raises(TypeError):
        dare(big, 0.5, None)


def test_magnitude_prune_keeps_exactly_ceil_k_n_with_stable_ties():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(37, 23, generator=g)
    n = delta.numel()
    for k in (0.0, 0.01, 0.07, 0.1, 0.5, 0.99, 1.0):
        out = magnitude_prune(delta, k)
        nz = out != 0
        assert int(nz.sum()) == math.ceil(round(k * n, 9))
        if 0 < k < 1:
            assert out[nz].abs().min() >= delta[~nz].abs().max()   # the kept entries are the largest
            assert torch.equal(out[nz], delta[nz])                 # kept values unchanged, no rescale
    assert kept_count(100, 0.07) == 7 and kept_count(10, 0.01) == 1
    ties = torch.ones(3, 4)                                       # all equal: first ⌈k·N⌉ in row-major order
    assert magnitude_prune(ties, 0.25).reshape(-1).tolist() == [1, 1, 1] + [0] * 9


# ---------------------------------------------------------------- figures

def test_figures_write_pngs(tmp_path):
    from lorascope.weights import figures

    def fake_report(scale: float, lowrank: bool) -> dict:
        mods = []
        for layer in range(3):
            for t in LLAMA_MODULE_TYPES[:3]:
                s = scale * (np.where(np.arange(16) < 4, 1.0, 0.0) if lowrank else 0.8 ** np.arange(16))
                mods.append({"name": f"model.layers.{layer}.x.{t}", "layer": layer, "module_type": t,
                             "singular_values": s.tolist(), "frobenius_norm": float(np.linalg.norm(s)),
                             "base_frobenius_norm": 1.0, "n_params": 256, "effective_rank": 4.0 + layer,
                             "stable_rank": 2.0, "rank_at_energy": 3, "hoyer_sparsity": 0.2,
                             "relative_frobenius_norm": 0.01, "near_zero_fraction": 0.1,
                             "intruders": layer if lowrank else 0, "intruder_detail": {"k": 10}})
        from lorascope.weights import summarize_layers
        return {"modules": mods, "layers": summarize_layers(mods), "settings": {"intruder_k": 10, "epsilon": 0.5}}

    reports = {"FT": fake_report(1.0, False), "LoRA": fake_report(2.0, True)}
    paths = [figures.singular_spectra(reports, tmp_path / "spectra.png"),
             figures.singular_spectra(reports, tmp_path / "spectra_layer.png", by="layer"),
             figures.effective_rank_per_layer(reports, tmp_path / "erank.png"),
             figures.intruder_counts_per_layer(reports, tmp_path / "intruders.png"),
             figures.dare_curves({"FT": {"dare": {0.0: 85, 0.5: 84, 0.9: (80, 78, 82), 0.99: 60},
                                         "magnitude": {0.0: 85, 0.5: 83, 0.9: 70}},
                                  "LoRA": {"dare": {0.0: 84, 0.5: 84, 0.9: 83, 0.99: 75}}},
                                 tmp_path / "dare.png", metric_name="MRPC validation accuracy (%)",
                                 baselines={"base model zero-shot": 66.5})]
    for p in paths:
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
