"""Assemble the report from a loaded results folder: the caveat, the missing-stages box, then the sections
in reading order (questions and the verdict first, then the evidence, then how to reproduce it)."""

from __future__ import annotations

from typing import Callable

from lorascope.errors import ReportError
from lorascope.report import sections_analysis as analysis
from lorascope.report import sections_intro as intro
from lorascope.report import sections_training as training
from lorascope.report import sections_verdict as concl
from lorascope.report.blocks import Report, Section
from lorascope.report.common import describe_missing, study_config

# (builder, the files it reads: named in the error when their content has an unexpected shape)
BUILDERS: tuple[tuple[Callable[[dict], Section], str], ...] = (
    (intro.questions, "stats/stats.json"),
    (concl.verdict, "stats/stats.json"),
    (intro.setup, "manifest.json"),
    (intro.flow, "the results folder"),
    (intro.data, "<task>/data_stats.json, <task>/leakage.json"),
    (training.sanity, "<task>/sanity/<method>/sanity.json"),
    (training.baselines, "<task>/baselines.json, <task>/zero_shot/results.json"),
    (training.hpo, "<task>/hpo/<method>/hpo.json"),
    (training.main_results, "stats/stats.json, <task>/runs/*/results.json"),
    (training.significance, "stats/stats.json"),
    (analysis.drift, "<task>/drift/drift.json"),
    (analysis.weights, "<task>/weights/weights.json"),
    (analysis.deployment, "serve/serve.json, stats/stats.json"),
    (concl.reproducibility, "manifest.json and the stage manifests"),
    (concl.limitations, "the results folder"),
)


def _section(builder: Callable[[dict], Section], sources: str, results: dict) -> Section:
    try:
        return builder(results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ReportError(f"{results['root']}: unexpected content in {sources} while building the "
                          f"'{builder.__name__}' section ({type(exc).__name__}: {exc})") from None


def build_report(results: dict) -> Report:
    cfg = study_config(results)
    name = cfg.get("name") or results["root"].name
    sections = [_section(b, src, results) for b, src in BUILDERS]
    return Report(title=f"lorascope study report — {name}", caveat=(cfg.get("output") or {}).get("note"),
                  missing=[describe_missing(m) for m in results["missing"]], sections=sections,
                  alerts=concl.validity_alerts(results))
