"""Task metrics: MRPC classification metrics and the official SQuAD 2.0 exact match / F1."""

from lorascope.metrics.classification import confusion_counts, f1_from_counts, mcc_from_counts, mrpc_metrics
from lorascope.metrics.squad_v2 import (
    evaluate_examples,
    evaluate_official,
    load_dataset_json,
    load_predictions,
    per_question_scores,
)

__all__ = [
    "confusion_counts",
    "f1_from_counts",
    "mcc_from_counts",
    "mrpc_metrics",
    "evaluate_examples",
    "evaluate_official",
    "load_dataset_json",
    "load_predictions",
    "per_question_scores",
]
