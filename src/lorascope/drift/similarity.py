"""Linear CKA and debiased linear CKA in feature space, streamed over batches in float64 (STUDY.md §8).

Shapes: X is (n, d_x) base-model activations, Y is (n, d_y) tuned-model activations; row i of X and
row i of Y are the same example (or token). Nothing here builds an n×n matrix: memory is
O(d_x² + d_y² + d_x·d_y), so token-level use (n = millions) is fine. Inputs may be numpy arrays or torch
tensors (any float dtype, any device); the accumulator keeps its float64 state in the backend and on
the device of the first batch, so on a GPU the d×d sums are computed there.

Linear CKA (Kornblith et al. 2019, ICML, eq. for the linear kernel in feature space):
    CKA(X, Y) = ‖Yᶜᵀ Xᶜ‖_F² / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F),  Xᶜ = X − 1μ_Xᵀ (column-centred).
Debiased linear CKA: the same ratio with HSIC replaced by the unbiased estimator of Song et al. 2012
(JMLR, Theorem 2), as used for CKA by Nguyen et al. 2021 (ICLR) and Murphy et al. 2024:
    HSIC_u(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)),
with K = XXᵀ, L = YYᵀ and K̃, L̃ their copies with zeroed diagonals (n ≥ 4). The biased estimator is
inflated when d is large relative to n (independent Gaussians with n=1000, d=2048 give ≈ 0.67), which is
why the debiased one is the headline. HSIC_u is exactly invariant to translating X or Y (it is a
U-statistic of (x_i−x_q)·(x_j−x_r) terms), so the data need not be centred; see tests.

One-pass feature-space form of HSIC_u. With a_i = ‖x_i‖², b_i = ‖y_i‖², s_x = Σ x_i, s_y = Σ y_i:
    tr(K̃L̃)  = Σ_{i≠j} (x_i·x_j)(y_i·y_j)            = ‖XᵀY‖_F² − Σ a_i b_i
    1ᵀK̃1    = Σ_{i≠j} x_i·x_j                       = ‖s_x‖² − Σ a_i
    (K̃1)_i  = x_i·s_x − a_i,   so
    1ᵀK̃L̃1  = Σ_i (x_i·s_x − a_i)(y_i·s_y − b_i)
            = s_xᵀ(XᵀY)s_y − (Σ a_i y_i)·s_y − (Σ b_i x_i)·s_x + Σ a_i b_i.
Every term is a sum over examples of a per-example quantity that does not depend on s_x, s_y, so one
pass accumulates XᵀY, XᵀX, YᵀY (d×d), s_x, s_y, Σ a_i y_i, Σ b_i x_i, Σ a_i x_i, Σ b_i y_i (vectors) and
Σ a_i, Σ b_i, Σ a_i b_i, Σ a_i², Σ b_i² (scalars); the totals s_x, s_y are applied only in result().

Numerics. Before accumulating, each side is shifted and scaled by constants taken from its first batch
(x ↦ (x − r_x)/c_x, r_x = first-batch mean, c_x = first-batch RMS row norm). Both CKAs are exactly
invariant to this (translation: centring / U-statistic; scaling: the ratio), and it removes the
cancellation of large means and the under/overflow of tiny or huge inputs (1e-30·X works). "Constant"
means the centred RMS is ≤ 1e-9 × the raw RMS: CKA is then undefined and we raise, never return NaN.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from lorascope.errors import LorascopeError

CONSTANT_RTOL = 1e-9  # centred RMS / raw RMS at or below which an input counts as constant
SELF_HSIC_RTOL = 1e-10  # HSIC_u(K, K) / (tr Σ)² at or below which debiased CKA is refused
_TINY = np.finfo(np.float64).tiny


class SimilarityInputError(LorascopeError, ValueError):
    """Inputs for which a similarity is undefined or malformed (shape, NaN, constant, too few rows)."""


def _is_torch(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "torch"


def as_matrix(a: Any, name: str = "X", *, like: Any = None):
    """Validate a 2-D finite numeric array and return it as float64 (n, d).

    Torch tensors stay torch (detached, float64, on ``like``'s device when ``like`` is a tensor);
    everything else becomes numpy. With ``like`` a numpy array, tensors are moved to numpy.
    """
    if _is_torch(a):
        import torch

        if a.is_complex():
            raise SimilarityInputError(f"{name}: complex values are not supported")
        arr = a.detach().to(torch.float64)
        if like is not None and not _is_torch(like):
            arr = arr.cpu().numpy()
        elif like is not None:
            arr = arr.to(like.device)
    else:
        arr = np.asarray(a)
        if arr.dtype.kind not in "biuf":
            raise SimilarityInputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64, copy=False)
        if like is not None and _is_torch(like):
            import torch

            arr = torch.from_numpy(np.ascontiguousarray(arr)).to(like.device)
    if arr.ndim != 2:
        raise SimilarityInputError(f"{name}: expected a 2-D (n, d) array, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SimilarityInputError(f"{name}: empty array of shape {tuple(arr.shape)}")
    finite = arr.isfinite() if _is_torch(arr) else np.isfinite(arr)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise SimilarityInputError(f"{name}: {bad} non-finite value(s) (NaN or inf)")
    m = float(abs(arr).max())
    if 0.0 < m < _TINY:
        raise SimilarityInputError(f"{name}: all values are subnormal (max |x| = {m:.3g}), too small to compute "
                                   "with; multiply by a constant (the similarities are scale-invariant)")
    return arr


def check_pair(X: Any, Y: Any, names: Sequence[str] = ("X", "Y")):
    """Validate X, Y as (n, d_x), (n, d_y) float64 arrays with the same n; returns them."""
    X = as_matrix(X, names[0])
    Y = as_matrix(Y, names[1], like=X)
    if X.shape[0] != Y.shape[0]:
        raise SimilarityInputError(
            f"{names[0]} has {X.shape[0]} rows but {names[1]} has {Y.shape[0]}: rows must be the same examples")
    return X, Y


def _shift_scale(X):
    """(r, c): first-batch mean and RMS row norm (after centring; raw RMS if the batch is constant)."""
    m = float(abs(X).max())
    if m == 0.0:
        return X[0] * 0.0, 1.0  # all zeros: nothing to rescale; constancy is caught in result()
    Xs = X / m  # no overflow in the squares below
    r = Xs.mean(0)
    C = Xs - r
    c = float(((C * C).sum() / X.shape[0]) ** 0.5)
    if c == 0.0:
        c = float(((Xs * Xs).sum() / X.shape[0]) ** 0.5)
    return r * m, c * m


def _fro2(M) -> float:
    return float((M * M).sum())


def _dot(u, v) -> float:
    return float((u * v).sum())


def _hsic_u(n: int, fro2_cross: float, one_k_one: float, one_l_one: float, sum_ab: float,
            s_cross_s: float, ay_dot_sy: float, bx_dot_sx: float) -> float:
    """Unbiased HSIC (Song et al. 2012, Thm 2) from the one-pass feature-space sums (module docstring)."""
    tr_kl = fro2_cross - sum_ab                               # tr(K̃L̃)
    k1l = s_cross_s - ay_dot_sy - bx_dot_sx + sum_ab          # 1ᵀK̃L̃1
    return (tr_kl + one_k_one * one_l_one / ((n - 1) * (n - 2)) - 2.0 * k1l / (n - 2)) / (n * (n - 3))


class LinearCKAAccumulator:
    """Streaming linear CKA and debiased linear CKA over batches of paired rows.

    ``update(X_batch, Y_batch)`` with (b, d_x), (b, d_y) numpy arrays or torch tensors (cast to float64);
    ``result()`` → ``{"linear_cka", "linear_cka_debiased", "n"}``. Memory O(d_x² + d_y² + d_x·d_y);
    never an n×n matrix. Batches may have any sizes; the result equals the one-shot one to rounding.
    """

    def __init__(self, d_x: int, d_y: int, names: Sequence[str] = ("X", "Y")):
        if int(d_x) < 1 or int(d_y) < 1:
            raise SimilarityInputError(f"widths must be positive, got d_x={d_x}, d_y={d_y}")
        self.d_x, self.d_y, self.names = int(d_x), int(d_y), tuple(names)
        self.n = 0
        self._s: dict[str, Any] = {}
        self._ref: tuple | None = None  # (r_x, c_x, r_y, c_y)

    def _add(self, key: str, value) -> None:
        if key in self._s:
            self._s[key] = self._s[key] + value
        else:
            self._s[key] = value

    def update(self, X: Any, Y: Any) -> "LinearCKAAccumulator":
        like = self._s.get("Sxy")
        nx, ny = self.names
        X = as_matrix(X, nx, like=like)
        Y = as_matrix(Y, ny, like=X)
        if X.shape[1] != self.d_x or Y.shape[1] != self.d_y:
            raise SimilarityInputError(f"batch widths ({X.shape[1]}, {Y.shape[1]}) differ from the "
                                       f"accumulator's (d_x={self.d_x}, d_y={self.d_y})")
        if X.shape[0] != Y.shape[0]:
            raise SimilarityInputError(f"batch has {X.shape[0]} rows of {nx} but {Y.shape[0]} of {ny}")
        if self._ref is None:
            self._ref = (*_shift_scale(X), *_shift_scale(Y))
        rx, cx, ry, cy = self._ref
        X = (X - rx) / cx
        Y = (Y - ry) / cy
        a = (X * X).sum(1)  # (b,) ‖x_i‖²
        b = (Y * Y).sum(1)
        self._add("Sxx", X.T @ X)
        self._add("Syy", Y.T @ Y)
        self._add("Sxy", X.T @ Y)
        self._add("sx", X.sum(0))
        self._add("sy", Y.sum(0))
        self._add("ax", (a[:, None] * X).sum(0))  # Σ a_i x_i
        self._add("bx", (b[:, None] * X).sum(0))  # Σ b_i x_i
        self._add("ay", (a[:, None] * Y).sum(0))
        self._add("by", (b[:, None] * Y).sum(0))
        self._add("a", a.sum())
        self._add("b", b.sum())
        self._add("aa", (a * a).sum())
        self._add("bb", (b * b).sum())
        self._add("ab", (a * b).sum())
        self.n += X.shape[0]
        return self

    def _check_not_constant(self, which: str) -> float:
        s, n = self._s, self.n
        r, c = (self._ref[0], self._ref[1]) if which == "x" else (self._ref[2], self._ref[3])
        sv, ss = s["s" + which], float(s["a" if which == "x" else "b"])
        centred = ss - _dot(sv, sv) / n                       # Σ‖x_i − μ‖² (scaled units)
        rc = r / c
        raw = n * _dot(rc, rc) + 2.0 * _dot(rc, sv) + ss      # Σ‖x_i‖² (scaled units)
        if centred <= (CONSTANT_RTOL ** 2) * raw:
            name = self.names[0 if which == "x" else 1]
            raise SimilarityInputError(
                f"{name} is constant across its {n} rows (zero variance in every dimension): CKA is undefined")
        return centred

    def result(self, debiased: bool = True) -> dict:
        """``{"linear_cka", "linear_cka_debiased", "n"}``; ``debiased=False`` skips the n ≥ 4 estimator."""
        n = self.n
        if n < 2:
            raise SimilarityInputError(f"linear CKA needs at least 2 rows, got {n}")
        if debiased and n < 4:
            raise SimilarityInputError(f"debiased CKA needs at least 4 rows, got {n} (use debiased=False)")
        tot_x, tot_y = self._check_not_constant("x"), self._check_not_constant("y")
        s = self._s
        sx, sy = s["sx"], s["sy"]
        # Biased: centred cross-products Xᶜᵀ Yᶜ = XᵀY − s_x s_yᵀ / n (Kornblith et al. 2019).
        cxy = _fro2(s["Sxy"] - sx[:, None] * sy[None, :] / n)
        cxx = _fro2(s["Sxx"] - sx[:, None] * sx[None, :] / n)
        cyy = _fro2(s["Syy"] - sy[:, None] * sy[None, :] / n)
        out: dict[str, Any] = {"linear_cka": cxy / (math.sqrt(cxx) * math.sqrt(cyy)),
                               "linear_cka_debiased": None, "n": n}
        if debiased:
            a, b = float(s["a"]), float(s["b"])
            kx, ly = _dot(sx, sx) - a, _dot(sy, sy) - b       # 1ᵀK̃1, 1ᵀL̃1
            h_xy = _hsic_u(n, _fro2(s["Sxy"]), kx, ly, float(s["ab"]), _dot(sx, s["Sxy"] @ sy),
                           _dot(s["ay"], sy), _dot(s["bx"], sx))
            h_xx = _hsic_u(n, _fro2(s["Sxx"]), kx, kx, float(s["aa"]), _dot(sx, s["Sxx"] @ sx),
                           _dot(s["ax"], sx), _dot(s["ax"], sx))
            h_yy = _hsic_u(n, _fro2(s["Syy"]), ly, ly, float(s["bb"]), _dot(sy, s["Syy"] @ sy),
                           _dot(s["by"], sy), _dot(s["by"], sy))
            # HSIC_u(K, K) estimates ‖Σ_xx‖_F² ≥ (tr Σ_xx)²/d, so compare it with (tr Σ_xx)² ≈ (Σ‖xᶜ‖²/n)²: it
            # is 0 up to rounding when n is tiny and degenerate (e.g. n = 4 with three identical rows).
            for name, h, tot in ((self.names[0], h_xx, tot_x), (self.names[1], h_yy, tot_y)):
                if not h > SELF_HSIC_RTOL * (tot / n) ** 2:
                    raise SimilarityInputError(
                        f"debiased CKA is undefined: the unbiased HSIC of {name} with itself is ≤ 0 up to rounding "
                        f"({h:.3g}; too few distinct rows, n={n})")
            out["linear_cka_debiased"] = h_xy / (math.sqrt(h_xx) * math.sqrt(h_yy))
        for key in ("linear_cka", "linear_cka_debiased"):
            if out[key] is not None and not math.isfinite(out[key]):
                raise SimilarityInputError(f"{key} overflowed: batches differ in scale by too much to accumulate")
        return out


def linear_cka_all(X: Any, Y: Any, names: Sequence[str] = ("X", "Y"), debiased: bool = True) -> dict:
    """One-shot ``{"linear_cka", "linear_cka_debiased", "n"}`` for X (n, d_x), Y (n, d_y)."""
    X, Y = check_pair(X, Y, names)
    return LinearCKAAccumulator(X.shape[1], Y.shape[1], names).update(X, Y).result(debiased=debiased)


def linear_cka(X: Any, Y: Any) -> float:
    """Linear CKA (Kornblith et al. 2019) of X (n, d_x) and Y (n, d_y), n ≥ 2; in [0, 1]."""
    return linear_cka_all(X, Y, debiased=False)["linear_cka"]


def linear_cka_debiased(X: Any, Y: Any) -> float:
    """Debiased linear CKA (unbiased HSIC, Song et al. 2012; Nguyen et al. 2021) of X (n, d_x), Y (n, d_y), n ≥ 4.

    ≈ 0 for independent X, Y even when d ≫ n; may be slightly negative; 1 for CKA(X, X)."""
    return linear_cka_all(X, Y)["linear_cka_debiased"]
