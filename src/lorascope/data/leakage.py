"""Leakage checks between every pair of splits (§3).

Errors: an identical (normalized) MRPC pair — order of the two sentences ignored — in two splits;
a SQuAD article title or context in two splits (splits are by article, so either means the split is
broken). Counted and reported, not errors: shared single MRPC sentences and shared SQuAD questions
(short generic questions recur across unrelated articles).
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from lorascope.data.types import SPLITS, TaskData
from lorascope.errors import LeakageError

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: differences no reader would call a different text."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _keys(data: TaskData, split: str) -> dict[str, set]:
    exs = data.splits[split]
    if data.task == "mrpc":
        sentences = {normalize_text(s) for ex in exs for s in (ex.sentence1, ex.sentence2)}
        pairs = {tuple(sorted((normalize_text(ex.sentence1), normalize_text(ex.sentence2)))) for ex in exs}
        return {"pairs": pairs, "sentences": sentences}
    return {
        "titles": {normalize_text(ex.title) for ex in exs},
        "contexts": {normalize_text(ex.context) for ex in exs},
        "questions": {normalize_text(ex.question) for ex in exs},
    }


FATAL = {"mrpc": ("pairs",), "squad_v2": ("titles", "contexts")}


def check_leakage(data: TaskData, raise_on_error: bool = True, max_examples: int = 3) -> dict:
    """Overlap counts for every split pair. Raises ``LeakageError`` on fatal overlaps unless told not to."""
    keys = {split: _keys(data, split) for split in SPLITS}
    report: dict = {"task": data.task, "split_scheme": data.split_scheme, "pairs": {}, "fatal": []}
    for a, b in itertools.combinations(SPLITS, 2):
        entry = {}
        for kind in keys[a]:
            shared = keys[a][kind] & keys[b][kind]
            entry[kind] = {
                "count": len(shared),
                "examples": [str(x)[:160] for x in sorted(shared, key=str)[:max_examples]],
            }
            if shared and kind in FATAL[data.task]:
                report["fatal"].append(f"{len(shared)} identical {kind} in {a} and {b}")
        report["pairs"][f"{a}/{b}"] = entry
    report["ok"] = not report["fatal"]
    if raise_on_error and report["fatal"]:
        raise LeakageError(f"{data.task} ({data.split_scheme}) leakage: " + "; ".join(report["fatal"]))
    return report
