"""Gram-matrix (n×n) formulations of CKA: the reference for the feature-space code, and RBF CKA.

Shapes: X (n, d_x), Y (n, d_y) with the same n; K, L are (n, n) symmetric Gram matrices. These build
n×n matrices, so they are for pooled representations (n ≤ a few thousand) and for tests; token-level
linear CKA goes through :class:`lorascope.drift.similarity.LinearCKAAccumulator`.

- Biased HSIC (Gretton et al. 2005; CKA: Kornblith et al. 2019, ICML): HSIC(K, L) = tr(KHLH)/(n−1)²,
  H = I − 11ᵀ/n. CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).
- Unbiased HSIC (Song et al. 2012, JMLR, Thm 2; used for debiased CKA by Nguyen et al. 2021, ICLR, and
  Murphy et al. 2024): with K̃, L̃ the Gram matrices with zeroed diagonals, n ≥ 4,
  HSIC_u = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)).
- RBF kernel k(x, x') = exp(−‖x − x'‖² / (2σ²)) with σ = factor × median pairwise Euclidean distance,
  per matrix (Kornblith et al. 2019 use a fraction of the median distance; their code takes the median
  of squared distances over all n² entries including the zero diagonal — we use the n(n−1)/2 distinct
  pairs and default factor 0.8, STUDY.md §8).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from lorascope.drift.similarity import SimilarityInputError, check_pair

DEFAULT_RBF_SIGMA_FACTOR = 0.8
DEFAULT_MAX_RBF_N = 4096  # an (n, n) float64 Gram is 128 MiB at this n; four are held at once


def _np(a: Any) -> np.ndarray:
    return a.cpu().numpy() if type(a).__module__.split(".")[0] == "torch" else a


def center_gram(K: np.ndarray) -> np.ndarray:
    """HKH with H = I − 11ᵀ/n, for a symmetric (n, n) K; computed without forming H."""
    K = np.asarray(K, dtype=np.float64)
    means = K.mean(0)
    return K - means[None, :] - means[:, None] + means.mean()


def hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """tr(KHLH) / (n−1)² for (n, n) Gram matrices K, L (Gretton et al. 2005)."""
    n = K.shape[0]
    return float((center_gram(K) * center_gram(L)).sum()) / (n - 1) ** 2


def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC of Song et al. 2012 (Thm 2), exactly as in the module docstring; n ≥ 4."""
    n = K.shape[0]
    if n < 4:
        raise SimilarityInputError(f"the unbiased HSIC needs n ≥ 4, got {n}")
    Kt = np.array(K, dtype=np.float64)
    Lt = np.array(L, dtype=np.float64)
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    k1, l1 = Kt.sum(1), Lt.sum(1)  # K̃1, L̃1
    trace = float((Kt * Lt).sum())  # tr(K̃L̃) for symmetric matrices
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(k1 @ l1)) / (n * (n - 3))


def cka_from_grams(K: np.ndarray, L: np.ndarray, debiased: bool = False) -> float:
    """CKA from (n, n) Gram matrices, biased (HSIC with H) or debiased (unbiased HSIC)."""
    hsic = hsic_unbiased if debiased else hsic_biased
    kk, ll = hsic(K, K), hsic(L, L)
    if not (kk > 0 and ll > 0):
        raise SimilarityInputError(f"CKA is undefined: self-HSIC values {kk:.3g}, {ll:.3g} (constant input?)")
    return hsic(K, L) / math.sqrt(kk * ll)


def linear_cka_gram(X: Any, Y: Any) -> float:
    """Reference linear CKA via K = XXᵀ, L = YYᵀ (n×n); X (n, d_x), Y (n, d_y)."""
    X, Y = (_np(a) for a in check_pair(X, Y))
    return cka_from_grams(X @ X.T, Y @ Y.T)


def linear_cka_debiased_gram(X: Any, Y: Any) -> float:
    """Reference debiased linear CKA via unbiased HSIC on the raw (uncentred) K = XXᵀ, L = YYᵀ."""
    X, Y = (_np(a) for a in check_pair(X, Y))
    return cka_from_grams(X @ X.T, Y @ Y.T, debiased=True)


def _centred_unit(X: np.ndarray) -> tuple[np.ndarray, float]:
    """Column-centred X divided by its RMS row norm (distances are shift-invariant), and that RMS."""
    C = X - X.mean(0)
    m = float(np.abs(C).max())
    if m == 0.0:
        return C, 0.0
    C = C / m
    rms = float(np.sqrt((C * C).sum() / C.shape[0]))
    return C / rms, rms * m


def _squared_distances(C: np.ndarray) -> np.ndarray:
    sq = (C * C).sum(1)
    D = sq[:, None] + sq[None, :] - 2.0 * (C @ C.T)
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def median_pairwise_distance(X: Any, name: str = "X") -> float:
    """Median Euclidean distance over the n(n−1)/2 distinct row pairs of X (n, d), in X's units."""
    X = _np(check_pair(X, X, (name, name))[0])
    C, scale = _centred_unit(X)
    if scale == 0.0:
        return 0.0
    D = _squared_distances(C)
    iu = np.triu_indices(X.shape[0], k=1)
    return float(np.median(np.sqrt(D[iu]))) * scale


def rbf_gram(X: Any, sigma_factor: float = DEFAULT_RBF_SIGMA_FACTOR, name: str = "X") -> np.ndarray:
    """(n, n) RBF Gram of X (n, d) with σ = sigma_factor × median pairwise distance of X."""
    if not sigma_factor > 0:
        raise SimilarityInputError(f"the RBF sigma factor must be positive, got {sigma_factor}")
    X = _np(check_pair(X, X, (name, name))[0])
    if X.shape[0] < 2:
        raise SimilarityInputError(f"{name}: RBF CKA needs at least 2 rows, got {X.shape[0]}")
    C, scale = _centred_unit(X)  # unit RMS: the Gram below is unchanged, σ is relative
    D = _squared_distances(C) if scale > 0 else np.zeros((X.shape[0],) * 2)
    med = float(np.median(np.sqrt(D[np.triu_indices(X.shape[0], k=1)])))
    # Distances of centred unit-RMS data carry ~1e-8 rounding noise; a median below 1e-6 means at least
    # half of the rows coincide, so the bandwidth (and the kernel) is degenerate.
    if med <= 1e-6:
        raise SimilarityInputError(
            f"{name}: the median pairwise distance is zero (at least half of the row pairs are identical, "
            f"e.g. constant input): the RBF bandwidth and RBF CKA are undefined")
    sigma = sigma_factor * med
    return np.exp(-D / (2.0 * sigma * sigma))


def rbf_cka(X: Any, Y: Any, sigma_factor: float = DEFAULT_RBF_SIGMA_FACTOR, max_n: int = DEFAULT_MAX_RBF_N,
            names: Sequence[str] = ("X", "Y")) -> float:
    """RBF CKA (Kornblith et al. 2019) of X (n, d_x), Y (n, d_y), biased HSIC, σ per matrix.

    Builds n×n matrices, so refuses n > ``max_n`` with a SimilarityInputError."""
    X, Y = check_pair(X, Y, names)
    n = X.shape[0]
    if n > max_n:
        raise SimilarityInputError(
            f"RBF CKA needs n×n Gram matrices; n={n} exceeds the limit {max_n} (raise max_n, or subsample)")
    return cka_from_grams(rbf_gram(X, sigma_factor, names[0]), rbf_gram(Y, sigma_factor, names[1]))
