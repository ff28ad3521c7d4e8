"""SQuAD v2 sliding-window lexical span scorer with a no-answer threshold (STUDY.md §7).

The idea is the sliding-window baseline of Richardson et al. (2013, MCTest, EMNLP): score a
candidate answer by the (inverse-frequency weighted) question words found in a window around it;
Rajpurkar et al. (2016, SQuAD, EMNLP) report this sliding-window baseline on SQuAD next to a logistic
regression over candidate spans with lexical-overlap features. Our variant, fixed here so the numbers are reproducible:

* Words: ``\\w+`` runs joined by in-word ``- ' ’ . ,`` (so "1,000", "U.S", "don't" stay whole), with
  character offsets; a predicted span is ``context[start of first word : end of last word]``, an
  exact substring. Matching keys are lower-cased words without a possessive "'s".
* Candidates: spans of 1..``span_max_words`` words whose first and last word is neither a stopword
  (scikit-learn's English list) nor a question word -- this also excludes spans made only of
  question words / stopwords.
* Score: sum over the *distinct* non-stopword question words of IDF(word) x credit(d), d = distance
  in words from the span to the word's nearest occurrence outside it (1 = adjacent); credit is
  (W + 1 - d) / W within W = ``span_window`` words on either side, else 0 (``span_proximity:
  linear``; ``none`` gives MCTest's flat window, credit 1). Computed for all spans at once from
  running nearest-occurrence indices (numpy). Confidence = score / sum of those IDFs, in [0, 1].
  Ties: higher score, then shorter span, then earlier span.
* IDF (``span_idf``): ``train_contexts`` -- log((1+N)/(1+df)) + 1 with df over the N distinct
  training paragraphs (unseen words get the maximum); ``context_sentences`` -- the same formula
  with the question's own paragraph split into sentences as documents (cf. MCTest inverse counts).
* No answer: predict "" when confidence < tau. tau is tuned on the VALIDATION split only: the grid is
  the unique validation confidences plus one value just above the largest (never answer); we take
  the tau maximising validation F1 (official metric), ties to the smaller tau; then apply it to test.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from lorascope.config.baselines import BaselinesConfig
from lorascope.data.types import SquadExample
from lorascope.metrics.squad_v2 import (
    evaluate_examples,
    get_tokens,
    gold_answers,
    normalize_answer,
    per_question_scores,
)

WORD_RE = re.compile(r"\w+(?:[-'’.,]\w+)*")
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
STOPWORDS = frozenset(ENGLISH_STOP_WORDS)


def word_offsets(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end character offsets of the words of ``text`` (see module docstring)."""
    spans = [m.span() for m in WORD_RE.finditer(text)]
    arr = np.array(spans, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def word_key(word: str) -> str:
    """Matching key of a word: lower-cased, possessive "'s" removed."""
    w = word.lower()
    return w[:-2] if len(w) > 3 and w[-2:] in ("'s", "’s") else w


def _keys(text: str) -> list[str]:
    return [word_key(m.group()) for m in WORD_RE.finditer(text)]


def candidate_table(candidates: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int], np.ndarray]:
    """Normalized strings, token-count matrix, vocabulary and token counts of candidate answers
    (official ``normalize_answer`` / ``get_tokens``); build once per context, score many questions."""
    toks = [get_tokens(c) for c in candidates]
    norm = np.array([" ".join(t) for t in toks], dtype=object)
    vocab = {w: i for i, w in enumerate(sorted({w for t in toks for w in t}))}
    counts = np.zeros((len(toks), max(1, len(vocab))), dtype=np.int64)
    for i, t in enumerate(toks):
        for w in t:
            counts[i, vocab[w]] += 1
    return norm, counts, vocab, counts.sum(1).astype(np.float64)


def span_scores(answers: Sequence[str], candidates: Sequence[str] | tuple, table: tuple | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Official per-question EM and F1 (fractions; max over the filtered gold answers) of every
    candidate text, vectorized over candidates with the official arithmetic (bit-identical to
    ``compute_exact`` / ``compute_f1``; checked against them on the whole SQuAD v2 dev set)."""
    norm, counts, vocab, len_pred = table if table is not None else candidate_table(candidates)
    em, f1 = np.zeros(len(norm)), np.zeros(len(norm))
    for g in gold_answers(answers):
        gt = get_tokens(g)
        gvec = np.zeros(counts.shape[1], dtype=np.int64)
        for w, c in Counter(gt).items():
            if w in vocab:
                gvec[vocab[w]] = c
        same = np.minimum(counts, gvec).sum(1).astype(np.float64)
        if len(gt) == 0:
            score = (len_pred == 0).astype(np.float64)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                prec = 1.0 * same / len_pred
                rec = 1.0 * same / len(gt)
                score = np.where((len_pred > 0) & (same > 0), (2 * prec * rec) / (prec + rec), 0.0)
        em = np.maximum(em, (norm == normalize_answer(g)).astype(np.float64))
        f1 = np.maximum(f1, score)
    return em, f1


# ------------------------------------------------------------------------------------------- IDF
class Idf:
    """IDF weights: over training paragraphs (``train_contexts``) or a paragraph's own sentences."""

    def __init__(self, mode: str, train_contexts: Sequence[str] = ()):
        self.mode = mode
        docs = list(dict.fromkeys(train_contexts)) if mode == "train_contexts" else []
        self.n_docs = len(docs)
        self.df: Counter = Counter(k for d in docs for k in set(_keys(d)))

    def weights(self, keys: Sequence[str], context: str) -> np.ndarray:
        """IDF of each key, log((1+N)/(1+df)) + 1."""
        if self.mode == "train_contexts":
            n, df = self.n_docs, self.df
        else:
            sents = [s for s in SENTENCE_RE.split(context) if s.strip()]
            n, df = len(sents), Counter(k for s in sents for k in set(_keys(s)))
        return np.array([math.log((1 + n) / (1 + df.get(k, 0))) + 1.0 for k in keys])


# --------------------------------------------------------------------------------------- scoring
def _context_table(context: str) -> tuple[np.ndarray, np.ndarray, dict[str, int], np.ndarray, np.ndarray]:
    starts, ends = word_offsets(context)
    keys = _keys(context)
    ids: dict[str, int] = {}
    key_ids = np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)
    stop = np.array([k in STOPWORDS for k in keys], dtype=bool)
    return starts, ends, ids, key_ids, stop


def score_question(context: str, question: str, idf: Idf, max_words: int, window: int,
                   proximity: str = "linear", table: tuple | None = None) -> tuple[str, float]:
    """Best candidate span text of ``context`` for ``question`` and its confidence in [0, 1]."""
    starts, ends, ids, key_ids, stop = table if table is not None else _context_table(context)
    n = len(key_ids)
    qkeys = list(dict.fromkeys(k for k in _keys(question) if k not in STOPWORDS))
    if n == 0 or not qkeys:
        return "", 0.0
    w = idf.weights(qkeys, context)
    qids = np.array([ids.get(k, -1) for k in qkeys], dtype=np.int64)
    match = key_ids[None, :] == qids[:, None]                                  # m x n
    pos, far = np.arange(n), n + window + 2
    col = np.full((len(qkeys), 1), far)
    # nearest occurrence strictly left of position i / at or right of position i, per question word
    last = np.concatenate([-col, np.maximum.accumulate(np.where(match, pos, -far), 1)], 1)
    nxt = np.concatenate([np.minimum.accumulate(np.where(match, pos, far)[:, ::-1], 1)[:, ::-1], col], 1)
    s = np.concatenate([np.arange(n - k + 1) for k in range(1, min(max_words, n) + 1)])
    k = np.concatenate([np.full(n - kk + 1, kk) for kk in range(1, min(max_words, n) + 1)])
    e = s + k
    dist = np.minimum(s - last[:, s], nxt[:, e] - e + 1)                      # m x spans, >= 1
    if proximity == "linear":
        credit = np.clip((window + 1 - dist) / window, 0.0, 1.0)
    else:
        credit = (dist <= window).astype(np.float64)
    score = w @ credit
    bad = stop | match.any(0)
    valid = ~bad[s] & ~bad[e - 1]
    if not valid.any():
        return "", 0.0
    s, k, e, score = s[valid], k[valid], e[valid], score[valid]
    best = np.lexsort((s, k, -score))[0]
    return context[starts[s[best]]:ends[e[best] - 1]], float(score[best] / w.sum())


def score_examples(examples: Sequence[SquadExample], idf: Idf, cfg: BaselinesConfig) -> list[tuple[str, float]]:
    """(best span, confidence) for every question; contexts are tokenized once each."""
    tables: dict[str, tuple] = {}
    out = []
    for ex in examples:
        table = tables.get(ex.context) or tables.setdefault(ex.context, _context_table(ex.context))
        out.append(score_question(ex.context, ex.question, idf, cfg.span_max_words, cfg.span_window,
                                  cfg.span_proximity, table))
    return out


def apply_tau(examples: Sequence[SquadExample], scored: Sequence[tuple[str, float]], tau: float) -> dict[str, str]:
    """Predictions: the span, or "" when its confidence is below ``tau``."""
    return {ex.id: ("" if conf < tau else text) for ex, (text, conf) in zip(examples, scored)}


def tune_tau(examples: Sequence[SquadExample], scored: Sequence[tuple[str, float]], *,
             split: str) -> tuple[float, dict]:
    """The tau maximising official F1 on ``examples`` (ties -> smaller tau). Validation split only."""
    if split != "validation":
        raise ValueError(f"tau is tuned on the validation split only, got split={split!r}")
    gold = {ex.id: list(ex.answers) for ex in examples}
    _, f1_span = per_question_scores(gold, {ex.id: t for ex, (t, _) in zip(examples, scored)})
    _, f1_empty = per_question_scores(gold, {ex.id: "" for ex in examples})
    conf = np.array([c for _, c in scored])
    order = np.argsort(conf, kind="stable")
    a = np.array([f1_span[ex.id] for ex in examples])[order]
    b = np.array([f1_empty[ex.id] for ex in examples])[order]
    grid = np.unique(conf)
    grid = np.append(grid, np.nextafter(grid[-1], np.inf))
    n_empty = np.searchsorted(conf[order], grid, side="left")  # conf < tau -> ""
    cum_a = np.concatenate([[0.0], np.cumsum(a)])
    cum_b = np.concatenate([[0.0], np.cumsum(b)])
    total = cum_b[n_empty] + (cum_a[-1] - cum_a[n_empty])
    best = int(np.flatnonzero(total >= total.max() - 1e-9)[0])
    tau = float(grid[best])
    metrics = dict(evaluate_examples(list(examples), apply_tau(examples, scored, tau)))
    always = dict(evaluate_examples(list(examples), apply_tau(examples, scored, -1.0)))
    return tau, {"grid_size": int(grid.size), "validation": metrics, "validation_always_answer": always}


def squad_sliding_window(
    train: Sequence[SquadExample],
    validation: Sequence[SquadExample],
    test: Sequence[SquadExample],
    cfg: BaselinesConfig,
) -> dict:
    """Fit IDF on train, tune tau on validation, report the official metric on test."""
    assert not {ex.id for ex in validation} & {ex.id for ex in test}, "validation and test share question ids"
    assert not {ex.context for ex in validation} & {ex.context for ex in test}, "validation and test share contexts"
    idf = Idf(cfg.span_idf, [ex.context for ex in train])
    tau, tuning = tune_tau(validation, score_examples(validation, idf, cfg), split="validation")
    preds = apply_tau(test, score_examples(test, idf, cfg), tau)
    return {
        "name": "sliding_window_lexical",
        "metrics": dict(evaluate_examples(list(test), preds)),
        "params": {
            "tau": tau,
            "tau_grid_size": tuning["grid_size"],
            "tuned_on": "validation",
            "validation_metrics": tuning["validation"],
            "validation_metrics_always_answer": tuning["validation_always_answer"],
            "span_idf": cfg.span_idf,
            "span_max_words": cfg.span_max_words,
            "span_window": cfg.span_window,
            "span_proximity": cfg.span_proximity,
        },
    }
