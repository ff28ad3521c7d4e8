"""The study report (issue 6): a golden-file test on a fixed synthetic results folder, missing stages, corrupt
files, the no-network property of the HTML, the stage's manifest and the CLI.

The fixture is ``tests/golden/report/results/`` (small, synthetic JSON files; its PNG figures are 1×1 images
made here). The golden files are ``tests/golden/report/report.md`` and ``report.html.norm`` (the HTML with
every base64 payload and ISO timestamp replaced by a placeholder). After an intended change to the report,
regenerate them and review the diff:

    LORASCOPE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py -k golden
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lorascope.cli import folder_cmds
from lorascope.config.schema import StudyConfig
from lorascope.errors import LorascopeError, ReportError
from lorascope.report.load import SERVE_FIGURES, TASK_FIGURES
from tests.conftest import run_stage

GOLDEN = Path(__file__).parent / "golden" / "report"
TASKS = ("mrpc", "squad_v2")
UPDATE = os.environ.get("LORASCOPE_UPDATE_GOLDEN") == "1"


def _png(rgb: tuple[int, int, int]) -> bytes:
    """A valid 1×1 RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" + bytes(rgb))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A copy of the synthetic results folder, with every figure present as a tiny PNG."""
    root = tmp_path / "golden"
    shutil.copytree(GOLDEN / "results", root)
    rels = [f"{t}/{rel}" for t in TASKS for rel in TASK_FIGURES.values()] + list(SERVE_FIGURES.values())
    for i, rel in enumerate(sorted(rels)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png((i * 10 % 256, 100, 200)))
    return root


def write_report(root: Path, cfg: StudyConfig | None = None) -> Path:
    """The report of ``root`` with the study's stage declarations (what the report stage renders)."""
    from lorascope.report.write import write_report as write
    from lorascope.study.stages import declared_sections, flow

    given = cfg
    cfg = cfg or StudyConfig()
    return write(root, declared_sections(cfg), flow=flow(cfg), config=given.model_dump(mode="json") if given else None,
                 tasks=list(given.data.tasks) if given else None)


def normalise_html(html: str) -> str:
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,<PAYLOAD>", html)
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?", "<TIMESTAMP>", html)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with LORASCOPE_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from the golden file; if the change is intended, regenerate with LORASCOPE_UPDATE_GOLDEN=1")


def test_golden_report(results: Path):
    html_path = write_report(results)
    assert html_path == results / "report" / "report.html"
    md = (results / "report" / "report.md").read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    _check_golden("report.md", md)
    _check_golden("report.html.norm", normalise_html(html))
    assert (results / "report" / "study_flow.svg").read_text().startswith("<svg")
    # every figure is embedded, and the Markdown twin points at the files relative to report/
    assert html.count("data:image/png;base64,") == len(TASKS) * len(TASK_FIGURES) + len(SERVE_FIGURES)
    assert "](../mrpc/drift/figures/similarity_mean.png)" in md


def test_sanity_text_states_the_settings_the_study_ran_with(results: Path):
    manifest = json.loads((results / "manifest.json").read_text())
    manifest["config"]["sanity"] = {"n_examples": 4, "max_steps": 150, "loss_threshold": 0.0005}
    (results / "manifest.json").write_text(json.dumps(manifest))
    md = (write_report(results).parent / "report.md").read_text(encoding="utf-8")
    assert "trains on 4 training examples until the loss on targets ≤ 0.0005 or 150 steps" in md
    assert "all 4 right" in md


def test_report_is_deterministic(results: Path):
    first = write_report(results).read_bytes()
    md = (results / "report" / "report.md").read_bytes()
    assert write_report(results).read_bytes() == first
    assert (results / "report" / "report.md").read_bytes() == md


def test_verdict_badges_and_content(results: Path):
    md = (write_report(results).parent / "report.md").read_text(encoding="utf-8")
    assert "| mrpc | **✔ passed** | **✔ met** | **✔ met** | **✔ met** | **✔ met** |" in md
    # the gate failed for SQuAD: not assessable whatever A, B and C say, and so is the study
    assert (
        "| squad_v2 | **⊘ not assessable** | **✔ met** | **✘ not met** | **? inconclusive** | **⊘ not assessable** |"
        in md
    )
    assert "| all tasks |  |  |  |  | **⊘ not assessable** |" in md
    # ... and the report says so first, with the numbers, before its contents
    first = md.index("> **⊘ squad_v2: not assessable")
    assert first < md.index("## Contents") and "always_no_answer 50.07" in md[first : md.index("## Contents")]
    assert "> **Caveat:** Synthetic fixture" in md
    assert "dev-only" in md and "2 seeds (protocol: 5" in md
    assert "Missing stages" not in md


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action") and value is not None:
                self.refs.append((tag, name, value))


def test_html_needs_no_network(results: Path):
    html = write_report(results).read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(html)
    assert parser.refs, "the parser found no references at all"
    for tag, name, value in parser.refs:
        assert not re.match(r"^\s*(https?:)?//", value, re.I), f"<{tag} {name}={value[:60]}> needs the network"
        if tag == "img":
            assert value.startswith("data:image/png;base64,")
        if tag == "a":
            assert value.startswith("#"), value
    assert not re.search(r"<(link|script)\b", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "@import" not in html


MISSING = {  # stage name in the report → what to delete from the results folder
    "drift": [f"{t}/drift" for t in TASKS],
    "serve": ["serve"],
    "stats": ["stats"],
    "weights": [f"{t}/weights" for t in TASKS],
    "training": [f"{t}/runs" for t in TASKS],
    "sanity": [f"{t}/sanity" for t in TASKS],
    "manifest": ["manifest.json"],
}


@pytest.mark.parametrize("stage", sorted(MISSING))
def test_each_missing_stage_is_named(results: Path, stage: str):
    for rel in MISSING[stage]:
        path = results / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    md = (write_report(results).parent / "report.md").read_text(encoding="utf-8")
    box = md.split("## Contents")[0]
    assert "> **Missing stages**" in box
    assert re.search(rf"^> - {stage}\b", box, re.M), box
    if stage != "manifest":
        assert "> **Missing stages for this section**" in md
    html = (results / "report" / "report.html").read_text(encoding="utf-8")
    assert "∅ incomplete" in html


def test_empty_results_folder_still_renders(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    md = (write_report(tmp_path / "empty").parent / "report.md").read_text(encoding="utf-8")
    for stage in ("manifest", "data", "serve", "stats"):
        assert re.search(rf"^> - {stage}\b", md, re.M), stage


def test_config_tasks_used_when_the_folder_has_no_manifest(results: Path):
    (results / "manifest.json").unlink()
    shutil.rmtree(results / "squad_v2")
    md = (write_report(results, StudyConfig()).parent / "report.md").read_text(encoding="utf-8")
    assert re.search(r"^> - data \(squad_v2\): squad_v2/data_stats.json not found", md, re.M)


@pytest.mark.parametrize(
    "rel,content",
    [("stats/stats.json", '{"tasks": '), ("mrpc/drift/drift.json", "[1, 2]"), ("serve/serve.json", "\x00\x01")],
)
def test_corrupt_json_names_the_file(results: Path, rel: str, content: str):
    (results / rel).write_text(content)
    with pytest.raises(ReportError, match=re.escape(str(results / rel))):
        write_report(results)
    assert issubclass(ReportError, LorascopeError)


def test_unexpected_shape_is_a_report_error(results: Path):
    stats = json.loads((results / "stats" / "stats.json").read_text())
    stats["tasks"]["mrpc"]["tests"] = [{"effect_sizes": 5}]
    (results / "stats" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ReportError, match=r"stats/stats\.json.*significance"):
        write_report(results)


def test_report_stage_writes_under_a_manifest(results: Path):
    from lorascope.results.config import folder_config

    (outcome,) = run_stage(folder_config(results), results, "report")
    man = json.loads((results / "report" / "manifest.json").read_text())
    assert (results / outcome["result"]["path"]).is_file() and man["status"] == "completed"
    assert man["command"] == "report" and man["identity"] == outcome["key"]
    assert sorted(man["outputs"]) == ["../summary.md", "report.html", "report.md", "study_flow.svg"]
    summary = (results / "summary.md").read_text()
    assert "not assessable" in summary and "Verdict" in summary  # the short version: the answer and the results


def test_cli(results: Path, tmp_path: Path):
    app = typer.Typer()
    folder_cmds.register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer from collapsing the group
    res = CliRunner().invoke(app, ["report", str(results)])
    assert res.exit_code == 0, res.output
    assert (results / "report" / "report.html").is_file()
    # the report names its own invocation, recorded as completed by the time the reader opens it
    md = (results / "report" / "report.md").read_text(encoding="utf-8")
    assert "Invocations of" in md and "running" not in md
    (results / "stats" / "stats.json").write_text("not json")
    res = CliRunner().invoke(app, ["report", str(results)])
    assert res.exit_code == 2 and "stats.json" in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "results folder not found" in res.output


def test_departure_values_read_as_words():
    from lorascope.report.sections_verdict import _value

    assert _value({"mrpc": {"train": 2048, "validation": None, "test": None}}) == (
        "mrpc train 2048, validation whole, test whole")
    assert _value({}) == "full splits" and _value(None) == "default"
