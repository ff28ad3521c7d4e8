"""The ``lorascope`` command line through typer's CliRunner, on the shared mirror and stories260k.

Every command that reads a config gets ``configs/demo.yaml`` explicitly (``--config`` where it is an
option, positionally for ``run`` and ``config show``) plus overrides pointing data and model at the
shared folder, and ``$LORASCOPE_DATA_DIR`` is cleared so the environment cannot redirect the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorascope.cli.main import app

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"LORASCOPE_DATA_DIR": None})


def all_output(result) -> str:
    """stdout and stderr together, whether or not this click version keeps stderr separate."""
    text = result.output
    try:
        if result.stderr and result.stderr not in text:
            text += result.stderr
    except ValueError:  # older click: stderr not captured separately
        pass
    return text


def stdout_json(result):
    assert result.exit_code == 0, all_output(result)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def overrides(data_dir: Path, model_dir: Path) -> list[str]:
    return [f"data.data_dir={data_dir}", f"model.name_or_path={model_dir}"]


# --------------------------------------------------------------------------- data / baselines


def test_data_stats_mrpc_json(overrides: list[str]) -> None:
    stats = stdout_json(invoke("data", "stats", "--task", "mrpc", "--json", "--config", CONFIG, *overrides))
    assert stats["task"] == "mrpc"
    assert stats["sizes"] == {"train": 3668, "validation": 408, "test": 1725}
    positives = {split: entry["labels"]["positive"] for split, entry in stats["splits"].items()}
    assert positives == {"train": 2474, "validation": 279, "test": 1147}


def test_data_stats_squad_json_says_dev_only(overrides: list[str]) -> None:
    stats = stdout_json(invoke("data", "stats", "--task", "squad_v2", "--json", "--config", CONFIG, *overrides))
    assert stats["split_scheme"] == "dev-only"
    assert stats["notes"] and any("dev-only" in note for note in stats["notes"])


def test_baselines_mrpc_majority(overrides: list[str]) -> None:
    result = stdout_json(invoke("baselines", "--task", "mrpc", "--json", "--config", CONFIG, *overrides))
    majority = next(b for b in result["baselines"] if b["name"] == "majority")
    assert majority["split"] == "test"
    assert round(majority["metrics"]["accuracy"], 2) == 66.49
    assert round(majority["metrics"]["f1"], 2) == 79.87


def test_baselines_squad_names_split_scheme(overrides: list[str]) -> None:
    result = stdout_json(invoke("baselines", "--task", "squad_v2", "--json", "--config", CONFIG, *overrides))
    assert result["split_scheme"] == "dev-only"
    assert any("dev-only" in note for note in result["notes"])


def test_data_leakage_mrpc_passes(overrides: list[str]) -> None:
    result = invoke("data", "leakage", "--task", "mrpc", "--config", CONFIG, *overrides)
    assert result.exit_code == 0, all_output(result)
    assert json.loads(result.stdout)["ok"] is True


# --------------------------------------------------------------------------- metrics squad-v2


def _write_dataset(path: Path) -> Path:
    qas = [("q1", ["The Eiffel Tower", "Eiffel Tower in Paris"]), ("q2", ["red dog barks"]), ("q3", []), ("q4", [])]
    items = [{"id": q, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]} for q, golds in qas]
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": items}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_metrics_squad_v2_official_keys_and_values(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path / "data.json")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"q1": "eiffel tower!", "q2": "The big red dog", "q3": "", "q4": "Paris"}))
    out = stdout_json(invoke("metrics", "squad-v2", data, preds))
    # q1 EM 1 F1 1; q2 EM 0 F1 2/3 ([big, red, dog] vs [red, dog, barks]); q3 (no answer, "") 1/1; q4 0/0
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                         "NoAns_exact", "NoAns_f1", "NoAns_total"]
    expected = {"exact": 50.0, "f1": 200 / 3, "total": 4, "HasAns_exact": 50.0, "HasAns_f1": 250 / 3,
                "HasAns_total": 2, "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}
    assert out == pytest.approx(expected, abs=1e-9)


def test_metrics_squad_v2_missing_prediction_exits_2(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path / "data.json")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"q1": "x", "q2": "y", "q3": ""}))
    result = invoke("metrics", "squad-v2", data, preds)
    assert result.exit_code == 2
    text = all_output(result)
    assert "q4" in text and "no prediction" in text
    assert "Traceback" not in text


def test_metrics_squad_v2_malformed_predictions_exit_2(tmp_path: Path) -> None:
    data = _write_dataset(tmp_path / "data.json")
    preds = tmp_path / "broken_preds.json"
    preds.write_text('{"q1": "x",')
    result = invoke("metrics", "squad-v2", data, preds)
    assert result.exit_code == 2
    text = all_output(result)
    assert str(preds) in text and "not valid JSON" in text


# --------------------------------------------------------------------------- config


def test_unknown_override_key_exits_2_naming_key_and_file(overrides: list[str]) -> None:
    result = invoke("data", "stats", "--task", "mrpc", "--config", CONFIG, *overrides, "data.nope=1")
    assert result.exit_code == 2
    text = all_output(result)
    assert "error:" in text and "data.nope" in text and str(CONFIG) in text
    assert "Traceback" not in text


def test_config_show_prints_hash(overrides: list[str]) -> None:
    out = stdout_json(invoke("config", "show", CONFIG, *overrides))
    assert isinstance(out["config_hash"], str) and out["config_hash"]
    assert out["config"]["name"] == "demo"
    assert out["config"]["data"]["data_dir"] == overrides[0].split("=", 1)[1]


# --------------------------------------------------------------------------- end to end (~40-50 s)


@pytest.mark.integration
def test_run_writes_results_folder(tmp_path: Path, overrides: list[str]) -> None:
    out = tmp_path / "x"
    tiny = ["train.methods=[ft]", "seeds.replicates=[0]", "ft.lr_grid=[1.0e-3]", "train.max_steps=2",
            "data.subsample={train: 48, validation: 8, test: 8}",
            "data.subsample_by_task={}",  # not the demo's MRPC sizes
            "data.probe_size=12", "drift.forgetting_texts=8",
            "stats.bootstrap_resamples=200", "serve.requests=2", "serve.warmup=0", "serve.batch_sizes=[1]",
            "serve.scenarios=[base,merged]", "serve.new_tokens=4"]
    result = invoke("run", CONFIG, "--out", out, *overrides, *tiny)
    assert result.exit_code == 0, all_output(result)
    assert result.stdout.strip().splitlines()[-1] == str(out / "report" / "report.html")
    assert "Verdict" in (out / "report" / "report.html").read_text(encoding="utf-8")
    for task in ("mrpc", "squad_v2"):
        drift = json.loads((out / task / "drift" / "drift.json").read_text())
        assert {s["run"] for s in drift["scores"]} == {f"{task}-ft-lr0.001-r0"}
    assert json.loads((out / "stats" / "stats.json").read_text())["verdicts"]
    assert "dev-only" in (out / "report" / "report.md").read_text(encoding="utf-8")
    for folder in (out, out / "mrpc", out / "squad_v2"):
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["status"] == "completed", folder
    for task in ("mrpc", "squad_v2"):
        assert (out / task / "figures" / "token_lengths.png").stat().st_size > 0
        assert json.loads((out / task / "sanity" / "ft" / "sanity.json").read_text())["passed"]
        runs = list((out / task / "runs").glob("*/results.json"))
        assert len(runs) == 1 and "test" in json.loads(runs[0].read_text())
    summary, full = (out / "summary.md").read_text(), (out / "report" / "report.md").read_text()
    assert "Verdict" in summary and "Main results" in summary and "Sanity gate" in full  # one report path
    weights = json.loads((out / "mrpc" / "weights" / "weights.json").read_text())
    assert set(weights["runs"]) == {"FT"} and set(weights["dare"]["FT"]["dare"]) == {"0.0", "0.5", "0.9", "0.99"}
    assert (out / "mrpc" / "weights" / "figures" / "dare_curves.png").stat().st_size > 0
    assert "weight-update structure" in full
    # -- issue 13 items 4–6 on the finished study ------------------------------------------------------------
    root = json.loads((out / "manifest.json").read_text())
    assert root["status"] == "completed" and len(root["invocations"]) == 1
    assert root["invocations"][0]["jobs"]["completed"] > 10 and root["invocations"][0]["status"] == "completed"
    report_md = (out / "report" / "report.md").read_text()
    assert "| status | completed |" in report_md and "| running |" not in report_md and "Invocations of" in report_md
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "stats" / "stats.json").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    # a no-op rerun adds a line to the history; it does not erase the run that made the results
    again = invoke("run", CONFIG, "--out", out, *overrides, *tiny)
    assert again.exit_code == 0, all_output(again)
    inv = json.loads((out / "manifest.json").read_text())["invocations"]
    assert len(inv) == 2 and inv[0]["jobs"]["completed"] > 10 and inv[1]["jobs"]["completed"] == 0
    assert inv[1]["jobs"]["skipped"] == inv[0]["jobs"]["completed"]
    # a key that defines the trained runs cannot change on this folder: an error naming it, before any job
    jobs_before = sorted(p.name for p in (out / "jobs").iterdir())
    changed = invoke("run", CONFIG, "--out", out, *overrides, *tiny, "train.grad_clip=0.5")
    assert changed.exit_code == 2 and "train.grad_clip" in all_output(changed)
    assert sorted(p.name for p in (out / "jobs").iterdir()) == jobs_before
    assert len(json.loads((out / "manifest.json").read_text())["invocations"]) == 2
    # commands that read the folder take its own config; training keys are refused, analysis keys recorded
    bad = invoke("stats", out, "model.name_or_path=princeton-nlp/Sheared-LLaMA-1.3B")
    assert bad.exit_code == 2 and "model.name_or_path" in all_output(bad) and "defines" in all_output(bad)
    ok = invoke("stats", out, "stats.confidence=0.9")
    assert ok.exit_code == 0, all_output(ok)
    stats_manifest = json.loads((out / "stats" / "manifest.json").read_text())
    assert stats_manifest["config"]["model"]["name_or_path"] == str(overrides[1].split("=", 1)[1])
    assert stats_manifest["config_vs_study"] == [{"key": "stats.confidence", "study": 0.95, "here": 0.9}]
    root = json.loads((out / "manifest.json").read_text())
    assert root["config"]["stats"]["confidence"] == 0.95  # an analysis override does not redefine the study
    assert root["invocations"][-1]["command"] == "stats" and root["invocations"][-1]["config_changes"] == [
        {"key": "stats.confidence", "before": 0.95, "now": 0.9}]
    # one writer per folder: a live holder makes a second run stop at once, writing nothing
    from lorascope.study.lock import folder_lock

    with folder_lock(out, "test holder"):
        busy = invoke("run", CONFIG, "--out", out, *overrides, *tiny)
    assert busy.exit_code == 3 and "in use by another lorascope run" in all_output(busy)
    assert len(json.loads((out / "manifest.json").read_text())["invocations"]) == 3  # nothing written
