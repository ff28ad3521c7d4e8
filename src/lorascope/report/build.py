"""Assemble the report from a loaded results folder: the caveat and the validity alerts, the missing-stages box,
then the sections in reading order — the question and the answer first (questions, verdict), how the study
ran (setup, flow), the evidence in the order of the study's stages (each stage declares the sections it feeds:
``study/stages/``), and how to reproduce it (reproducibility, limitations)."""

from __future__ import annotations

from typing import Callable, Sequence

from lorascope.errors import ReportError
from lorascope.report import sections_analysis as analysis
from lorascope.report import sections_intro as intro
from lorascope.report import sections_training as training
from lorascope.report import sections_verdict as concl
from lorascope.report.blocks import Report, Section
from lorascope.report.common import describe_missing, study_config

# id → (builder, the files it reads: named in the error when their content has an unexpected shape)
SECTIONS: dict[str, tuple[Callable[[dict], Section], str]] = {
    "questions": (intro.questions, "stats/stats.json"),
    "verdict": (concl.verdict, "stats/stats.json"),
    "setup": (intro.setup, "manifest.json"),
    "flow": (intro.flow, "the study's stage declarations"),
    "data": (intro.data, "<task>/data_stats.json, <task>/leakage.json"),
    "sanity": (training.sanity, "<task>/sanity/<method>/sanity.json"),
    "baselines": (training.baselines, "<task>/baselines.json, <task>/zero_shot/results.json"),
    "hpo": (training.hpo, "<task>/hpo/<method>/hpo.json"),
    "results": (training.main_results, "stats/stats.json, <task>/runs/*/results.json"),
    "significance": (training.significance, "stats/stats.json"),
    "drift": (analysis.drift, "<task>/drift/drift.json"),
    "weights": (analysis.weights, "<task>/weights/weights.json"),
    "deployment": (analysis.deployment, "serve/serve.json, stats/stats.json"),
    "reproducibility": (concl.reproducibility, "manifest.json and the stage manifests"),
    "limitations": (concl.limitations, "the results folder"),
}
OPENING = ("questions", "verdict", "setup", "flow")
CLOSING = ("reproducibility", "limitations")


def section_order(stage_sections: Sequence[str]) -> list[str]:
    """The opening, then the stages' sections in stage order (first mention wins), then the closing."""
    middle = [s for s in dict.fromkeys(stage_sections) if s not in OPENING + CLOSING]
    unknown = [s for s in middle if s not in SECTIONS]
    if unknown:
        raise ReportError(f"a stage declares report section(s) the report does not know: {', '.join(unknown)}")
    return [*OPENING, *middle, *CLOSING]


def build_section(name: str, results: dict) -> Section:
    builder, sources = SECTIONS[name]
    try:
        return builder(results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ReportError(f"{results['root']}: unexpected content in {sources} while building the "
                          f"'{builder.__name__}' section ({type(exc).__name__}: {exc})") from None


def build_report(results: dict, stage_sections: Sequence[str]) -> Report:
    cfg = study_config(results)
    name = cfg.get("name") or results["root"].name
    sections = [build_section(s, results) for s in section_order(stage_sections)]
    return Report(title=f"lorascope study report — {name}", caveat=(cfg.get("output") or {}).get("note"),
                  missing=[describe_missing(m) for m in results["missing"]], sections=sections,
                  alerts=concl.validity_alerts(results))
