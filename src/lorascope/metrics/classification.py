"""MRPC metrics (accuracy, F1 of the positive class, Matthews correlation) from confusion counts.

Reported values are percentage points (x100), as GLUE reports them -- MCC included. The count
helpers accept floats so that expected-value computations (e.g. a random-guess baseline with
fractional expected counts) go through the very same formulas. Everything is float64.

Degenerate cases, defined explicitly:

* F1 = 0.0 whenever TP = 0 (covers "no positive predictions", "no positives" and both). This is
  what sklearn's ``f1_score`` returns with ``zero_division=0`` (and with its default "warn").
* MCC = 0.0 when any of the four marginals (TP+FP, TP+FN, TN+FP, TN+FN) is zero, as sklearn's
  ``matthews_corrcoef`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lorascope.errors import MetricInputError

__all__ = ["confusion_counts", "f1_from_counts", "mcc_from_counts", "mrpc_metrics"]


def _label(v: object, name: str, i: int) -> int:
    """``v`` as 0/1, accepting Python ints and numpy integer scalars (never bools or floats)."""
    is_np_int = getattr(getattr(v, "dtype", None), "kind", "") in ("i", "u") and getattr(v, "ndim", 1) == 0
    if (isinstance(v, int) and not isinstance(v, bool)) or is_np_int:
        if int(v) in (0, 1):  # type: ignore[call-overload]
            return int(v)  # type: ignore[call-overload]
    raise MetricInputError(f"{name}[{i}] = {v!r}: labels must be the integers 0 or 1")


def _validate(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[list[int], list[int]]:
    yt, yp = list(y_true), list(y_pred)
    if len(yt) != len(yp):
        raise MetricInputError(f"length mismatch: {len(yt)} labels in y_true vs {len(yp)} in y_pred")
    if not yt:
        raise MetricInputError("no examples: y_true and y_pred are empty")
    return [_label(v, "y_true", i) for i, v in enumerate(yt)], [_label(v, "y_pred", i) for i, v in enumerate(yp)]


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    """``{"tp", "fp", "fn", "tn"}`` with 1 as the positive class (inputs validated as in
    :func:`mrpc_metrics`)."""
    yt, yp = _validate(y_true, y_pred)
    tp = sum(1 for t, p in zip(yt, yp) if t == 1 and p == 1)
    fp = sum(1 for t, p in zip(yt, yp) if t == 0 and p == 1)
    fn = sum(1 for t, p in zip(yt, yp) if t == 1 and p == 0)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(yt) - tp - fp - fn}


def _count(name: str, c: float) -> float:
    if isinstance(c, (bool, str, bytes)):
        raise MetricInputError(f"count {name} = {c!r} is not a number")
    try:
        x = float(c)
    except (TypeError, ValueError):
        raise MetricInputError(f"count {name} = {c!r} is not a number") from None
    if not math.isfinite(x) or x < 0.0:
        raise MetricInputError(f"count {name} = {c!r} must be finite and >= 0")
    return x


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """F1 of the positive class as a fraction in [0, 1]: 2TP / (2TP + FP + FN); 0.0 if TP == 0.

    Counts may be fractional (expected counts); negative, NaN or infinite counts raise
    :class:`~lorascope.errors.MetricInputError`.
    """
    tp_, fp_, fn_ = _count("tp", tp), _count("fp", fp), _count("fn", fn)
    if tp_ == 0.0:
        return 0.0
    return 2.0 * tp_ / (2.0 * tp_ + fp_ + fn_)


def mcc_from_counts(tp: float, fp: float, fn: float, tn: float) -> float:
    """Matthews correlation coefficient in [-1, 1] from (possibly fractional) counts.

    MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 0.0 when any marginal is zero
    (sklearn's convention). The result is clipped to [-1, 1] to absorb rounding.
    """
    tp_, fp_, fn_, tn_ = _count("tp", tp), _count("fp", fp), _count("fn", fn), _count("tn", tn)
    marginals = (tp_ + fp_, tp_ + fn_, tn_ + fp_, tn_ + fn_)
    if any(m == 0.0 for m in marginals):
        return 0.0
    prod = math.prod(marginals)  # exact for integer counts below ~2**13 (then sqrt is exact too)
    if not (math.isfinite(prod) and prod > 0.0):
        # Overflow or underflow: MCC is scale-invariant, so rescale the counts to a max of 1.
        s = max(tp_, fp_, fn_, tn_)
        tp_, fp_, fn_, tn_ = tp_ / s, fp_ / s, fn_ / s, tn_ / s
        prod = math.prod((tp_ + fp_, tp_ + fn_, tn_ + fp_, tn_ + fn_))
    return max(-1.0, min(1.0, (tp_ * tn_ - fp_ * fn_) / math.sqrt(prod)))


def mrpc_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """``{"accuracy", "f1", "mcc"}`` in percentage points (floats) plus ``"n"`` (number of examples).

    Raises :class:`~lorascope.errors.MetricInputError` on a label outside {0, 1} (naming the index
    and value), a length mismatch, or empty input.
    """
    c = confusion_counts(y_true, y_pred)
    n = c["tp"] + c["fp"] + c["fn"] + c["tn"]
    return {
        "accuracy": 100.0 * (c["tp"] + c["tn"]) / n,
        "f1": 100.0 * f1_from_counts(c["tp"], c["fp"], c["fn"]),
        "mcc": 100.0 * mcc_from_counts(c["tp"], c["fp"], c["fn"], c["tn"]),
        "n": n,
    }
