"""Full fine-tuning with bf16 working copies and fp32 master weights, at the numerics of fp32 + bf16 autocast.

Under bf16 autocast a Linear layer computes with its fp32 weight rounded to bf16 (a cast kernel per weight and
step) and its weight gradient comes out of a bf16 GEMM, is rounded to bf16, then cast to fp32 (another
kernel per weight). The same numbers come from keeping that bf16 copy as the parameter itself — gradients
are then those bf16 values — and the fp32 weight as a *master* in the optimizer, as long as the optimizer
(a) computes the clip norm and the AdamW update in fp32 from the bf16 gradients (upcasting is exact), and
(b) writes the new bf16 copy, ``master.to(bf16)`` (round to nearest even, as autocast's cast), right after
updating the master. :class:`MasterWeightAdamW` does both in one pass per tensor (a Triton kernel: reads
g, master, m, v; writes master, m, v, copy), so a step moves 28 bytes per weight instead of ~52 (weight cast,
gradient cast, clip norm, clip scale and AdamW); the forward needs no cast kernels. Which weights get a copy:
:func:`working_copy_params` (Linear weights; the embedding and norm weights stay fp32 — they are not matmul
operands under autocast, so their fp32 values are used as such).

The optimizer's hyperparameters live in a device tensor updated by :meth:`MasterWeightAdamW.prepare` (host),
and the kernels run in :meth:`MasterWeightAdamW.apply` (device only, no host sync): a captured CUDA graph can
hold ``apply`` (train/captured_step.py). Differences from torch's AdamW + clip_grad_norm_ are fp32 rounding
(summation order, fused multiply-adds), far below bf16's. Gradient accumulation over micro-batches would add
bf16 gradients in bf16: this optimizer is for one micro-batch per step (``effective_batch == micro_batch``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_HP = ("lr", "weight_decay", "beta1", "beta2", "eps", "bias_correction1", "bias_correction2_sqrt")


def working_copy_params(model: nn.Module) -> list[nn.Parameter]:
    """Trainable weights of ``nn.Linear`` modules, except those shared with an embedding (tied LM heads)."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out, seen = [], set()
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.weight.requires_grad and id(m.weight) not in embedded | seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


def adamw_reference(master, grad, exp_avg, exp_avg_sq, *, lr, weight_decay, beta1, beta2, eps, step, clip_coef):
    """One AdamW update in place, the order of torch's single-tensor AdamW (torch/optim/adamw.py)."""
    g = grad.to(master.dtype) * clip_coef
    master.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
    master.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW with gradient clipping; parameters in ``working`` become bf16 copies of fp32 masters (see module doc).

    ``step()`` clips to ``max_grad_norm`` (as ``clip_grad_norm_``: coefficient min(1, max / (‖g‖ + 1e-6))) and
    updates; it returns the total gradient norm (a 0-d fp32 tensor, before clipping). ``backend="torch"`` runs
    the same update with torch ops (CPU tests, reference).

    Construct it before compiling the model, or call ``torch._dynamo.reset()`` after: it changes the dtype of
    parameters in place (``p.data``), and on an H200 with torch 2.11 no dynamo guard caught that — layers
    compiled for fp32 weights read the bf16 storage as fp32, an illegal memory access (docs/benchmarks.md, issue 17).
    """

    def __init__(self, params, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm: float | None = 1.0, working=(), backend: str | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.max_grad_norm = max_grad_norm
        self.step_count = 0
        first = self.param_groups[0]["params"][0]
        self.backend = backend or ("triton" if first.is_cuda else "torch")
        working = {id(p) for p in working}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if id(p) in working:
                    state["master"] = p.data  # the fp32 tensor itself: no copy
                    p.data = p.data.to(torch.bfloat16)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        self.hparams = torch.zeros(len(self.param_groups), len(_HP), dtype=torch.float32, device=first.device)
        self.clip_coef = torch.ones((), dtype=torch.float32, device=first.device)

    def _params(self):
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def prepare(self) -> None:
        """Host side of a step: advance the step count and write this step's hyperparameters to the device."""
        self.step_count += 1
        t = self.step_count
        rows = []
        for g in self.param_groups:
            b1, b2 = g["betas"]
            rows.append([g["lr"], g["weight_decay"], b1, b2, g["eps"], 1 - b1 ** t, math.sqrt(1 - b2 ** t)])
        values = torch.tensor(rows, dtype=torch.float32)
        if self.hparams.is_cuda:  # pinned: an asynchronous copy; the caching host allocator keeps the buffer alive
            self.hparams.copy_(values.pin_memory(), non_blocking=True)
        else:
            self.hparams.copy_(values)

    @torch.no_grad()
    def apply(self) -> torch.Tensor:
        """Device side of a step (no host synchronisation): clip coefficient, then the updates. Returns ‖g‖."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in self._params():
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        norms = [n for grads in by_dtype.values() for n in torch._foreach_norm(grads, 2.0, dtype=torch.float32)]
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        if self.max_grad_norm is not None:
            torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0, out=self.clip_coef)
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                master = state.get("master", p)
                if self.backend == "torch":
                    self._apply_torch(gi, group, p, master, state)
                else:
                    from lorascope.train.master_adamw_kernel import adamw_update

                    adamw_update(master.view(-1), p.grad.view(-1), state["exp_avg"].view(-1),
                                 state["exp_avg_sq"].view(-1), p.data.view(-1) if master is not p else None,
                                 self.hparams[gi], self.clip_coef)
        return total

    def _apply_torch(self, gi, group, p, master, state) -> None:
        b1, b2 = group["betas"]
        adamw_reference(master.data, p.grad, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"],
                        weight_decay=group["weight_decay"], beta1=b1, beta2=b2, eps=group["eps"],
                        step=self.step_count, clip_coef=self.clip_coef.to(master.dtype))
        if master is not p:
            p.data.copy_(master)  # round to nearest even, as autocast's cast

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("closures are not supported")
        self.prepare()
        return self.apply()

    def masters(self) -> dict[int, torch.Tensor]:
        """id(param) → its fp32 master (the param itself where it has no working copy)."""
        return {id(p): self.state[p].get("master", p.data) for g in self.param_groups for p in g["params"]}
