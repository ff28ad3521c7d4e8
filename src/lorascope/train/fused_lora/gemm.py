"""The ``expand="triton"`` variant of the fused LoRA path: a Triton GEMM ``x Wᵀ`` whose epilogue adds the LoRA
product ``xa · blockdiag(B)ᵀ`` (no extra pass over the output), next to cuBLAS in the other variants
(kernels.py, ops.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorascope.train.fused_lora.kernels import Blocks, _pow2_at_least_16, interpreting


@triton.jit
def _gemm_lora_kernel(x_ptr, w_ptr, xa_ptr, y_ptr, M, N, K, stride_x, stride_w, stride_xa, stride_y, WIDTH,
                      CP: tl.constexpr, DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    per_group = GROUP_M * n_n  # grouped ordering: programs that share x rows run together (L2 reuse)
    first_m = (pid // per_group) * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    kk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        km = (k0 + kk) < K
        x = tl.load(x_ptr + rows[:, None] * stride_x + (k0 + kk)[None, :], mask=(rows[:, None] < M) & km[None, :],
                    other=0.0)
        w = tl.load(w_ptr + cols[None, :] * stride_w + (k0 + kk)[:, None], mask=(cols[None, :] < N) & km[:, None],
                    other=0.0)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
        else:
            acc += tl.dot(x, w)
    cc = tl.arange(0, CP)  # epilogue: + xa · B_blkᵀ, B_blk = columns K.. of the augmented weight
    xa = tl.load(xa_ptr + rows[:, None] * stride_xa + cc[None, :], mask=(rows[:, None] < M) & (cc[None, :] < WIDTH),
                 other=0.0)
    b = tl.load(w_ptr + cols[None, :] * stride_w + K + cc[:, None], mask=(cols[None, :] < N) & (cc[:, None] < WIDTH),
                other=0.0)
    if DOT_F32:
        acc += tl.dot(xa.to(tl.float32), b.to(tl.float32))
    else:
        acc += tl.dot(xa, b)
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


def gemm_lora(x: torch.Tensor, w_aug: torch.Tensor, xa: torch.Tensor, in_features: int, blocks: Blocks) -> torch.Tensor:
    """``x · w_aug[:, :K]ᵀ + xa · w_aug[:, K:]ᵀ`` in one Triton GEMM (fp32 accumulation, output in x's dtype)."""
    M, N, width = x.shape[0], w_aug.shape[0], w_aug.shape[1] - in_features
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, blocks.gemm_bm) * triton.cdiv(N, blocks.gemm_bn),)
    _gemm_lora_kernel[grid](x, w_aug, xa, y, M, N, in_features, x.stride(0), w_aug.stride(0), xa.stride(0),
                            y.stride(0), width, CP=_pow2_at_least_16(width), DOT_F32=interpreting(),
                            BM=blocks.gemm_bm, BN=blocks.gemm_bn, BK=blocks.gemm_bk, GROUP_M=8,
                            num_warps=blocks.gemm_warps, num_stages=blocks.gemm_stages)
    return y
