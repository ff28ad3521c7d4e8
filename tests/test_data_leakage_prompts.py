"""Leakage checks, prompt formatting (§4), tokenization masks, truncation and drop counts, statistics."""

from dataclasses import replace

import pytest

from lorascope.data.leakage import check_leakage, normalize_text
from lorascope.data.prompts import answer_from_generation, prompt, target
from lorascope.data.stats import dataset_stats, length_summary
from lorascope.data.tokenize import IGNORE_INDEX, encode_eval_prompt, encode_train, split_prompt_target
from lorascope.data.types import MrpcExample, SquadExample, TaskData
from lorascope.errors import LeakageError


def test_real_mirror_has_no_fatal_leakage(mrpc_data, squad_data):
    m = check_leakage(mrpc_data)
    assert m["ok"] and m["pairs"]["train/test"]["pairs"]["count"] == 0
    assert m["pairs"]["train/test"]["sentences"]["count"] > 0  # MRPC reuses sentences: counted, not fatal
    s = check_leakage(squad_data)
    assert s["ok"] and s["split_scheme"] == "dev-only"


def _mrpc(splits):
    return TaskData(task="mrpc", split_scheme="official", source="mirror", splits=splits)


def test_identical_pair_across_splits_is_an_error():
    a = MrpcExample("1-2", "The cat sat .", "A cat sat .", 1)
    b = MrpcExample("9-8", "a cat  SAT .", "the cat sat .", 0)  # same pair: swapped, case, spaces
    c = MrpcExample("5-6", "Other .", "Else .", 0)
    data = _mrpc({"train": [a, c], "validation": [c], "test": [b]})
    with pytest.raises(LeakageError, match="identical pairs in train and test"):
        check_leakage(data)
    rep = check_leakage(data, raise_on_error=False)
    assert rep["fatal"] == ["1 identical pairs in train and validation", "1 identical pairs in train and test"]
    assert rep["pairs"]["validation/test"]["pairs"]["count"] == 0
    assert rep["pairs"]["train/test"]["sentences"]["count"] == 2


def test_shared_context_is_an_error_shared_question_is_not():
    q = lambda i, title, ctx, question: SquadExample(str(i), title, ctx, question, (), ())
    data = TaskData(task="squad_v2", split_scheme="dev-only", source="mirror", splits={
        "train": [q(1, "A", "ctx one", "What?")], "validation": [q(2, "B", "ctx two", "What?")],
        "test": [q(3, "C", "CTX  one", "Who?")]})
    rep = check_leakage(data, raise_on_error=False)
    assert rep["fatal"] == ["1 identical contexts in train and test"]
    assert rep["pairs"]["train/validation"]["questions"]["count"] == 1


def test_normalize_text():
    assert normalize_text("  The\tCAT\n sat ") == "the cat sat"
    assert normalize_text("ﬁne") == "fine"  # NFKC ligature


def test_prompts_exactly_as_study():
    m = MrpcExample("1-2", "A b .", "C d .", 1)
    assert (
        prompt(m) == "Sentence 1: A b .\nSentence 2: C d .\nQuestion: Do both sentences mean the same thing?\nAnswer:"
    )
    assert target(m) == " yes" and target(replace(m, label=0)) == " no"
    s = SquadExample("q", "T", "Ctx.", "Who?", ("Ann", "Anne"), (0, 0))
    assert prompt(s) == "Context: Ctx.\nQuestion: Who?\nAnswer:"
    assert target(s) == " Ann" and target(replace(s, answers=(), answer_starts=())) == " unanswerable"
    assert answer_from_generation(" Unanswerable \nmore") == ""
    assert answer_from_generation(" Paris\nQuestion: x") == "Paris"
    assert answer_from_generation("UNANSWERABLE") == ""


def test_loss_mask_covers_target_and_eos_only(tokenizer, mrpc_data):
    ex = mrpc_data["train"][0]
    enc, dropped = encode_train(tokenizer, [ex], max_length=512)
    assert not dropped
    e = enc[0]
    p_ids, t_ids = split_prompt_target(tokenizer, prompt(ex), target(ex))
    assert e.input_ids == p_ids + t_ids and t_ids[-1] == tokenizer.eos_token_id
    assert e.labels[: len(p_ids)] == [IGNORE_INDEX] * len(p_ids) and e.labels[len(p_ids) :] == t_ids
    assert tokenizer.decode(t_ids[:-1]).strip() == target(ex).strip()
    assert e.input_ids[0] == tokenizer.bos_token_id


def test_too_long_training_examples_are_dropped_and_counted(tokenizer, mrpc_data):
    exs = mrpc_data["train"][:50]
    enc, dropped = encode_train(tokenizer, exs, max_length=200)
    assert len(enc) + len(dropped) == 50 and dropped and enc
    assert all(len(e.input_ids) <= 200 for e in enc)


def test_eval_prompt_truncates_context_from_the_end(tokenizer, squad_data):
    ex = max(squad_data["test"], key=lambda e: len(e.context))
    ids, truncated = encode_eval_prompt(tokenizer, ex, budget=200)
    assert truncated and 190 <= len(ids) <= 200
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.endswith(f"Question: {ex.question}\nAnswer:")  # question intact, context cut at its end
    assert ex.context[:40].split()[0] in text
    short = SquadExample("s", "T", "Tiny.", "Who?", (), ())
    ids2, t2 = encode_eval_prompt(tokenizer, short, budget=200)
    assert not t2 and ids2 == tokenizer(prompt(short))["input_ids"]
    with pytest.raises(ValueError, match="without context"):
        encode_eval_prompt(tokenizer, ex, budget=5)


def test_stats_counts_and_quantiles(tokenizer, squad_data):
    st = dataset_stats(squad_data, seed=0, n_samples=3, tokenizer=tokenizer, max_length=512, max_new_tokens=32)
    assert st["split_scheme"] == "dev-only"
    tr = st["splits"]["train"]
    assert tr["labels"]["answerable"] + tr["labels"]["unanswerable"] == tr["n"] and len(tr["samples"]) == 3
    assert tr["tokens"]["sequence"]["over_limit"] > 0 and tr["tokens"]["prompt"]["limit"] == 480
    assert tr["articles"] == 25


def test_length_summary_hand_computed():
    s = length_summary([1, 2, 3, 4, 100], limit=3)
    assert (s["p0"], s["p50"], s["p100"], s["over_limit"], s["mean"]) == (1, 3, 100, 2, 22.0)
