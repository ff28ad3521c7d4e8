"""Intruder dimensions (§9): new high-ranking singular vectors that fine-tuning puts into a weight matrix.

Definition — R. Shuttleworth, J. Andreas, A. Torralba, P. Sharma, "LoRA vs Full Fine-tuning: An Illusion
of Equivalence", arXiv:2410.21228 (2024), §3: with W_base = U Σ Vᵀ and W_tuned = U' Σ' V'ᵀ, the tuned
left singular vector u'_j (j among the top k by singular value) is an *intruder* iff
max_i |cos(u'_j, u_i)| < ε over **all** left singular vectors u_i of W_base. Defaults k = 10, ε = 0.5.

"All left singular vectors" are those of the *thin* SVD (min(m, n) of them), as in the authors'
reference code (``torch.linalg.svd(W, full_matrices=False)``); for m > n the full SVD would add an
arbitrary basis of the orthogonal complement of W_base's column space, which carries no information.
Singular vectors are unit vectors, so |cos| = |u'_jᵀ u_i| and the sign ambiguity of the SVD drops out.

Cost: one thin SVD of W_base per module (pass a precomputed ``U_base`` to share it between several tuned
models — ``weights_reports`` does), and only the top k of W_tuned. ``method`` for the latter:
- "full": exact thin SVD (LAPACK / cuSOLVER);
- "gram" (default above ``FULL_SVD_MAX_ENTRIES``): exact eigendecomposition of the smaller Gram matrix
  (W Wᵀ, or WᵀW then u_j = W v_j / σ_j), in float64. Squaring the matrix costs accuracy only for vectors
  whose σ is tiny against σ_1 (relative error ≈ eps·σ_1²/(σ_j·gap)), never for the top k; about 2× faster
  than the SVD on CPU and 9× on an H200 (2048-wide, float64);
- "gram32": the same Gram, diagonalised in float32 (about half the time of float64 on a GPU), then refined
  in float64 by Rayleigh–Ritz on its top k + 10 eigenvectors; each vector carries a Davis–Kahan bound on its
  angle to the exact one (float64 residual / spectral gap). ``intruder_dimensions`` redoes a module with
  "gram" whenever a max |cos| lies within that bound of ε, so the intruder decisions are the float64 ones;
  the reported max |cos| may differ by the bound (≈1e-5 on 2048-wide random weights);
- "randomized": subspace iteration (Halko, Martinsson & Tropp 2011, "Finding structure with randomness",
  SIAM Review 53, Alg. 4.4 + 5.1) with a seeded local ``torch.Generator`` (never the global RNG).
  APPROXIMATE: on flat spectra (e.g. a Gaussian matrix's, whose top is nearly degenerate) the top
  vectors converge slowly and max |cos| of non-intruders comes out too low (0.6–0.8 instead of 0.99 in a
  Gaussian test), which inflates counts — for screening only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lorascope.weights.metrics import as_float64

FULL_SVD_MAX_ENTRIES = 1024 * 1024  # above this, "auto" takes the exact Gram route


@dataclass
class IntruderResult:
    count: int                      # number of intruders among the top k
    k: int                          # top vectors examined (min(k, min(m, n)))
    epsilon: float
    max_cos: list[float]            # per top tuned vector j: max_i |cos(u'_j, u_i)|
    best_index: list[int]           # per j: argmax_i (index into W_base's singular vectors, descending σ)
    is_intruder: list[bool]         # per j: max_cos < ε
    tuned_singular_values: list[float]
    method: str                     # "full", "gram" or "randomized"

    @property
    def intruder_indices(self) -> list[int]:
        return [j for j, flag in enumerate(self.is_intruder) if flag]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "intruder_indices": self.intruder_indices}


def left_singular_vectors(W: Any, *, device: torch.device | str | None = None) -> torch.Tensor:
    """All left singular vectors of W's thin SVD (m × min(m, n), float64), columns in descending σ."""
    w = as_float64(W)
    if device is not None:
        w = w.to(device)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(w.shape)}")
    u, _, _ = torch.linalg.svd(w, full_matrices=False)
    return u


def _orth(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x, mode="reduced").Q


def randomized_top_left(W: torch.Tensor, k: int, *, oversample: int | None = None, n_iter: int = 8,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k left singular vectors and values of W (float64) by randomized subspace iteration.

    Halko et al. (2011) Alg. 4.4 (re-orthonormalised power iterations) then Alg. 5.1 (SVD of QᵀW).
    The Gaussian test matrix comes from a local generator seeded with ``seed`` (CPU), so repeated calls
    give identical vectors.
    """
    m, n = W.shape
    ell = min(min(m, n), k + (oversample if oversample is not None else k + 10))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, ell, generator=gen, dtype=torch.float64).to(W.device)
    q = _orth(W @ omega)
    for _ in range(n_iter):
        q = _orth(W @ _orth(W.T @ q))
    ub, s, _ = torch.linalg.svd(q.T @ W, full_matrices=False)
    return (q @ ub)[:, :k], s[:k]


def gram_top_left(W: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Top-k left singular vectors and values of W (float64) from ``eigh`` of the smaller Gram matrix.

    None when W has fewer than k numerically non-zero singular values (their vectors are then arbitrary).
    """
    m, n = W.shape
    evals, evecs = torch.linalg.eigh(W @ W.T if m <= n else W.T @ W)   # ascending
    sigma = evals.flip(0)[:k].clamp_min(0).sqrt()
    vecs = evecs.flip(1)[:, :k]
    if sigma[-1] <= sigma[0] * max(m, n) * torch.finfo(torch.float64).eps ** 0.5:
        return None
    return (vecs, sigma) if m <= n else ((W @ vecs) / sigma, sigma)


def refined_top_left(W: torch.Tensor, k: int, oversample: int = 10
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(U_k, σ_k, bound_k): top-k left singular vectors of W (float64) from a float32 ``eigh`` of the float64
    Gram refined by one float64 Rayleigh–Ritz step; ``bound_k`` bounds ‖u_j ∓ u_j^exact‖ (see the module
    docstring). None when W has fewer than k + oversample resolved singular values (use "gram")."""
    m, n = W.shape
    g = W @ W.T if m <= n else W.T @ W
    size = g.shape[0]
    ell = min(size, k + oversample)
    evals32, vecs32 = torch.linalg.eigh(g.to(torch.float32))               # ascending
    basis = torch.linalg.qr(vecs32[:, size - ell:].to(torch.float64)).Q   # top ell, re-orthonormalised in float64
    gb = g @ basis
    theta, z = torch.linalg.eigh(basis.T @ gb)                            # Ritz values/vectors, ascending
    theta, z = theta.flip(0), z.flip(1)
    vecs = basis @ z[:, :k]
    resid = torch.linalg.vector_norm(gb @ z - (basis @ z) * theta, dim=0).cpu().tolist()
    th = theta.cpu().tolist()
    # Davis–Kahan (sin θ): angle_j ≤ ‖r_j‖ / δ_j, δ_j = distance from θ_j to the rest of G's spectrum: the other
    # Ritz values (each within its residual of an eigenvalue) and, below the subspace, float32's (ell+1)-th
    # eigenvalue, whose error is ≤ size·eps32·λ_1 (a backward-stable eigensolver; taken as the slack).
    slack = size * torch.finfo(torch.float32).eps * th[0]
    below = float(evals32[size - ell - 1]) + slack if size > ell else -math.inf
    delta = [min([abs(th[j] - th[i]) - resid[i] for i in range(ell) if i != j] + [th[j] - below]) for j in range(k)]
    sigma = theta[:k].clamp_min(0).sqrt()
    if float(sigma[-1]) <= float(sigma[0]) * max(m, n) * torch.finfo(torch.float64).eps ** 0.5 or min(delta) <= 0:
        return None
    s_cpu = sigma.cpu().tolist()
    # ‖u ∓ u_exact‖ = 2 sin(∠/2) ≤ 2·sin ∠ for ∠ ≤ 90°; u = W v / σ (m > n) amplifies v's error by ≤ σ_1/σ_j.
    bound = [2.0 * resid[j] / delta[j] * (1.0 if m <= n else s_cpu[0] / s_cpu[j]) for j in range(k)]
    bound_t = torch.tensor(bound, dtype=torch.float64)
    return (vecs if m <= n else (W @ vecs) / sigma), sigma, bound_t


def top_left_singular_vectors(W: Any, k: int, *, method: str = "auto", device: torch.device | str | None = None,
                              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(U_k, σ_k, method used): the k leading left singular vectors of W, float64.

    ``method``: "full", "gram", "randomized" (see the module docstring) or "auto" ("full" up to
    ``FULL_SVD_MAX_ENTRIES`` entries, else "gram"). "gram" falls back to "full" for rank-deficient W.
    """
    w = as_float64(W)
    if device is not None:
        w = w.to(device)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(w.shape)}")
    k = min(k, min(w.shape))
    if method == "auto":
        method = "full" if w.numel() <= FULL_SVD_MAX_ENTRIES else "gram"
    if method == "gram":
        res = gram_top_left(w, k)
        if res is not None:
            return res[0], res[1], "gram"
        method = "full"
    if method == "full":
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        return u[:, :k], s[:k], "full"
    if method == "randomized":
        u, s = randomized_top_left(w, k, seed=seed)
        return u, s, "randomized"
    raise ValueError(f"unknown method {method!r}: use 'auto', 'full', 'gram' or 'randomized'")


def intruder_dimensions(W_base: Any, W_tuned: Any, *, k: int = 10, epsilon: float = 0.5,
                        U_base: torch.Tensor | None = None, method: str = "auto",
                        device: torch.device | str | None = None, seed: int = 0) -> IntruderResult:
    """Count the intruders among the top-``k`` left singular vectors of ``W_tuned`` (Shuttleworth et al. 2024).

    ``U_base``: W_base's left singular vectors (m × r, orthonormal columns) if already computed —
    e.g. by :func:`left_singular_vectors` — so one base SVD serves several tuned models (FT and LoRA).
    """
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    tuned = as_float64(W_tuned)
    if device is not None:
        tuned = tuned.to(device)
    if U_base is None:
        U_base = left_singular_vectors(W_base, device=tuned.device)
    ub = as_float64(U_base).to(tuned.device)
    if ub.shape[0] != tuned.shape[0]:
        raise ValueError(f"U_base has {ub.shape[0]} rows but W_tuned has {tuned.shape[0]}")
    k = min(k, min(tuned.shape))
    refined = refined_top_left(tuned, k) if method == "gram32" else None
    if refined is not None:
        u_top, s_top, bound = refined
        best, idx = (u_top.T @ ub).abs().max(dim=1)
        if ((best.cpu() - epsilon).abs() <= bound).any():   # a decision within the bound of ε: redo exactly
            refined = None
        else:
            used = "gram32"
    if refined is None:
        u_top, s_top, used = top_left_singular_vectors(tuned, k, method="gram" if method == "gram32" else method,
                                                       seed=seed)
        best, idx = (u_top.T @ ub).abs().max(dim=1)  # (k, r) |cos| between unit vectors, max over W_base's
    best_l = [float(min(1.0, v)) for v in best.cpu()]
    flags = [v < epsilon for v in best_l]
    return IntruderResult(count=sum(flags), k=len(best_l), epsilon=epsilon, max_cos=best_l,
                          best_index=[int(i) for i in idx.cpu()], is_intruder=flags,
                          tuned_singular_values=[float(v) for v in s_top.cpu()], method=used)
