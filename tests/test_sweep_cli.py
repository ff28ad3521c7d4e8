"""The wandb sweep: exported config, and the entry point a ``wandb agent`` calls, run offline."""

import json

import yaml
from typer.testing import CliRunner

from lorascope.cli.main import app
from tests.conftest import REPO

SMALL = ["data.subsample={train: 32, validation: 8, test: 8}", "data.subsample_by_task={}", "train.effective_batch=8",
         "train.micro_batch=8",
         "train.max_steps=2", "train.evals_per_epoch=1", "data.tasks=[mrpc]"]


def test_sweep_export_and_agent_entry_point(tmp_path, data_dir, model_dir, monkeypatch):
    cfg = tmp_path / "cfg.yaml"
    tree = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    tree["data"].update(data_dir=str(data_dir), subsample={"train": 32, "validation": 8, "test": 8},
                        subsample_by_task={})
    tree["model"]["name_or_path"] = str(model_dir)
    tree["train"].update(effective_batch=8, micro_batch=8, max_steps=2)
    tree["output"] = {"root": str(tmp_path / "out")}
    cfg.write_text(yaml.safe_dump(tree))
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", "--task", "mrpc", "--method", "lora", "--config", str(cfg),
                              "--out", str(tmp_path / "sweep.yaml")])
    assert res.exit_code == 0, res.output
    sweep = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["parameters"]["lr"]["values"] == [3e-3, 1e-2]
    assert sweep["project"] == "NLP" and sweep["entity"] == "galavny-tel-aviv-university"
    assert sweep["command"][:3] == ["${env}", "lorascope", "sweep-run"] and sweep["command"][-1] == "${args}"
    # What `wandb agent` runs: the command with ${args} expanded to --key=value pairs.
    args = sweep["command"][2:-1] + ["--lr=0.003"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["run"] == "mrpc-lora-lr0.003-r0-hpo" and isinstance(out["validation_best"], float)
    results = json.loads((tmp_path / "out" / "mrpc" / "sweep" / "lora" / out["run"] / "results.json").read_text())
    assert "test" not in results  # sweep trials are HPO: validation only
    bad = runner.invoke(app, sweep["command"][2:-1] + ["--lr=0.003", "--epochs=2"])
    assert bad.exit_code != 0
