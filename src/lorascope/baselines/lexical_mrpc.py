"""MRPC lexical baseline: logistic regression on four surface features (STUDY.md §7).

Features of a pair (s1, s2), tokens = lower-cased ``\\w+`` runs (MRPC text is pre-tokenized):
1. cosine of the TF-IDF vectors of s1 and s2 (scikit-learn ``TfidfVectorizer``, fitted on the train
   split's sentences only, both sides, l2-normalized rows);
2. Jaccard overlap of the token sets, |A n B| / |A u B| (0 when both are empty);
3. absolute length difference in tokens, |len1 - len2|;
4. relative length difference, |len1 - len2| / max(len1, len2) (0 when both are empty).
They are standardized (``StandardScaler``, fitted on train) and fed to an L2 ``LogisticRegression``
(lbfgs, deterministic; C = ``lexical_C``) fitted on train. Validation and test metrics are reported;
nothing is tuned, so validation is only a second held-out view. Surface-similarity features like
these are the classic MSRP baselines (cf. the tf-idf cosine baseline of Mihalcea, Corley & Strapparava
2006, AAAI, "Corpus-based and knowledge-based measures of text semantic similarity").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from lorascope.config.baselines import BaselinesConfig
from lorascope.data.types import MrpcExample
from lorascope.errors import DataError
from lorascope.metrics.classification import mrpc_metrics

FEATURES = ("tfidf_cosine", "jaccard", "abs_len_diff", "rel_len_diff")
TOKEN_RE = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Lower-cased ``\\w+`` tokens."""
    return TOKEN_RE.findall(text.lower())


def fit_vectorizer(train: Sequence[MrpcExample]) -> TfidfVectorizer:
    """TF-IDF vectorizer fitted on the train sentences (both sides) only."""
    vec = TfidfVectorizer(tokenizer=tokens, lowercase=False, token_pattern=None)
    vec.fit([ex.sentence1 for ex in train] + [ex.sentence2 for ex in train])
    return vec


def pair_features(examples: Sequence[MrpcExample], vec: TfidfVectorizer) -> np.ndarray:
    """The n x 4 feature matrix (columns in :data:`FEATURES` order)."""
    a = vec.transform([ex.sentence1 for ex in examples])
    b = vec.transform([ex.sentence2 for ex in examples])
    cosine = np.asarray(a.multiply(b).sum(1)).ravel()
    rows = []
    for ex, cos in zip(examples, cosine):
        t1, t2 = tokens(ex.sentence1), tokens(ex.sentence2)
        s1, s2 = set(t1), set(t2)
        union = len(s1 | s2)
        diff = abs(len(t1) - len(t2))
        longest = max(len(t1), len(t2))
        rows.append((cos, len(s1 & s2) / union if union else 0.0, diff, diff / longest if longest else 0.0))
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))


def fit_lexical(train: Sequence[MrpcExample], cfg: BaselinesConfig) -> tuple[TfidfVectorizer, Pipeline]:
    """Fit the vectorizer and the standardized logistic regression on ``train``."""
    labels = {ex.label for ex in train}
    if labels != {0, 1}:
        raise DataError(f"lexical MRPC baseline: train needs both labels 0 and 1, found {sorted(labels)}")
    vec = fit_vectorizer(train)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.lexical_C, max_iter=cfg.lexical_max_iter))
    model.fit(pair_features(train, vec), np.array([ex.label for ex in train]))
    return vec, model


def predict(examples: Sequence[MrpcExample], vec: TfidfVectorizer, model: Pipeline) -> list[int]:
    """0/1 predictions (probability of paraphrase >= 0.5)."""
    return [int(v) for v in model.predict(pair_features(examples, vec))]


def mrpc_lexical(train: Sequence[MrpcExample], validation: Sequence[MrpcExample],
                 test: Sequence[MrpcExample], cfg: BaselinesConfig) -> dict:
    """Fit on train; metrics (percent) on test, plus validation metrics and the fitted coefficients."""
    vec, model = fit_lexical(train, cfg)
    lr = model[-1]
    val = mrpc_metrics([int(ex.label) for ex in validation], predict(validation, vec, model)) if validation else None
    return {"name": "lexical_logreg",
            "metrics": mrpc_metrics([int(ex.label) for ex in test], predict(test, vec, model)),
            "params": {"C": cfg.lexical_C, "features": list(FEATURES), "validation_metrics": val,
                       "coef_standardized": [float(c) for c in lr.coef_.ravel()],
                       "intercept": float(lr.intercept_[0]), "tuned_on": None}}
