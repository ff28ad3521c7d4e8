"""Majority-class baselines (STUDY.md §7).

* MRPC: the majority label of the *training* split, predicted for every test pair. On the real data
  (GLUE train 67.45% positive; MSRP test 1,147/1,725 positive) this is "always paraphrase":
  accuracy 66.49, F1 79.87, MCC 0 -- the numbers §7 fixes.
* SQuAD v2: always answer "" (no answer). Under the official metric every unanswerable question
  scores EM = F1 = 1 and every answerable one 0, so EM = F1 = the share of unanswerable questions
  (50.07 on the official dev set: 5,945 / 11,873; Rajpurkar et al. 2018 report 48.9 test F1 for it).
"""

from __future__ import annotations

from collections.abc import Sequence

from lorascope.data.types import MrpcExample, SquadExample
from lorascope.errors import DataError
from lorascope.metrics.classification import mrpc_metrics


def majority_label(train: Sequence[MrpcExample]) -> int:
    """The most frequent label among ``train``; a tie goes to 1 (the paraphrase class), so that
    the baseline stays the familiar "always positive" one on balanced toy data."""
    if not train:
        raise DataError("majority baseline: the train split is empty")
    n_pos = sum(1 for ex in train if ex.label == 1)
    return 1 if 2 * n_pos >= len(train) else 0


def mrpc_majority(train: Sequence[MrpcExample], evaluate_on: Sequence[MrpcExample]) -> dict:
    """Predict the train majority label for every pair of ``evaluate_on``; metrics in percent."""
    label = majority_label(train)
    y_true = [int(ex.label) for ex in evaluate_on]
    metrics = mrpc_metrics(y_true, [label] * len(y_true))
    per_example = {ex.id: float(ex.label == label) for ex in evaluate_on}
    return {"name": "majority", "params": {"label": label}, "metrics": metrics,
            "per_example": {"metric": "accuracy", "scores": per_example, "kind": "deterministic"}}


def squad_always_no_answer(evaluate_on: Sequence[SquadExample]) -> dict:
    """Predict "" for every question and score it with the official SQuAD v2 metric."""
    from lorascope.metrics.squad_v2 import evaluate_examples

    preds = {ex.id: "" for ex in evaluate_on}
    per_example = {ex.id: float(ex.is_impossible) for ex in evaluate_on}  # EM = F1 = 1 exactly when unanswerable
    return {"name": "always_no_answer", "params": {}, "metrics": evaluate_examples(list(evaluate_on), preds),
            "per_example": {"metric": "f1", "scores": per_example, "kind": "deterministic"}}
