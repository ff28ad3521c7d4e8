"""Fast spectra for §9 that agree with the float64 SVD: everything in float64, no full SVD of a big matrix.

The reference path (``metrics.singular_values``, ``intruders.left_singular_vectors``) runs a float64 SVD of
every full-size module — on an H200 about 0.6 s per 2048-wide matrix, minutes per model. Here:

- **FT ΔW** (dense): σ² = eigenvalues of the smaller Gram matrix (ΔWᵀΔW or ΔWΔWᵀ, formed and
  diagonalised in float64, values only). Squaring costs accuracy only at the small end of the spectrum:
  the Gram's eigenvalues carry an absolute error of order eps·λ₁ (a backward-stable symmetric eigensolver
  on a Gram formed with float64 accumulation), so σᵢ has relative error ≈ eps·(σ₁/σᵢ)². The Gram is
  trusted only while every eigenvalue is above its resolution ``GRAM_RESOLUTION``·λ₁ (σ_min/σ₁ > ~1e-6 at
  2048 wide); below that — a numerically rank-deficient ΔW, e.g. a merged LoRA — the module falls back to
  the float64 SVD, so the numerical rank (a 1e-12·σ₁ threshold) is never decided by Gram noise.
- **LoRA ΔW = s·B·A** (rank ≤ r): B = Q_B R_B, Aᵀ = Q_A R_A (thin QR, float64), so ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ
  and its non-zero singular values are those of the r × r core (Q_B, Q_A have orthonormal columns).
  The other min(m, n) − r are exactly 0 (the SVD of the formed product returns rounding noise ~1e-16·σ₁).
- **W_base's left singular vectors** (intruders need all of them): eigenvectors of W Wᵀ when m ≤ n; for
  m > n, W = Q R (thin QR) and U = Q·U_R with U_R the eigenvectors of R Rᵀ (n × n), so U is orthonormal to
  rounding whatever the conditioning. Vector error ≈ eps·λ₁ / (eigenvalue gap); for W_base's simple
  singular values that is ≤ 1e-9 in |cos| (checked against the SVD in tests and in benchmarks/weights_gpu.py).
  Clustered singular values make any basis of their subspace valid — the SVD's choice is as arbitrary.

Cost (2048-wide, float64): one symmetric eigendecomposition instead of an SVD (~9× faster on an H200),
values-only for the FT spectrum, nothing of size m × n for LoRA's spectrum.
"""

from __future__ import annotations

import torch

# Eigenvalues of a float64 Gram matrix below this fraction of the largest are not resolved (see above):
# max(m, n)·eps bounds the Gram's own rounding (each entry is an n-term float64 dot product) and the
# eigensolver's backward error; 2× of margin. At max(m, n) = 5504: 2.4e-12·λ₁, i.e. σ ≈ 1.6e-6·σ₁.
GRAM_RESOLUTION_FACTOR = 2.0


def _f64(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def gram(W: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of W in float64: W Wᵀ (m ≤ n) or Wᵀ W (m > n)."""
    w = _f64(W)
    return w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w


def gram_resolution(shape: tuple[int, int], lambda_max: float) -> float:
    """Smallest eigenvalue of a float64 Gram of a ``shape`` matrix that is resolved (see the module docstring)."""
    return GRAM_RESOLUTION_FACTOR * max(shape) * torch.finfo(torch.float64).eps * lambda_max


def gram_singular_values(W: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(σ descending, float64, on W's device; resolved): all min(m, n) singular values of W from the Gram.

    ``resolved`` is False when the smallest eigenvalue is below ``gram_resolution``: the small end of σ
    is then noise and the caller should take the SVD (``gram_or_svd_singular_values`` does).
    """
    evals = torch.linalg.eigvalsh(gram(W)).flip(0)            # descending
    top = float(evals[0]) if evals.numel() else 0.0
    if top <= 0.0:
        return torch.zeros_like(evals), True                  # W = 0: every σ is exactly 0
    resolved = float(evals[-1]) > gram_resolution(tuple(W.shape), top)
    return evals.clamp_min(0.0).sqrt(), resolved


def gram_or_svd_singular_values(W: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(σ descending float64, route): the Gram's values when resolved, else the float64 SVD's ("svd")."""
    sigma, resolved = gram_singular_values(W)
    if resolved:
        return sigma, "gram"
    return torch.linalg.svdvals(_f64(W)), "svd"


def lowrank_singular_values(b: torch.Tensor, a: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """All min(m, n) singular values (descending, float64) of scaling·B·A, B: m × r, A: r × n, exactly
    r' = min(r, m, n) of them from an r' × r' core and the rest exactly 0."""
    b, a = _f64(b), _f64(a)
    if b.shape[1] != a.shape[0]:
        raise ValueError(f"B {tuple(b.shape)} and A {tuple(a.shape)} do not multiply")
    m, n = b.shape[0], a.shape[1]
    rb = torch.linalg.qr(b, mode="r").R                      # B = Q_B R_B   (R_B: min(m, r) × r)
    ra = torch.linalg.qr(a.T, mode="r").R                    # Aᵀ = Q_A R_A  (R_A: min(n, r) × r)
    core = float(scaling) * (rb @ ra.T)
    s = torch.linalg.svdvals(core)
    out = torch.zeros(min(m, n), dtype=torch.float64, device=s.device)
    out[: s.numel()] = s[: min(m, n)]
    return out


def left_singular_basis(W: torch.Tensor) -> torch.Tensor:
    """All left singular vectors of W's thin SVD (m × min(m, n), float64, orthonormal columns, descending σ)."""
    w = _f64(W)
    m, n = w.shape
    if m <= n:
        return torch.linalg.eigh(w @ w.T).eigenvectors.flip(1)
    q, r = torch.linalg.qr(w, mode="reduced")                # W = Q R, R: n × n
    return q @ torch.linalg.eigh(r @ r.T).eigenvectors.flip(1)
