"""MRPC (GLUE) readers: GLUE/MSRP TSV from a mirror, or ``nyu-mll/glue`` records from the hub.

Splits (§3): train = GLUE train (3,668), validation = GLUE dev (408), test = MSRP test (1,725, labels
public in ``msr_paraphrase_test.txt``). The files have no quoting (sentences contain bare ``"``), so
lines are split on tabs, never parsed with csv quoting rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from lorascope.data.files import read_text, source_file
from lorascope.data.types import MrpcExample, TaskData
from lorascope.errors import DataError

HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
MIRROR_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "msr_paraphrase_test.txt"}


def read_mrpc_tsv(path: Path) -> list[MrpcExample]:
    """Read a labelled GLUE/MSRP TSV. Every row error names the file and its 1-based line number."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError("empty file (expected a header row)", path=str(path))
    header = tuple(lines[0].rstrip("\r").split("\t"))
    missing = [c for c in HEADER if c not in header]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; the header has {', '.join(header)}", path=str(path),
                        row="line 1")
    col = {name: header.index(name) for name in HEADER}
    examples = []
    first_line: dict[str, int] = {}  # pair id → line, so a repeated row is an error (ids key predictions)
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"expected {len(header)} tab-separated fields, got {len(fields)}", path=str(path), row=f"line {lineno}"
            )
        label_text = fields[col["Quality"]].strip()
        if label_text not in ("0", "1"):
            raise DataError(
                f"bad label {label_text!r} in column 'Quality' (expected 0 or 1)", path=str(path), row=f"line {lineno}"
            )
        s1, s2 = fields[col["#1 String"]], fields[col["#2 String"]]
        if not s1.strip() or not s2.strip():
            raise DataError("empty sentence", path=str(path), row=f"line {lineno}")
        pair_id = f"{fields[col['#1 ID']].strip()}-{fields[col['#2 ID']].strip()}"
        if pair_id in first_line:
            raise DataError(
                f"duplicate pair {pair_id} (first at line {first_line[pair_id]}): example ids must be unique",
                path=str(path),
                row=f"line {lineno}",
            )
        first_line[pair_id] = lineno
        examples.append(MrpcExample(id=pair_id, sentence1=s1, sentence2=s2, label=int(label_text)))
    return examples


def load_mrpc_mirror(data_dir: Path) -> TaskData:
    folder = data_dir / "mrpc"
    splits, files = {}, []
    for split, name in MIRROR_FILES.items():
        path = folder / name
        splits[split] = read_mrpc_tsv(path)
        files.append(source_file(path))
    return TaskData(task="mrpc", split_scheme="official", source="mirror", splits=splits, files=files)


def records_to_examples(records: Iterable[Mapping], where: str) -> list[MrpcExample]:
    """Hub records (``sentence1, sentence2, label, idx``) → examples. Labels must be 0/1."""
    out, seen = [], set()
    for i, rec in enumerate(records):
        try:
            s1, s2, label, idx = rec["sentence1"], rec["sentence2"], rec["label"], rec["idx"]
        except KeyError as exc:
            raise DataError(f"missing column {exc.args[0]!r}", path=where, row=i) from None
        if label not in (0, 1):
            raise DataError(f"bad label {label!r} (expected 0 or 1)", path=where, row=i)
        if f"glue-{idx}" in seen:
            raise DataError(f"duplicate idx {idx}", path=where, row=i)
        seen.add(f"glue-{idx}")
        out.append(MrpcExample(id=f"glue-{idx}", sentence1=s1, sentence2=s2, label=int(label)))
    return out


def load_mrpc_hub(dataset_dict: Mapping, test_labels_dir: Path | None) -> TaskData:
    """GLUE on the hub hides test labels (-1), so the test split comes from the MSRP file when given."""
    splits = {
        "train": records_to_examples(dataset_dict["train"], "hub:nyu-mll/glue/mrpc/train"),
        "validation": records_to_examples(dataset_dict["validation"], "hub:nyu-mll/glue/mrpc/validation"),
    }
    files = []
    if test_labels_dir is None:
        raise DataError(
            "MRPC test labels are not on the hub (GLUE hides them); give --data-dir with mrpc/msr_paraphrase_test.txt"
        )
    path = test_labels_dir / "mrpc" / MIRROR_FILES["test"]
    splits["test"] = read_mrpc_tsv(path)
    files.append(source_file(path))
    return TaskData(task="mrpc", split_scheme="official", source="hub", splits=splits, files=files)
