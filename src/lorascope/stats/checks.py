"""Input validation shared by the statistics: 1-D float64, finite, long enough, equal lengths.

A statistic must never return a silent NaN, so everything that could produce one is refused here with a
``StatsInputError`` naming the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lorascope.errors import StatsInputError


def as_sample(values: Any, name: str = "values", min_n: int = 1) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers with at least ``min_n`` entries."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(f"{name}: not numeric ({exc})") from None
    if arr.ndim != 1:
        raise StatsInputError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    if arr.size < min_n:
        raise StatsInputError(f"{name}: needs at least {min_n} value(s), got {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise StatsInputError(f"{name}: non-finite value {arr[bad][0]!r} at index {int(np.argmax(bad))}")
    return arr


def as_pair(a: Any, b: Any, names: tuple[str, str] = ("a", "b"), min_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two paired samples (row i of ``a`` and of ``b`` belong together) of equal length ≥ ``min_n``."""
    x = as_sample(a, names[0])
    y = as_sample(b, names[1])
    if x.size != y.size:
        raise StatsInputError(f"paired samples differ in length: {names[0]} has {x.size}, {names[1]} has {y.size}")
    if x.size < min_n:
        raise StatsInputError(f"paired test needs at least {min_n} pairs, got {x.size}")
    return x, y


def check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise StatsInputError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def check_resamples(resamples: int) -> int:
    if int(resamples) != resamples or resamples < 1:
        raise StatsInputError(f"resamples must be a positive integer, got {resamples}")
    return int(resamples)


def check_rng(rng: Any) -> np.random.Generator:
    """Randomness only through an explicit Generator: a seed or None is refused (no hidden global state)."""
    if not isinstance(rng, np.random.Generator):
        raise StatsInputError(f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), got {rng!r}")
    return rng
