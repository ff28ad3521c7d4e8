"""An independent formulation of the SQuAD 2.0 metrics, checked against ``lorascope.metrics.squad_v2``.

The official ``evaluate-v2.0.py`` cannot be vendored, so this file re-derives its definitions a second
way (no regex, no ``collections.Counter``, different F1 arithmetic and summation) and compares:
(a) hypothesis properties over adversarial strings, (b) aggregates on the real dev file for three
seeded prediction sets, (c) hand-computed aggregates.

Article removal. The official script does ``re.sub(r"\\b(a|an|the)\\b", " ", text)`` on the lowercased,
ASCII-punctuation-stripped text. Dropping whitespace-separated tokens equal to a/an/the is NOT the same:
``\\b`` is a word/non-word boundary, so "“the”" loses its article (-> "“ ”") and "the\\u0301" (a combining
accent, not a word character) does too, while "théâtre" (precomposed) keeps it. The formulation below
therefore cuts the text into maximal runs of word / non-word characters -- word character meaning
``str.isalnum() or "_"``, which is exactly what ``re``'s unicode ``\\w`` matches (checked exhaustively over
all code points below) -- and replaces every word run equal to a/an/the by one space. A regex match of
``\\b(a|an|the)\\b`` must start and end at a boundary, i.e. it is exactly such a whole word run, so the
two are equal on every string, and the hypothesis alphabet needs no restriction. ("_" is in
``string.punctuation`` and gone before this step anyway.)
"""

from __future__ import annotations

import itertools
import json
import math
import re
import string
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.metrics.squad_v2 import compute_exact, compute_f1, evaluate_official, get_tokens, normalize_answer

# --------------------------------------------------------------------------- second formulation

_DELETE_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLE_WORDS = frozenset({"a", "an", "the"})


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def norm2(s: str) -> str:
    text = s.lower().translate(_DELETE_PUNCT)
    pieces = []
    for is_word, run in itertools.groupby(text, key=_is_word_char):
        chunk = "".join(run)
        pieces.append(" " if is_word and chunk in _ARTICLE_WORDS else chunk)
    return " ".join("".join(pieces).split())


def tokens2(s: str) -> list[str]:
    return norm2(s).split()


def exact2(gold: str, pred: str) -> float:
    return 1.0 if norm2(gold) == norm2(pred) else 0.0


def f1_2(gold: str, pred: str) -> float:
    g, p = sorted(tokens2(gold)), sorted(tokens2(pred))
    if not g or not p:
        return 1.0 if g == p else 0.0
    i = j = common = 0  # multiset intersection of two sorted lists
    while i < len(g) and j < len(p):
        if g[i] == p[j]:
            common, i, j = common + 1, i + 1, j + 1
        elif g[i] < p[j]:
            i += 1
        else:
            j += 1
    return 2.0 * common / (len(g) + len(p))  # = 2PR/(P+R) with P = c/|p|, R = c/|g|


def evaluate2(dataset: dict, preds: dict[str, str]) -> dict[str, float]:
    rows = []  # (has_ans, exact, f1)
    for article in dataset["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                golds = [a["text"] for a in qa["answers"] if tokens2(a["text"])] or [""]
                pred = preds[qa["id"]]
                rows.append(
                    (len(qa["answers"]) > 0, max(exact2(g, pred) for g in golds), max(f1_2(g, pred) for g in golds))
                )
    out: dict[str, float] = {}
    for prefix, sel in (("", rows), ("HasAns_", [r for r in rows if r[0]]), ("NoAns_", [r for r in rows if not r[0]])):
        if sel:
            out[prefix + "exact"] = math.fsum(r[1] for r in sel) * 100.0 / len(sel)
            out[prefix + "f1"] = math.fsum(r[2] for r in sel) * 100.0 / len(sel)
            out[prefix + "total"] = len(sel)
    return out


def _assert_same(official: dict, mine: dict) -> None:
    assert set(official) == set(mine)
    for key, value in mine.items():
        assert official[key] == pytest.approx(value, abs=1e-9), key


# --------------------------------------------------------------------------- (a) properties


def test_word_char_definition_equals_re_w_on_every_code_point() -> None:
    w = re.compile(r"\w")
    bad = [hex(c) for c in range(sys.maxunicode + 1) if (w.match(chr(c)) is not None) != _is_word_char(chr(c))]
    assert bad == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("“the” cat", "“ ” cat"), ("the\u0301 end", "\u0301 end"), ("théâtre the", "théâtre"), ("the_cat", "thecat")],
)
def test_boundary_cases_where_token_filtering_would_differ(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == norm2(raw) == expected


_ALPHABET = string.ascii_letters + string.digits + " \t\n\u00a0" + string.punctuation + "“”‘’" + "éÉàÀçñÑüÜßøİ\u0301²"
_WORDS = ["a", "an", "the", "An", "THE", "A", "The", "cat", "dog", "théâtre", "ann", "then"]
_piece = st.one_of(st.sampled_from(_WORDS), st.text(alphabet=_ALPHABET, max_size=4))
_sep = st.sampled_from(["", " ", "  ", "\t", "\n", "-", ", ", ".", "“", "’"])
_text = st.lists(st.tuples(_piece, _sep), max_size=10).map(lambda xs: "".join(a + b for a, b in xs))


@settings(max_examples=400, deadline=None)
@given(s=_text)
def test_normalization_and_tokens_agree(s: str) -> None:
    assert normalize_answer(s) == norm2(s)
    assert get_tokens(s) == tokens2(s)


@settings(max_examples=400, deadline=None)
@given(gold=_text, pred=_text)
def test_exact_and_f1_agree(gold: str, pred: str) -> None:
    assert compute_exact(gold, pred) == exact2(gold, pred)
    assert compute_f1(gold, pred) == pytest.approx(f1_2(gold, pred), abs=1e-12)


@settings(max_examples=400, deadline=None)
@given(s=st.text(alphabet=_ALPHABET, max_size=30))
def test_normalization_agrees_on_raw_alphabet_strings(s: str) -> None:
    assert normalize_answer(s) == norm2(s)


# --------------------------------------------------------------------------- (b) real dev file


@pytest.fixture(scope="module")
def dev_json(data_dir) -> dict:
    path = data_dir / "squad_v2" / "dev-v2.0.explorer-derived.json"
    if not path.is_file():
        pytest.skip(f"dev file not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _seeded_predictions(dataset: dict, seed: int) -> dict[str, str]:
    """Per question, one of: empty, the first gold text, a random 1-4 word span of the context."""
    rng = np.random.default_rng(seed)
    preds = {}
    for article in dataset["data"]:
        for para in article["paragraphs"]:
            words = para["context"].split()
            for qa in para["qas"]:
                kind = int(rng.integers(3))
                if kind == 0:
                    preds[qa["id"]] = ""
                elif kind == 1 and qa["answers"]:
                    preds[qa["id"]] = qa["answers"][0]["text"]
                else:
                    n = int(rng.integers(1, 5))
                    start = int(rng.integers(0, max(1, len(words) - n + 1)))
                    preds[qa["id"]] = " ".join(words[start : start + n])
    return preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dev_file_aggregates_agree(dev_json: dict, seed: int) -> None:
    preds = _seeded_predictions(dev_json, seed)
    official = evaluate_official(dev_json, preds)
    mine = evaluate2(dev_json, preds)
    _assert_same(dict(official), mine)
    assert official["total"] == 11873 and 0.0 < official["f1"] < 100.0


# --------------------------------------------------------------------------- (c) hand-computed


def _dataset(qas: list[tuple[str, list[str]]]) -> dict:
    items = [{"id": q, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]} for q, golds in qas]
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": items}]}]}


def test_hand_computed_mixed() -> None:
    data = _dataset(
        [("q1", ["The Eiffel Tower", "Eiffel Tower in Paris"]), ("q2", ["red dog barks"]), ("q3", []), ("q4", [])]
    )
    preds = {"q1": "eiffel tower!", "q2": "The big red dog", "q3": "", "q4": "Paris"}
    # q1: "eiffel tower" == gold 1 -> EM 1, F1 1
    # q2: pred [big, red, dog] vs gold [red, dog, barks]: common 2, P = R = 2/3 -> EM 0, F1 2/3
    # q3: unanswerable, empty pred -> EM 1, F1 1;  q4: unanswerable, non-empty pred -> EM 0, F1 0
    # exact = 100*2/4 = 50; f1 = 100*(1 + 2/3 + 1 + 0)/4 = 66.67; HasAns: EM 50, F1 100*(5/3)/2 = 83.33
    # NoAns: EM 50, F1 50
    expected = {
        "exact": 50.0,
        "f1": 200 / 3,
        "total": 4,
        "HasAns_exact": 50.0,
        "HasAns_f1": 250 / 3,
        "HasAns_total": 2,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }
    official = evaluate_official(data, preds)
    assert list(official) == list(expected)
    _assert_same(dict(official), expected)
    _assert_same(evaluate2(data, preds), expected)


def test_hand_computed_all_answerable_with_empty_gold_and_multi_gold() -> None:
    data = _dataset([("a", ["the", "..."]), ("b", ["New York City", "York"])])
    preds = {"a": "", "b": "new york"}
    # a: every gold normalizes to "" -> gold is [""], so "" scores EM 1, F1 1 (still HasAns: it has answers)
    # b: vs "new york city": c=2, P=1, R=2/3 -> F1 0.8; vs "york": c=1, P=1/2, R=1 -> 2/3; max 0.8, EM 0
    # exact = 50, f1 = 100*(1 + 0.8)/2 = 90; no unanswerable questions -> NoAns_* keys omitted
    expected = {"exact": 50.0, "f1": 90.0, "total": 2, "HasAns_exact": 50.0, "HasAns_f1": 90.0, "HasAns_total": 2}
    _assert_same(dict(evaluate_official(data, preds)), expected)
    _assert_same(evaluate2(data, preds), expected)
