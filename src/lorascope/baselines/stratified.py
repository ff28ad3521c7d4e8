"""Stratified random baselines (STUDY.md §7): exact expected value plus seeded draws.

MRPC: predict 1 with probability p = the train positive rate, independently per pair. With q the
evaluated split's positive rate the expected accuracy is exactly p*q + (1-p)(1-q). F1 and MCC are
not linear in the predictions, so no closed-form expectation is claimed: we report them *at the
expected confusion counts* (TP = p*n_pos, FP = p*n_neg, FN = (1-p)*n_pos, TN = (1-p)*n_neg; MCC there
is 0), and the seeded draws give their actual sampling distribution.

SQuAD v2: answer "" with probability p = the train unanswerable rate, else a contiguous span of L
words (L = median train answer length in words), uniform over the context's L-word spans. EM and F1
are per-question scores averaged over questions, so the expectation is exact by linearity:
E[score_q] = p*score_q("") + (1-p)*mean over spans s of score_q(s) (all spans enumerated).

Randomness: the caller passes a ``numpy.random.Generator``; global RNG state is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lorascope.baselines.squad_span import candidate_table, span_scores, word_offsets
from lorascope.data.types import MrpcExample, SquadExample
from lorascope.errors import DataError
from lorascope.metrics.classification import f1_from_counts, mcc_from_counts


def summarize(values: np.ndarray, percentiles: tuple[float, float] = (2.5, 97.5)) -> dict:
    """Mean, sd (ddof=1; 0 for one value) and two percentiles of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(v, percentiles)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            f"p{percentiles[0]:g}": float(lo), f"p{percentiles[1]:g}": float(hi), "n_draws": int(v.size)}


# ----------------------------------------------------------------------------------------- MRPC
def positive_rate(train: Sequence[MrpcExample]) -> float:
    """Share of label-1 pairs in ``train``."""
    if not train:
        raise DataError("stratified baseline: the train split is empty")
    return sum(1 for ex in train if ex.label == 1) / len(train)


def mrpc_expected(p: float, y_true: Sequence[int]) -> dict:
    """Exact expected accuracy and F1/MCC at the expected confusion counts, in percent."""
    y = np.asarray(y_true, dtype=np.int64)
    n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
    q = n_pos / y.size
    tp, fp, fn, tn = p * n_pos, p * n_neg, (1 - p) * n_pos, (1 - p) * n_neg
    return {
        "expected_accuracy": 100.0 * (p * q + (1 - p) * (1 - q)),
        "f1_at_expected_counts": 100.0 * f1_from_counts(tp, fp, fn),
        "mcc_at_expected_counts": 100.0 * mcc_from_counts(tp, fp, fn, tn),
        "expected_counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "p_predict_positive": p, "positive_rate_evaluated": q, "n": int(y.size),
    }


def mrpc_draws(p: float, y_true: Sequence[int], n_draws: int, rng: np.random.Generator,
               block: int = 256) -> dict[str, np.ndarray]:
    """Accuracy, F1 and MCC (percent) of ``n_draws`` independent draws, drawn block by block."""
    y = np.asarray(y_true, dtype=bool)
    out: dict[str, list[float]] = {"accuracy": [], "f1": [], "mcc": []}
    done = 0
    while done < n_draws:
        b = min(block, n_draws - done)
        pred = rng.random((b, y.size)) < p
        tp, fp = (pred & y).sum(1), (pred & ~y).sum(1)
        fn, tn = (~pred & y).sum(1), (~pred & ~y).sum(1)
        for i in range(b):
            out["accuracy"].append(100.0 * (tp[i] + tn[i]) / y.size)
            out["f1"].append(100.0 * f1_from_counts(tp[i], fp[i], fn[i]))
            out["mcc"].append(100.0 * mcc_from_counts(tp[i], fp[i], fn[i], tn[i]))
        done += b
    return {k: np.asarray(v) for k, v in out.items()}


def mrpc_stratified(train: Sequence[MrpcExample], evaluate_on: Sequence[MrpcExample], n_draws: int,
                    rng: np.random.Generator, percentiles: tuple[float, float] = (2.5, 97.5)) -> dict:
    """The MRPC stratified random baseline: expected values (``metrics``) and draw summaries."""
    p = positive_rate(train)
    y = [int(ex.label) for ex in evaluate_on]
    exp = mrpc_expected(p, y)
    draws = mrpc_draws(p, y, n_draws, rng)
    metrics = {k: exp[k] for k in ("expected_accuracy", "f1_at_expected_counts", "mcc_at_expected_counts")}
    # Per example, the expected correctness: p for a positive pair, 1 − p for a negative one.
    per_example = {ex.id: (p if ex.label == 1 else 1.0 - p) for ex in evaluate_on}
    return {"name": "stratified_random", "params": {"p_predict_positive": p}, "metrics": metrics,
            "per_example": {"metric": "accuracy", "scores": per_example, "kind": "expected"},
            "expected_counts": exp["expected_counts"],
            "draws": {k: summarize(v, percentiles) for k, v in draws.items()}}


# ------------------------------------------------------------------------------------- SQuAD v2
def unanswerable_rate(train: Sequence[SquadExample]) -> float:
    """Share of unanswerable questions in ``train``."""
    if not train:
        raise DataError("stratified baseline: the train split is empty")
    return sum(1 for ex in train if ex.is_impossible) / len(train)


def median_answer_words(train: Sequence[SquadExample]) -> int:
    """Median length in words (:func:`word_offsets` tokens) of the first gold answer of each
    answerable training question, rounded half up, at least 1."""
    lengths = [len(word_offsets(ex.answers[0])[0]) for ex in train if not ex.is_impossible]
    if not lengths:
        return 1
    return max(1, int(np.floor(np.median(lengths) + 0.5)))


def span_texts(context: str, length: int) -> list[str]:
    """Every contiguous ``length``-word span of ``context`` as an exact substring (the whole word
    sequence if it is shorter; ``[""]`` for a context without words)."""
    starts, ends = word_offsets(context)
    n = len(starts)
    if n == 0:
        return [""]
    k = min(length, n)
    return [context[starts[i]:ends[i + k - 1]] for i in range(n - k + 1)]


def question_tables(examples: Sequence[SquadExample], length: int) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
    """Per question: (EM of "", F1 of "", EM of each span, F1 of each span), fractions, official metric."""
    cache: dict[str, tuple] = {}
    rows = []
    for ex in examples:
        if ex.context not in cache:
            cache[ex.context] = candidate_table([""] + span_texts(ex.context, length))
        em, f1 = span_scores(list(ex.answers), (), cache[ex.context])
        rows.append((float(em[0]), float(f1[0]), em[1:], f1[1:]))
    return rows


def expected_scores(rows: list, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Per question (rows of :func:`question_tables`), the exact expected EM and F1 (fractions) by linearity:
    p*score("") + (1-p)*mean over spans of score(span)."""
    em = np.array([p * r[0] + (1 - p) * r[2].mean() for r in rows])
    f1 = np.array([p * r[1] + (1 - p) * r[3].mean() for r in rows])
    return em, f1


def squad_expected(examples: Sequence[SquadExample], p: float, length: int, rows: list | None = None) -> dict:
    """Exact expected official EM/F1 (percent; overall, HasAns, NoAns) of the random-span baseline."""
    rows = rows if rows is not None else question_tables(examples, length)
    em, f1 = expected_scores(rows, p)
    has = np.array([not ex.is_impossible for ex in examples])
    out = {"expected_exact": float(100.0 * em.mean()), "expected_f1": float(100.0 * f1.mean()), "total": len(rows)}
    for name, mask in (("HasAns", has), ("NoAns", ~has)):
        if mask.any():
            out[f"{name}_expected_exact"] = float(100.0 * em[mask].mean())
            out[f"{name}_expected_f1"] = float(100.0 * f1[mask].mean())
            out[f"{name}_total"] = int(mask.sum())
    return out


def squad_draw_predictions(examples: Sequence[SquadExample], p: float, length: int,
                           rng: np.random.Generator) -> dict[str, str]:
    """One draw of the baseline as predicted texts (for scoring with the official metric)."""
    preds, cache = {}, {}
    for ex in examples:
        spans = cache.get(ex.context) or cache.setdefault(ex.context, span_texts(ex.context, length))
        preds[ex.id] = "" if rng.random() < p else spans[int(rng.integers(len(spans)))]
    return preds


def squad_draws(examples: Sequence[SquadExample], p: float, length: int, n_draws: int,
                rng: np.random.Generator, block: int = 64, rows: list | None = None) -> dict[str, np.ndarray]:
    """Official EM and F1 (percent) of ``n_draws`` draws, looked up in precomputed per-span scores.
    Draw d picks, per question, "" if u < p else span floor(v * n_spans) (u, v uniform) -- the same
    distribution as :func:`squad_draw_predictions`."""
    rows = rows if rows is not None else question_tables(examples, length)
    sizes = np.array([len(r[2]) for r in rows])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat_em, flat_f1 = np.concatenate([r[2] for r in rows]), np.concatenate([r[3] for r in rows])
    empty_em, empty_f1 = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    ems, f1s = [], []
    done = 0
    while done < n_draws:
        b = min(block, n_draws - done)
        abstain = rng.random((b, len(rows))) < p
        idx = offsets + np.minimum((rng.random((b, len(rows))) * sizes).astype(np.int64), sizes - 1)
        ems.append(100.0 * np.where(abstain, empty_em, flat_em[idx]).mean(1))
        f1s.append(100.0 * np.where(abstain, empty_f1, flat_f1[idx]).mean(1))
        done += b
    return {"exact": np.concatenate(ems), "f1": np.concatenate(f1s)}


def squad_stratified(train: Sequence[SquadExample], evaluate_on: Sequence[SquadExample], n_draws: int,
                     rng: np.random.Generator, percentiles: tuple[float, float] = (2.5, 97.5)) -> dict:
    """The SQuAD v2 stratified random baseline: exact expectations (``metrics``) and draw summaries."""
    p, length = unanswerable_rate(train), median_answer_words(train)
    rows = question_tables(evaluate_on, length)
    draws = squad_draws(evaluate_on, p, length, n_draws, rng, rows=rows)
    _, expected_f1 = expected_scores(rows, p)
    per_example = {ex.id: float(f1) for ex, f1 in zip(evaluate_on, expected_f1)}
    return {"name": "stratified_random", "params": {"p_no_answer": p, "span_words": length},
            "metrics": squad_expected(evaluate_on, p, length, rows),
            "per_example": {"metric": "f1", "scores": per_example, "kind": "expected"},
            "draws": {k: summarize(v, percentiles) for k, v in draws.items()}}
