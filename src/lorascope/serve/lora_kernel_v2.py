"""The fused multi-LoRA projection kernel of ``lora_kernel.py`` with the fixes its compiled sm_90 code called for.

Same math, same arguments, same workspace and routing; a prototype to time side by side with the original
(docs: /work/notes/sass_findings.md; ``benchmarks/sass_inspect.py --module lorascope.serve.lora_kernel_v2``
prints the compiled code's figures). What the sm_90 code of the original showed, and what changes here:

1. **At 16 LoRA columns the base GEMV ran 4× redundantly.** Triton's mma-v2 layout pass
   (``warpsPerTileV2``, AccelerateMatmul.cpp) treats two dots that share an operand (x) as *chained*: the
   first one it converts picks the warp split — for a 16×16 shrink ``shape[0] >= shape[1]`` gives all warps on
   M ([4, 1]) — and the other dot inherits it. With BLOCK_M = 16 every warp then computes the whole 16×BLOCK_N
   base tile: 80 HMMA and 48 LDSM per K step instead of 20 / 24 (BLOCK_N 64), 196 registers instead of 72 at
   BLOCK_N 128. From 32 columns on the shrink's split is [1, 4], like the base dot's. Here: at least 32 LoRA
   columns (``variant``), so both dots get [1, 4]; the padding costs 4 HMMA per warp per K step.
2. **The split-K reduction became a chain of dependent L2 round trips.** Accumulating the expansion into
   ``acc`` (the dot's C operand) makes the layout pass convert every loaded partial to the MMA layout through
   shared memory (load → barrier → STS → barrier → LDSM, per split), so the last split waits SPLIT_K L2
   latencies in a row instead of one (the base-only kernel issues all 16 partial loads at once). Here the
   expansion is a dot with a zero accumulator, added after: one conversion, partial loads in parallel.
3. **The expansion's B tile and the row routing were loaded after the split-K handshake**, a DRAM round trip
   on the critical path of the last split. Here they are loaded before the K loop (LC×BLOCK_N bf16: a few
   registers per thread), so their latency hides under the W stream.
4. **Pipeline buffers beyond the loop's trip count** (num_stages − 1 buffers for 2 K steps at split 8) only
   cost shared memory, hence CTAs per SM. Here stages ≤ steps per split + 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorascope.serve.lora_kernel import BLOCK_M, Config, Workspace, _mma, lora_cols, n_blocks


@triton.jit(do_not_specialize=["M", "U", "steps_per_split"])
def _fused_lora_linear(x_ptr, w_ptr, a_ptr, b_ptr, y_ptr, row_lora_ptr, lora_ids_ptr, ws_ptr, wss_ptr, lock_ptr,
                       M, K, D0, D1, D2, U, steps_per_split, stride_xm, stride_ym,
                       NMOD: tl.constexpr, R: tl.constexpr, LC: tl.constexpr, HAS_LORA: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       WIDEN: tl.constexpr, SPLIT_P2: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    n_total = D0 + D1 + D2
    nb0 = tl.cdiv(D0, BLOCK_N)
    nb1 = tl.cdiv(D1, BLOCK_N)
    n_blocks = nb0 + nb1 + tl.cdiv(D2, BLOCK_N)
    mod = (pid_n >= nb0).to(tl.int32) + (pid_n >= nb0 + nb1).to(tl.int32)
    first_block = tl.where(mod == 0, 0, tl.where(mod == 1, nb0, nb0 + nb1))
    col0 = tl.where(mod == 0, 0, tl.where(mod == 1, D0, D0 + D1))
    width = tl.where(mod == 0, D0, tl.where(mod == 1, D1, D2))
    offs_n = col0 + (pid_n - first_block) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < col0 + width
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    k_begin = pid_k * steps_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + steps_per_split * BLOCK_K, K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[None, :] * K + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    s = tl.zeros((BLOCK_M, LC), dtype=tl.float32)
    if HAS_LORA:
        offs_c = tl.arange(0, LC)
        c_u = offs_c // R
        slot_c = tl.load(lora_ids_ptr + c_u, mask=c_u < U, other=-1)
        c_ok = slot_c >= 0
        a_ptrs = a_ptr + ((tl.maximum(slot_c, 0) * NMOD + mod) * R + offs_c % R)[None, :] * K + offs_k[:, None]
    for k0 in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            xk = tl.load(x_ptrs + k0, mask=m_ok[:, None], other=0.0)
            wk = tl.load(w_ptrs + k0, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + offs_k) < k_end
            xk = tl.load(x_ptrs + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            wk = tl.load(w_ptrs + k0, mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        acc = _mma(xk, wk, acc, WIDEN, DOT_PRECISION)
        if HAS_LORA:
            if EVEN_K:
                ak = tl.load(a_ptrs + k0, mask=c_ok[None, :], other=0.0)
            else:
                ak = tl.load(a_ptrs + k0, mask=c_ok[None, :] & k_ok[:, None], other=0.0)
            s = _mma(xk, ak, s, WIDEN, DOT_PRECISION)

    if HAS_LORA:  # (3) the epilogue's operands before the handshake: their latency overlaps its round trip
        row_u = tl.load(row_lora_ptr + offs_m, mask=m_ok, other=-1)
        b_ptrs = b_ptr + (tl.maximum(slot_c, 0) * R + offs_c % R)[:, None] * n_total + offs_n[None, :]
        bk = tl.load(b_ptrs, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
    if SPLIT_K > 1:  # serial split-K, as in lora_kernel.py
        tile = pid_m * n_blocks + pid_n
        ws_tile = ws_ptr + tile * SPLIT_K * (BLOCK_M * BLOCK_N) + (
            tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :])
        wss_tile = wss_ptr + tile * SPLIT_K * (BLOCK_M * LC) + (
            tl.arange(0, BLOCK_M)[:, None] * LC + tl.arange(0, LC)[None, :])
        rows_ok = m_ok[:, None]
        tl.store(ws_tile + pid_k * (BLOCK_M * BLOCK_N), acc, mask=rows_ok)
        if HAS_LORA:
            tl.store(wss_tile + pid_k * (BLOCK_M * LC), s, mask=rows_ok)
        tl.debug_barrier()
        count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
        is_last = count == SPLIT_K - 1
    else:
        is_last = True
    if is_last:
        if SPLIT_K > 1:
            if HAS_LORA:  # (2) every split's partial in ONE load (a leading split axis, padded to a power of
                # two), then summed: all partials are in flight at once whatever layout the expansion asks for
                offs_s = tl.arange(0, SPLIT_P2)[:, None, None]
                s_ok = (offs_s < SPLIT_K) & rows_ok[None, :, :]
                acc = tl.sum(tl.load(ws_tile[None, :, :] + offs_s * (BLOCK_M * BLOCK_N), mask=s_ok, other=0.0,
                                     cache_modifier=".cg"), axis=0)
                s = tl.sum(tl.load(wss_tile[None, :, :] + offs_s * (BLOCK_M * LC), mask=s_ok, other=0.0,
                                   cache_modifier=".cg"), axis=0)
            else:  # base only: the original's loop already issues every load at once (no MMA consumer)
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for i in tl.static_range(SPLIT_K):
                    acc += tl.load(ws_tile + i * (BLOCK_M * BLOCK_N), mask=rows_ok, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)
        if HAS_LORA:
            keep = (row_u[:, None] == c_u[None, :]) & c_ok[None, :]
            s_sel = tl.where(keep, s, 0.0).to(x_ptr.dtype.element_ty)
            # (2) a dot of its own, added after: the partials above stay in their load layout (no per-split
            # conversion to the MMA layout, no chain of dependent L2 round trips)
            lora = _mma(s_sel, bk, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), WIDEN, DOT_PRECISION)
            acc = acc + lora
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def variant(u: int, r: int, dtype: torch.dtype) -> int:
    """(1) LoRA columns: ≥ 32, so the shrink dot (16 × LC) gets the base dot's warp split; fp32 ≥ 64 as before."""
    if u == 0:
        return 0
    return max(lora_cols(u, r), 64 if dtype == torch.float32 else 32)


def fit_stages(cfg: Config, lc: int, dtype: torch.dtype, k: int) -> Config:
    """(4) Stages ≤ K steps per split + 1 (more buffers than loop trips hold nothing), and the original's
    shared-memory cap (160 KiB)."""
    elt = torch.empty((), dtype=dtype).element_size()
    stage = (BLOCK_M + cfg.block_n + lc) * cfg.block_k * elt
    steps = -(-k // cfg.block_k)
    per = -(-steps // cfg.split_k)
    stages = max(2, min(cfg.num_stages, per + 1, (160 * 1024) // stage))
    return cfg if stages == cfg.num_stages else Config(cfg.block_n, cfg.block_k, cfg.split_k, cfg.num_warps, stages)


def _meta(widths: tuple[int, ...], k: int, dtype: torch.dtype, cfg: Config, u: int, r: int) -> tuple[Config, dict]:
    from lorascope.serve.lora_kernel import interpreting

    lc = variant(u, r, dtype)
    cfg = fit_stages(cfg, lc, dtype, k)
    const = dict(NMOD=len(widths), R=r if lc else 1, LC=lc or 16, HAS_LORA=lc > 0, BLOCK_M=BLOCK_M,
                 BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k, EVEN_K=k % cfg.block_k == 0,
                 SPLIT_P2=triton.next_power_of_2(cfg.split_k),
                 DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                 WIDEN=interpreting() and dtype != torch.float32, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return cfg, const


def fused_lora_linear(x: torch.Tensor, w: torch.Tensor, widths: tuple[int, ...], cfg: Config, ws: Workspace,
                      lora: tuple | None = None) -> torch.Tensor:
    """As ``lora_kernel.fused_lora_linear`` (same arguments and result), with this file's kernel."""
    m, k = x.shape
    if x.stride(1) != 1 or not w.is_contiguous() or w.shape != (sum(widths), k) or len(widths) > 3:
        raise ValueError("fused_lora_linear: x (M, K) with unit K-stride, w (N, K) contiguous, ≤ 3 modules")
    d = tuple(widths) + (0,) * (3 - len(widths))
    y = torch.empty((m, d[0] + d[1] + d[2]), device=x.device, dtype=x.dtype)
    u, r = (lora[3].numel(), lora[4]) if lora is not None else (0, 1)
    cfg, const = _meta(tuple(widths), k, x.dtype, cfg, u, r)
    grid_n, grid_m = n_blocks(widths, cfg.block_n), -(-m // BLOCK_M)
    buf, sbuf, lock = ws.get(grid_n * grid_m, cfg, const["LC"] if u else 0)
    a, b, row_lora, lora_ids = lora[:4] if lora is not None else (w, w, lock, lock)
    steps = -(-k // cfg.block_k)
    per = -(-steps // cfg.split_k)
    _fused_lora_linear[(grid_n, grid_m, cfg.split_k)](
        x, w, a, b, y, row_lora, lora_ids, buf, sbuf, lock, m, k, d[0], d[1], d[2], u, per, x.stride(0), y.stride(0),
        **const)
    return y
