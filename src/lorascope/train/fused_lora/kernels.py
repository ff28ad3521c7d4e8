"""Triton kernels of the fused LoRA path (docs/fused_lora.md). Imported only where they run: CUDA, or the CPU
under ``TRITON_INTERPRET=1`` (the tests).

A *group* is 1–3 adapted modules that read the same input x (M × K): q/k/v, gate/up, or one module alone.
Module j has A_j (r × K, fp32 master), B_j (N_j × r, fp32 master), its own dropout seed, and the common
``coef = scaling / (1 − p)``. The kernels compute, with bf16 operands and fp32 accumulation:

- :func:`shrink` — one pass over x: ``xa_j = coef · (m_j ⊙ x) A_jᵀ`` for every module, each with its own
  mask m_j (``philox.keep_mask``); optionally also copies x, so that ``[x | xa]`` is the left operand of a
  single K-augmented GEMM ``[x | xa] · [W | B_blk]ᵀ`` = base output + LoRA output (:func:`write_b_block` keeps
  the ``B_blk`` columns of that weight current).
- :func:`grad_out` — one pass over the output gradient g: ``g_j B_j`` (the gradient at xa_j) and the partial
  sums of ``dB_j = g_jᵀ xa_j``.
- :func:`grad_in` — one pass over x and dx: regenerates the masks, adds ``coef · m_j ⊙ (gB_j A_j)`` to the base
  input gradient in place, and forms partial sums of ``dA_j = coef · gB_jᵀ (m_j ⊙ x)``.
- ``gemm.gemm_lora`` — a Triton GEMM whose epilogue adds ``xa · B_blkᵀ`` (the ``expand="triton"`` variant).

Partial sums (over row chunks, over column chunks) are reduced by the caller with ``torch.sum``, so results
are deterministic (no atomics). Under the interpreter ``tl.dot`` on bf16 misbehaves (triton 3.6), so
operands are upcast to fp32 there first: exact, as bf16 × bf16 products are exact in fp32.
"""

from __future__ import annotations

import os
from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl

from lorascope.train.fused_lora.philox import GROUP, threshold


@dataclass(frozen=True)
class Blocks:
    """Tile sizes and warps of each kernel. Defaults for an H200 (132 SMs): ≥ 2 programs per SM for the
    memory-bound passes, M-tiles ≥ 16 for ``tl.dot``, and — for the Philox-heavy shrink / grad_in kernels of a
    three-module group — small tiles, whose sm_90 builds stay at ≤ 141 registers without spills (Triton 3.6,
    ptxas; larger tiles reach 255 and spill), so that 12–16 warps fit per SM. ``benchmarks/train_fused.py``
    times alternatives on the GPU."""

    shrink_bm: int = 16
    shrink_bk: int = 64
    shrink_warps: int = 4
    out_bm: int = 256
    out_bn: int = 128
    out_nb: int = 4
    out_warps: int = 8
    in_bm: int = 32
    in_bk: int = 64
    in_ms: int = 16
    in_warps: int = 8
    gemm_bm: int = 128
    gemm_bn: int = 256
    gemm_bk: int = 64
    gemm_warps: int = 8
    gemm_stages: int = 3

    def as_list(self) -> list[int]:
        return list(astuple(self))

    @classmethod
    def from_list(cls, values) -> "Blocks":
        return cls(*[int(v) for v in values])


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def padded_rank(n_modules: int, r: int) -> int:
    """Extra columns holding the n·r LoRA activations next to x: a multiple of 16, so that rows of ``[x | xa]``
    and of the augmented weight stay 32-byte aligned (Triton vectorises loads only on strides divisible by 16;
    cuBLAS prefers aligned leading dimensions)."""
    return -(-n_modules * r // 16) * 16


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# ----------------------------------------------------------------------------------------------- dropout masks
@triton.jit
def _slots16(w0, w1, w2, w3, BM: tl.constexpr, G: tl.constexpr):
    """Four (BM, G) uint32 Philox outputs → (BM, G·8) 16-bit values, slot s = 2·word + half (philox.py)."""
    w = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BM, G * 4))  # words in order 0, 1, 2, 3
    return tl.reshape(tl.join(w & 0xFFFF, w >> 16), (BM, G * 8)).to(tl.int32)


@triton.jit
def _dropped(seed, rows, k0, K_GROUPS, T_HI, T_LO, BM: tl.constexpr, BK: tl.constexpr):
    """(BM, BK) boolean: True where the element (rows, k0 + arange(BK)) is dropped. k0 % 8 == 0."""
    G: tl.constexpr = BK // 8
    c0 = (rows[:, None] * K_GROUPS + (k0 // 8 + tl.arange(0, G))[None, :]).to(tl.uint32)
    zero = c0 * 0
    w0, w1, w2, w3 = tl.philox(seed, c0, zero, zero, zero)
    u = _slots16(w0, w1, w2, w3, BM, G)
    drop = u < T_HI
    tie = u == T_HI
    if tl.max(tie.to(tl.int32)) > 0:  # one element in 65 536: the low 16 bits of the 32-bit comparison
        v0, v1, v2, v3 = tl.philox(seed, c0, zero + 1, zero, zero)
        drop = drop | (tie & (_slots16(v0, v1, v2, v3, BM, G) < T_LO))
    return drop


@triton.jit
def _mask_kernel(seed_ptr, out_ptr, M, K, K_GROUPS, T_HI, T_LO, BM: tl.constexpr, BK: tl.constexpr):
    """Writes the drop mask (int8) of an (M, K) input: used by tests and the GPU check to compare with philox.py."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    k0 = tl.program_id(1) * BK
    cols = k0 + tl.arange(0, BK)
    drop = _dropped(tl.load(seed_ptr), rows, k0, K_GROUPS, T_HI, T_LO, BM, BK)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], drop.to(tl.int8),
             mask=(rows[:, None] < M) & (cols[None, :] < K))


def drop_mask(seed: torch.Tensor, M: int, K: int, p: float, BM: int = 32, BK: int = 64) -> torch.Tensor:
    """The kernels' drop mask for one module (bool, True = dropped); ``seed`` is a 1-element int64 tensor."""
    out = torch.empty(M, K, dtype=torch.int8, device=seed.device)
    t = threshold(p)
    _mask_kernel[(triton.cdiv(M, BM), triton.cdiv(K, BK))](seed, out, M, K, triton.cdiv(K, GROUP), t >> 16,
                                                          t & 0xFFFF, BM=BM, BK=BK)
    return out.bool()


# ----------------------------------------------------------------------------------------------- forward shrink
@triton.jit
def _shrink_module(acc, x, a_ptr, seed_ptr, rows, k0, cols, cmask, K, K_GROUPS, T_HI, T_LO,
                   R: tl.constexpr, RP: tl.constexpr, DROPOUT: tl.constexpr, DOT_F32: tl.constexpr,
                   BM: tl.constexpr, BK: tl.constexpr):
    rr = tl.arange(0, RP)
    a_t = tl.load(a_ptr + rr[None, :] * K + cols[:, None], mask=(rr[None, :] < R) & cmask[:, None], other=0.0)
    a_t = a_t.to(x.dtype)  # (BK, RP) = A_jᵀ tile, rounded as autocast rounds the fp32 master
    xd = x
    if DROPOUT:
        xd = tl.where(_dropped(tl.load(seed_ptr), rows, k0, K_GROUPS, T_HI, T_LO, BM, BK), 0.0, x).to(x.dtype)
    if DOT_F32:
        return acc + tl.dot(xd.to(tl.float32), a_t.to(tl.float32))
    return acc + tl.dot(xd, a_t)


@triton.jit
def _shrink_kernel(x_ptr, a0_ptr, a1_ptr, a2_ptr, seeds_ptr, out_ptr, M, K, stride_x, stride_out, xa_col, K_GROUPS,
                   T_HI, T_LO, coef, R: tl.constexpr, RP: tl.constexpr, N_MOD: tl.constexpr, PAD: tl.constexpr,
                   DROPOUT: tl.constexpr, COPY_X: tl.constexpr, DOT_F32: tl.constexpr, BM: tl.constexpr,
                   BK: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    acc0 = tl.zeros((BM, RP), dtype=tl.float32)
    acc1 = tl.zeros((BM, RP), dtype=tl.float32)
    acc2 = tl.zeros((BM, RP), dtype=tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        cmask = cols < K
        xmask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=xmask, other=0.0)
        if COPY_X:
            tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], x, mask=xmask)
        acc0 = _shrink_module(acc0, x, a0_ptr, seeds_ptr, rows, k0, cols, cmask, K, K_GROUPS, T_HI, T_LO,
                              R, RP, DROPOUT, DOT_F32, BM, BK)
        if N_MOD > 1:
            acc1 = _shrink_module(acc1, x, a1_ptr, seeds_ptr + 1, rows, k0, cols, cmask, K, K_GROUPS, T_HI, T_LO,
                                  R, RP, DROPOUT, DOT_F32, BM, BK)
        if N_MOD > 2:
            acc2 = _shrink_module(acc2, x, a2_ptr, seeds_ptr + 2, rows, k0, cols, cmask, K, K_GROUPS, T_HI, T_LO,
                                  R, RP, DROPOUT, DOT_F32, BM, BK)
    rr = tl.arange(0, RP)
    dst = out_ptr + rows[:, None] * stride_out + xa_col + rr[None, :]
    omask = rmask[:, None] & (rr[None, :] < R)
    tl.store(dst, (acc0 * coef).to(out_ptr.dtype.element_ty), mask=omask)
    if N_MOD > 1:
        tl.store(dst + R, (acc1 * coef).to(out_ptr.dtype.element_ty), mask=omask)
    if N_MOD > 2:
        tl.store(dst + 2 * R, (acc2 * coef).to(out_ptr.dtype.element_ty), mask=omask)
    if PAD > 0:  # zero padding columns: they meet the zero padding columns of the augmented weight
        pp = tl.arange(0, 16)
        tl.store(out_ptr + rows[:, None] * stride_out + xa_col + N_MOD * R + pp[None, :],
                 tl.zeros((BM, 16), dtype=out_ptr.dtype.element_ty), mask=rmask[:, None] & (pp[None, :] < PAD))


def _three(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    if not 1 <= len(ts) <= 3:
        raise ValueError(f"a fused group has 1–3 modules, got {len(ts)}")
    return list(ts) + [ts[0]] * (3 - len(ts))


def shrink(x: torch.Tensor, a_list: list[torch.Tensor], seeds: torch.Tensor, *, r: int, coef: float, p: float,
           copy_x: bool, blocks: Blocks) -> torch.Tensor:
    """``[x | xa_0 … xa_{n-1} | 0-pad]`` (copy_x) or ``[xa | 0-pad]``, in x's dtype; see the module docstring."""
    M, K = x.shape
    n = len(a_list)
    width = padded_rank(n, r)
    out = torch.empty(M, (K if copy_x else 0) + width, dtype=x.dtype, device=x.device)
    t = threshold(p)
    a0, a1, a2 = _three(a_list)
    _shrink_kernel[(triton.cdiv(M, blocks.shrink_bm),)](
        x, a0, a1, a2, seeds, out, M, K, x.stride(0), out.stride(0), K if copy_x else 0, triton.cdiv(K, GROUP),
        t >> 16, t & 0xFFFF, coef, R=r, RP=_pow2_at_least_16(r), N_MOD=n, PAD=width - n * r, DROPOUT=p > 0,
        COPY_X=copy_x, DOT_F32=interpreting(), BM=blocks.shrink_bm, BK=blocks.shrink_bk,
        num_warps=blocks.shrink_warps)
    return out


# ----------------------------------------------------------------------------------------------- B block of W_aug
@triton.jit
def _b_block_kernel(w_ptr, b0_ptr, b1_ptr, b2_ptr, N0, N1, N_TOTAL, K, stride_w, WIDTH, R: tl.constexpr,
                    BN: tl.constexpr, CP: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cc = tl.arange(0, CP)
    rmask = rows < N_TOTAL
    j = (rows >= N0).to(tl.int32) + (rows >= N0 + N1).to(tl.int32)  # module of each output row
    local = rows - tl.where(j == 0, 0, tl.where(j == 1, N0, N0 + N1))
    col = cc[None, :] - j[:, None] * R  # column inside module j's block; in [0, R) on the block diagonal
    on = rmask[:, None] & (col >= 0) & (col < R)
    val = tl.load(b0_ptr + local[:, None] * R + col, mask=on & (j[:, None] == 0), other=0.0)
    val += tl.load(b1_ptr + local[:, None] * R + col, mask=on & (j[:, None] == 1), other=0.0)
    val += tl.load(b2_ptr + local[:, None] * R + col, mask=on & (j[:, None] == 2), other=0.0)
    tl.store(w_ptr + rows[:, None] * stride_w + K + cc[None, :], val.to(w_ptr.dtype.element_ty),
             mask=rmask[:, None] & (cc[None, :] < WIDTH))


def write_b_block(w_aug: torch.Tensor, b_list: list[torch.Tensor], in_features: int, r: int) -> None:
    """``w_aug[:, K:] = blockdiag(B_0, …, B_{n-1})`` (rounded to w_aug's dtype), zero elsewhere, one launch."""
    sizes = [b.shape[0] for b in b_list] + [0, 0]
    width = w_aug.shape[1] - in_features
    b0, b1, b2 = _three(b_list)
    BN = 64
    _b_block_kernel[(triton.cdiv(w_aug.shape[0], BN),)](
        w_aug, b0, b1, b2, sizes[0], sizes[1], w_aug.shape[0], in_features, w_aug.stride(0), width, R=r, BN=BN,
        CP=max(16, triton.next_power_of_2(width)))


# ----------------------------------------------------------------------------------------------- backward
@triton.jit
def _grad_out_kernel(g_ptr, b0_ptr, b1_ptr, b2_ptr, xa_ptr, gb_ptr, db_ptr, M, N0, N1, N2, N_TOTAL, stride_g,
                     stride_xa, NR, R: tl.constexpr, RP: tl.constexpr, DOT_F32: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, NB: tl.constexpr):
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    j = tl.program_id(2)
    if j == 0:
        b_ptr, n_j, off = b0_ptr, N0, 0
    elif j == 1:
        b_ptr, n_j, off = b1_ptr, N1, N0
    else:
        b_ptr, n_j, off = b2_ptr, N2, N0 + N1
    rows = pm * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, RP)
    rk = rr < R
    xa = tl.load(xa_ptr + rows[:, None] * stride_xa + j * R + rr[None, :], mask=rmask[:, None] & rk[None, :],
                 other=0.0)
    gb = tl.zeros((BM, RP), dtype=tl.float32)
    for t in range(NB):
        cols = (pn * NB + t) * BN + tl.arange(0, BN)
        cmask = cols < n_j
        g = tl.load(g_ptr + rows[:, None] * stride_g + off + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0)
        b = tl.load(b_ptr + cols[:, None] * R + rr[None, :], mask=cmask[:, None] & rk[None, :], other=0.0).to(g.dtype)
        if DOT_F32:
            gb += tl.dot(g.to(tl.float32), b.to(tl.float32))
            db = tl.dot(tl.trans(g).to(tl.float32), xa.to(tl.float32))
        else:
            gb += tl.dot(g, b)
            db = tl.dot(tl.trans(g), xa)
        tl.store(db_ptr + pm * N_TOTAL * R + (off + cols)[:, None] * R + rr[None, :], db,
                 mask=cmask[:, None] & rk[None, :])
    tl.store(gb_ptr + pn * M * NR + rows[:, None] * NR + j * R + rr[None, :], gb, mask=rmask[:, None] & rk[None, :])


def grad_out(g: torch.Tensor, b_list: list[torch.Tensor], xa: torch.Tensor, *, r: int, blocks: Blocks):
    """``(gB, dB)``: gB = [g_j B_j]_j (M × n·r, fp32), dB = [g_jᵀ xa_j]_j stacked by rows (ΣN_j × r, fp32).
    ``xa`` is an (M, ≥ n·r) view whose first n·r columns hold the LoRA activations."""
    M = g.shape[0]
    sizes = [b.shape[0] for b in b_list]
    n, n_total = len(b_list), sum(sizes)
    bm, bn, nb = blocks.out_bm, blocks.out_bn, blocks.out_nb
    p_m, p_n = triton.cdiv(M, bm), triton.cdiv(max(sizes), bn * nb)
    gb = torch.empty(p_n, M, n * r, dtype=torch.float32, device=g.device)
    db = torch.empty(p_m, n_total, r, dtype=torch.float32, device=g.device)
    b0, b1, b2 = _three(b_list)
    s = sizes + [0, 0]
    _grad_out_kernel[(p_m, p_n, n)](g, b0, b1, b2, xa, gb, db, M, s[0], s[1], s[2], n_total, g.stride(0), xa.stride(0),
                                    n * r, R=r, RP=_pow2_at_least_16(r), DOT_F32=interpreting(), BM=bm, BN=bn, NB=nb,
                                    num_warps=blocks.out_warps)
    return gb.sum(0), db.sum(0)


@triton.jit
def _grad_in_module(lora, da, x, gbc, a_t, seed_ptr, rows, k0, K_GROUPS, T_HI, T_LO, DROPOUT: tl.constexpr,
                    WRITE_DX: tl.constexpr, DOT_F32: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    xd = x
    if DROPOUT:
        drop = _dropped(tl.load(seed_ptr), rows, k0, K_GROUPS, T_HI, T_LO, BM, BK)
        xd = tl.where(drop, 0.0, x).to(x.dtype)
    if DOT_F32:
        da += tl.dot(tl.trans(gbc).to(tl.float32), xd.to(tl.float32))
    else:
        da += tl.dot(tl.trans(gbc), xd)
    if WRITE_DX:
        if DOT_F32:
            t = tl.dot(gbc.to(tl.float32), a_t.to(tl.float32))
        else:
            t = tl.dot(gbc, a_t)
        if DROPOUT:
            t = tl.where(drop, 0.0, t)
        lora += t
    return lora, da


@triton.jit
def _grad_in_kernel(x_ptr, dx_ptr, gbc_ptr, a0_ptr, a1_ptr, a2_ptr, seeds_ptr, da_ptr, M, K, stride_x, stride_dx,
                    K_GROUPS, T_HI, T_LO, R: tl.constexpr, RP: tl.constexpr, N_MOD: tl.constexpr,
                    DROPOUT: tl.constexpr, WRITE_DX: tl.constexpr, DOT_F32: tl.constexpr, BM: tl.constexpr,
                    BK: tl.constexpr, MS: tl.constexpr):
    pm = tl.program_id(0)
    k0 = tl.program_id(1) * BK
    cols = k0 + tl.arange(0, BK)
    cmask = cols < K
    rr = tl.arange(0, RP)
    rk = rr < R
    NR: tl.constexpr = N_MOD * R
    amask = rk[:, None] & cmask[None, :]
    a_off = rr[:, None] * K + cols[None, :]
    dt = gbc_ptr.dtype.element_ty
    a0 = tl.load(a0_ptr + a_off, mask=amask, other=0.0).to(dt)  # (RP, BK) tiles of A_j
    a1 = tl.load(a1_ptr + a_off, mask=amask & (N_MOD > 1), other=0.0).to(dt)
    a2 = tl.load(a2_ptr + a_off, mask=amask & (N_MOD > 2), other=0.0).to(dt)
    da0 = tl.zeros((RP, BK), dtype=tl.float32)
    da1 = tl.zeros((RP, BK), dtype=tl.float32)
    da2 = tl.zeros((RP, BK), dtype=tl.float32)
    for s in range(MS):
        rows = (pm * MS + s) * BM + tl.arange(0, BM)
        rmask = rows < M
        xmask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=xmask, other=0.0)
        gmask = rmask[:, None] & rk[None, :]
        g_off = gbc_ptr + rows[:, None] * NR + rr[None, :]
        lora = tl.zeros((BM, BK), dtype=tl.float32)
        lora, da0 = _grad_in_module(lora, da0, x, tl.load(g_off, mask=gmask, other=0.0), a0, seeds_ptr, rows, k0,
                                    K_GROUPS, T_HI, T_LO, DROPOUT, WRITE_DX, DOT_F32, BM, BK)
        if N_MOD > 1:
            lora, da1 = _grad_in_module(lora, da1, x, tl.load(g_off + R, mask=gmask, other=0.0), a1, seeds_ptr + 1,
                                        rows, k0, K_GROUPS, T_HI, T_LO, DROPOUT, WRITE_DX, DOT_F32, BM, BK)
        if N_MOD > 2:
            lora, da2 = _grad_in_module(lora, da2, x, tl.load(g_off + 2 * R, mask=gmask, other=0.0), a2,
                                        seeds_ptr + 2, rows, k0, K_GROUPS, T_HI, T_LO, DROPOUT, WRITE_DX, DOT_F32,
                                        BM, BK)
        if WRITE_DX:
            dst = dx_ptr + rows[:, None] * stride_dx + cols[None, :]
            dx = tl.load(dst, mask=xmask, other=0.0).to(tl.float32)
            tl.store(dst, (dx + lora).to(dx_ptr.dtype.element_ty), mask=xmask)
    dst = da_ptr + pm * NR * K + rr[:, None] * K + cols[None, :]
    tl.store(dst, da0, mask=amask)
    if N_MOD > 1:
        tl.store(dst + R * K, da1, mask=amask)
    if N_MOD > 2:
        tl.store(dst + 2 * R * K, da2, mask=amask)


def grad_in(x: torch.Tensor, dx: torch.Tensor | None, gbc: torch.Tensor, a_list: list[torch.Tensor],
            seeds: torch.Tensor, *, r: int, p: float, blocks: Blocks) -> torch.Tensor:
    """Adds the LoRA input gradient into ``dx`` in place (if given) and returns ``dA`` stacked by rows (n·r × K,
    fp32). ``gbc`` = coef · gB, contiguous (M × n·r), in the dtype of the dot operands."""
    M, K = x.shape
    n = len(a_list)
    bm, bk, ms = blocks.in_bm, blocks.in_bk, blocks.in_ms
    p_m = triton.cdiv(M, bm * ms)
    da = torch.empty(p_m, n * r, K, dtype=torch.float32, device=x.device)
    t = threshold(p)
    a0, a1, a2 = _three(a_list)
    _grad_in_kernel[(p_m, triton.cdiv(K, bk))](
        x, dx if dx is not None else x, gbc, a0, a1, a2, seeds, da, M, K, x.stride(0),
        dx.stride(0) if dx is not None else 0, triton.cdiv(K, GROUP), t >> 16, t & 0xFFFF, R=r,
        RP=_pow2_at_least_16(r), N_MOD=n, DROPOUT=p > 0, WRITE_DX=dx is not None, DOT_F32=interpreting(), BM=bm,
        BK=bk, MS=ms, num_warps=blocks.in_warps)
    return da.sum(0)
