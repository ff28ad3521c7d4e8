"""PROTOTYPE (not used by the training path): the dropout mask of ``kernels._dropped`` built without layout shuffles.

Why: compiled for sm_90 (benchmarks/sass_inspect.py --kernels train), ``_slots16``'s ``tl.join`` / ``tl.reshape``
of the four Philox words into eight 16-bit slots lowers to shared-memory round trips: 27 of the 48 CTA barriers and
~200 of the 1 291 instructions per warp and K step of ``_shrink_kernel`` (tiles bm 32 bk 64), more than the Philox
rounds' own share of the barriers (none). Here the tile is viewed as (BM, G, 8): element (m, 8g + s) takes slot s
of call (m, g), so each call's eight slots are selected with ``tl.where`` on the slot index — no data moves
between threads when one thread holds a group's 8 elements, as in the 16-byte loads of x. Same masks bit for bit
(philox.py, tested under the interpreter), same Philox calls; only the slot extraction and the tie check change:
the tie check reduces one flag per call (BM × G) instead of per element.

``_shrink_kernel_v2`` is ``kernels._shrink_kernel`` with this mask, for comparing the compiled code
(benchmarks/sass_train.py compiles both).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorascope.train.fused_lora import kernels as fk
from lorascope.train.fused_lora.philox import GROUP, threshold


@triton.jit
def _slot_values(w0, w1, w2, w3, G: tl.constexpr):
    """(BM, G) Philox words → (BM, G, 8) 16-bit values, slot s = 2·word + half (philox.py's order). The words are
    expanded to (BM, G, 1) only here, so that Philox runs once per call (a (BM, G, 1) tensor in the 8-per-thread
    layout would be computed 8 times over, once per replica)."""
    s = tl.arange(0, 8)[None, None, :]
    w = tl.where(s < 4, tl.where(s < 2, w0[:, :, None], w1[:, :, None]),
                 tl.where(s < 6, w2[:, :, None], w3[:, :, None]))
    return tl.where((s & 1) == 0, w & 0xFFFF, w >> 16).to(tl.int32)


@triton.jit
def _any_tie(w, T_HI):
    """(BM, G) int32: 1 where either 16-bit half of the word equals T_HI (computed per call, not per element)."""
    return (((w & 0xFFFF) == T_HI) | ((w >> 16) == T_HI)).to(tl.int32)


@triton.jit
def _dropped_v2(seed, rows, k0, K_GROUPS, T_HI, T_LO, BM: tl.constexpr, BK: tl.constexpr):
    """(BM, BK) boolean, True = dropped; equal to ``kernels._dropped``. k0 % 8 == 0."""
    G: tl.constexpr = BK // 8
    c0 = (rows[:, None] * K_GROUPS + (k0 // 8 + tl.arange(0, G))[None, :]).to(tl.uint32)  # (BM, G)
    zero = c0 * 0
    w0, w1, w2, w3 = tl.philox(seed, c0, zero, zero, zero)
    u = _slot_values(w0, w1, w2, w3, G)
    drop = u < T_HI
    tie = u == T_HI
    if tl.max(_any_tie(w0, T_HI) | _any_tie(w1, T_HI) | _any_tie(w2, T_HI) | _any_tie(w3, T_HI)) > 0:  # 1 in 65 536
        v0, v1, v2, v3 = tl.philox(seed, c0, zero + 1, zero, zero)
        drop = drop | (tie & (_slot_values(v0, v1, v2, v3, G) < T_LO))
    return tl.reshape(drop, (BM, BK))


@triton.jit
def _mask_kernel_v2(seed_ptr, out_ptr, M, K, K_GROUPS, T_HI, T_LO, BM: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    drop = _dropped_v2(tl.load(seed_ptr), rows, tl.program_id(1) * BK, K_GROUPS, T_HI, T_LO, BM, BK)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], drop.to(tl.int8),
             mask=(rows[:, None] < M) & (cols[None, :] < K))


def drop_mask_v2(seed: torch.Tensor, M: int, K: int, p: float, BM: int = 32, BK: int = 64) -> torch.Tensor:
    """As ``kernels.drop_mask`` (bool, True = dropped), through ``_dropped_v2``."""
    out = torch.empty(M, K, dtype=torch.int8, device=seed.device)
    t = threshold(p)
    _mask_kernel_v2[(triton.cdiv(M, BM), triton.cdiv(K, BK))](seed, out, M, K, triton.cdiv(K, GROUP), t >> 16,
                                                              t & 0xFFFF, BM=BM, BK=BK)
    return out.bool()


@triton.jit
def _shrink_module_v2(acc, x, a_ptr, seed_ptr, rows, k0, cols, cmask, K, K_GROUPS, T_HI, T_LO,
                      R: tl.constexpr, RP: tl.constexpr, DROPOUT: tl.constexpr, DOT_F32: tl.constexpr,
                      BM: tl.constexpr, BK: tl.constexpr):
    rr = tl.arange(0, RP)
    a_t = tl.load(a_ptr + rr[None, :] * K + cols[:, None], mask=(rr[None, :] < R) & cmask[:, None], other=0.0)
    a_t = a_t.to(x.dtype)
    xd = x
    if DROPOUT:
        xd = tl.where(_dropped_v2(tl.load(seed_ptr), rows, k0, K_GROUPS, T_HI, T_LO, BM, BK), 0.0, x).to(x.dtype)
    if DOT_F32:
        return acc + tl.dot(xd.to(tl.float32), a_t.to(tl.float32))
    return acc + tl.dot(xd, a_t)


@triton.jit
def _shrink_kernel_v2(x_ptr, a0_ptr, a1_ptr, a2_ptr, seeds_ptr, out_ptr, M, K, stride_x, stride_out, xa_col,
                      K_GROUPS, T_HI, T_LO, coef, R: tl.constexpr, RP: tl.constexpr, N_MOD: tl.constexpr,
                      PAD: tl.constexpr, DROPOUT: tl.constexpr, COPY_X: tl.constexpr, DOT_F32: tl.constexpr,
                      BM: tl.constexpr, BK: tl.constexpr):
    """``kernels._shrink_kernel`` with ``_dropped_v2`` (same arguments, same result)."""
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
        acc0 = _shrink_module_v2(acc0, x, a0_ptr, seeds_ptr, rows, k0, cols, cmask, K, K_GROUPS, T_HI, T_LO,
                                 R, RP, DROPOUT, DOT_F32, BM, BK)
        if N_MOD > 1:
            acc1 = _shrink_module_v2(acc1, x, a1_ptr, seeds_ptr + 1, rows, k0, cols, cmask, K, K_GROUPS, T_HI,
                                     T_LO, R, RP, DROPOUT, DOT_F32, BM, BK)
        if N_MOD > 2:
            acc2 = _shrink_module_v2(acc2, x, a2_ptr, seeds_ptr + 2, rows, k0, cols, cmask, K, K_GROUPS, T_HI,
                                     T_LO, R, RP, DROPOUT, DOT_F32, BM, BK)
    rr = tl.arange(0, RP)
    dst = out_ptr + rows[:, None] * stride_out + xa_col + rr[None, :]
    omask = rmask[:, None] & (rr[None, :] < R)
    tl.store(dst, (acc0 * coef).to(out_ptr.dtype.element_ty), mask=omask)
    if N_MOD > 1:
        tl.store(dst + R, (acc1 * coef).to(out_ptr.dtype.element_ty), mask=omask)
    if N_MOD > 2:
        tl.store(dst + 2 * R, (acc2 * coef).to(out_ptr.dtype.element_ty), mask=omask)
    if PAD > 0:
        pp = tl.arange(0, 16)
        tl.store(out_ptr + rows[:, None] * stride_out + xa_col + N_MOD * R + pp[None, :],
                 tl.zeros((BM, 16), dtype=out_ptr.dtype.element_ty), mask=rmask[:, None] & (pp[None, :] < PAD))


def shrink_v2(x: torch.Tensor, a_list: list[torch.Tensor], seeds: torch.Tensor, *, r: int, coef: float, p: float,
              copy_x: bool, blocks: fk.Blocks) -> torch.Tensor:
    """As ``kernels.shrink``, through ``_shrink_kernel_v2``."""
    M, K = x.shape
    n = len(a_list)
    width = fk.padded_rank(n, r)
    out = torch.empty(M, (K if copy_x else 0) + width, dtype=x.dtype, device=x.device)
    t = threshold(p)
    a0, a1, a2 = (list(a_list) + [a_list[0]] * 3)[:3]
    _shrink_kernel_v2[(triton.cdiv(M, blocks.shrink_bm),)](
        x, a0, a1, a2, seeds, out, M, K, x.stride(0), out.stride(0), K if copy_x else 0, triton.cdiv(K, GROUP),
        t >> 16, t & 0xFFFF, coef, R=r, RP=max(16, triton.next_power_of_2(r)), N_MOD=n, PAD=width - n * r,
        DROPOUT=p > 0, COPY_X=copy_x, DOT_F32=fk.interpreting(), BM=blocks.shrink_bm, BK=blocks.shrink_bk,
        num_warps=blocks.shrink_warps)
    return out
