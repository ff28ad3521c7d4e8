"""SQuAD v2 readers (official JSON from a mirror, or ``rajpurkar/squad_v2`` hub records) and article splits.

Splits (§3), always grouped by article title so no context crosses splits:
- ``official``: train = official train minus a seeded 5% of its articles (= validation); test = dev.
- ``dev-only`` (mirror holding only the dev set): dev articles split 25/5/5 by title, seeded.
  Numbers on it are *not* comparable to published SQuAD v2 results; outputs must say so.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from lorascope.data.files import read_text, source_file
from lorascope.data.types import SquadExample, TaskData
from lorascope.errors import DataError

DEV_ONLY_NOTE = (
    "SQuAD v2 split 'dev-only': the mirror holds only the official dev set, split 25/5/5 articles by "
    "title; numbers on it are not comparable to published SQuAD v2 results."
)
DEV_FILES = ("dev-v2.0.json", "dev-v2.0.explorer-derived.json")
TRAIN_FILE = "train-v2.0.json"


def _qa_to_example(qa: Mapping, title: str, context: str, path: str, where: str) -> SquadExample:
    for key in ("id", "question", "answers"):
        if key not in qa:
            raise DataError(f"missing field {key!r}", path=path, row=where)
    if not isinstance(qa["id"], (str, int)) or str(qa["id"]).strip() == "":
        raise DataError("field 'id' must be a non-empty string", path=path, row=where)
    if not isinstance(qa["question"], str) or not qa["question"].strip():
        raise DataError("field 'question' must be a non-empty string", path=path, row=f"{where} (id={qa['id']})")
    if not isinstance(qa["answers"], list):  # null or a single object: unanswerable questions have []
        raise DataError(f"field 'answers' must be a list (unanswerable: []), got {type(qa['answers']).__name__}",
                        path=path, row=f"{where} (id={qa['id']})")
    texts, starts = [], []
    for j, ans in enumerate(qa["answers"]):
        if not isinstance(ans, Mapping) or "text" not in ans or "answer_start" not in ans:
            raise DataError(f"answers[{j}] needs 'text' and 'answer_start'", path=path, row=f"{where} (id={qa['id']})")
        text, start = ans["text"], ans["answer_start"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"answers[{j}].text must be a non-empty string", path=path, row=f"{where} (id={qa['id']})")
        if not isinstance(start, int) or context[start : start + len(text)] != text:
            found = context[start : start + len(text)] if isinstance(start, int) else None
            raise DataError(
                f"answers[{j}].answer_start={start!r} does not point at its text {text!r} "
                f"(context has {found!r} there)",
                path=path,
                row=f"{where} (id={qa['id']})",
            )
        texts.append(text)
        starts.append(start)
    if qa.get("is_impossible") is True and texts:
        raise DataError("is_impossible is true but answers are given", path=path, row=f"{where} (id={qa['id']})")
    return SquadExample(
        id=str(qa["id"]),
        title=title,
        context=context,
        question=qa["question"],
        answers=tuple(texts),
        answer_starts=tuple(starts),
    )


def parse_squad_json(tree: object, path: str) -> list[SquadExample]:
    """Validate the official SQuAD layout and flatten it to examples, naming the bad element on error."""
    if not isinstance(tree, Mapping) or not isinstance(tree.get("data"), list):
        raise DataError("expected a JSON object with a 'data' list (official SQuAD layout)", path=path)
    examples: list[SquadExample] = []
    seen: set[str] = set()
    for a, article in enumerate(tree["data"]):
        if (
            not isinstance(article, Mapping)
            or "title" not in article
            or not isinstance(article.get("paragraphs"), list)
        ):
            raise DataError("article needs 'title' and a 'paragraphs' list", path=path, row=f"data[{a}]")
        for p, para in enumerate(article["paragraphs"]):
            where_p = f"data[{a}].paragraphs[{p}]"
            if (
                not isinstance(para, Mapping)
                or not isinstance(para.get("context"), str)
                or not para["context"].strip()
                or not isinstance(para.get("qas"), list)
            ):
                raise DataError("paragraph needs a non-empty 'context' string and a 'qas' list", path=path, row=where_p)
            for q, qa in enumerate(para["qas"]):
                ex = _qa_to_example(qa, article["title"], para["context"], path, f"{where_p}.qas[{q}]")
                if ex.id in seen:
                    raise DataError(f"duplicate question id {ex.id!r}", path=path, row=f"{where_p}.qas[{q}]")
                seen.add(ex.id)
                examples.append(ex)
    return examples


def read_squad_json(path: Path) -> list[SquadExample]:
    text = read_text(path)
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON: {exc.msg}", path=str(path), row=f"line {exc.lineno} col {exc.colno}"
        ) from None
    return parse_squad_json(tree, str(path))


def records_to_examples(records: Iterable[Mapping], where: str) -> list[SquadExample]:
    """Hub records (``id, title, context, question, answers{text, answer_start}``) → examples."""
    out = []
    for i, rec in enumerate(records):
        try:
            answers = rec["answers"]
            qa = {
                "id": rec["id"],
                "question": rec["question"],
                "answers": [{"text": t, "answer_start": s} for t, s in zip(answers["text"], answers["answer_start"])],
            }
            out.append(_qa_to_example(qa, rec["title"], rec["context"], where, str(i)))
        except KeyError as exc:
            raise DataError(f"missing column {exc.args[0]!r}", path=where, row=i) from None
    return out


def group_titles(examples: list[SquadExample]) -> list[str]:
    """Titles in first-seen order (the file's article order)."""
    return list(dict.fromkeys(ex.title for ex in examples))


def _shuffled_titles(titles: list[str], seed: int) -> list[str]:
    # Sort first so the split depends on the set of titles and the seed, not the file's order.
    ordered = sorted(titles)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


def _select(examples: list[SquadExample], titles: set[str]) -> list[SquadExample]:
    return [ex for ex in examples if ex.title in titles]


def split_official(train: list[SquadExample], dev: list[SquadExample], val_fraction: float, seed: int) -> dict:
    titles = _shuffled_titles(group_titles(train), seed)
    n_val = max(1, math.ceil(val_fraction * len(titles)))
    val_titles = set(titles[:n_val])
    return {
        "train": [ex for ex in train if ex.title not in val_titles],
        "validation": _select(train, val_titles),
        "test": list(dev),
    }


def split_dev_only(dev: list[SquadExample], counts: tuple[int, int, int], seed: int, path: str) -> dict:
    titles = _shuffled_titles(group_titles(dev), seed)
    if sum(counts) > len(titles):
        raise DataError(
            f"dev-only split needs {sum(counts)} articles ({counts}), the file has {len(titles)}", path=path
        )
    n_tr, n_va, n_te = counts
    parts = titles[:n_tr], titles[n_tr : n_tr + n_va], titles[n_tr + n_va : n_tr + n_va + n_te]
    return {name: _select(dev, set(part)) for name, part in zip(("train", "validation", "test"), parts)}


def load_squad_mirror(
    data_dir: Path, val_fraction: float, dev_only_articles: tuple[int, int, int], seed: int
) -> TaskData:
    folder = data_dir / "squad_v2"
    dev_path = next((folder / n for n in DEV_FILES if (folder / n).is_file()), None)
    if dev_path is None:
        raise DataError(f"no SQuAD v2 dev file ({' or '.join(DEV_FILES)})", path=str(folder))
    dev = read_squad_json(dev_path)
    files = [source_file(dev_path)]
    train_path = folder / TRAIN_FILE
    if train_path.is_file():
        train = read_squad_json(train_path)
        files.append(source_file(train_path))
        splits = split_official(train, dev, val_fraction, seed)
        return TaskData(task="squad_v2", split_scheme="official", source="mirror", splits=splits, files=files)
    splits = split_dev_only(dev, dev_only_articles, seed, str(dev_path))
    titles = {name: group_titles(exs) for name, exs in splits.items()}
    return TaskData(
        task="squad_v2",
        split_scheme="dev-only",
        source="mirror",
        splits=splits,
        files=files,
        notes=[DEV_ONLY_NOTE],
        composition={"articles": titles},
    )


def load_squad_hub(dataset_dict: Mapping, val_fraction: float, seed: int) -> TaskData:
    train = records_to_examples(dataset_dict["train"], "hub:rajpurkar/squad_v2/train")
    dev = records_to_examples(dataset_dict["validation"], "hub:rajpurkar/squad_v2/validation")
    splits = split_official(train, dev, val_fraction, seed)
    return TaskData(task="squad_v2", split_scheme="official", source="hub", splits=splits)


def examples_to_official_json(examples: list[SquadExample]) -> dict:
    """Rebuild the official layout (for ``lorascope metrics squad-v2`` and the official script)."""
    articles: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for ex in examples:
        articles[ex.title][ex.context].append(
            {
                "id": ex.id,
                "question": ex.question,
                "is_impossible": ex.is_impossible,
                "answers": [{"text": t, "answer_start": s} for t, s in zip(ex.answers, ex.answer_starts)],
            }
        )
    return {
        "version": "v2.0",
        "data": [
            {"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
            for t, paras in articles.items()
        ],
    }
