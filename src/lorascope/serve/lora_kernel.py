"""One Triton kernel per fused projection of a decode step: y = x·Wᵀ + expand(select(shrink(x))), one launch.

Why this shape. A decode step multiplies M ≤ 16 rows by each weight: the base GEMM is a memory-bound GEMV
(arithmetic intensity ≈ 2·M flop/byte, far below an H200's ≈ 200), so its cost is streaming W once. An
unmerged r = 8 adapter adds ≈ 0.6% bytes, yet launching the LoRA as separate kernels (Punica's shrink and
expand, Chen et al. 2023; S-LoRA, Sheng et al. 2023; vLLM) or, as the ``addmm`` path here does, as a mask and an
``addmm_`` per projection, adds 1–2 small launches per projection (8 per layer), and at ~2 ms per token those
launches, not the bytes, are the overhead. This kernel does the whole projection in ONE launch:

* every program owns BLOCK_N output columns of ONE module (q, k, v, gate, up, …) and a K-slice;
* while it streams its W tile it also streams the A rows of that module for the U adapters of the batch
  (``lora_ids``: the distinct adapters, ≤ min(rows, k)) and accumulates the shrink s = x·Aᵀ (U·r columns) —
  the same x tile feeds both dots. The A rows are re-read by each column block (from L2, ≈ U·r/BLOCK_N of
  the W bytes), the price of needing no second kernel for the shrink;
* split-K (for enough programs to fill the GPU at N = 2048) uses a *serial* reduction: each split writes its
  fp32 partials (base and shrink) to a workspace, bumps a per-tile counter, and the LAST split sums the
  partials in split order (deterministic; CUTLASS's "serial split-K" semaphore pattern: barrier, then one
  acq_rel atomic) and runs the epilogue; it resets the counter, so the kernel replays inside a CUDA graph;
* epilogue: per row, keep only the shrink columns of that row's adapter (``row_lora``; −1 = no adapter),
  round to the input dtype and add s·B (B stored compactly as (k, r, N), α/r folded in) to the fp32 base
  accumulator before the single rounding of y.

Everything is static-shaped (slot ids live in device buffers) and host-sync free, so it is captured in
the engine's CUDA graphs. ``reference_projection`` in ``fused_lora.py`` is the same math in PyTorch (the CPU
path); the kernel runs on CPU under ``TRITON_INTERPRET=1`` for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _mma(a, b, acc, WIDEN: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a·b. WIDEN: bf16 operands as fp32 (exact products, fp32 sums either way) — only under Triton 3.6's
    interpreter, whose ``create_dot`` multiplies bf16 as raw uint16 bits."""
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit(do_not_specialize=["M", "U", "steps_per_split"])  # one compile for every batch size 1–16
def _fused_lora_linear(x_ptr, w_ptr, a_ptr, b_ptr, y_ptr, row_lora_ptr, lora_ids_ptr, ws_ptr, wss_ptr, lock_ptr,
                       M, K, D0, D1, D2, U, steps_per_split, stride_xm, stride_ym,
                       NMOD: tl.constexpr, R: tl.constexpr, LC: tl.constexpr, HAS_LORA: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       WIDEN: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    n_total = D0 + D1 + D2
    nb0 = tl.cdiv(D0, BLOCK_N)
    nb1 = tl.cdiv(D1, BLOCK_N)
    n_blocks = nb0 + nb1 + tl.cdiv(D2, BLOCK_N)
    # which module this column block belongs to, its first column and width (blocks never straddle modules)
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
    w_ptrs = w_ptr + offs_n[None, :] * K + offs_k[:, None]  # (BLOCK_K, BLOCK_N) tiles of Wᵀ: no in-register transpose
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    s = tl.zeros((BLOCK_M, LC), dtype=tl.float32)
    if HAS_LORA:  # LoRA column c = u·R + j: adapter u of the batch's distinct adapters, rank index j
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

    if SPLIT_K > 1:  # serial split-K: partials to the workspace, the last split of the tile reduces
        tile = pid_m * n_blocks + pid_n
        ws_tile = ws_ptr + tile * SPLIT_K * (BLOCK_M * BLOCK_N) + (
            tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :])
        wss_tile = wss_ptr + tile * SPLIT_K * (BLOCK_M * LC) + (
            tl.arange(0, BLOCK_M)[:, None] * LC + tl.arange(0, LC)[None, :])
        rows_ok = m_ok[:, None]  # only the batch's rows: at M = 1 a partial is 1/16 of the tile
        tl.store(ws_tile + pid_k * (BLOCK_M * BLOCK_N), acc, mask=rows_ok)
        if HAS_LORA:
            tl.store(wss_tile + pid_k * (BLOCK_M * LC), s, mask=rows_ok)
        tl.debug_barrier()  # every thread's partial is written before the release below
        count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
        is_last = count == SPLIT_K - 1
    else:
        is_last = True
    if is_last:
        if SPLIT_K > 1:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            s = tl.zeros((BLOCK_M, LC), dtype=tl.float32)
            for i in tl.static_range(SPLIT_K):  # fixed order: the sum does not depend on which split came last
                acc += tl.load(ws_tile + i * (BLOCK_M * BLOCK_N), mask=rows_ok, other=0.0, cache_modifier=".cg")
                if HAS_LORA:
                    s += tl.load(wss_tile + i * (BLOCK_M * LC), mask=rows_ok, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next launch (a graph replay)
        if HAS_LORA:  # keep each row's own adapter columns, round once, expand, add before y's rounding
            row_u = tl.load(row_lora_ptr + offs_m, mask=m_ok, other=-1)
            keep = (row_u[:, None] == c_u[None, :]) & c_ok[None, :]
            s_sel = tl.where(keep, s, 0.0).to(x_ptr.dtype.element_ty)
            b_ptrs = b_ptr + (tl.maximum(slot_c, 0) * R + offs_c % R)[:, None] * n_total + offs_n[None, :]
            bk = tl.load(b_ptrs, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _mma(s_sel, bk, acc, WIDEN, DOT_PRECISION)
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def interpreting() -> bool:
    """Triton's CPU interpreter (``TRITON_INTERPRET=1``, read when kernels are defined)."""
    return isinstance(_fused_lora_linear, InterpretedFunction)


BLOCK_M = 16  # tl.dot's smallest tile; decode batches are ≤ 16 rows (larger M gets more row blocks)


@dataclass(frozen=True)
class Config:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3


def lora_cols(u: int, r: int) -> int:
    """The kernel's LoRA column count: U·r rounded up to a power of two ≥ 16 (tl.dot's minimum)."""
    return 0 if u == 0 else max(16, 1 << math.ceil(math.log2(u * r)))


def n_blocks(widths: tuple[int, ...], block_n: int) -> int:
    return sum(-(-w // block_n) for w in widths)


def heuristic_config(widths: tuple[int, ...], k: int, dtype: torch.dtype, n_sm: int, *, block_n: int = 128,
                     block_k: int | None = None, waves: float = 2.0, num_warps: int = 4,
                     num_stages: int = 3) -> Config:
    """Enough programs for ``waves`` per SM: column blocks × K-splits (a GEMV needs every SM streaming)."""
    while block_n > 16 and block_n > min(widths):
        block_n //= 2
    if block_k is None:
        block_k = 64 if dtype == torch.float32 else 128
    block_k = max(16, min(block_k, 1 << math.ceil(math.log2(max(k, 16)))))
    steps = -(-k // block_k)
    split = max(1, min(steps, round(waves * n_sm / n_blocks(widths, block_n))))
    per = -(-steps // split)
    return Config(block_n, block_k, -(-steps // per), num_warps, num_stages)


class Workspace:
    """Split-K partials and per-tile counters of one engine, shared by its kernels of one shape (a stream
    runs them one after another). Counters start at zero; each launch's last split resets its own."""

    def __init__(self, device: torch.device):
        self.device, self._bufs = device, {}

    def get(self, tiles: int, cfg: Config, lc: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (tiles, cfg.block_n, cfg.split_k, lc)
        if key not in self._bufs:
            n = max(tiles * cfg.split_k, 1)
            self._bufs[key] = (torch.empty(n * BLOCK_M * cfg.block_n, device=self.device, dtype=torch.float32),
                               torch.empty(max(n * BLOCK_M * lc, 1), device=self.device, dtype=torch.float32),
                               torch.zeros(max(tiles, 1), device=self.device, dtype=torch.int32))
        return self._bufs[key]


def variant(u: int, r: int, dtype: torch.dtype) -> int:
    """Which compiled variant a launch with u distinct adapters of rank r uses: its LoRA column count (0 = no
    LoRA part). fp32 (the gate's dtype, never timed) uses ≥ 64 columns: one compile for every batch."""
    if u == 0:
        return 0
    return max(lora_cols(u, r), 64) if dtype == torch.float32 else lora_cols(u, r)


def _meta(widths: tuple[int, ...], k: int, dtype: torch.dtype, cfg: Config, u: int, r: int) -> tuple[Config, dict]:
    """The launch's tile config (stages fitted to shared memory) and constexprs; u = 0: no LoRA part."""
    lc = variant(u, r, dtype)
    cfg = _fit_stages(cfg, lc, dtype)
    const = dict(NMOD=len(widths), R=r if lc else 1, LC=lc or 16, HAS_LORA=lc > 0, BLOCK_M=BLOCK_M,
                 BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k, EVEN_K=k % cfg.block_k == 0,
                 DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                 WIDEN=interpreting() and dtype != torch.float32, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return cfg, const  # without LoRA, LC = 16 is a dummy (its tiles are dead code)


def fused_lora_linear(x: torch.Tensor, w: torch.Tensor, widths: tuple[int, ...], cfg: Config, ws: Workspace,
                      lora: tuple | None = None) -> torch.Tensor:
    """y (M, Σwidths) = x·wᵀ (+ the LoRA of each row). ``lora`` = (a (k·n_mod·r, K), b (k, r, N), row_lora (M,)
    int32, lora_ids (U,) int32, r) or None (base weights only, e.g. the ``merged`` scenario)."""
    m, k = x.shape
    if x.stride(1) != 1 or not w.is_contiguous() or w.shape != (sum(widths), k) or len(widths) > 3:
        raise ValueError("fused_lora_linear: x (M, K) with unit K-stride, w (N, K) contiguous, ≤ 3 modules")
    d = tuple(widths) + (0,) * (3 - len(widths))
    y = torch.empty((m, d[0] + d[1] + d[2]), device=x.device, dtype=x.dtype)
    u, r = (lora[3].numel(), lora[4]) if lora is not None else (0, 1)
    cfg, const = _meta(tuple(widths), k, x.dtype, cfg, u, r)
    grid_n, grid_m = n_blocks(widths, cfg.block_n), -(-m // BLOCK_M)
    buf, sbuf, lock = ws.get(grid_n * grid_m, cfg, const["LC"] if u else 0)
    a, b, row_lora, lora_ids = lora[:4] if lora is not None else (w, w, lock, lock)  # never read without LoRA
    steps = -(-k // cfg.block_k)
    per = -(-steps // cfg.split_k)  # K steps per split
    _fused_lora_linear[(grid_n, grid_m, cfg.split_k)](
        x, w, a, b, y, row_lora, lora_ids, buf, sbuf, lock, m, k, d[0], d[1], d[2], u, per, x.stride(0), y.stride(0),
        **const)
    return y


def _warm(job: tuple) -> None:
    """Compile one variant without launching it. A job is (widths, K, dtype, Config, u, r) as ``_meta`` takes
    them; the dummy arguments carry what the JIT specialises on (dtypes, 16-alignment of pointers and of K,
    widths and strides, as the engine's contiguous tensors have), so the real launch finds this compile."""
    from triton.runtime.jit import MockTensor

    widths, k, dtype, cfg, u, r = job
    d = tuple(widths) + (0,) * (3 - len(widths))
    cfg, const = _meta(tuple(widths), k, dtype, cfg, u, r)
    ptrs = [MockTensor(dtype)] * 5 + [MockTensor(torch.int32)] * 2 + [MockTensor(torch.float32)] * 2 + [
        MockTensor(torch.int32)]
    _fused_lora_linear.warmup(*ptrs, 1, k, d[0], d[1], d[2], max(u, 1), 1, k, sum(d), grid=(1, 1, 1), **const)


def _warm_all(jobs: list[tuple]) -> list[str]:
    errors = []
    for job in jobs:
        try:
            _warm(job)
        except Exception as exc:
            errors.append(f"{job}: {type(exc).__name__}: {exc}"[:400])
    return errors


def precompile(jobs: list[tuple], processes: int | None = None) -> list[str]:
    """Compile kernel variants ahead of use, so nothing compiles inside a timed call or a graph capture. Triton's
    compile holds the GIL (threads do not help; measured), so distinct variants are compiled by worker
    processes into Triton's on-disk cache, from which the launches load them; serially in-process when only
    one is left or workers cannot start. Returns the errors (a variant that failed to compile fails again at
    its first launch, where the caller sees the exception)."""
    import os

    jobs = list(dict.fromkeys(jobs))
    processes = min(len(jobs), max(1, (os.cpu_count() or 2) - 1), 12) if processes is None else processes
    if processes <= 1 or not torch.cuda.is_available():
        return _warm_all(jobs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [jobs[i::processes] for i in range(processes)]
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            errors = [e for part in pool.map(_warm_all, chunks) for e in part]
    except Exception as exc:  # workers could not start (e.g. no spawn here): compile in-process
        return [f"worker processes failed ({type(exc).__name__}: {exc}); compiled in-process"] + _warm_all(jobs)
    return errors + _warm_all(jobs)  # loads the cached binaries here (and compiles anything a worker missed)


def _fit_stages(cfg: Config, lc: int, dtype: torch.dtype) -> Config:
    """Fewer pipeline stages when the A tile (lc rows) would overflow shared memory (≈ 227 KiB on H100/H200;
    160 KiB leaves room for the epilogue's B tile and for two programs per SM at small tiles)."""
    elt = torch.empty((), dtype=dtype).element_size()
    stage = (BLOCK_M + cfg.block_n + lc) * cfg.block_k * elt
    stages = max(2, min(cfg.num_stages, (160 * 1024) // stage))
    return cfg if stages == cfg.num_stages else Config(cfg.block_n, cfg.block_k, cfg.split_k, cfg.num_warps, stages)


def candidate_configs(widths: tuple[int, ...], k: int, dtype: torch.dtype, n_sm: int) -> list[Config]:
    """A handful of tile shapes around the heuristic: wide and narrow column blocks, deep and shallow K tiles,
    1–4 waves of programs. Small on purpose: each is a Triton compile (≈ 1 s, in parallel)."""
    shapes = [dict(block_n=128, block_k=128, waves=2, num_warps=4, num_stages=3),
              dict(block_n=64, block_k=128, waves=2, num_warps=4, num_stages=4),
              dict(block_n=128, block_k=64, waves=4, num_warps=4, num_stages=4),
              dict(block_n=256, block_k=64, waves=2, num_warps=8, num_stages=3),
              dict(block_n=128, block_k=256, waves=1, num_warps=8, num_stages=2)]
    out = []
    for kw in shapes:
        cfg = heuristic_config(widths, k, dtype, n_sm, **kw)
        if cfg not in out:
            out.append(cfg)
    return out
