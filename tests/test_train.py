"""Training on stories260k: exact reproducibility, resume after SIGKILL, NaN handling, LoRA/merge, HPO isolation."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorascope.config import load_config
from lorascope.errors import LorascopeError
from lorascope.manifest import MANIFEST
from lorascope.train.loop import TrainingDiverged
from lorascope.train.run import RunSpec, run_training
from tests.conftest import REPO, assert_close_to_scale

SMALL = ["data.subsample_by_task={}", "data.subsample={train: 40, validation: 12, test: 12}", "train.effective_batch=8",
         "train.micro_batch=4",
         "train.max_steps=4", "train.evals_per_epoch=2", "train.eval_batch_size=12", "data.tasks=[mrpc]"]


TRAIN_CLI = [sys.executable, "-m", "lorascope.cli.main", "train"]


def _one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli_lora_args(lr: str, data_dir, model_dir, *extra: str) -> list[str]:
    """`lorascope train` arguments of a small MRPC LoRA run on the demo config (SMALL less its step, eval and task
    caps), then ``extra``; the task list comes last, as before."""
    return ["--task", "mrpc", "--method", "lora", "--lr", lr, "--config", str(REPO / "configs" / "demo.yaml"),
            f"data.data_dir={data_dir}", f"model.name_or_path={model_dir}", *SMALL[:-3], *extra, "data.tasks=[mrpc]"]


@pytest.fixture(scope="module")
def cfg(data_dir, model_dir):
    return load_config(
        REPO / "configs" / "demo.yaml", [f"data.data_dir={data_dir}", f"model.name_or_path={model_dir}", *SMALL]
    )


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("method, lr", [("ft", 1e-3), ("lora", 5e-3)])
def test_same_seed_same_loss_curve_exactly(cfg, tmp_path, method, lr):
    a = run_training(cfg, RunSpec("mrpc", method, lr, 0), tmp_path / "a")
    b = run_training(cfg, RunSpec("mrpc", method, lr, 0), tmp_path / "b")
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == 4 and la == lb  # bit-for-bit on CPU
    assert a["test"] == b["test"] and a["validation_best"] == b["validation_best"]
    assert la[-1] < la[0]  # it learns
    c = run_training(cfg, RunSpec("mrpc", method, lr, 1), tmp_path / "c")  # another replicate: other seeds
    assert losses(tmp_path / "c") != la and c["seeds"] != a["seeds"]
    preds = [json.loads(x) for x in (tmp_path / "a" / "predictions_test.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and {"id", "pred", "label", "correct"} <= set(preds[0])
    man = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert man["status"] == "completed" and man["seeds"]["dropout"] == a["seeds"]["dropout"]


def test_loss_curve_golden(cfg, tmp_path):
    """The recipe's loss curve on stories260k, pinned: a change to data order, masking, schedule or
    optimizer moves it. (Tolerance covers BLAS differences between CPUs, not recipe changes.)"""
    run_training(cfg, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "g")
    golden = json.loads((REPO / "tests" / "golden" / "loss_curve_mrpc_ft.json").read_text())
    # rel 1e-3: the losses are float32 sums that another CPU's BLAS orders differently (≈ 1e-7 relative per
    # step, grown over 4 AdamW steps to ≲ 1e-5); any recipe change (order, masking, schedule) moves them by > 1e-2.
    assert losses(tmp_path / "g") == pytest.approx(golden, rel=1e-3)


def test_completed_run_is_reused_and_config_change_is_not(cfg, tmp_path):
    run_training(cfg, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "r")
    mtime = (tmp_path / "r" / "results.json").stat().st_mtime_ns
    run_training(cfg, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "r")
    assert (tmp_path / "r" / "results.json").stat().st_mtime_ns == mtime


def test_lora_adapter_is_nonzero_and_merge_matches(cfg, tmp_path):
    from peft import PeftModel

    from lorascope.models.load import load_causal_lm
    from lorascope.models.merge import load_adapter, merge_adapter

    run_training(cfg, RunSpec("mrpc", "lora", 5e-3, 0), tmp_path / "l")
    adapter = tmp_path / "l" / "adapter"
    tensors = load_file(adapter / "adapter_model.safetensors")
    b = [t for k, t in tensors.items() if "lora_B" in k]
    assert len(b) == 5 * 7 and all(t.abs().max() > 0 for t in b)  # every module's B moved off zero
    merged_dir = merge_adapter(cfg.model, adapter, tmp_path / "merged")
    ids = torch.tensor([[1, 400, 401, 402, 403, 10, 20, 30]])
    with torch.no_grad():
        unmerged = load_adapter(cfg.model, adapter)(ids).logits
        merged = load_causal_lm(cfg.model.model_copy(update={"name_or_path": str(merged_dir)}))(ids).logits
        base = load_causal_lm(cfg.model)(ids).logits
    # The merged float32 weights W + s·B·A are rounded once per entry (≤ eps32/2 relative) and the logits are sums
    # over 5 layers of 64–172-term dot products, so merged and unmerged logits differ by tens of ulps of the logit
    # scale (measured 8 on one CPU, 1.53e-5 at scale 17); 256 ulps of the scale bounds that on any CPU, while the
    # adapter itself moves the logits by ~1e-1 of their scale (the second check).
    assert_close_to_scale(merged, unmerged, ulps=256, what="merged vs unmerged logits")
    assert (base - unmerged).abs().max() > 1e-2 * unmerged.abs().max()
    assert isinstance(load_adapter(cfg.model, adapter), PeftModel)


def test_nan_loss_fails_the_run_and_records_nothing(cfg, tmp_path):
    bad = cfg.model_copy(deep=True)
    bad.train.max_steps = 6
    with pytest.raises(TrainingDiverged, match="diverged"):
        run_training(bad, RunSpec("mrpc", "ft", 1e12, 0), tmp_path / "n")
    man = json.loads((tmp_path / "n" / MANIFEST).read_text())
    assert man["status"] == "failed" and "diverged" in man["error"]
    failed = json.loads((tmp_path / "n" / "failed.json").read_text())
    assert failed["step"] >= 1 and "lr" in failed and "recent" in failed
    assert not (tmp_path / "n" / "results.json").exists() and not (tmp_path / "n" / "predictions_test.jsonl").exists()


def test_collapse_without_nan_fails_the_run(cfg, tmp_path, data_dir, model_dir):
    """Issue 13: lr 1e6 for 2 steps gave every test example the uniform distribution (−ln 512 per token), no NaN,
    and a "completed" run with 38.54 accuracy. The run must fail as diverged, with diagnostics, and record nothing."""
    args = _cli_lora_args("1e6", data_dir, model_dir, "train.max_steps=2") + ["--out", str(tmp_path / "c")]
    res = subprocess.run(TRAIN_CLI + args, capture_output=True, text=True, env=_one_thread())
    assert res.returncode != 0 and "diverged" in res.stderr
    failed = json.loads((tmp_path / "c" / "failed.json").read_text())
    assert "uniform" in failed["reason"] or "ignores its input" in failed["reason"] or "exceeds" in failed["reason"]
    assert not (tmp_path / "c" / "results.json").exists()
    assert json.loads((tmp_path / "c" / MANIFEST).read_text())["status"] == "failed"


def test_collapse_checks_by_hand(model_dir, tokenizer):
    """The two output checks on a real model, a uniform one and an input-blind one; the loss check by numbers."""
    from lorascope.config.schema import ModelConfig
    from lorascope.models.load import load_causal_lm
    from lorascope.train.collapse import loss_exploded, output_collapse

    prompts = [
        "Sentence 1: a cat\nAnswer:",
        "Sentence 1: the dog ran home\nAnswer:",
        "Context: x\nQuestion: y\nAnswer:",
    ]
    model = load_causal_lm(ModelConfig(name_or_path=str(model_dir)))
    healthy = output_collapse(model, tokenizer, prompts, device=torch.device("cpu"), max_length=64)
    assert not healthy["collapsed"] and healthy["entropy_fraction_of_uniform"] < 0.9
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits 0 everywhere: the uniform distribution
    flat = output_collapse(model, tokenizer, prompts, device=torch.device("cpu"), max_length=64)
    assert flat["collapsed"] and "uniform" in flat["reason"]
    # a model that started uniform (random weights) has not collapsed by staying so
    again = output_collapse(model, tokenizer, prompts, device=torch.device("cpu"), max_length=64, baseline=flat)
    assert not again["collapsed"]

    class Blind(torch.nn.Module):  # confident, far from uniform, and the same whatever the input
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(512)
            logits[5] = 8.0
            return types.SimpleNamespace(logits=logits.expand(*input_ids.shape, 512))

    blind = output_collapse(Blind(), tokenizer, prompts, device=torch.device("cpu"), max_length=64)
    assert blind["collapsed"] and "ignores its input" in blind["reason"]
    assert loss_exploded(13.0, 3.0, 4.0) and not loss_exploded(11.9, 3.0, 4.0) and not loss_exploded(99.0, 3.0, None)


def test_kill_and_resume_gives_identical_weights(cfg, tmp_path, data_dir, model_dir):
    args = _cli_lora_args("5e-3", data_dir, model_dir, "train.max_steps=14", "train.epochs={mrpc: 3}",
                          "train.checkpoint_every=2", "train.evals_per_epoch=1")
    cmd, env = TRAIN_CLI, _one_thread()
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref"), *args], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd + ["--out", str(out), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "LATEST").exists():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = (out / "checkpoints" / "LATEST").read_text().strip()
    assert latest < "step-000014", "the run finished before it could be killed"
    assert not (out / "results.json").exists()
    res = subprocess.run(cmd + ["--out", str(out), *args], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert any(json.loads(line).get("event") == "resumed" for line in (out / "metrics.jsonl").read_text().splitlines())
    final_ref = load_file(tmp_path / "ref" / "checkpoints" / "step-000014" / "weights.safetensors")
    final_res = load_file(out / "checkpoints" / "step-000014" / "weights.safetensors")
    assert final_ref.keys() == final_res.keys()
    assert all(torch.equal(final_ref[k], final_res[k]) for k in final_ref)  # bit for bit
    assert losses(tmp_path / "ref") == losses(out)
    assert (
        json.loads((out / "results.json").read_text())["test"]
        == json.loads((tmp_path / "ref" / "results.json").read_text())["test"]
    )


def test_hpo_never_reads_test(cfg, tmp_path, monkeypatch):
    from lorascope.data.load import load_task
    from lorascope.train import evaluate as ev_mod
    from lorascope.train import hpo
    from lorascope.train.holdout import TestSplitAccessError, without_test

    data = load_task("mrpc", cfg.data, seed=0, apply_subsample=True)
    test_ids = {e.id for e in data["test"]}
    seen: list[str] = []
    real = ev_mod.evaluate

    def spy(task, model, tok, examples, **kw):
        seen.extend(e.id for e in examples)
        return real(task, model, tok, examples, **kw)

    monkeypatch.setattr("lorascope.train.run.evaluate", spy)
    small = cfg.model_copy(deep=True)
    small.ft.lr_grid = [1e-3, 3e-3]
    summary = hpo.run_hpo(small, "mrpc", "ft", tmp_path / "hpo")
    assert [t["lr"] for t in summary["trials"]] == [1e-3, 3e-3] and summary["best_lr"] in (1e-3, 3e-3)
    assert seen and not (set(seen) & test_ids)
    for t in summary["trials"]:
        res = json.loads((tmp_path / "hpo" / t["run"] / "results.json").read_text())
        assert "test" not in res and not (tmp_path / "hpo" / t["run"] / "predictions_test.jsonl").exists()
    again = hpo.run_hpo(small, "mrpc", "ft", tmp_path / "hpo")  # rerun: nothing new is trained
    assert again["trials"] == summary["trials"]
    held = without_test(data)
    for read in (lambda: list(held["test"]), lambda: held["test"][0], lambda: len(held["test"])):
        with pytest.raises(TestSplitAccessError, match="held out"):
            read()


def test_sanity_gate_passes_and_a_tiny_lr_fails(cfg, tmp_path):
    from lorascope.train.sanity import run_sanity

    ok = run_sanity(cfg, "mrpc", "ft", tmp_path / "ok")
    assert ok["passed"] and ok["score"] == 100.0 and ok["n_examples"] == 10
    assert ok["reached_loss_threshold"] and ok["final_loss"] <= 0.05
    broken = cfg.model_copy(deep=True)
    broken.sanity.max_steps = 5
    bad = run_sanity(broken, "mrpc", "ft", tmp_path / "bad", lr=1e-12)  # lr 0 is a config error now
    curve = bad["loss_curve"]
    assert not bad["passed"] and bad["steps"] == 5 and max(curve) - min(curve) < 1e-4 * curve[0]  # nothing moves
    assert json.loads((tmp_path / "bad" / "sanity.json").read_text())["passed"] is False


def test_wandb_offline_never_writes_the_key(cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    secret = "lorascope-test-secret-key-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    c = cfg.model_copy(deep=True)
    c.tracking.wandb = "offline"
    c.train.max_steps = 2
    run_training(c, RunSpec("mrpc", "lora", 5e-3, 0), tmp_path / "w")
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*")), "wandb offline run folder expected"
    for path in (tmp_path / "w").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_unknown_method_and_missing_model(cfg, tmp_path):
    with pytest.raises(LorascopeError, match="unknown method"):
        run_training(cfg, RunSpec("mrpc", "prefix", 1e-3, 0), tmp_path / "x")
    broken = cfg.model_copy(deep=True)
    broken.model.name_or_path = str(tmp_path / "nomodel")
    with pytest.raises(LorascopeError, match="not found"):
        run_training(broken, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "y")


def test_zero_shot_base_model(cfg, tmp_path):
    from lorascope.train.zero_shot import run_zero_shot

    res = run_zero_shot(cfg, "mrpc", tmp_path / "z")
    assert res["name"] == "base_zero_shot" and res["test"]["n"] == 12
    preds = (tmp_path / "z" / "predictions_test.jsonl").read_text().splitlines()
    assert len(preds) == 12 and json.loads((tmp_path / "z" / MANIFEST).read_text())["status"] == "completed"


def test_folder_of_another_run_is_neither_reused_nor_resumed(cfg, tmp_path):
    """A completed run's results are returned only for the same spec and config; an unfinished folder of
    another run refuses to resume instead of mixing two runs."""
    a = run_training(cfg, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "r")
    with pytest.raises(LorascopeError, match="belongs to another run"):
        run_training(cfg, RunSpec("mrpc", "ft", 3e-3, 0), tmp_path / "r")  # other lr, same folder
    assert json.loads((tmp_path / "r" / "results.json").read_text())["run"]["lr"] == 1e-3  # untouched
    assert a["run"]["lr"] == 1e-3
    other = cfg.model_copy(deep=True)
    other.train.grad_clip = 0.5
    with pytest.raises(LorascopeError, match="belongs to another run"):
        run_training(other, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "r")


def test_max_steps_is_a_cap(cfg, tmp_path):
    c = cfg.model_copy(deep=True)
    c.train.max_steps = 100  # 40 examples / batch 8 = 5 steps per epoch, 1 epoch
    res = run_training(c, RunSpec("mrpc", "ft", 1e-3, 0), tmp_path / "m")
    assert res["steps"] == 5


def test_hpo_grid_change_and_divergence(cfg, tmp_path):
    from lorascope.train import hpo

    c = cfg.model_copy(deep=True)
    c.ft.lr_grid = [1e-3, 1e12]  # the second lr diverges: recorded, not fatal
    s = hpo.run_hpo(c, "mrpc", "ft", tmp_path / "h")
    assert [t["lr"] for t in s["trials"]] == [1e-3, 1e12]
    assert s["trials"][1]["value"] is None and "diverged" in s["trials"][1]["diverged"] and s["best_lr"] == 1e-3
    c.ft.lr_grid = [2e-3]  # a new grid in the same folder: only its own trials count
    s2 = hpo.run_hpo(c, "mrpc", "ft", tmp_path / "h")
    assert [t["lr"] for t in s2["trials"]] == [2e-3] and s2["best_lr"] == 2e-3


def test_a_restart_without_checkpoint_drops_the_killed_attempts_log(tmp_path):
    """A run killed before its first checkpoint restarts at step 0: its earlier step lines must go (the Ray
    rehearsal saw steps 1–6 followed by 1–16 in one metrics.jsonl)."""
    from lorascope.train.run import _truncate_metrics_log

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    _truncate_metrics_log(tmp_path)
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == []
