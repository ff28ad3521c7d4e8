"""Tests of the model-free baselines (STUDY.md §7) on small synthetic data, plus one real-data check."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from lorascope.baselines import squad_span, stratified
from lorascope.baselines.lexical_mrpc import mrpc_lexical
from lorascope.baselines.literature import load_literature
from lorascope.baselines.majority import majority_label, mrpc_majority, squad_always_no_answer
from lorascope.baselines.run import run_baselines
from lorascope.config.baselines import BaselinesConfig
from lorascope.data.types import MrpcExample, SquadExample, TaskData
from lorascope.errors import ConfigError
from lorascope.metrics.squad_v2 import compute_exact, compute_f1, evaluate_examples, gold_answers

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WORDS = [f"w{i}" for i in range(300)]


# ------------------------------------------------------------------------------ synthetic data
def mrpc_pairs(n: int, pos_rate: float, seed: int, prefix: str) -> list[MrpcExample]:
    """Paraphrases share most words (shuffled, one replaced); non-paraphrases share few."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        s1 = r.sample(WORDS, r.randint(8, 14))
        label = int(r.random() < pos_rate)
        if label:
            s2 = s1[:]
            r.shuffle(s2)
            s2[0] = r.choice(WORDS)
        else:
            s2 = r.sample(s1, 2) + r.sample(WORDS, r.randint(7, 13))
        out.append(MrpcExample(f"{prefix}{i}", " ".join(s1), " ".join(s2), label))
    return out


def mrpc_data(seed: int = 0) -> TaskData:
    splits = {"train": mrpc_pairs(300, 0.7, seed, "tr"), "validation": mrpc_pairs(80, 0.7, seed + 1, "va"),
              "test": mrpc_pairs(200, 0.6, seed + 2, "te")}
    return TaskData(task="mrpc", split_scheme="official", source="mirror", splits=splits)


CITIES = ["Zorbaville", "Quentara", "Bramsholt", "Ulverdine", "Kestrahn", "Moravel", "Tessaline", "Dunmarrow"]


def squad_split(n_par: int, seed: int, prefix: str) -> list[SquadExample]:
    """Paragraphs of filler plus facts "the capital of X is City according to the royal charter"."""
    r = random.Random(seed)
    out = []
    for p in range(n_par):
        countries = [f"Land{prefix}{p}x{j}" for j in range(3)]
        cities = r.sample(CITIES, 3)
        parts = []
        for c, city in zip(countries, cities):
            parts.append(" ".join(r.sample(WORDS, 12)) + ".")
            parts.append(f"The capital of {c} is {city} according to the royal charter.")
        context = " ".join(parts)
        title = f"Article{prefix}{p // 2}"
        for j, (c, city) in enumerate(zip(countries, cities)):
            q = f"What is the capital of {c} according to the royal charter?"
            out.append(SquadExample(f"{prefix}{p}a{j}", title, context, q, (city,), (context.index(city),)))
            out.append(SquadExample(f"{prefix}{p}u{j}", title, context, f"Which river crosses {c} near w{j}?", (), ()))
    return out


def squad_data(seed: int = 0) -> TaskData:
    splits = {"train": squad_split(8, seed, "tr"), "validation": squad_split(4, seed + 1, "va"),
              "test": squad_split(4, seed + 2, "te")}
    return TaskData(task="squad_v2", split_scheme="dev-only", source="mirror", splits=splits, notes=["synthetic"])


# ----------------------------------------------------------------------------------------- MRPC
def test_majority_picks_train_majority():
    train = [MrpcExample(str(i), "a", "b", int(i < 3)) for i in range(10)]
    assert majority_label(train) == 0
    res = mrpc_majority(train, [MrpcExample("t0", "a", "b", 0), MrpcExample("t1", "a", "b", 1)])
    assert res["params"]["label"] == 0 and res["metrics"]["accuracy"] == 50.0 and res["metrics"]["f1"] == 0.0
    assert majority_label([MrpcExample("x", "a", "b", 0), MrpcExample("y", "a", "b", 1)]) == 1  # tie -> 1


def test_stratified_expected_accuracy_matches_formula_and_draws():
    p, y = 0.7, [1] * 40 + [0] * 60
    q = 0.4
    exp = stratified.mrpc_expected(p, y)
    assert exp["expected_accuracy"] == pytest.approx(100 * (p * q + (1 - p) * (1 - q)))
    tp, fp, fn = p * 40, p * 60, (1 - p) * 40
    assert exp["f1_at_expected_counts"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert exp["mcc_at_expected_counts"] == pytest.approx(0.0)
    draws = stratified.mrpc_draws(p, y, 20000, np.random.default_rng(3))
    se = draws["accuracy"].std() / np.sqrt(20000)
    assert abs(draws["accuracy"].mean() - exp["expected_accuracy"]) < 5 * se


def test_same_seed_same_draws_different_seed_different():
    y = [1, 0] * 50
    a = stratified.mrpc_draws(0.6, y, 50, np.random.default_rng(7))
    b = stratified.mrpc_draws(0.6, y, 50, np.random.default_rng(7))
    c = stratified.mrpc_draws(0.6, y, 50, np.random.default_rng(8))
    assert np.array_equal(a["accuracy"], b["accuracy"]) and not np.array_equal(a["accuracy"], c["accuracy"])
    cfg = BaselinesConfig(random_draws=30)
    r1, r2, r3 = (run_baselines(mrpc_data(), cfg, s)["baselines"][1]["draws"] for s in (0, 0, 1))
    assert r1 == r2 and r1 != r3


def test_no_global_rng_state_touched():
    np_state, py_state = np.random.get_state(), random.getstate()
    cfg = BaselinesConfig(random_draws=20)
    run_baselines(mrpc_data(), cfg, 0)
    run_baselines(squad_data(), cfg, 0)
    after = np.random.get_state()
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(np_state, after))
    assert random.getstate() == py_state


def test_lexical_logreg_beats_chance():
    d = mrpc_data()
    res = mrpc_lexical(d["train"], d["validation"], d["test"], BaselinesConfig())
    assert res["metrics"]["accuracy"] > 90.0 and res["metrics"]["mcc"] > 70.0
    assert res["params"]["validation_metrics"]["accuracy"] > 90.0


# ------------------------------------------------------------------------------------- SQuAD v2
def test_span_scorer_finds_answer_surrounded_by_question_words():
    ctx = ("Many w1 w2 w3 w4 things w5 happen w6 daily. The capital of Freedonia is Zorbaville "
           "according to the royal charter. Other w7 w8 facts w9 follow here.")
    q = "What is the capital of Freedonia according to the royal charter?"
    idf = squad_span.Idf("context_sentences")
    text, conf = squad_span.score_question(ctx, q, idf, 5, 10)
    assert text == "Zorbaville" and 0.0 < conf <= 1.0
    ex = SquadExample("q", "t", ctx, q, ("Zorbaville",), (ctx.index("Zorbaville"),))
    assert squad_span.apply_tau([ex], [(text, conf)], conf + 1e-6) == {"q": ""}
    assert squad_span.apply_tau([ex], [(text, conf)], conf) == {"q": "Zorbaville"}
    assert squad_span.score_question(ctx, "what is it?", idf, 5, 10) == ("", 0.0)  # only stopwords


def test_predictions_are_exact_substrings_and_confidences_in_unit_interval():
    d = squad_data()
    cfg = BaselinesConfig()
    idf = squad_span.Idf("train_contexts", [e.context for e in d["train"]])
    scored = squad_span.score_examples(d["test"], idf, cfg)
    for ex, (text, conf) in zip(d["test"], scored):
        assert text in ex.context and 0.0 <= conf <= 1.0
    hits = [t == ex.answers[0] for ex, (t, _) in zip(d["test"], scored) if ex.answers]
    assert np.mean(hits) > 0.8


def test_tau_tuning_sees_validation_only(monkeypatch):
    d = squad_data()
    seen = []
    real = squad_span.tune_tau

    def spy(examples, scored, *, split):
        seen.append(({ex.id for ex in examples}, split))
        return real(examples, scored, split=split)

    monkeypatch.setattr(squad_span, "tune_tau", spy)
    res = run_baselines(d, BaselinesConfig(random_draws=10), 0)
    assert seen == [({ex.id for ex in d["validation"]}, "validation")]
    lex = res["baselines"][2]
    assert lex["params"]["tuned_on"] == "validation" and lex["metrics"]["total"] == len(d["test"])
    with pytest.raises(ValueError):
        real(d["test"], [("", 0.0)] * len(d["test"]), split="test")


def test_tune_tau_maximises_f1_ties_to_smaller_tau():
    ctx = "alpha beta gamma delta"
    exs = [
        SquadExample("a", "t", ctx, "q", ("alpha",), (0,)),
        SquadExample("b", "t", ctx, "q", (), ()),
        SquadExample("c", "t", ctx, "q", ("gamma",), (11,)),
    ]
    # a: right at 0.9; b: unanswerable at 0.5; c: wrong at 0.2 (tau in (0.5, 0.9] is best: 2/3)
    tau, info = squad_span.tune_tau(exs, [("alpha", 0.9), ("beta", 0.5), ("delta", 0.2)], split="validation")
    assert tau == 0.9 and info["validation"]["f1"] == pytest.approx(200 / 3)
    # a right at 0.8, c wrong at 0.5: tau 0.5 and 0.8 both give F1 1/2 -> the smaller is chosen
    tau, info = squad_span.tune_tau([exs[0], exs[2]], [("alpha", 0.8), ("delta", 0.5)], split="validation")
    assert tau == 0.5 and info["validation"]["f1"] == pytest.approx(50.0)
    tau, _ = squad_span.tune_tau(exs[1:2], [("beta", 0.3)], split="validation")
    assert tau > 0.3  # never answering is in the grid


def test_span_scores_match_official_metric():
    answers = ["the Normans", "Normans, in 911", "A–B test"]
    cands = ["", "Normans", "the", "in 911 the Normans", "normans normans", "A–B", "an a the", "911"]
    em, f1 = squad_span.span_scores(answers, cands)
    golds = gold_answers(answers)
    for j, c in enumerate(cands):
        assert em[j] == max(compute_exact(g, c) for g in golds)
        assert f1[j] == max(compute_f1(g, c) for g in golds)
    em, f1 = squad_span.span_scores([], cands)
    assert list(em) == [float(compute_exact("", c)) for c in cands]


def test_random_span_expectation_exact_and_matches_brute_force_draws():
    exs = squad_split(2, 5, "x")[:8]
    p, length = 0.4, 1  # one-word spans, so some draws hit the one-word answers exactly (EM > 0)
    exp = stratified.squad_expected(exs, p, length)
    assert 0 < exp["HasAns_expected_exact"] < 100
    # exact: enumerate spans with the official functions
    em_q, f1_q = [], []
    for ex in exs:
        golds, spans = gold_answers(ex.answers), stratified.span_texts(ex.context, length)
        em_q.append(
            p * max(compute_exact(g, "") for g in golds)
            + (1 - p) * np.mean([max(compute_exact(g, s) for g in golds) for s in spans])
        )
        f1_q.append(
            p * max(compute_f1(g, "") for g in golds)
            + (1 - p) * np.mean([max(compute_f1(g, s) for g in golds) for s in spans])
        )
    assert exp["expected_exact"] == pytest.approx(100 * np.mean(em_q), abs=1e-9)
    assert exp["expected_f1"] == pytest.approx(100 * np.mean(f1_q), abs=1e-9)
    # brute force: many seeded draws of predicted texts, scored by the official metric
    rng = np.random.default_rng(11)
    runs = [evaluate_examples(exs, stratified.squad_draw_predictions(exs, p, length, rng)) for _ in range(3000)]
    for key in ("exact", "f1"):
        vals = np.array([r[key] for r in runs])
        assert abs(vals.mean() - exp[f"expected_{key}"]) < 5 * vals.std() / np.sqrt(len(vals))
    fast = stratified.squad_draws(exs, p, length, 3000, np.random.default_rng(12))
    assert abs(fast["f1"].mean() - exp["expected_f1"]) < 5 * fast["f1"].std() / np.sqrt(3000)


def test_always_no_answer_is_share_of_unanswerable():
    d = squad_data()
    m = squad_always_no_answer(d["test"])["metrics"]
    share = 100 * np.mean([ex.is_impossible for ex in d["test"]])
    assert m["exact"] == pytest.approx(share) and m["f1"] == pytest.approx(share)


# --------------------------------------------------------------------------------- run, literature
def test_run_output_is_json_and_carries_split_scheme():
    res = run_baselines(squad_data(), BaselinesConfig(random_draws=10), 0)
    assert list(res)[:5] == ["task", "split_scheme", "source", "sizes", "notes"]
    assert res["split_scheme"] == "dev-only"
    json.dumps(res, allow_nan=False)
    assert [b["name"] for b in res["baselines"]] == ["always_no_answer", "stratified_random", "sliding_window_lexical"]
    assert all(b["split"] == "test" for b in res["baselines"])


def test_literature_loads_and_every_row_is_cited(tmp_path):
    rows = load_literature()
    assert {r.task for r in rows} == {"mrpc", "squad_v2"}
    for r in rows:
        assert r.citation.authors and r.citation.title and r.citation.year and r.citation.venue
        assert r.split in ("dev", "test") and r.scope == "other models" and r.note
    bad = tmp_path / "lit.yaml"
    bad.write_text("- {task: mrpc, model: X, metric: f1, value: 1, split: train, note: n, verified: false}\n")
    with pytest.raises(ConfigError, match="row 0"):
        load_literature(bad)


# ---------------------------------------------------------------------------------------- real data
@pytest.fixture
def mrpc_mirror() -> Path:
    folder = REAL_DATA / "mrpc"
    if not (folder / "train.tsv").is_file() or not (folder / "msr_paraphrase_test.txt").is_file():
        pytest.skip(f"MRPC mirror not found under {folder}")
    return folder


def _read_msrp(path: Path) -> list[MrpcExample]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].split("\t") == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    rows = [line.split("\t") for line in lines[1:] if line]
    return [MrpcExample(f"{r[1]}-{r[2]}", r[3], r[4], int(r[0])) for r in rows]


def test_real_mrpc_majority_on_msrp_test(mrpc_mirror):
    train, test = _read_msrp(mrpc_mirror / "train.tsv"), _read_msrp(mrpc_mirror / "msr_paraphrase_test.txt")
    assert (len(train), len(test)) == (3668, 1725)
    m = mrpc_majority(train, test)["metrics"]
    assert (round(m["accuracy"], 2), round(m["f1"], 2)) == (66.49, 79.87)


@pytest.mark.parametrize(
    "make, names",
    [(mrpc_data, ("majority", "stratified_random")), (squad_data, ("always_no_answer", "stratified_random"))],
)
def test_trivial_baselines_carry_per_example_primary_scores(make, names):
    """The validity gate (§12) compares each method with these per test example: their mean must be the
    baseline's own (expected) primary metric, and the lexical baseline is not trivial."""
    res = run_baselines(make(), BaselinesConfig(random_draws=10), 0)
    trivial = [b for b in res["baselines"] if b["trivial"]]
    assert tuple(b["name"] for b in trivial) == names
    test_ids = {ex.id for ex in make()["test"]}
    for b in trivial:
        scores = b["per_example"]["scores"]
        assert set(scores) == test_ids and all(0.0 <= v <= 1.0 for v in scores.values())
        m = b["metrics"]
        want = (
            m.get("accuracy", m.get("expected_accuracy"))
            if res["task"] == "mrpc"
            else m.get("f1", m.get("expected_f1"))
        )
        assert 100 * np.mean(list(scores.values())) == pytest.approx(want, rel=1e-12)
    assert not any(b["trivial"] for b in res["baselines"] if b["name"].endswith("lexical"))
