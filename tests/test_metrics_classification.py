"""MRPC metrics: hand-computed cases, degenerate cases, input errors, and agreement with sklearn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.errors import MetricInputError
from lorascope.metrics.classification import confusion_counts, f1_from_counts, mcc_from_counts, mrpc_metrics


def test_hand_computed_balanced() -> None:
    y_true = [1, 1, 1, 0, 0, 0, 1, 0]
    y_pred = [1, 1, 0, 0, 1, 0, 1, 0]
    # TP = idx 0,1,6 -> 3; FN = idx 2 -> 1; FP = idx 4 -> 1; TN = idx 3,5,7 -> 3
    assert confusion_counts(y_true, y_pred) == {"tp": 3, "fp": 1, "fn": 1, "tn": 3}
    m = mrpc_metrics(y_true, y_pred)
    # accuracy 6/8; F1 = 2*3/(2*3+1+1) = 0.75; MCC = (3*3-1*1)/sqrt(4*4*4*4) = 8/16
    assert m == {"accuracy": 75.0, "f1": 75.0, "mcc": 50.0, "n": 8}
    assert all(isinstance(m[k], float) for k in ("accuracy", "f1", "mcc"))


def test_hand_computed_asymmetric() -> None:
    m = mrpc_metrics([1, 0, 1, 1], [1, 1, 0, 1])
    # TP=2 FP=1 FN=1 TN=0: acc 2/4; F1 = 4/6; MCC = (0 - 1)/sqrt(3*3*1*1) = -1/3
    assert m["accuracy"] == 50.0
    assert m["f1"] == pytest.approx(200.0 / 3.0, abs=1e-12)
    assert m["mcc"] == pytest.approx(-100.0 / 3.0, abs=1e-12)
    assert m["n"] == 4


def test_perfect_and_inverted() -> None:
    assert mrpc_metrics([0, 1, 1, 0], [0, 1, 1, 0]) == {"accuracy": 100.0, "f1": 100.0, "mcc": 100.0, "n": 4}
    assert mrpc_metrics([0, 1, 1, 0], [1, 0, 0, 1]) == {"accuracy": 0.0, "f1": 0.0, "mcc": -100.0, "n": 4}


@pytest.mark.parametrize(
    ("y_true", "y_pred", "expected"),
    [
        ([1, 1, 0, 0], [0, 0, 0, 0], {"accuracy": 50.0, "f1": 0.0, "mcc": 0.0}),  # no positive predictions
        ([0, 0, 0], [0, 0, 0], {"accuracy": 100.0, "f1": 0.0, "mcc": 0.0}),  # no positives at all
        ([0, 0, 0], [1, 0, 1], {"accuracy": 100.0 / 3.0, "f1": 0.0, "mcc": 0.0}),  # TP = 0, no positives
        ([1, 1, 1], [1, 1, 1], {"accuracy": 100.0, "f1": 100.0, "mcc": 0.0}),  # one class: MCC marginal 0
        ([1, 0, 1], [1, 1, 1], {"accuracy": 200.0 / 3.0, "f1": 80.0, "mcc": 0.0}),  # all predicted positive
        ([1], [0], {"accuracy": 0.0, "f1": 0.0, "mcc": 0.0}),
    ],
)
def test_degenerate_cases(y_true: list[int], y_pred: list[int], expected: dict[str, float]) -> None:
    m = mrpc_metrics(y_true, y_pred)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-12), k


def test_count_helpers_accept_floats() -> None:
    assert f1_from_counts(2.5, 1.5, 0.5) == pytest.approx(5.0 / 7.0, abs=1e-15)
    assert f1_from_counts(0.0, 3.0, 2.0) == 0.0
    # Expected counts of a predictor independent of the label (P(y=1)=0.6835, P(pred=1)=0.3, n=100)
    # have TP*TN == FP*FN, hence MCC 0.
    p, q, n = 0.6835, 0.3, 100.0
    tp, fp, fn, tn = p * q * n, (1 - p) * q * n, p * (1 - q) * n, (1 - p) * (1 - q) * n
    assert abs(mcc_from_counts(tp, fp, fn, tn)) < 1e-12
    assert mcc_from_counts(3.0, 1.0, 1.0, 3.0) == 0.5
    assert mcc_from_counts(np.float64(3), np.int64(1), 1, 3) == 0.5
    assert mcc_from_counts(0.0, 0.0, 2.5, 4.0) == 0.0  # TP+FP marginal is zero
    # Huge or tiny counts neither overflow nor underflow the denominator.
    assert mcc_from_counts(1e200, 0.0, 0.0, 1e200) == 1.0
    assert mcc_from_counts(1e200, 1e200, 0.0, 1e200) == pytest.approx(0.5, abs=1e-15)
    assert mcc_from_counts(1e-200, 1e-200, 0.0, 1e-200) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "3", None, True])
def test_count_helpers_reject_bad_counts(bad: object) -> None:
    with pytest.raises(MetricInputError, match="count tp"):
        f1_from_counts(bad, 1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="count tp"):
        mcc_from_counts(bad, 1.0, 1.0, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "pattern"),
    [
        ([0, 1, 1, 2], [0, 1, 1, 1], r"y_true\[3\] = 2"),
        ([0, 1], [0, -1], r"y_pred\[1\] = -1"),
        ([0, 1], [0, "1"], r"y_pred\[1\] = '1'"),
        ([0, 1.0], [0, 1], r"y_true\[1\] = 1\.0"),
        ([True, 0], [1, 0], r"y_true\[0\] = True"),
        ([0, None], [1, 0], r"y_true\[1\] = None"),
        ([0, 1, 1], [0, 1], r"length mismatch: 3 .* 2"),
        ([], [], r"empty"),
    ],
)
def test_bad_inputs_raise(y_true: list, y_pred: list, pattern: str) -> None:
    with pytest.raises(MetricInputError, match=pattern):
        mrpc_metrics(y_true, y_pred)


def test_numpy_inputs_accepted() -> None:
    yt = np.array([1, 0, 1, 1], dtype=np.int64)
    yp = np.array([1, 1, 0, 1], dtype=np.int8)
    assert mrpc_metrics(yt, yp) == mrpc_metrics([1, 0, 1, 1], [1, 1, 0, 1])


_pairs = st.integers(min_value=1, max_value=300).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


@settings(max_examples=400, deadline=None)
@given(_pairs)
def test_agrees_with_sklearn(pair: tuple[list[int], list[int]]) -> None:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    y_true, y_pred = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = accuracy_score(y_true, y_pred)
        f1 = f1_score(y_true, y_pred, labels=[0, 1], pos_label=1, average="binary", zero_division=0)
        mcc = matthews_corrcoef(y_true, y_pred)
    m = mrpc_metrics(y_true, y_pred)
    assert m["n"] == len(y_true)
    assert abs(m["accuracy"] / 100.0 - acc) <= 1e-9
    assert abs(m["f1"] / 100.0 - f1) <= 1e-9
    assert abs(m["mcc"] / 100.0 - mcc) <= 1e-9
