"""``lorascope plan``'s cost model (study/plan.py), its calibration on a measured run (study/plan_calibrate.py),
the schedule on G GPUs (study/schedule.py), the comparison script and the CLI output. CPU only, no model files:
the model shape is given or known, and a "measured" run is synthesised from known constants."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lorascope.config import load_config
from lorascope.study.dag import Dag
from lorascope.study.jobs import build_study_dag
from lorascope.study.plan import SHEARED_1P3B, CostModel, estimate
from lorascope.study.plan_assumptions import Assumptions
from lorascope.study.plan_calibrate import calibrate, first_gpu_jobs, predicted_seconds
from lorascope.study.schedule import critical_path, simulate
from lorascope.train.batching import epoch_batches

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "configs" / "study.yaml"
# A short two-task study like the issue-15 Ray run (its overrides, less the machine-specific ones).
RUN_OVERRIDES = ["model.dtype=bfloat16", "data.max_new_tokens=8",
                 "data.subsample={train: 256, validation: 32, test: 64}", "data.probe_size=64",
                 "seeds.replicates=[0, 1]", "ft.lr_grid=[5.0e-5]", "lora.lr_grid=[1.0e-3]",
                 "train.max_steps=16", "train.epochs={mrpc: 1, squad_v2: 1}", "train.evals_per_epoch=1",
                 "train.compile=false", "train.eval_batch_size=32", "train.checkpoint_every=8", "sanity.n_examples=4",
                 "drift.max_length=256", "drift.batch_size=32", "drift.forgetting_texts=32",
                 "serve.scenarios=[merged, unmerged-1, multi-2]", "serve.batch_sizes=[1, 4]",
                 "serve.output_modes=[fixed]", "serve.new_tokens=16", "serve.requests=6", "serve.warmup=1"]
# Made-up "true" constants, far from the coded ones, so recovering them is not a coincidence.
TRUE = replace(Assumptions(), step_overhead_s={"ft": 0.05, "lora": 0.3, "lora_qv": 0.3}, model_load_gb_per_s=3.0,
               run_fixed_s=7.0, state_write_gb_per_s=0.5, hpo_fixed_s=2.0, sanity_steps=11, serve_gate_s=5.0,
               cpu_s={"data": 9.0, "stats": 2.0, "report": 3.0}, node_cold_start_s=40.0,
               tokens_per_example={"mrpc": 69.0, "squad_v2": 141.4},
               split_sizes={t: {"train": 256, "validation": 32, "test": 64} for t in ("mrpc", "squad_v2")})
FITTED = ("step_overhead_s", "model_load_gb_per_s", "run_fixed_s", "state_write_gb_per_s", "hpo_fixed_s",
          "sanity_steps", "serve_gate_s", "cpu_s", "node_cold_start_s")


def run_config():
    cfg = load_config(STUDY, RUN_OVERRIDES)
    return cfg, build_study_dag(cfg, Path("/nonexistent"))


# A quarter-width model: token rates scale by the parameter ratio (CostModel.rate_scale), so a calibration that
# forgot the scaling would fit the wrong per-step overhead here, not at the reference shape.
SMALL = replace(SHEARED_1P3B, layers=12, hidden=1024, intermediate=2752, heads=8, kv_heads=8, source="small")


def synthetic_run(cfg, dag: Dag, a: Assumptions, shape=SHEARED_1P3B) -> list[dict]:
    """per_job_times rows of a run that behaves exactly like the model with ``a``, on 2 nodes (placement and start
    times from the 2-GPU schedule, so each node's first job carries the cold start)."""
    model = CostModel(cfg, a, shape)
    seconds = {n: model.job_seconds(dag[n]) for n in dag.jobs}
    sched = simulate(dag, seconds, 2, cold_start_s=a.node_cold_start_s)
    rows = []
    for name, (start, _, node) in sched.placement.items():
        job = dag[name]
        row = {"job": name, "kind": job.kind, "task": job.params.get("task"), "method": job.params.get("method"),
               "node": "AB"[node] if node is not None else "A", "start_s": start, "attempts": 1, "training": None}
        if job.kind in ("sanity", "train", "hpo"):
            m, task = job.params["method"], job.params["task"]
            steps, batch = ((a.sanity_steps, cfg.sanity.n_examples) if job.kind == "sanity"
                            else (model.train_shape(task)[0], cfg.train.effective_batch))
            tokens = steps * batch * model.tokens(task)
            row["training"] = {"steps": steps, "tokens": tokens,
                               "step_seconds": steps * a.step_overhead_s[m]
                               + tokens / (a.train_tokens_per_s[m] * model.rate_scale)}
        rows.append(row)
    predicted = predicted_seconds(rows, dag, model)
    for r in rows:
        r["seconds"] = predicted[r["job"]]
    return rows


@pytest.mark.parametrize("shape", [SHEARED_1P3B, SMALL], ids=["1.3B", "small"])
def test_calibration_recovers_the_constants_of_a_synthetic_run(shape) -> None:
    cfg, dag = run_config()
    rows = synthetic_run(cfg, dag, TRUE, shape)
    assert len(first_gpu_jobs(rows, dag)) == 2  # one cold job per node
    start = replace(TRUE, **{k: getattr(Assumptions(), k) for k in FITTED})  # the coded values as the start
    fitted, used = calibrate(rows, cfg, dag, start, shape)
    assert set(k.partition("[")[0] for k in used) == set(FITTED)
    for key in FITTED:  # linear rules on float64 data: recovered to rounding error
        got, want = getattr(fitted, key), getattr(TRUE, key)
        if isinstance(want, dict):
            assert got.keys() == want.keys() and all(math.isclose(got[k], want[k], rel_tol=1e-9) for k in want), key
        else:
            assert math.isclose(got, want, rel_tol=1e-9), key
    again = predicted_seconds(rows, dag, CostModel(cfg, fitted, shape))
    assert all(math.isclose(again[r["job"]], r["seconds"], rel_tol=1e-9) for r in rows)


def test_calibration_keeps_the_coded_value_when_a_fit_is_not_positive() -> None:
    """Noise can make FT's leftover time smaller than LoRA's: a negative write speed must not enter the plan."""
    cfg, dag = run_config()
    rows = synthetic_run(cfg, dag, TRUE)
    for r in rows:
        if r["kind"] == "train" and r["method"] == "lora":
            r["seconds"] += 1000.0  # LoRA runs now take far longer than FT's extra writes could explain
    fitted, used = calibrate(rows, cfg, dag, Assumptions(), SHEARED_1P3B)
    assert fitted.state_write_gb_per_s == Assumptions().state_write_gb_per_s
    assert fitted.run_fixed_s == Assumptions().run_fixed_s
    assert used["state_write_gb_per_s"].startswith("coded value kept")


def test_calibration_keeps_constants_it_has_no_rows_for() -> None:
    cfg, dag = run_config()
    rows = [r for r in synthetic_run(cfg, dag, TRUE) if dag[r["job"]].kind in ("data", "zero_shot")]
    fitted, used = calibrate(rows, cfg, dag, Assumptions(), SHEARED_1P3B)
    assert fitted.hpo_fixed_s == Assumptions().hpo_fixed_s and "hpo_fixed_s" not in used
    assert fitted.cpu_s["data"] == TRUE.cpu_s["data"] and fitted.cpu_s["stats"] == Assumptions().cpu_s["stats"]


def test_plan_vs_measured_script_on_a_synthetic_file(tmp_path: Path, capsys) -> None:
    cfg, dag = run_config()
    rows = synthetic_run(cfg, dag, replace(Assumptions(), tokens_per_example=TRUE.tokens_per_example,
                                           split_sizes=TRUE.split_sizes))
    for r in rows:
        r["end_s"] = r["start_s"] + r["seconds"]
    path = tmp_path / "per_job_times.json"
    path.write_text(json.dumps({"machine": "synthetic", "config": RUN_OVERRIDES, "jobs": rows}))
    spec = importlib.util.spec_from_file_location("plan_vs_measured", REPO / "benchmarks" / "plan_vs_measured.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out_json = tmp_path / "out.json"
    import sys

    argv, sys.argv = sys.argv, ["plan_vs_measured.py", str(path), "--json", str(out_json)]
    try:
        assert script.main() == 0
    finally:
        sys.argv = argv
    printed = capsys.readouterr().out
    assert "| stage | jobs | measured s | predicted s | ratio | within ±30%? |" in printed
    doc = json.loads(out_json.read_text())
    # The file was made by the coded model (with the run's synthetic token lengths): every stage is predicted exactly.
    assert {t["stage"] for t in doc["stages"]} == {j.kind for j in dag}
    assert all(math.isclose(t["ratio"], 1.0, rel_tol=1e-6) and t["within"] for t in doc["stages"])


def test_training_shape_follows_the_loop() -> None:
    cfg, _ = run_config()
    model = CostModel(cfg, TRUE, SHEARED_1P3B)
    assert model.train_shape("mrpc") == (16, 1, 2)  # 256 / 16 = 16 steps; 1 validation; checkpoints at 8 and 16
    full = CostModel(load_config(STUDY, []), shape=SHEARED_1P3B)
    for task, epochs in (("mrpc", 3), ("squad_v2", 2)):
        per_epoch = len(epoch_batches([100] * full.size(task, "train"), 16, seed=0, epoch=0))  # the loop's batching
        total, every = epochs * per_epoch, round(per_epoch / 3)
        # train/loop.py validates (and checkpoints, checkpoint_every unset) at multiples of `every` and at the end.
        evals = sum(1 for step in range(1, total + 1) if step % every == 0 or step == total)
        assert full.train_shape(task) == (total, evals, evals)


def test_cost_parts_respond_to_their_settings() -> None:
    cfg, _ = run_config()
    base = CostModel(cfg, TRUE, SHEARED_1P3B)
    compiled = CostModel(cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": True})}), TRUE,
                         SHEARED_1P3B)
    assert compiled.train_run("mrpc", "lora")["compile"] == TRUE.compile_s["lora"]
    assert base.train_run("mrpc", "lora")["compile"] == 0.0
    # LoRA is evaluated unmerged (the slower floor), FT and the analysis stages on plain weights.
    assert base.eval_s("squad_v2", 64, "lora") > base.eval_s("squad_v2", 64, "base")
    # FT writes its checkpoints (GBs), LoRA a few MB.
    assert base.train_run("mrpc", "ft")["writes"] > 100 * base.train_run("mrpc", "lora")["writes"]
    assert SHEARED_1P3B.params == 1_345_423_360  # LlamaForCausalLM at this shape (ray_multigpu.py's model)
    other = CostModel(cfg, TRUE, replace(SHEARED_1P3B, layers=48))  # ~2.2 B parameters: slower per token
    assert other.train_run("mrpc", "ft")["tokens"] > 1.5 * base.train_run("mrpc", "ft")["tokens"]


def test_schedule_bounds_and_scaling_for_the_default_study() -> None:
    cfg = load_config(STUDY, [])
    dag = build_study_dag(cfg, Path("/nonexistent"))
    model = CostModel(cfg, shape=SHEARED_1P3B)
    seconds = {n: model.job_seconds(dag[n]) for n in dag.jobs}
    cold = model.a.node_cold_start_s
    work = sum(s for n, s in seconds.items() if dag[n].num_gpus)
    path = critical_path(dag, seconds)
    walls = []
    for g in (1, 2, 3, 4):
        sched = simulate(dag, seconds, g, cold_start_s=cold)
        wall = sched.makespan_s
        assert path <= wall <= path + work / g + (g + 1) * cold  # Graham, plus ≤ G + 1 cold starts
        assert math.isclose(sched.busy_s, work + cold * len({n for *_, n in sched.placement.values() if n is not None}))
        walls.append(wall)
    assert all(b <= a for a, b in zip(walls, walls[1:]))  # more GPUs never slower here
    # One GPU: the data jobs (in parallel), then every GPU job one after the other, then statistics and report.
    cpu = max(seconds["data-mrpc"], seconds["data-squad_v2"]) + seconds["stats"] + seconds["report"]
    assert math.isclose(walls[0], work + cold + cpu, rel_tol=1e-12)


def test_schedule_prefers_roles_and_spills_to_a_free_gpu() -> None:
    dag = Dag()
    for name, role in (("a", "vm1"), ("b", "vm1"), ("c", "vm2")):
        dag.add(name, "train", "x:y", role=role, num_gpus=1)
    seconds = {"a": 10.0, "b": 10.0, "c": 10.0}
    two = simulate(dag, seconds, 2)
    assert two.placement["a"][2] == 0 and two.placement["b"][2] == 1  # b spills to the idle vm2 GPU
    assert two.placement["c"][2] in (0, 1) and two.makespan_s == 20.0
    three = simulate(dag, seconds, 3, cold_start_s=1.0)
    # b, placed before c, spilled to the first idle GPU (vm2's); c then takes the third: all three at once.
    assert sorted(three.placement[n][2] for n in "abc") == [0, 1, 2]
    assert three.makespan_s == 11.0 and three.busy_s == 33.0  # each GPU's first job pays its cold start
    assert simulate(dag, seconds, 1).makespan_s == 30.0


def test_estimate_prints_words_not_reprs() -> None:
    cfg = load_config(STUDY, [])
    est = estimate(cfg, build_study_dag(cfg, Path("/nonexistent")))
    assert [g["gpus"] for g in est["gpu_counts"]] == [1, 2, 3]
    assert est["gpu_counts"][0]["wall_s"] >= est["gpu_counts"][1]["wall_s"] >= est["gpu_counts"][2]["wall_s"]
    assert math.isclose(est["total_gpu_hours"], sum(s["gpu_hours"] for s in est["stages"].values()))
    text = "\n".join(est["assumptions"])
    assert not re.search(r"[{}\[\]]|'\w+':|\bdict\(|Assumptions\(|\d\.\d{5,}", text), text
    assert "62,518" in text and "cold start" in text
    values = np.array([j["seconds"] for j in est["jobs"]])
    assert np.all(np.isfinite(values)) and np.all(values > 0)


def test_cli_plan_shows_gpu_counts_and_assumptions() -> None:
    from typer.testing import CliRunner

    from lorascope.cli.main import app

    result = CliRunner().invoke(app, ["plan", str(STUDY)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "The whole study on 1, 2 and 3 GPUs" in result.output and "GPU-hours held" in result.output
    assert "Cost model assumptions" in result.output and "Not modelled" in result.output
    as_json = CliRunner().invoke(app, ["plan", str(STUDY), "--json"])
    doc = json.loads(as_json.stdout)
    assert [g["gpus"] for g in doc["gpu_counts"]] == [1, 2, 3] and doc["critical_path_s"] > 0
