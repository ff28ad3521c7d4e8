"""The drift stage over a results folder (§8): fabricated final runs with known relations to the base.

Runs: an FT "model" that IS the base (drift must be 0 at every layer), an FT model with perturbed
weights, and a LoRA adapter with non-zero A and B (a zero B would make LoRA equal the base and prove
nothing). Fabricating them (instead of training) keeps the test fast and the expected values exact.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lorascope.drift.aggregate import drift_scores, reduction_summary, t_band
from lorascope.io import atomic_write_json
from lorascope.manifest import is_completed, run_manifest
from lorascope.models.load import load_causal_lm
from lorascope.models.lora import apply_lora
from lorascope.results.selection import final_runs
from tests.conftest import run_stage


def _run_folder(root, cfg, task, method, rep, make):
    folder = root / task / "runs" / f"{task}-{method}-lr0.001-r{rep}"
    with run_manifest(folder, cfg, command="fabricated"):
        make(folder)
        atomic_write_json(folder / "results.json", {"run": {"task": task, "method": method, "lr": 0.001,
                                                            "replicate": rep}})
    return folder


@pytest.fixture(scope="module")
def results(tmp_path_factory, demo_config):
    cfg = demo_config.model_copy(update={
        "data": demo_config.data.model_copy(update={"probe_size": 12}),
        "drift": demo_config.drift.model_copy(update={"max_length": 48, "batch_size": 5, "forgetting_texts": 6,
                                                      "models_per_pass": 2})})
    root = tmp_path_factory.mktemp("results")
    base = load_causal_lm(cfg.model)

    def same(folder):
        base.save_pretrained(folder / "model")

    def perturbed(folder):
        m = load_causal_lm(cfg.model)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in m.model.layers.parameters():
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
        m.save_pretrained(folder / "model")

    def lora(folder):
        m = apply_lora(load_causal_lm(cfg.model), cfg.lora, init_seed=3)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
        m.save_pretrained(folder / "adapter")

    _run_folder(root, cfg, "mrpc", "ft", 0, same)
    _run_folder(root, cfg, "mrpc", "ft", 1, perturbed)
    _run_folder(root, cfg, "mrpc", "lora", 0, lora)
    # A run whose manifest is not completed must be ignored.
    (root / "mrpc" / "runs" / "mrpc-lora-lr0.001-r1").mkdir(parents=True)
    (root / "mrpc" / "runs" / "mrpc-lora-lr0.001-r1" / "results.json").write_text('{"run": {}}')
    return cfg, root, drift(cfg, root)


def drift(cfg, root) -> dict:
    run_stage(cfg, root, "drift", ["mrpc"])
    return json.loads((root / "mrpc" / "drift" / "drift.json").read_text())


def test_only_completed_runs_are_read(results):
    _, root, out = results
    assert [r["name"] for r in final_runs(root, "mrpc")] == out["runs"] == [
        "mrpc-ft-lr0.001-r0", "mrpc-ft-lr0.001-r1", "mrpc-lora-lr0.001-r0"]


def test_identical_model_has_zero_drift_and_perturbed_ones_drift(results):
    cfg, _, out = results
    n_layers = load_causal_lm(cfg.model).config.num_hidden_layers + 1
    same = [r for r in out["layers"] if r["run"] == "mrpc-ft-lr0.001-r0"]
    assert len(same) == 2 * len(cfg.drift.poolings) * n_layers  # probes × poolings × (embeddings + blocks)
    for r in same:
        if r.get("linear_cka_debiased") is not None:
            assert r["linear_cka_debiased"] == pytest.approx(1.0, abs=1e-9)
            assert r["cosine_mean"] == pytest.approx(1.0, abs=1e-9)
    scores = {(s["run"], s["probe"], s["pooling"]): s["drift"] for s in out["scores"]}
    for probe in ("in_task", "out_of_task"):
        assert abs(scores[("mrpc-ft-lr0.001-r0", probe, "mean")]) < 1e-9
        assert scores[("mrpc-ft-lr0.001-r1", probe, "mean")] > 1e-4
        assert scores[("mrpc-lora-lr0.001-r0", probe, "mean")] > 1e-4
    # Embeddings (layer 0) are untouched by the perturbation and by LoRA: similarity 1 there.
    for r in out["layers"]:
        if r["layer"] == 0 and r["pooling"] == "mean" and r["method"] == "lora":
            assert r["linear_cka"] == pytest.approx(1.0, abs=1e-9)


def test_forgetting_proxy_is_equal_for_the_identical_model(results):
    _, _, out = results
    loss = {f["run"]: f["lm_loss"] for f in out["forgetting"]}
    assert loss["mrpc-ft-lr0.001-r0"] == pytest.approx(loss["base"], rel=1e-6)
    assert loss["mrpc-ft-lr0.001-r1"] != pytest.approx(loss["base"], rel=1e-6)
    assert out["probes"]["forgetting_texts"]["task"] == "squad_v2"
    assert out["probes"]["out_of_task"]["task"] == "squad_v2" and out["probes"]["in_task"]["task"] == "mrpc"


def test_outputs_written_and_consistent(results):
    cfg, root, out = results
    folder = root / "mrpc" / "drift"
    assert is_completed(folder)
    assert json.loads((folder / "drift.json").read_text())["scores"] == out["scores"]
    with open(folder / "layers.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(out["layers"])
    for row, ref in zip(rows, out["layers"]):
        if ref.get("linear_cka_debiased") is not None:
            assert float(row["linear_cka_debiased"]) == pytest.approx(ref["linear_cka_debiased"], rel=1e-12)
    for pooling in cfg.drift.poolings:
        assert (folder / "figures" / f"similarity_{pooling}.png").stat().st_size > 10_000
    assert (folder / "figures" / "forgetting.png").is_file()


def test_rerun_skips_and_new_settings_recompute(results, monkeypatch):
    cfg, root, out = results
    import lorascope.drift.analysis as analysis
    from lorascope.study.executors import StudyFailed

    def boom(*a, **k):
        raise AssertionError("recomputed a completed drift stage")

    monkeypatch.setattr(analysis, "measure", boom)
    assert drift(cfg, root)["scores"] == out["scores"]  # the same job key: skipped
    changed = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"batch_size": 4})})
    with pytest.raises(StudyFailed, match="recomputed"):
        drift(changed, root)
    assert not is_completed(root / "mrpc" / "drift")  # a failed recompute never leaves a completed manifest
    monkeypatch.undo()
    again = drift(changed, root)  # batching must not change any result
    for a, b in zip(again["scores"], out["scores"]):
        assert a["drift"] == pytest.approx(b["drift"], abs=1e-9)


def test_t_band_matches_scipy():
    x = [0.2, 0.5, 0.3, 0.9]
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    band = t_band(x)
    assert band["lo"] == pytest.approx(lo, rel=1e-12) and band["hi"] == pytest.approx(hi, rel=1e-12)
    assert t_band([0.3]) == {"mean": 0.3, "lo": None, "hi": None, "n": 1}


def test_drift_scores_and_reduction_by_hand():
    def rows(run, method, rep, ckas):
        return [{"run": run, "method": method, "replicate": rep, "probe": "in_task", "pooling": "mean",
                 "layer": i, "linear_cka_debiased": c} for i, c in enumerate(ckas)]

    layer_rows = (rows("f0", "ft", 0, [1.0, 0.8, 0.6]) + rows("f1", "ft", 1, [1.0, 0.6, 0.2])
                  + rows("l0", "lora", 0, [1.0, 0.9, 0.8]) + rows("l1", "lora", 1, [1.0, 0.7, 0.4, None]))
    scores = {s["run"]: s["drift"] for s in drift_scores(layer_rows)}
    assert scores == pytest.approx({"f0": 0.2, "f1": 0.4, "l0": 0.1, "l1": 0.3})  # None layers skipped
    (summary,) = reduction_summary(drift_scores(layer_rows))
    assert summary["reduction_of_means"] == pytest.approx(1 - 0.2 / 0.3)
    # per-replicate ratios 0.5 and 0.75: the paired reduction is 1 − their geometric mean (log-scale interval)
    assert summary["paired"]["mean"] == pytest.approx(1 - math.sqrt(0.5 * 0.75))
    assert summary["paired"]["hi"] < 1.0
    assert summary["drift_ft"]["mean"] == pytest.approx(0.3) and summary["drift_lora"]["n"] == 2
    assert math.isfinite(summary["paired"]["lo"])
