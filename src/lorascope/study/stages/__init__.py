"""The study's stages, in order: the one declaration each stage makes (``study/stage.py``), from which the DAG,
the job keys, the plan, the flow diagram, the ingesters and the report's section order are derived.

Adding a stage: its library code (the computation), a file here with its ``STAGE`` (and its place in
``STAGES``), and its report section (``report/build.py``'s ``SECTIONS`` and a builder).
"""

from __future__ import annotations

from lorascope.config.schema import StudyConfig
from lorascope.study.stage import Stage, describe
from lorascope.study.stages import data, drift, hpo, report, sanity, serve, stats, train, weights, zero_shot

STAGES: tuple[Stage, ...] = (data.STAGE, sanity.STAGE, zero_shot.STAGE, hpo.STAGE, train.STAGE, drift.STAGE,
                             weights.STAGE, serve.STAGE, stats.STAGE, report.STAGE)
BY_NAME = {s.name: s for s in STAGES}


def included(cfg: StudyConfig) -> list[Stage]:
    return [s for s in STAGES if s.include(cfg)]


def declared_sections(cfg: StudyConfig) -> list[str]:
    return [name for s in included(cfg) for name in s.report]


def flow(cfg: StudyConfig) -> list[dict]:
    """The included stages as plain data, with each stage's role in words (as ``lorascope plan`` shows it)."""
    out = []
    for s in included(cfg):
        d = describe(s)
        if not isinstance(s.role, str):
            d["role"] = " · ".join(f"{s.role({'method': m})} {m.upper() if m == 'ft' else 'LoRA'}"
                                   for m in cfg.train.methods if m != "lora_qv")
        out.append(d)
    return out
