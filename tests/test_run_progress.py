"""``lorascope run`` writing to a file (not a terminal): one readable line per job event."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console
from rich.progress import Progress

from lorascope.cli.run_cmd import StudyProgress


def test_a_redirected_log_gets_one_aligned_line_per_job_event():
    out = io.StringIO()
    bar = Progress(console=Console(file=out, force_terminal=False, width=120))
    progress = StudyProgress(bar, total=2)
    job = SimpleNamespace(name="hpo-mrpc-ft", role="vm2")
    for event in ("started", "completed"):
        progress.event(event, job, None)
    other = SimpleNamespace(name="train-mrpc-lora-r0", role="vm2")
    progress.event("cancelled", other, None)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines() if line.strip()]
    assert lines[0] == "started   hpo-mrpc-ft (vm2)"
    assert lines[1].startswith("completed hpo-mrpc-ft in ") and lines[1].endswith(" s")
    assert lines[2] == "cancelled train-mrpc-lora-r0"
    assert progress.counts["completed"] == 1 and progress.counts["cancelled"] == 1
