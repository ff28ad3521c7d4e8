"""Structure and sparsity of one weight update ΔW (§9, RQ3): pure functions, computed in float64.

Every function accepts a 2-D ``torch.Tensor`` (any dtype or device; the computation stays on that
device) or anything ``numpy.asarray`` understands, and returns Python floats / ints / numpy arrays.

Definitions (σ = singular values of ΔW in descending order, x = the N entries of ΔW):
- ‖ΔW‖_F and ‖ΔW‖_F / ‖W‖_F (the size of the update relative to the weight it modifies);
- energy curve E_k = Σ_{i≤k} σ_i² / Σ_i σ_i²; rank at q energy = smallest k with E_k ≥ q (q = 0.9);
- effective rank = exp(H(p)), p_i = σ_i / Σσ, H the Shannon entropy (natural log, 0·log 0 = 0)
  — O. Roy and M. Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007;
- stable rank = ‖ΔW‖_F² / σ_max² (Rudelson & Vershynin 2007, "Sampling from large matrices");
- Hoyer sparsity = (√N − ‖x‖₁/‖x‖₂) / (√N − 1) ∈ [0, 1] — P. O. Hoyer, "Non-negative matrix
  factorization with sparseness constraints", JMLR 5 (2004), eq. 1; 1 for a one-hot x, 0 for |x| constant;
- near-zero fraction = #{ |x_j| < factor · max|x| } / N, factor = 1e-3 by default.

Zero ΔW (e.g. an untrained LoRA, B = 0, or a frozen module): every quantity is *defined*, never NaN —
norms 0, singular values 0, energy curve 0, effective / stable rank and rank-at-q 0 (the rank of the
zero matrix), Hoyer sparsity 1 and near-zero fraction 1 (all entries are exactly zero); ``module_report``
says so in its ``note``. A vector with a single entry (N = 1) has Hoyer sparsity 1 by the same reading.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ZERO_DELTA_NOTE = ("ΔW is exactly zero: norms, singular values, energy curve, effective/stable rank and "
                   "rank@q are 0; Hoyer sparsity and near-zero fraction are 1 by convention")
# Relative slack when comparing the cumulative energy with q, so that an energy that equals q in exact
# arithmetic (e.g. σ² = [9, 1], q = 0.9) is not missed by one rounding error in the cumulative sum.
_ENERGY_RTOL = 1e-12


def as_float64(x: Any) -> torch.Tensor:
    """A float64 torch tensor with the same values (and device, for tensors); no copy if already float64."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _matrix(x: Any) -> torch.Tensor:
    t = as_float64(x)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(t.shape)}")
    return t


def frobenius_norm(delta: Any) -> float:
    return float(torch.linalg.matrix_norm(_matrix(delta), ord="fro"))


def relative_frobenius_norm(delta: Any, weight: Any) -> float:
    """‖ΔW‖_F / ‖W‖_F (W = the base weight). 0 when ΔW = 0; +inf when W = 0 but ΔW ≠ 0."""
    num, den = frobenius_norm(delta), frobenius_norm(weight)
    if num == 0.0:
        return 0.0
    return num / den if den > 0 else math.inf


def singular_values(delta: Any) -> np.ndarray:
    """All min(m, n) singular values of ΔW, descending, float64 (LAPACK/cuSOLVER through torch)."""
    return torch.linalg.svdvals(_matrix(delta)).cpu().numpy()


def _sigma(s: Any) -> np.ndarray:
    """Singular values as a descending float64 array (accepts any order)."""
    return np.sort(np.abs(np.asarray(s, dtype=np.float64)).reshape(-1))[::-1]


def energy_curve(s: Any) -> np.ndarray:
    """Cumulative energy E_k = Σ_{i≤k} σ_i² / Σσ², k = 1..len(s), from singular values ``s`` (any order).

    All zeros when Σσ² = 0 (zero ΔW: there is no energy to accumulate).
    """
    s = _sigma(s)
    e = s * s
    total = e.sum()
    if total == 0.0:
        return np.zeros_like(e)
    return np.minimum(np.cumsum(e) / total, 1.0)


def rank_at_energy(s: Any, threshold: float = 0.9) -> int:
    """Smallest k with E_k ≥ threshold (0 for a zero ΔW). ``s`` are singular values."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"energy threshold must be in (0, 1], got {threshold}")
    curve = energy_curve(s)
    if curve.size == 0 or curve[-1] == 0.0:
        return 0
    hits = np.nonzero(curve >= threshold * (1.0 - _ENERGY_RTOL))[0]
    return int(hits[0]) + 1


def effective_rank(s: Any) -> float:
    """Roy & Vetterli (2007): exp(−Σ p_i log p_i), p_i = σ_i / Σσ; ``s`` are singular values. 0 for ΔW = 0.

    Equals the rank exactly for a matrix whose non-zero singular values are all equal.
    """
    s = _sigma(s)
    total = s.sum()
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(s: Any) -> float:
    """‖ΔW‖_F² / σ_max² = Σσ² / σ_1² from singular values ``s``. 0 for ΔW = 0."""
    s = _sigma(s)
    if s.size == 0 or s[0] == 0.0:
        return 0.0
    return float(np.sum((s / s[0]) ** 2))


def numerical_rank(s: Any, shape: tuple[int, int]) -> int:
    """#σ_i > σ_1 · max(m, n) · eps(float64) — numpy.linalg.matrix_rank's default tolerance."""
    s = _sigma(s)
    if s.size == 0 or s[0] == 0.0:
        return 0
    return int(np.sum(s > s[0] * max(shape) * np.finfo(np.float64).eps))


def hoyer_sparsity(x: Any) -> float:
    """Hoyer (2004): (√N − ‖x‖₁/‖x‖₂) / (√N − 1) over all N entries of ``x`` (any shape).

    1 for a one-hot vector, 0 for a vector of equal magnitudes; 1 by convention for x = 0 and N = 1.
    """
    v = as_float64(x).reshape(-1)
    n = v.numel()
    if n == 0:
        raise ValueError("Hoyer sparsity of an empty array is undefined")
    l2 = float(torch.linalg.vector_norm(v, 2))
    if n == 1 or l2 == 0.0:
        return 1.0
    l1 = float(torch.linalg.vector_norm(v, 1))
    root = math.sqrt(n)
    # Clip the rounding error that can push the ratio a hair outside [0, 1].
    return float(min(1.0, max(0.0, (root - l1 / l2) / (root - 1.0))))


def near_zero_fraction(x: Any, factor: float = 1e-3) -> float:
    """Fraction of entries with |x_j| < factor · max|x| (strict). 1 for x = 0 (every entry is zero)."""
    if factor < 0:
        raise ValueError(f"threshold factor must be ≥ 0, got {factor}")
    a = as_float64(x).abs().reshape(-1)
    if a.numel() == 0:
        raise ValueError("near-zero fraction of an empty array is undefined")
    peak = float(a.max())
    if peak == 0.0:
        return 1.0
    return float((a < factor * peak).to(torch.float64).mean())


def spectrum_report(s: Any, *, energy_threshold: float = 0.9) -> dict[str, Any]:
    """Every quantity that depends only on the singular values (descending, float64)."""
    s = _sigma(s)
    return {
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "rank_at_energy": rank_at_energy(s, energy_threshold),
        "energy_threshold": energy_threshold,
        "sigma_max": float(s[0]) if s.size else 0.0,
        "singular_values": s.tolist(),
        "energy_curve": energy_curve(s).tolist(),
    }


def module_report(W_base: Any, W_tuned: Any | None = None, *, delta: Any | None = None, sigma: Any | None = None,
                  near_zero_factor: float = 1e-3, energy_threshold: float = 0.9) -> dict[str, Any]:
    """All §9 metrics of one module's update ΔW = W_tuned − W_base, as a JSON-ready dict.

    Pass ``delta`` instead of ``W_tuned`` when ΔW is known directly (LoRA: (α/r)·B·A), which avoids
    the cancellation of forming W_base + ΔW − W_base. ``sigma``: ΔW's singular values if already known
    (all min(m, n) of them, e.g. from ``spectra``); else a float64 SVD computes them.
    """
    base = _matrix(W_base)
    if delta is None:
        if W_tuned is None:
            raise ValueError("module_report needs W_tuned or delta")
        tuned = _matrix(W_tuned)
        if tuned.shape != base.shape:
            raise ValueError(f"shape mismatch: W_base {tuple(base.shape)} vs W_tuned {tuple(tuned.shape)}")
        d = tuned - base.to(tuned.device)
    else:
        d = _matrix(delta)
        if d.shape != base.shape:
            raise ValueError(f"shape mismatch: W_base {tuple(base.shape)} vs ΔW {tuple(d.shape)}")
    shape = (int(d.shape[0]), int(d.shape[1]))
    if sigma is None:
        s = singular_values(d)
    else:
        s = _sigma(sigma.cpu().numpy() if isinstance(sigma, torch.Tensor) else sigma)
        if s.size != min(shape):
            raise ValueError(f"sigma has {s.size} values; ΔW {shape} has {min(shape)}")
    fro = frobenius_norm(d)
    report: dict[str, Any] = {
        "shape": list(shape),
        "n_params": shape[0] * shape[1],
        "frobenius_norm": fro,
        "base_frobenius_norm": frobenius_norm(base),
        "relative_frobenius_norm": relative_frobenius_norm(d, base),
        "numerical_rank": numerical_rank(s, shape),
        **spectrum_report(s, energy_threshold=energy_threshold),
        "hoyer_sparsity": hoyer_sparsity(d),
        "near_zero_fraction": near_zero_fraction(d, near_zero_factor),
        "near_zero_factor": near_zero_factor,
        "is_zero": bool(fro == 0.0),
        "note": ZERO_DELTA_NOTE if fro == 0.0 else "",
    }
    return report
