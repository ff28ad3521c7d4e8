"""The fused LoRA group as two custom ops and one autograd function.

``lorascope::lora_group_fwd`` / ``lorascope::lora_group_bwd`` are opaque to torch.compile
(``torch.library.custom_op``): the decoder layers around them are compiled as before, and the ops run the
Triton kernels (``backend="triton"``) or the PyTorch reference (``backend="torch"``, any device and dtype).
:class:`LoraGroupFunction` ties them together for autograd; its gradients for the fp32 A/B masters are fp32.

The augmented weight ``w_aug`` (ΣN_j × (K + width)) holds the stacked frozen base weights in its first K columns
and blockdiag(B_j) in the rest. Each forward rewrites those last columns from the current B_j (one small kernel)
before using them, and nothing else reads them, so the op is a pure function of its inputs as far as any
caller can observe; that is why it is declared without mutated arguments (``mutates_args=()``).

Expand variants (how the B-projection reaches the base output; docs/fused_lora.md):
  ``kaug``   — the shrink kernel writes ``[x | xa]`` and one cuBLAS GEMM ``[x | xa] · w_augᵀ`` gives base + LoRA;
  ``addmm``  — cuBLAS ``x Wᵀ`` then an in-place ``addmm_`` of ``xa · blockdiag(B)ᵀ``;
  ``triton`` — a Triton GEMM whose epilogue adds ``xa · blockdiag(B)ᵀ``.
"""

from __future__ import annotations

import torch

from lorascope.train.fused_lora import reference

EXPANDS = ("kaug", "addmm", "triton")
BACKENDS = ("triton", "torch")


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def _check(expand: str, backend: str) -> None:
    if expand not in EXPANDS or backend not in BACKENDS:
        raise ValueError(f"expand must be one of {EXPANDS} and backend one of {BACKENDS}: got {expand!r}, {backend!r}")


@torch.library.custom_op("lorascope::lora_group_fwd", mutates_args=())
def lora_group_fwd(x: torch.Tensor, w_aug: torch.Tensor, a_list: list[torch.Tensor], b_list: list[torch.Tensor],
                   seeds: torch.Tensor, in_features: int, r: int, scaling: float, p: float, expand: str, backend: str,
                   blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, saved)``: y = base + LoRA outputs (M × ΣN_j); saved = ``[x | xa | 0]`` (kaug) or ``[xa | 0]``."""
    _check(expand, backend)
    K = in_features
    with _no_autocast(x.device):
        if backend == "torch":
            y, xa = reference.group_forward(x, w_aug[:, :K], a_list, b_list, seeds.tolist(), scaling=scaling, p=p)
            width = w_aug.shape[1] - K
            xa = torch.nn.functional.pad(xa, (0, width - xa.shape[1]))
            return y, (torch.cat([x, xa], dim=1) if expand == "kaug" else xa)
        from lorascope.train.fused_lora import kernels

        cfg = kernels.Blocks.from_list(blocks)
        coef = scaling / (1.0 - p)
        kernels.write_b_block(w_aug, b_list, K, r)
        saved = kernels.shrink(x, a_list, seeds, r=r, coef=coef, p=p, copy_x=expand == "kaug", blocks=cfg)
        if expand == "kaug":
            return torch.mm(saved, w_aug.t()), saved
        if expand == "addmm":
            return torch.mm(x, w_aug[:, :K].t()).addmm_(saved, w_aug[:, K:].t()), saved
        from lorascope.train.fused_lora.gemm import gemm_lora

        return gemm_lora(x, w_aug, saved, K, cfg), saved


@lora_group_fwd.register_fake
def _(x, w_aug, a_list, b_list, seeds, in_features, r, scaling, p, expand, backend, blocks):
    width = w_aug.shape[1] - in_features
    saved_cols = (in_features if expand == "kaug" else 0) + width
    return x.new_empty(x.shape[0], w_aug.shape[0]), x.new_empty(x.shape[0], saved_cols)


@torch.library.custom_op("lorascope::lora_group_bwd", mutates_args=())
def lora_group_bwd(g: torch.Tensor, x: torch.Tensor | None, saved: torch.Tensor, w_aug: torch.Tensor,
                   a_list: list[torch.Tensor], b_list: list[torch.Tensor], seeds: torch.Tensor, in_features: int,
                   r: int, scaling: float, p: float, expand: str, backend: str, blocks: list[int],
                   needs_dx: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dA, dB)``: dx (M × K; empty if not ``needs_dx``), dA = [dA_j] stacked (n·r × K, fp32),
    dB = [dB_j] stacked (ΣN_j × r, fp32)."""
    _check(expand, backend)
    K, n = in_features, len(a_list)
    xin, xa = (saved[:, :K], saved[:, K:]) if expand == "kaug" else (x, saved)
    with _no_autocast(g.device):
        if backend == "torch":
            dx, d_a, d_b = reference.group_backward(g, xin, xa[:, :n * r], w_aug[:, :K], a_list, b_list,
                                                    seeds.tolist(), scaling=scaling, p=p, needs_dx=needs_dx)
            acc = d_a[0].dtype
            dx = dx if dx is not None else g.new_empty(0)
            return dx, torch.cat(d_a).to(torch.promote_types(acc, torch.float32)), \
                torch.cat(d_b).to(torch.promote_types(acc, torch.float32))
        from lorascope.train.fused_lora import kernels

        cfg = kernels.Blocks.from_list(blocks)
        coef = scaling / (1.0 - p)
        gb, d_b = kernels.grad_out(g, b_list, xa, r=r, blocks=cfg)
        gbc = (gb * coef).to(xin.dtype)
        dx = torch.mm(g, w_aug[:, :K]) if needs_dx else None
        d_a = kernels.grad_in(xin, dx, gbc, a_list, seeds, r=r, p=p, blocks=cfg)
        return (dx if dx is not None else g.new_empty(0)), d_a, d_b


@lora_group_bwd.register_fake
def _(g, x, saved, w_aug, a_list, b_list, seeds, in_features, r, scaling, p, expand, backend, blocks, needs_dx):
    acc = torch.promote_types(a_list[0].dtype, torch.float32)
    dx = g.new_empty(g.shape[0], in_features) if needs_dx else g.new_empty(0)
    n_rows_b = sum(b.shape[0] for b in b_list)
    return dx, g.new_empty(len(a_list) * r, in_features, dtype=acc), g.new_empty(n_rows_b, r, dtype=acc)


class LoraGroupFunction(torch.autograd.Function):
    """``apply(x, w_aug, seeds, config, *a_list, *b_list) -> y`` (M × ΣN_j).

    ``config = (in_features, r, scaling, p, expand, backend, blocks)`` holds only Python constants, so that
    torch.compile specialises on their values (equal in every decoder layer: one graph for all layers).
    ``seeds`` (n int64) are copied before use: the forward's masks are the ones backward regenerates even if the
    caller draws new seeds in place before backward runs.
    """

    @staticmethod
    def forward(ctx, x, w_aug, seeds, config, *params):
        in_features, r, scaling, p, expand, backend, blocks = config
        n = len(params) // 2
        a_list, b_list = list(params[:n]), list(params[n:])
        seeds = seeds.clone()
        y, saved = torch.ops.lorascope.lora_group_fwd(x, w_aug, a_list, b_list, seeds, in_features, r, scaling, p,
                                                      expand, backend, list(blocks))
        ctx.save_for_backward(None if expand == "kaug" else x, saved, w_aug, seeds, *params)
        ctx.config, ctx.n = config, n
        return y

    @staticmethod
    def backward(ctx, g):
        in_features, r, scaling, p, expand, backend, blocks = ctx.config
        x, saved, w_aug, seeds, *params = ctx.saved_tensors
        n = ctx.n
        a_list, b_list = params[:n], params[n:]
        dx, d_a, d_b = torch.ops.lorascope.lora_group_bwd(
            g.contiguous(), x, saved, w_aug, a_list, b_list, seeds, in_features, r, scaling, p, expand, backend,
            list(blocks), ctx.needs_input_grad[0])
        grads_a = list(d_a.split(r, dim=0))
        grads_b = list(d_b.split([b.shape[0] for b in b_list], dim=0))
        return (dx if ctx.needs_input_grad[0] else None), None, None, None, *grads_a, *grads_b
