"""SQuAD 2.0 exact match and F1, with the definitions of the official evaluation script.

The official script is ``evaluate-v2.0.py`` by Rajpurkar et al., distributed with SQuAD 2.0
(https://rajpurkar.github.io/SQuAD-explorer/, repository rajpurkar/SQuAD-explorer). Every scoring
definition here follows it exactly -- ``normalize_answer``, ``get_tokens``, ``compute_exact``,
``compute_f1``, the gold-answer filter in ``get_raw_scores``, ``make_qid_to_has_ans``,
``make_eval_dict`` and ``merge_eval`` -- including its arithmetic and summation order, so the
returned numbers are bit-identical to the official script's (tests compare them). The no-answer
probability threshold is not supported (the official default, 1.0, is a no-op).

Deliberate differences, all of which make the script refuse instead of silently mis-scoring:
a question without a prediction, a prediction for an id not in the data, a non-string prediction,
duplicate question ids and an empty dataset raise :class:`~lorascope.errors.MetricInputError`
(the official script prints "Missing prediction" and scores only the questions it has).
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorascope.data.types import SquadExample
from lorascope.errors import MetricInputError

__all__ = [
    "normalize_answer",
    "get_tokens",
    "compute_exact",
    "compute_f1",
    "gold_answers",
    "per_question_scores",
    "evaluate_official",
    "evaluate_examples",
    "load_predictions",
    "load_dataset_json",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)  # ASCII only: unicode quotes such as “ ” ‘ ’ are kept
_MAX_IDS_SHOWN = 5


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official order:
    lower -> remove ASCII punctuation -> replace whole-word a/an/the by a space -> split/join)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def get_tokens(s: str) -> list[str]:
    """Tokens of the normalized answer; ``[]`` for the empty string (official ``get_tokens``)."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the normalized strings are equal, else 0 (official ``compute_exact``)."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-level F1 over normalized tokens (official ``compute_f1``).

    If either side has no tokens (no-answer), F1 is 1 if both have none, else 0. The arithmetic
    (precision, recall, then 2PR/(P+R)) is the official one, so results match it bit for bit.
    """
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def gold_answers(texts: Iterable[str]) -> list[str]:
    """The gold texts whose normalized form is non-empty, or ``[""]`` (the only correct answer to an
    unanswerable question) if there is none -- as in the official ``get_raw_scores``."""
    golds = [t for t in texts if normalize_answer(t)]
    return golds or [""]


def _show(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(q) for q in ids[:_MAX_IDS_SHOWN])
    more = f" (+{len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return shown + more


def _check_predictions(qids: Sequence[str], preds: Mapping[str, str]) -> None:
    if not isinstance(preds, Mapping):
        raise MetricInputError(f"predictions must be a mapping id -> answer text, got {type(preds).__name__}")
    known = set(qids)
    missing = [q for q in qids if q not in preds]
    if missing:
        raise MetricInputError(f"{len(missing)} of {len(qids)} questions have no prediction: {_show(missing)}")
    extra = [q for q in preds if q not in known]
    if extra:
        raise MetricInputError(f"{len(extra)} predictions have ids not in the data: {_show(extra)}")
    bad = [q for q in qids if not isinstance(preds[q], str)]
    if bad:
        kinds = ", ".join(f"{q!r}: {type(preds[q]).__name__}" for q in bad[:_MAX_IDS_SHOWN])
        raise MetricInputError(f"{len(bad)} predictions are not strings ({kinds})")


def per_question_scores(
    gold: Mapping[str, Sequence[str]], preds: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question (exact, f1): exact in {0.0, 1.0}, f1 in [0, 1], max over the gold answers.

    ``gold`` maps question id to its raw gold texts (empty = unanswerable); the official filter
    :func:`gold_answers` is applied. Dicts keep ``gold``'s order. Every question needs a string
    prediction and every prediction a question, else :class:`MetricInputError`.
    """
    qids = list(gold)
    if not qids:
        raise MetricInputError("no questions to score")
    _check_predictions(qids, preds)
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid in qids:
        golds = gold_answers(gold[qid])
        a_pred = preds[qid]
        exact[qid] = float(max(compute_exact(a, a_pred) for a in golds))
        f1[qid] = float(max(compute_f1(a, a_pred) for a in golds))
    return exact, f1


def _eval_dict(exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]) -> OrderedDict:
    # Official make_eval_dict: sums in the given order, then 100.0 * sum / total.
    total = len(qids)
    return OrderedDict(
        [
            ("exact", 100.0 * sum(exact[k] for k in qids) / total),
            ("f1", 100.0 * sum(f1[k] for k in qids) / total),
            ("total", total),
        ]
    )


def _summarize(gold: Mapping[str, Sequence[str]], has_ans: Mapping[str, bool], preds: Mapping[str, str]) -> OrderedDict:
    exact, f1 = per_question_scores(gold, preds)
    out = _eval_dict(exact, f1, list(exact))
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        subset = [q for q, v in has_ans.items() if v is want]
        if subset:  # the official script omits an empty subset's keys
            for k, v in _eval_dict(exact, f1, subset).items():
                out[f"{prefix}_{k}"] = v
    return out


def _where(path: str | Path | None) -> str:
    return f"{path}: " if path is not None else ""


def _gold_from_json(dataset_json: Any, path: str | Path | None = None) -> tuple[dict[str, list[str]], dict[str, bool]]:
    """Walk the official layout, checking its shape; return gold texts and has_ans per id."""
    w = _where(path)
    if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("data"), list):
        raise MetricInputError(f'{w}expected a JSON object with a "data" list (official SQuAD layout)')
    gold: dict[str, list[str]] = {}
    has_ans: dict[str, bool] = {}
    for i, article in enumerate(dataset_json["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
        if not isinstance(paragraphs, list):
            raise MetricInputError(f'{w}data[{i}] must be an object with a "paragraphs" list')
        for j, para in enumerate(paragraphs):
            qas = para.get("qas") if isinstance(para, Mapping) else None
            if not isinstance(qas, list):
                raise MetricInputError(f'{w}data[{i}].paragraphs[{j}] must be an object with a "qas" list')
            for k, qa in enumerate(qas):
                loc = f"data[{i}].paragraphs[{j}].qas[{k}]"
                if not isinstance(qa, Mapping) or not isinstance(qa.get("id"), str):
                    raise MetricInputError(f'{w}{loc} must be an object with a string "id"')
                answers = qa.get("answers")
                if not isinstance(answers, list) or not all(
                    isinstance(a, Mapping) and isinstance(a.get("text"), str) for a in answers
                ):
                    raise MetricInputError(f'{w}{loc} (id {qa["id"]!r}): "answers" must be a list of {{"text": str}}')
                if qa["id"] in gold:
                    raise MetricInputError(f"{w}duplicate question id {qa['id']!r} at {loc}")
                gold[qa["id"]] = [a["text"] for a in answers]
                has_ans[qa["id"]] = bool(answers)  # official make_qid_to_has_ans
    if not gold:
        raise MetricInputError(f"{w}the dataset holds no questions")
    return gold, has_ans


def evaluate_official(dataset_json: Mapping[str, Any], preds: Mapping[str, str]) -> OrderedDict:
    """Score ``preds`` against a dataset in the official SQuAD JSON layout.

    Returns the official OrderedDict: ``exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total,
    NoAns_exact, NoAns_f1, NoAns_total`` (percentages; totals are ints), the HasAns_*/NoAns_* keys
    omitted when that subset is empty. has_ans is ``bool(qa["answers"])`` as in the official script.
    """
    gold, has_ans = _gold_from_json(dataset_json)
    return _summarize(gold, has_ans, preds)


def evaluate_examples(examples: Sequence[SquadExample], preds: Mapping[str, str]) -> OrderedDict:
    """:func:`evaluate_official` for our :class:`SquadExample` list (same output, same order)."""
    gold: dict[str, list[str]] = {}
    has_ans: dict[str, bool] = {}
    for i, ex in enumerate(examples):
        if ex.id in gold:
            raise MetricInputError(f"duplicate question id {ex.id!r} at example {i}")
        gold[ex.id] = list(ex.answers)
        has_ans[ex.id] = bool(ex.answers)
    return _summarize(gold, has_ans, preds)


def _read_json(path: str | Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise MetricInputError(f"{path}: {what} is not valid JSON ({where}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise MetricInputError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise MetricInputError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def load_predictions(path: str | Path) -> dict[str, str]:
    """Read an official predictions file: one JSON object mapping question id to answer text."""
    obj = _read_json(path, "predictions file")
    if not isinstance(obj, dict):
        raise MetricInputError(f"{path}: predictions must be a JSON object id -> text, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, str)]
    if bad:
        raise MetricInputError(f"{path}: {len(bad)} predictions are not strings: {_show(bad)}")
    return obj


def load_dataset_json(path: str | Path) -> dict:
    """Read a dataset in the official SQuAD JSON layout, checking its shape (errors name the file)."""
    obj = _read_json(path, "dataset file")
    _gold_from_json(obj, path)
    return obj
