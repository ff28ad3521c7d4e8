"""The fused LoRA group in pure PyTorch: the same function, the same masks (``philox.keep_mask``) and, for bf16
inputs, the same roundings as the Triton kernels. It is the CPU implementation of the fused path (tests run it
in float64 against PEFT) and the oracle the kernels are checked against (Triton interpreter on CPU, the GPU
script on an H200).

A group's modules j = 0…n−1 share the input x (M × K); module j has A_j (r × K), B_j (N_j × r), its own seed.
With ``coef = scaling / (1 − p)`` and m_j the keep-mask of module j:

    xa_j = coef · (m_j ⊙ x) A_jᵀ                          (M × r)
    y    = x Wᵀ + [xa_0 … xa_{n−1}] · blockdiag(B_j)ᵀ     (M × ΣN_j; W = the stacked frozen base weights)

which is PEFT's ``base(x) + lora_B(lora_A(dropout(x))) · scaling`` for every module at once (nn.Dropout keeps
with probability 1 − p and scales kept values by 1 / (1 − p)). Backward, for the output gradient g = [g_j]:

    gB_j = g_j B_j,   dB_j = g_jᵀ xa_j,   dA_j = coef · gB_jᵀ (m_j ⊙ x)
    dx   = g W + Σ_j coef · m_j ⊙ (gB_j A_j)

Low-precision inputs (bf16/fp16) mirror the kernels: operands rounded to that dtype, products accumulated in
fp32, xa / y / dx / coef·gB rounded once to that dtype, dA and dB kept in fp32.
"""

from __future__ import annotations

import torch

from lorascope.train.fused_lora.philox import keep_mask

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a GEMM operand of ``dtype``: rounded to it, then fp32 if that is a low-precision type."""
    t = t.to(dtype)
    return t.float() if dtype in LOW_PRECISION else t


def _masks(seeds: list[int], M: int, K: int, p: float, device) -> list[torch.Tensor | None]:
    return [keep_mask(s, M, K, p, device=device) if p > 0 else None for s in seeds]


def _drop(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return x if keep is None else torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def block_diag_b(b_list: list[torch.Tensor], width: int) -> torch.Tensor:
    """(ΣN_j × width): B_j on the block diagonal (columns j·r…), zeros elsewhere (the padding too)."""
    r = b_list[0].shape[1]
    out = torch.zeros(sum(b.shape[0] for b in b_list), width, dtype=b_list[0].dtype, device=b_list[0].device)
    row = 0
    for j, b in enumerate(b_list):
        out[row:row + b.shape[0], j * r:(j + 1) * r] = b
        row += b.shape[0]
    return out


def group_forward(x: torch.Tensor, w: torch.Tensor, a_list: list[torch.Tensor], b_list: list[torch.Tensor],
                  seeds: list[int], *, scaling: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, xa)`` for x (M × K), the stacked frozen weights ``w`` (ΣN_j × K) and the group's parameters."""
    dt = x.dtype
    M, K = x.shape
    coef = scaling / (1.0 - p)
    masks = _masks(seeds, M, K, p, x.device)
    xo = _operand(x, dt)
    xa = torch.cat([coef * (_drop(xo, m) @ _operand(a, dt).T) for a, m in zip(a_list, masks)], dim=1).to(dt)
    width = xa.shape[1]
    y = xo @ _operand(w, dt).T + _operand(xa, dt) @ _operand(block_diag_b(b_list, width), dt).T
    return y.to(dt), xa


def group_backward(g: torch.Tensor, x: torch.Tensor, xa: torch.Tensor, w: torch.Tensor, a_list: list[torch.Tensor],
                   b_list: list[torch.Tensor], seeds: list[int], *, scaling: float, p: float, needs_dx: bool):
    """``(dx or None, [dA_j], [dB_j])``; dA/dB in fp32 for low-precision inputs, else in x's dtype."""
    dt = x.dtype
    acc = torch.float32 if dt in LOW_PRECISION else dt
    M, K = x.shape
    r = a_list[0].shape[0]
    coef = scaling / (1.0 - p)
    masks = _masks(seeds, M, K, p, x.device)
    go, xo = _operand(g, dt), _operand(x, dt)
    sizes = [b.shape[0] for b in b_list]
    g_parts = go.split(sizes, dim=1)
    gb = [gj @ _operand(b, dt) for gj, b in zip(g_parts, b_list)]  # (M × r) each, accumulated in `acc`
    d_b = [(gj.T @ _operand(xa[:, j * r:(j + 1) * r], dt)).to(acc) for j, gj in enumerate(g_parts)]
    gbc = [_operand((coef * t).to(dt), dt) for t in gb]
    d_a = [(t.T @ _drop(xo, m)).to(acc) for t, m in zip(gbc, masks)]
    dx = None
    if needs_dx:
        dx = _operand((go @ _operand(w, dt)).to(dt), dt)
        for t, a, m in zip(gbc, a_list, masks):
            dx = dx + _drop(t @ _operand(a, dt), m)
        dx = dx.to(dt)
    return dx, d_a, d_b
