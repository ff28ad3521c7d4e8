"""Per-example cosine similarity between base and tuned activations, raw and base-standardized (§8).

Shapes: X (n, d) base activations, Y (n, d) tuned activations (equal widths: dimension k of X and Y
must be the same unit, as for hidden states of one architecture). The statistic is the mean over
examples of cos(x_i, y_i) with a 95% t confidence interval (Student t, n − 1 degrees of freedom).

Raw cosine is dominated by a few "rogue" dimensions of very large magnitude in transformer hidden
states (Timkey & van Schijndel 2021, "All bark and no bite"), so we also report it after standardizing
every dimension with the BASE model's statistics: z = (v − μ_X) / σ_X, applied to both x_i and y_i (μ_X,
σ_X: per-dimension mean and population sd of X over the n rows). A dimension that is constant in the base
over the probes (σ_X < ε·rms(σ_X), ε = 1e-6) has no scale: any movement of the tuned model there becomes
a huge standardized value that swamps every other dimension (we saw a standardized cosine of 1.7e-5 next
to a raw cosine of 0.978). So the standardized cosine is then *undefined*: ``cosine_standardized_*`` are
None with a ``cosine_standardized_note`` naming how many dimensions are constant — never a silent number.

Streaming: the raw statistic needs one pass. The standardized one needs μ_X, σ_X before the per-example
cosines can be formed (cos is not linear in the data, so no fixed-size sums make it exact in one pass);
use two passes: ``CosineAccumulator(d)`` → ``base_stats()`` on pass 1, then
``CosineAccumulator(d, base_mean, base_sd)`` on pass 2 (or base statistics from another probe set).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from lorascope.drift.similarity import SimilarityInputError, as_matrix, check_pair

DEFAULT_EPS = 1e-6


def _np(a: Any) -> np.ndarray:
    return a.cpu().numpy() if type(a).__module__.split(".")[0] == "torch" else np.asarray(a)


def _unit_rows(A, name: str, offset: int = 0):
    """Rows of A scaled to unit norm (via a max-abs prescale: no under/overflow); zero rows are an error."""
    m = abs(A).max(1)
    m = m.values if hasattr(m, "values") else m
    zero = m == 0
    if bool(zero.any()):
        idx = np.flatnonzero(_np(zero))
        raise SimilarityInputError(f"{name}: {idx.size} row(s) with zero norm (first: row {int(idx[0]) + offset}); "
                                   "cosine similarity is undefined for them")
    A = A / m[:, None]
    return A / ((A * A).sum(1) ** 0.5)[:, None]


def per_example_cosine(X, Y, names: Sequence[str] = ("X", "Y"), offset: int = 0):
    """cos(x_i, y_i) for each row: (n,) float64, same backend as the inputs."""
    return (_unit_rows(X, names[0], offset) * _unit_rows(Y, names[1], offset)).sum(1)


def constant_dimensions(sd: np.ndarray, eps: float = DEFAULT_EPS, name: str = "X") -> int:
    """How many dimensions have σ below ε·rms(σ) — no scale of their own, so standardizing by σ is undefined
    there; error if every dimension is constant."""
    top = float(np.max(sd))
    rms = top * float(np.sqrt(np.mean((sd / top) ** 2))) if top > 0 else 0.0  # no overflow in sd²
    if rms == 0.0:
        raise SimilarityInputError(f"{name} is constant in every dimension: the base-standardized cosine is undefined")
    return int((sd < eps * rms).sum())


def t_interval(mean: float, sd: float, n: int, confidence: float = 0.95) -> list[float]:
    """Student-t interval mean ± t_{(1+c)/2, n−1} · sd/√n (sd with ddof=1); n ≥ 2."""
    if n < 2:
        raise SimilarityInputError(f"a confidence interval needs at least 2 examples, got {n}")
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return [mean - half, mean + half]


class _Moments:
    """Chan et al. (1979) parallel merge of count, mean and sum of squared deviations (float64)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, V) -> None:  # V: (b,) or (b, d), numpy or torch
        b = V.shape[0]
        mean = V.mean(0)
        m2 = ((V - mean) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = b, mean, m2
            return
        n = self.n + b
        delta = mean - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * b / n)
        self.n = n


class CosineAccumulator:
    """Streaming mean cosine (raw; and base-standardized when ``base_mean``/``base_sd`` are given).

    ``update(X_batch, Y_batch)`` with (b, d) numpy arrays or torch tensors; ``result()`` → dict with
    ``n``, ``cosine_mean``, ``cosine_sd``, ``cosine_ci95`` and, with base statistics,
    ``cosine_standardized_mean``/``_sd``/``_ci95``; ``base_stats()`` → (μ_X, σ_X) of the rows seen.
    """

    def __init__(self, d: int, base_mean: Any = None, base_sd: Any = None, eps: float = DEFAULT_EPS,
                 confidence: float = 0.95, names: Sequence[str] = ("X", "Y")):
        self.d, self.eps, self.confidence, self.names = int(d), eps, confidence, tuple(names)
        if (base_mean is None) != (base_sd is None):
            raise SimilarityInputError("give both base_mean and base_sd, or neither")
        self._mu = self._sd = None
        if base_mean is not None:
            self._mu = np.asarray(_np(base_mean), dtype=np.float64).reshape(-1)
            sd = np.asarray(_np(base_sd), dtype=np.float64).reshape(-1)
            if self._mu.shape != (self.d,) or sd.shape != (self.d,):
                raise SimilarityInputError(f"base_mean and base_sd must have shape ({self.d},)")
            if not (np.isfinite(self._mu).all() and np.isfinite(sd).all() and (sd >= 0).all()):
                raise SimilarityInputError("base_mean/base_sd must be finite with sd ≥ 0")
            self._sd = sd
            self._constant = constant_dimensions(sd, eps, self.names[0])  # > 0: reported as undefined, not computed
        self._raw, self._std, self._base = _Moments(), _Moments(), _Moments()
        self._dev: dict = {}

    def update(self, X: Any, Y: Any) -> "CosineAccumulator":
        X = as_matrix(X, self.names[0])
        Y = as_matrix(Y, self.names[1], like=X)
        if X.shape != Y.shape or X.shape[1] != self.d:
            raise SimilarityInputError(f"cosine needs equal shapes (b, {self.d}); got {tuple(X.shape)} and "
                                       f"{tuple(Y.shape)}")
        offset = self._raw.n
        self._raw.add(_np(per_example_cosine(X, Y, self.names, offset)))
        if self._mu is None:  # pass 1: collect the base statistics for pass 2
            self._base.add(X)
        elif not self._constant:
            if "mu" not in self._dev:  # base statistics in the batches' backend and device
                self._dev["mu"] = as_matrix(self._mu[None, :], "base_mean", like=X)[0]
                self._dev["sd"] = as_matrix(self._sd[None, :], "base_sd", like=X)[0]
            mu, sd = self._dev["mu"], self._dev["sd"]
            names = [f"{nm} (standardized)" for nm in self.names]
            self._std.add(_np(per_example_cosine((X - mu) / sd, (Y - mu) / sd, names, offset)))
        return self

    def base_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and population sd (ddof=0) of the X rows seen so far: (d,), (d,).

        Only collected in pass-1 mode (no base statistics given to the constructor)."""
        if self._mu is not None:
            raise SimilarityInputError("base statistics were given to this accumulator; it does not collect them")
        if self._base.n == 0:
            raise SimilarityInputError("no rows seen yet")
        mean, sd = _np(self._base.mean).astype(np.float64), np.sqrt(_np(self._base.m2) / self._base.n)
        if not (np.isfinite(mean).all() and np.isfinite(sd).all()):
            raise SimilarityInputError(f"{self.names[0]}: base statistics overflowed (|x| ≳ 1e150); rescale the data")
        return mean, sd

    def _summary(self, mom: _Moments, prefix: str) -> dict:
        n = mom.n
        mean = float(mom.mean)
        sd = math.sqrt(max(float(mom.m2), 0.0) / (n - 1))
        lo, hi = t_interval(mean, sd, n, self.confidence)
        return {f"{prefix}_mean": mean, f"{prefix}_sd": sd, f"{prefix}_ci95": [lo, hi]}

    def result(self) -> dict:
        if self._raw.n < 2:
            raise SimilarityInputError(f"cosine similarity with a CI needs at least 2 rows, got {self._raw.n}")
        out = {"n": self._raw.n, **self._summary(self._raw, "cosine")}
        if self._mu is not None and self._constant:
            out.update(cosine_standardized_mean=None, cosine_standardized_sd=None, cosine_standardized_ci95=None,
                       cosine_standardized_note=f"the base model is constant over the probes in {self._constant} of "
                       f"{self.d} dimensions: standardizing by its sd is undefined there (raw cosine is reported)")
        elif self._mu is not None:
            out.update(self._summary(self._std, "cosine_standardized"))
        return out


def cosine_similarity(X: Any, Y: Any, *, standardize: bool = True, eps: float = DEFAULT_EPS,
                      confidence: float = 0.95, names: Sequence[str] = ("X", "Y")) -> dict:
    """Mean cos(x_i, y_i) over rows of X (n, d), Y (n, d) with a t-CI; standardized with X's own statistics.

    Returns ``n``, ``cosine_mean``, ``cosine_sd``, ``cosine_ci95`` and (``standardize=True``)
    ``cosine_standardized_mean``, ``cosine_standardized_sd``, ``cosine_standardized_ci95``."""
    X, Y = check_pair(X, Y, names)
    if X.shape[1] != Y.shape[1]:
        raise SimilarityInputError(f"cosine needs equal widths; {names[0]} has d={X.shape[1]}, "
                                   f"{names[1]} has d={Y.shape[1]}")
    if X.shape[0] < 2:
        raise SimilarityInputError(f"cosine similarity with a CI needs at least 2 rows, got {X.shape[0]}")
    base = None
    if standardize:
        mean = X.mean(0)
        C = X - mean
        m = abs(C).max(0)
        m = _np(m.values if hasattr(m, "values") else m)
        m = np.where(m > 0, m, 1.0)  # per-dimension prescale: no overflow in the squares
        base = (_np(mean), m * np.sqrt(((_np(C) / m) ** 2).mean(0)))
    acc = CosineAccumulator(X.shape[1], *(base or (None, None)), eps=eps, confidence=confidence, names=names)
    return acc.update(X, Y).result()
