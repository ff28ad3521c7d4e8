"""SQuAD 2.0 metrics: hand-computed cases, input errors, and (when available) bit-exact agreement
with the official ``evaluate-v2.0.py`` on the real dev file.

The official script is looked up at ``tests/reference/squad_v2_official_eval.py`` or at the path in
the environment variable ``LORASCOPE_SQUAD_OFFICIAL_EVAL``; the comparison tests skip (saying so)
when neither exists. No test touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.data.types import SquadExample
from lorascope.errors import MetricInputError
from lorascope.metrics.squad_v2 import (
    compute_exact,
    compute_f1,
    evaluate_examples,
    evaluate_official,
    get_tokens,
    load_dataset_json,
    load_predictions,
    normalize_answer,
    per_question_scores,
)

# --------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The cat", "cat"),
        ("An apple a day", "apple day"),
        ("another theory", "another theory"),  # a/an/the only as whole words
        ("(The) cat", "cat"),  # punctuation goes first, then "the" is a whole word
        ("the-end", "theend"),  # ... so a hyphen glues it to the next word
        ("thé the théâtre", "thé théâtre"),  # \b is unicode-aware
        ("U.S. don't well-known!", "us dont wellknown"),
        ("“Paris”", "“paris”"),  # unicode quotes are not in string.punctuation: kept
        ("l’Europe", "l’europe"),
        ("  New \t York\n", "new york"),
        ("", ""),
        ("...", ""),
        ("THE", ""),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_get_tokens() -> None:
    assert get_tokens("") == []
    assert get_tokens("The big, red dog.") == ["big", "red", "dog"]
    assert get_tokens("a") == []


# --------------------------------------------------------------------------- exact / f1


def test_exact_cases() -> None:
    assert compute_exact("cat", "The cat") == 1
    assert compute_exact("Paris", "paris.") == 1
    assert compute_exact("other cat", "another cat") == 0
    assert compute_exact("Paris", "“Paris”") == 0
    assert compute_exact("New York", " new   york ") == 1


def test_f1_partial_overlap_by_hand() -> None:
    # pred "the big red dog" -> tokens [big, red, dog]; gold "red dog barks" -> [red, dog, barks]
    # common = {red, dog} = 2; precision = 2/3, recall = 2/3, F1 = 2*(4/9)/(4/3) = 2/3
    assert compute_f1("red dog barks", "the big red dog") == pytest.approx(2.0 / 3.0, abs=1e-15)
    # repeated tokens count with multiplicity (Counter intersection):
    # gold "x y y" -> [x, y, y]; pred "y y y z" -> [y, y, y, z]; common = min(2, 3) y's = 2
    # precision = 2/4, recall = 2/3, F1 = 2*(1/3)/(7/6) = 4/7
    assert compute_f1("x y y", "y y y z") == pytest.approx(4.0 / 7.0, abs=1e-15)
    assert compute_f1("Paris", "“Paris”") == 0  # the quoted token differs


def test_empty_string_handling() -> None:
    assert compute_exact("", "") == 1 and compute_f1("", "") == 1
    assert compute_exact("", "x") == 0 and compute_f1("", "x") == 0
    assert compute_exact("x", "") == 0 and compute_f1("x", "") == 0
    assert compute_f1("", "the .") == 1  # normalizes to nothing: counts as "no answer"


def test_per_question_scores_max_over_gold_and_no_answer() -> None:
    gold = {
        "multi": ["Denver Broncos", "the Broncos"],
        "multi2": ["Denver Broncos", "the Broncos"],
        "na_empty": [],
        "na_text": [],
        "ans_empty_pred": ["Paris"],
        "only_article": ["the"],  # filtered out -> gold becomes [""] (official get_raw_scores)
    }
    preds = {
        "multi": "Broncos",  # exact vs "the Broncos"
        "multi2": "Denver",  # F1 vs "Denver Broncos": P=1, R=1/2 -> 2/3
        "na_empty": "",
        "na_text": "x",
        "ans_empty_pred": "",
        "only_article": "",
    }
    exact, f1 = per_question_scores(gold, preds)
    assert list(exact) == list(gold)
    assert exact == {
        "multi": 1.0, "multi2": 0.0, "na_empty": 1.0, "na_text": 0.0, "ans_empty_pred": 0.0, "only_article": 1.0
    }
    assert f1["multi"] == 1.0 and f1["na_empty"] == 1.0 and f1["only_article"] == 1.0
    assert f1["na_text"] == 0.0 and f1["ans_empty_pred"] == 0.0
    assert f1["multi2"] == pytest.approx(2.0 / 3.0, abs=1e-15)
    assert all(isinstance(v, float) for v in [*exact.values(), *f1.values()])


# --------------------------------------------------------------------------- full evaluation


def _tiny_dataset() -> dict:
    def qa(qid: str, answers: list[str]) -> dict:
        return {"id": qid, "question": "?", "answers": [{"text": a, "answer_start": 0} for a in answers],
                "is_impossible": not answers}

    return {"version": "v2.0", "data": [
        {"title": "T1", "paragraphs": [{"context": "c", "qas": [qa("q1", ["Paris", "the city of Paris"]),
                                                                qa("q2", ["red dog barks"])]}]},
        {"title": "T2", "paragraphs": [{"context": "c", "qas": [qa("q3", []), qa("q4", [])]}]},
    ]}


TINY_PREDS = {"q1": "Paris", "q2": "the big red dog", "q3": "", "q4": "something"}
KEYS = ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1", "NoAns_total"]


def test_has_ans_no_ans_breakdown_by_hand() -> None:
    out = evaluate_official(_tiny_dataset(), TINY_PREDS)
    # per question (exact, f1): q1 (1, 1); q2 (0, 2/3); q3 (1, 1); q4 (0, 0)
    assert list(out) == KEYS
    assert out["exact"] == 50.0 and out["total"] == 4
    assert out["f1"] == pytest.approx(100.0 * (8.0 / 3.0) / 4.0, abs=1e-12)  # 66.67
    assert out["HasAns_exact"] == 50.0 and out["HasAns_total"] == 2
    assert out["HasAns_f1"] == pytest.approx(100.0 * (5.0 / 3.0) / 2.0, abs=1e-12)  # 83.33
    assert out["NoAns_exact"] == 50.0 and out["NoAns_f1"] == 50.0 and out["NoAns_total"] == 2
    assert isinstance(out["total"], int) and isinstance(out["exact"], float)


def test_empty_subsets_are_omitted() -> None:
    ds = _tiny_dataset()
    only_ans = {"data": [ds["data"][0]]}
    assert list(evaluate_official(only_ans, {"q1": "Paris", "q2": ""})) == KEYS[:6]
    only_na = {"data": [ds["data"][1]]}
    out = evaluate_official(only_na, {"q3": "", "q4": ""})
    assert list(out) == KEYS[:3] + KEYS[6:]
    assert out["exact"] == 100.0 and out["NoAns_f1"] == 100.0


def test_evaluate_examples_matches_official_layout() -> None:
    examples = [
        SquadExample(qa["id"], art["title"], para["context"], qa["question"],
                     tuple(a["text"] for a in qa["answers"]), tuple(a["answer_start"] for a in qa["answers"]))
        for art in _tiny_dataset()["data"] for para in art["paragraphs"] for qa in para["qas"]
    ]
    assert evaluate_examples(examples, TINY_PREDS) == evaluate_official(_tiny_dataset(), TINY_PREDS)
    with pytest.raises(MetricInputError, match="duplicate question id 'q1'"):
        evaluate_examples([examples[0], examples[0]], {"q1": ""})


def test_missing_prediction_names_ids() -> None:
    preds = {k: v for k, v in TINY_PREDS.items() if k not in ("q2", "q4")}
    with pytest.raises(MetricInputError, match=r"2 of 4 questions have no prediction: 'q2', 'q4'"):
        evaluate_official(_tiny_dataset(), preds)
    many = {f"q{i}": [] for i in range(10)}
    with pytest.raises(MetricInputError, match=r"10 of 10 .*'q0', 'q1', 'q2', 'q3', 'q4' \(\+5 more\)"):
        per_question_scores(many, {})


def test_extra_prediction_names_id() -> None:
    with pytest.raises(MetricInputError, match=r"1 predictions have ids not in the data: 'zzz'"):
        evaluate_official(_tiny_dataset(), {**TINY_PREDS, "zzz": "x"})


def test_non_string_prediction_and_bad_shapes() -> None:
    with pytest.raises(MetricInputError, match=r"'q3': NoneType"):
        evaluate_official(_tiny_dataset(), {**TINY_PREDS, "q3": None})
    with pytest.raises(MetricInputError, match="mapping"):
        evaluate_official(_tiny_dataset(), list(TINY_PREDS))  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match='"data" list'):
        evaluate_official({"version": "v2.0"}, TINY_PREDS)
    ds = _tiny_dataset()
    ds["data"][1]["paragraphs"][0]["qas"][1]["answers"] = [{"answer_start": 0}]
    with pytest.raises(MetricInputError, match=r"data\[1\]\.paragraphs\[0\]\.qas\[1\] \(id 'q4'\)"):
        evaluate_official(ds, TINY_PREDS)
    ds = _tiny_dataset()
    ds["data"][1]["paragraphs"][0]["qas"][1]["id"] = "q1"
    with pytest.raises(MetricInputError, match="duplicate question id 'q1'"):
        evaluate_official(ds, TINY_PREDS)
    with pytest.raises(MetricInputError, match="no questions"):
        evaluate_official({"data": []}, {})


# --------------------------------------------------------------------------- files


def test_load_predictions(tmp_path: Path) -> None:
    good = tmp_path / "preds.json"
    good.write_text(json.dumps(TINY_PREDS), encoding="utf-8")
    assert load_predictions(good) == TINY_PREDS
    bad = tmp_path / "bad.json"
    bad.write_text('{"q1": "x",\n "q2": }', encoding="utf-8")
    with pytest.raises(MetricInputError, match=r"bad\.json.*line 2, column 8"):
        load_predictions(bad)
    wrong = tmp_path / "list.json"
    wrong.write_text('["x"]', encoding="utf-8")
    with pytest.raises(MetricInputError, match=r"list\.json.*JSON object"):
        load_predictions(wrong)
    nonstr = tmp_path / "nonstr.json"
    nonstr.write_text('{"q1": 3}', encoding="utf-8")
    with pytest.raises(MetricInputError, match=r"nonstr\.json.*'q1'"):
        load_predictions(nonstr)
    with pytest.raises(MetricInputError, match=r"absent\.json"):
        load_predictions(tmp_path / "absent.json")


def test_load_dataset_json(tmp_path: Path) -> None:
    good = tmp_path / "dev.json"
    good.write_text(json.dumps(_tiny_dataset()), encoding="utf-8")
    assert evaluate_official(load_dataset_json(good), TINY_PREDS)["total"] == 4
    bad = tmp_path / "trunc.json"
    bad.write_text(json.dumps(_tiny_dataset())[:50], encoding="utf-8")
    with pytest.raises(MetricInputError, match=r"trunc\.json.*not valid JSON \(line 1"):
        load_dataset_json(bad)
    shape = tmp_path / "shape.json"
    shape.write_text('{"data": [{"title": "x"}]}', encoding="utf-8")
    with pytest.raises(MetricInputError, match=r"shape\.json: data\[0\].*paragraphs"):
        load_dataset_json(shape)


# --------------------------------------------------------------------------- official script


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared folder {path} is missing (holds the SQuAD v2 dev file)")
    return path


@pytest.fixture(scope="module")
def official() -> ModuleType:
    candidates = [Path(__file__).resolve().parent / "reference" / "squad_v2_official_eval.py"]
    if os.environ.get("LORASCOPE_SQUAD_OFFICIAL_EVAL"):
        candidates.append(Path(os.environ["LORASCOPE_SQUAD_OFFICIAL_EVAL"]))
    for path in candidates:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("squad_v2_official_eval", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # defines functions only; its argparse main is not run
            return module
    pytest.skip("official evaluate-v2.0.py not available (tests/reference/squad_v2_official_eval.py "
                "or $LORASCOPE_SQUAD_OFFICIAL_EVAL)")


def _official_eval(mod: ModuleType, dataset_json: dict, preds: dict[str, str]) -> tuple[dict, dict, dict]:
    """The body of the official main() without file I/O, na_prob file or plots."""
    dataset = dataset_json["data"]
    na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = mod.make_qid_to_has_ans(dataset)
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = mod.get_raw_scores(dataset, preds)
    exact_thresh = mod.apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, 1.0)
    f1_thresh = mod.apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, 1.0)
    out_eval = mod.make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        mod.merge_eval(out_eval, mod.make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids), "HasAns")
    if no_ans_qids:
        mod.merge_eval(out_eval, mod.make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids), "NoAns")
    return out_eval, exact_raw, f1_raw


def _prediction_sets(dataset_json: dict) -> dict[str, dict[str, str]]:
    rng = np.random.default_rng(20240601)
    qas = [(p["context"], qa) for a in dataset_json["data"] for p in a["paragraphs"] for qa in p["qas"]]

    def span(context: str) -> str:
        words = context.split()
        i = int(rng.integers(len(words)))
        return " ".join(words[i : i + int(rng.integers(1, 12))])

    def first(qa: dict) -> str:
        return qa["answers"][0]["text"] if qa["answers"] else ""

    def mixed(context: str, qa: dict) -> str:
        kind = int(rng.integers(6))
        if kind == 0:
            return first(qa)
        if kind == 1:
            return "The " + first(qa).upper() + "."
        if kind == 2:
            return span(context)
        if kind == 3:
            return ""
        if kind == 4:
            plaus = qa.get("plausible_answers") or qa["answers"]
            return plaus[-1]["text"] if plaus else "unanswerable"
        return "“" + first(qa) + "” " + span(context)[:20]

    return {
        "all_empty": {qa["id"]: "" for _, qa in qas},
        "gold_first": {qa["id"]: first(qa) for _, qa in qas},
        "random_spans": {qa["id"]: span(c) for c, qa in qas},
        "mixed": {qa["id"]: mixed(c, qa) for c, qa in qas},
    }


def test_matches_official_script_on_dev(shared_dir: Path, official: ModuleType) -> None:
    dev = shared_dir / "data" / "squad_v2" / "dev-v2.0.explorer-derived.json"
    if not dev.is_file():
        pytest.skip(f"{dev} is missing")
    dataset_json = load_dataset_json(dev)
    for name, preds in _prediction_sets(dataset_json).items():
        theirs, exact_raw, f1_raw = _official_eval(official, dataset_json, preds)
        ours = evaluate_official(dataset_json, preds)
        assert list(ours) == list(theirs) == KEYS, name
        assert ours == theirs, name  # exact equality, not approx
        assert all(type(ours[k]) is type(theirs[k]) for k in KEYS), name
        exact, f1 = per_question_scores(
            {qa["id"]: [a["text"] for a in qa["answers"]]
             for a in dataset_json["data"] for p in a["paragraphs"] for qa in p["qas"]}, preds)
        assert exact == exact_raw and f1 == f1_raw, name
        assert 0.0 <= ours["f1"] <= 100.0 and ours["total"] == 11873, name


_text = st.lists(
    st.sampled_from([*"aAnNtThHeE xyz.,-'!()\t\n“”‘’éÉ0", "the ", "an ", "a ", "The "]), max_size=20
).map("".join) | st.text(max_size=20)


@settings(max_examples=500, deadline=None)
@given(gold=_text, pred=_text)
def test_matches_official_functions(official: ModuleType, gold: str, pred: str) -> None:
    assert normalize_answer(pred) == official.normalize_answer(pred)
    assert get_tokens(pred) == official.get_tokens(pred)
    assert compute_exact(gold, pred) == official.compute_exact(gold, pred)
    assert compute_f1(gold, pred) == official.compute_f1(gold, pred)
