"""The stage registry (study/stages/): one declaration per stage drives the DAG, the keys and the enforcement of
what a stage may read. The end-to-end CLI study run (tests/test_cli.py) runs every stage under that
enforcement, so a stage that reads an undeclared key fails there."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorascope.config import load_config
from lorascope.study.jobs import build_study_dag
from lorascope.study.stage import ConfigView, UndeclaredConfigRead, allowed
from lorascope.study.stages import BY_NAME, STAGES, flow

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    return load_config(REPO / "configs" / "demo.yaml", list(overrides))


def _keys(*overrides: str) -> dict[str, str]:
    return {j.name: j.key for j in build_study_dag(_cfg(*overrides))}


def test_a_changed_stats_confidence_reruns_drift():
    """The bug the registry removes: drift read ``stats.confidence`` (its seed bands and reduction interval) while
    its key covered only ``drift``, so ``lorascope run`` skipped it and drift.json kept the old intervals."""
    base, changed = _keys(), _keys("stats.confidence=0.9")
    assert all(base[n] != changed[n] for n in base if n.startswith(("drift-", "stats", "report")))
    assert all(base[n] == changed[n] for n in base if n.startswith(("train-", "weights-", "serve", "data-")))


def test_a_stage_cannot_read_what_it_does_not_declare():
    cfg = _cfg()
    view = ConfigView(cfg, BY_NAME["drift"].reads, "drift")
    assert view.drift.batch_size == cfg.drift.batch_size and view.stats.confidence == cfg.stats.confidence
    assert view.model.name_or_path == cfg.model.name_or_path  # "training" covers the model
    with pytest.raises(UndeclaredConfigRead, match=r"stage 'drift' read stats\.equivalence_margin"):
        _ = view.stats.equivalence_margin
    with pytest.raises(UndeclaredConfigRead, match=r"serve\.requests"):
        _ = view.serve.requests
    assert view.train.strategy == cfg.train.strategy  # execution-only keys are free (they are in no key)
    assert view.model_dump() == cfg.model_dump()  # recording the config in a manifest is not reading it
    data_view = ConfigView(cfg, BY_NAME["data"].reads, "data")
    with pytest.raises(UndeclaredConfigRead, match=r"lora\.r"):
        _ = data_view.lora.r  # the data stage's key ignores LoRA: it must not read it


def test_declarations_are_consistent():
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    for i, stage in enumerate(STAGES):
        earlier = set(names[:i]) | {"*"}
        assert all(a.stage in earlier for a in stage.after), stage.name  # the order is a topological order
        for sel in stage.reads:
            assert sel == "training" or allowed((sel,), sel), sel
    cfg = _cfg()
    dag = build_study_dag(cfg)
    assert {j.kind for j in dag} == {s.name for s in STAGES if s.include(cfg)}
    diagram = flow(cfg)
    assert [n["name"] for n in diagram] == [s.name for s in STAGES if s.include(cfg)]
    plan_roles = {j.kind: j.role for j in dag}
    for node in diagram:  # the diagram's roles are the plan's
        if node["name"] not in ("sanity", "train"):
            assert node["role"] == plan_roles[node["name"]]
        else:
            assert node["role"] == "vm1 FT · vm2 LoRA"


def test_an_ft_only_study_has_no_serving_job():
    assert "serve" not in {j.kind for j in build_study_dag(_cfg("train.methods=[ft]"))}
