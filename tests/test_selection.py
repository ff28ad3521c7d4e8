"""Final-run selection shared by the weights, drift and stats stages: never mix learning rates."""

from __future__ import annotations

from lorascope.io import atomic_write_json
from lorascope.manifest import run_manifest
from lorascope.results.selection import final_runs, lowest_replicate_run, lowest_replicate_runs


def _run(root, method, lr, rep, completed=True, hpo=False):
    folder = root / "mrpc" / "runs" / f"mrpc-{method}-lr{lr}-r{rep}"
    spec = {"task": "mrpc", "method": method, "lr": lr, "replicate": rep, "hpo": hpo}
    if completed:
        with run_manifest(folder, None, command="fabricated"):
            atomic_write_json(folder / "results.json", {"run": spec})
    else:
        folder.mkdir(parents=True)
        atomic_write_json(folder / "results.json", {"run": spec})


def test_hpo_choice_wins_over_stale_runs(tmp_path):
    for rep in (0, 1, 2):
        _run(tmp_path, "ft", 0.001, rep)  # an old choice with more replicates
    _run(tmp_path, "ft", 0.003, 0)
    _run(tmp_path, "ft", 0.003, 1, completed=False)
    atomic_write_json(tmp_path / "mrpc" / "hpo" / "ft" / "hpo.json", {"best_lr": 0.003})
    assert [(r["lr"], r["replicate"]) for r in final_runs(tmp_path, "mrpc")] == [(0.003, 0)]
    atomic_write_json(tmp_path / "mrpc" / "hpo" / "ft" / "hpo.json", {"best_lr": 0.01})  # no run yet at 0.01
    assert final_runs(tmp_path, "mrpc") == []


def test_without_hpo_the_lr_with_most_replicates(tmp_path):
    _run(tmp_path, "lora", 0.01, 0)
    for rep in (0, 1):
        _run(tmp_path, "lora", 0.003, rep)
    _run(tmp_path, "ft", 0.001, 4)
    runs = final_runs(tmp_path, "mrpc")
    assert [(r["method"], r["lr"], r["replicate"]) for r in runs] == [("ft", 0.001, 4), ("lora", 0.003, 0),
                                                                       ("lora", 0.003, 1)]
    assert [r["replicate"] for r in final_runs(tmp_path, "mrpc", replicates=[1])] == [1]


def test_lowest_replicate_run_per_method(tmp_path):
    for rep in (2, 1):
        _run(tmp_path, "lora", 0.003, rep)
    _run(tmp_path, "lora", 0.01, 0)  # another lr with fewer replicates: not a final run
    _run(tmp_path, "ft", 0.001, 3)
    lowest = lowest_replicate_runs(tmp_path, "mrpc")
    assert {m: (r["lr"], r["replicate"]) for m, r in lowest.items()} == {"ft": (0.001, 3), "lora": (0.003, 1)}
    assert lowest_replicate_run(tmp_path, "mrpc", "lora") == lowest["lora"]
    assert lowest_replicate_run(tmp_path, "mrpc", "lora_qv") is None
    assert lowest_replicate_runs(tmp_path, "mrpc", replicates=[2])["lora"]["replicate"] == 2
    assert "ft" not in lowest_replicate_runs(tmp_path, "mrpc", replicates=[2])
