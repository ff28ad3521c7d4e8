"""The Triton kernel of :class:`lorascope.train.master_adamw.MasterWeightAdamW`: one pass per tensor that reads
the gradient (bf16 or fp32), the fp32 master and both moments, and writes master, moments and the bf16 working
copy. IEEE square root and division (``sqrt_rn``, ``div_rn``), as torch's CUDA AdamW."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _adamw_kernel(p_ptr, g_ptr, m_ptr, v_ptr, w_ptr, hp_ptr, clip_ptr, n, HAS_COPY: tl.constexpr,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    lr = tl.load(hp_ptr)
    wd = tl.load(hp_ptr + 1)
    b1 = tl.load(hp_ptr + 2)
    b2 = tl.load(hp_ptr + 3)
    eps = tl.load(hp_ptr + 4)
    bc1 = tl.load(hp_ptr + 5)
    bc2_sqrt = tl.load(hp_ptr + 6)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(clip_ptr)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    p = p * (1.0 - lr * wd)
    m = m + (1.0 - b1) * (g - m)
    v = v * b2 + (1.0 - b2) * g * g
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p - tl.div_rn(lr, bc1) * tl.div_rn(m, denom)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    if HAS_COPY:
        tl.store(w_ptr + offs, p.to(w_ptr.dtype.element_ty), mask=mask)


def adamw_update(master: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 copy: torch.Tensor | None, hparams: torch.Tensor, clip_coef: torch.Tensor, block: int = 2048) -> None:
    """In place on flat contiguous tensors; ``hparams`` = (lr, wd, β1, β2, eps, 1−β1ᵗ, √(1−β2ᵗ)) on the
    device."""
    n = master.numel()
    _adamw_kernel[(triton.cdiv(n, block),)](master, grad, exp_avg, exp_avg_sq, copy if copy is not None else master,
                                            hparams, clip_coef, n, HAS_COPY=copy is not None, BLOCK=block,
                                            num_warps=8)
