"""``build_study_dag``: the study's jobs (§14), derived from the stage declarations (``study/stages/``).

For each included stage in order, one job per ``fan_out`` entry; its dependencies are the jobs of the stages it
comes ``after`` whose params match (``After.match``, ``After.where``; ``EVERYTHING_BEFORE`` = every job so far);
its key hashes its name, kind, params, the config the stage declares it reads (``stage.relevant_hash``) and the
keys of its dependencies — so a config change invalidates exactly the jobs that read it and their descendants.
"""

from __future__ import annotations

from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.study.dag import Dag
from lorascope.study.stage import EVERYTHING_BEFORE, relevant_hash
from lorascope.study.stages import included


def _deps(dag: Dag, stage, params: dict, cfg: StudyConfig) -> list[str]:
    names: list[str] = []
    for dep in stage.after:
        if dep.stage == EVERYTHING_BEFORE:
            names += [j.name for j in dag.topological()]
            continue
        for job in dag.by_kind().get(dep.stage, []):
            if all(job.params.get(k) == params.get(k) for k in dep.match) and (
                    dep.where is None or dep.where(params, job.params, cfg)):
                names.append(job.name)
    return names


def build_study_dag(cfg: StudyConfig, out_dir: str | Path | None = None) -> Dag:
    """The whole study as a DAG. ``out_dir`` is where it will run; it is part of no key (a moved study keeps them)."""
    dag = Dag()
    for stage in included(cfg):
        relevant = relevant_hash(cfg, stage.reads)
        for params in stage.fan_out(cfg):
            deps = _deps(dag, stage, params, cfg)
            if stage.after and not deps:
                continue  # nothing to work on (e.g. weights in a study without FT or LoRA runs)
            dag.add(stage.job_name(params), stage.name, stage.fn, params=params, deps=deps,
                    role=stage.role_of(params), num_gpus=stage.gpus, relevant=relevant)
    return dag
