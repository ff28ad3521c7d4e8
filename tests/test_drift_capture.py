"""Drift capture on stories260k: identity gives CKA 1 and drift 0; batching does not change the result;
probe sets follow §3 (MRPC: all 408 validation inputs topped up with 592 test inputs)."""

import pytest
import torch

from lorascope.drift.capture import pool
from lorascope.drift.compute import drift_reduction, drift_score, layer_drift
from lorascope.drift.probes import out_of_task_texts, probe_set
from lorascope.models.load import load_causal_lm

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(demo_config):
    base = load_causal_lm(demo_config.model)
    noisy = load_causal_lm(demo_config.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return base, noisy


def test_probe_sets(mrpc_data, squad_data):
    ps = probe_set(mrpc_data, 1000, seed=0)
    assert ps.composition == {"validation": 408, "test": 592} and len(ps.prompts) == 1000
    assert ps.prompts == probe_set(mrpc_data, 1000, seed=0).prompts
    sq = probe_set(squad_data, 1000, seed=0)
    assert sq.composition == {"validation": 1000, "test": 0} and sq.split_scheme == "dev-only"
    assert all("Answer:" in p and "yes" not in p.split("Answer:")[-1] for p in ps.prompts)  # no labels
    assert len(out_of_task_texts(squad_data, 20, 0)) == 20


def test_pooling_shapes():
    h = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(h, mask, "mean")[0], (h[0, 0] + h[0, 1]) / 2)
    assert torch.equal(pool(h, mask, "last"), torch.stack([h[0, 1], h[1, 2]]))
    assert pool(h, mask, "token").shape == (5, 4)


def test_identity_and_perturbation(models, tokenizer, mrpc_data):
    base, noisy = models
    prompts = probe_set(mrpc_data, 40, seed=0).prompts
    res = layer_drift(
        base, {"same": base, "noisy": noisy}, tokenizer, prompts, batch_size=16, max_length=512, device=CPU
    )
    same, moved = res["same"]["mean"], res["noisy"]["mean"]
    assert len(same) == 6  # embeddings + 5 blocks
    assert all(abs(r["linear_cka"] - 1) < 1e-9 and abs(r["linear_cka_debiased"] - 1) < 1e-9 for r in same)
    assert abs(drift_score(same)) < 1e-9 and drift_score(moved) > 0.01
    assert moved[-1]["cosine_mean"] < 1.0 and same[-1]["cosine_standardized_mean"] == pytest.approx(1.0)
    assert "linear_cka_note" in res["same"]["last"][0]  # layer 0, last token ":" is constant: noted, not NaN
    assert drift_reduction(0.1, 0.2) == pytest.approx(0.5)


def test_batching_does_not_change_results(models, tokenizer, mrpc_data):
    base, noisy = models
    prompts = probe_set(mrpc_data, 30, seed=1).prompts
    kw = dict(max_length=512, device=CPU, poolings=("mean", "token"), rbf=False)
    a = layer_drift(base, {"n": noisy}, tokenizer, prompts, batch_size=30, **kw)["n"]
    b = layer_drift(base, {"n": noisy}, tokenizer, prompts, batch_size=7, **kw)["n"]
    # Other batch shapes run other float32 kernels (and other padding), so activations differ by a few ulps
    # (≈ 1e-7 relative, more through 5 layers); CKA and cosine are scale-free ratios of float64 sums of those
    # activations and move by the same order. 1e-5 is ≥ 10× that on any CPU, while a batching bug (pads
    # leaking into a pooled mean, rows mixed up) moves them by > 1e-3.
    for how in ("mean", "token"):
        for ra, rb in zip(a[how], b[how]):
            assert ra["linear_cka_debiased"] == pytest.approx(rb["linear_cka_debiased"], abs=1e-5)
            assert ra["cosine_mean"] == pytest.approx(rb["cosine_mean"], abs=1e-5)
