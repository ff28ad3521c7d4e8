"""Plain data types shared by every stage. Examples are immutable; a task's data is a dict of splits.

Split names are always ``train``, ``validation`` and ``test``. ``split_scheme`` says how they were made
(STUDY.md §3): ``official`` (MRPC: GLUE train / GLUE dev / MSRP test; SQuAD v2: train minus 5% of its
articles / those articles / official dev) or ``dev-only`` (SQuAD v2 mirror holding only the dev set,
split 25/5/5 articles by title). The scheme name must travel with every number built on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

TaskName = Literal["mrpc", "squad_v2"]
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class MrpcExample:
    """One sentence pair. ``label`` is 1 for paraphrase, 0 otherwise; ``id`` is ``"{id1}-{id2}"``."""

    id: str
    sentence1: str
    sentence2: str
    label: int


@dataclass(frozen=True)
class SquadExample:
    """One SQuAD v2 question. ``answers`` are the gold texts (empty tuple = unanswerable).

    ``answer_starts[i]`` is the character offset of ``answers[i]`` in ``context``.
    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]

    @property
    def is_impossible(self) -> bool:
        return len(self.answers) == 0


Example = Union[MrpcExample, SquadExample]


@dataclass(frozen=True)
class SourceFile:
    """A file an example set was read from, with its SHA-256 (recorded in manifests, §13)."""

    path: str
    sha256: str
    bytes: int


@dataclass
class TaskData:
    """The three splits of one task plus where they came from.

    ``source`` is ``"hub"`` or ``"mirror"``; ``files`` lists the mirror files read (empty for hub);
    ``notes`` holds facts a reader of any result must see (e.g. that dev-only numbers are not
    comparable to published ones).
    """

    task: TaskName
    split_scheme: Literal["official", "dev-only"]
    source: Literal["hub", "mirror"]
    splits: dict[str, list]
    files: list[SourceFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    composition: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> list:
        return self.splits[split]

    def sizes(self) -> dict[str, int | str]:
        """Split sizes; a held-out split (unreadable during HPO) is reported as ``"held out"``."""
        return {name: "held out" if getattr(self.splits[name], "held_out", False) else len(self.splits[name])
                for name in SPLITS}

    def describe(self) -> dict:
        """What every output built on this data carries: task, split scheme, source, sizes."""
        return {
            "task": self.task,
            "split_scheme": self.split_scheme,
            "source": self.source,
            "sizes": self.sizes(),
            "notes": list(self.notes),
        }
