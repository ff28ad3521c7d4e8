"""``run_serve_stage`` end to end on stories260k at tiny repeat counts: outputs, schema, gate integration."""

from __future__ import annotations

import csv
import json

import pytest
import typer
from typer.testing import CliRunner

from lorascope.config import load_config
from lorascope.io import atomic_write_json
from lorascope.manifest import run_manifest
from lorascope.serve.adapters import random_adapter
from lorascope.serve.native_model import NativeLlama
from lorascope.serve.report import CSV_FIELDS

REQUEST_KEYS = {"e2e_s", "ttft_s", "tpot_s", "out_tokens", "adapter", "batch_index", "row"}


@pytest.fixture(scope="module")
def results(model_dir, data_dir, tmp_path_factory):
    from transformers import AutoConfig

    root = tmp_path_factory.mktemp("study")
    cfg_hf = AutoConfig.from_pretrained(str(model_dir))
    for i, task in enumerate(("mrpc", "squad_v2")):
        run = root / task / "runs" / f"{task}-lora-lr0.01-r0"
        with run_manifest(run, None, command="fabricated final run"):
            random_adapter(cfg_hf, run / "adapter", seed=i, base=str(model_dir))
            atomic_write_json(run / "results.json", {"run": {"task": task, "method": "lora", "lr": 0.01,
                                                             "replicate": 0}})
    # A stale run at another learning rate, never completed: must not be served.
    random_adapter(cfg_hf, root / "mrpc" / "runs" / "mrpc-lora-lr0.001-r0" / "adapter", seed=9, base=str(model_dir))
    return root


@pytest.fixture(scope="module")
def served(results, model_dir, data_dir):
    cfg = load_config(None, [f"model.name_or_path={model_dir}", "model.eos_token=<s>", "data.source=mirror",
                             f"data.data_dir={data_dir}", "data.max_length=200", "serve.backends=[hf-peft,native,vllm]",
                             "serve.scenarios=[base,merged,unmerged-1,multi-2,multi-4]", "serve.batch_sizes=[3]",
                             "serve.new_tokens=4", "serve.requests=3", "serve.warmup=0", "serve.correctness_prompts=2",
                             "tracking.wandb=disabled"])
    real = NativeLlama.routing

    def swapped_when_k4(self, slots):  # a deliberately wrong engine: multi-4 routes every row to slot+1
        if self.k == 4:
            slots = [s % 4 + 1 if s > 0 else s for s in slots]
        return real(self, slots)

    mp = pytest.MonkeyPatch()
    mp.setattr(NativeLlama, "routing", swapped_when_k4)
    try:
        from lorascope.serve.folder_bench import run_folder_benchmark as run_serve_stage

        messages = []
        result = run_serve_stage(cfg, results, progress=messages.append, device="cpu")
    finally:
        mp.undo()
    return result, messages


def test_outputs_and_schema(served, results):
    assert all("lr0.01-r0" in str(path) for path in served[0]["task_adapters"].values())  # never the stale lr
    result, messages = served
    folder = results / "serve"
    assert json.loads((folder / "manifest.json").read_text())["status"] == "completed"
    on_disk = json.loads((folder / "serve.json").read_text())
    assert on_disk["cells"] == json.loads(json.dumps(result["cells"]))
    for name in ("throughput_vs_batch", "p95_latency_vs_batch", "memory_by_scenario"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
    assert messages and any("correctness gate" in m for m in messages)
    assert set(on_disk["engine_start_s"]) == {"hf-peft", "native"}
    assert on_disk["adapter_load_s"]["native"]["base"] == 0.0 < on_disk["adapter_load_s"]["native"]["multi-2"]
    ok = [c for c in result["cells"] if c["status"] == "ok"]
    assert len(ok) == 2 * 5 * 1 * 2 - 2  # 2 backends × 5 scenarios × 1 batch × 2 modes, less native multi-4
    for c in ok:
        assert set(c) == {"backend", "scenario", "batch_size", "output_mode", "status", "reason", "requests",
                          "summary", "memory"}
        assert len(c["requests"]) >= 3 and all(set(r) == REQUEST_KEYS for r in c["requests"])
        s = c["summary"]
        assert s["p50_e2e_s"] <= s["p95_e2e_s"] <= s["p99_e2e_s"] and s["tokens_per_s"] > 0
        assert c["memory"]["kind"] == "cpu" and c["memory"]["rss_bytes"] > 0
        if c["output_mode"] == "fixed":
            assert all(r["out_tokens"] == 4 for r in c["requests"])
    rows = list(csv.DictReader((folder / "requests.csv").open()))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == sum(len(c["requests"]) for c in result["cells"])


def test_multi_k_round_robin_assignment_is_recorded(served):
    result, _ = served
    cell = next(c for c in result["cells"] if (c["backend"], c["scenario"], c["batch_size"], c["output_mode"])
                == ("native", "multi-2", 3, "fixed"))
    names = [r["adapter"] for r in cell["requests"]]
    assert names[:3] == [names[0], names[1], names[0]] and names[0] != names[1]
    assert {n.split("-lora")[0] for n in names} == {"mrpc", "squad_v2"}
    merged = next(c for c in result["cells"] if c["scenario"] == "merged" and c["status"] == "ok")
    assert all(r["adapter"].startswith("merged:mrpc") for r in merged["requests"])
    assert any("perturbed" in p for p in result["adapter_pool"])


def test_wrong_engine_is_failed_by_the_gate_and_not_timed(served):
    result, _ = served
    bad = [c for c in result["cells"] if c["backend"] == "native" and c["scenario"] == "multi-4"]
    assert bad and all(c["status"] == "failed" and "correctness gate" in c["reason"] and "row " in c["reason"]
                       and not c["requests"] for c in bad)
    assert result["correctness"]["native/multi-2"] == "passed"
    assert result["correctness"]["hf-peft/multi-4"] == "passed"


def test_vllm_absent_is_skipped_with_a_reason(served):
    from lorascope.serve.vllm_backend import vllm_available

    if vllm_available()[0]:
        pytest.skip("vLLM is installed here: its cells run instead")
    vcells = [c for c in served[0]["cells"] if c["backend"] == "vllm"]
    assert vcells and all(c["status"] == "skipped" and "vLLM extra" in c["reason"] for c in vcells)


def test_cli_registers_serve_bench():
    from lorascope.cli import folder_cmds

    app = typer.Typer()
    folder_cmds.register(app)

    @app.command("noop")
    def noop():  # a second command, so typer keeps "serve-bench" as a sub-command name
        pass

    out = CliRunner().invoke(app, ["serve-bench", "--help"])
    assert out.exit_code == 0 and "RESULTS_DIR" in out.output
    missing = CliRunner().invoke(app, ["serve-bench", "/nonexistent/results"])
    assert missing.exit_code == 2 and "results folder not found" in missing.output
