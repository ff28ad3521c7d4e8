"""A whole training step — forward, backward, clipping, optimizer — captured once in a CUDA graph and replayed.

Closes the host gaps between kernels (docs/benchmarks.md: ~10 ms per FT step at 16 × 512 on an H200, most of
them outside the compiled layers: embedding, head, loss, clipping, optimizer, the per-step sync). The step
must be free of host synchronisation and of data-dependent shapes, and the batch shape is fixed at capture:
inputs are copied into static buffers before each replay. So this is for fixed-shape batches (benchmarks,
packed batches), not for ``lorascope train``'s variable-length batches.

Recipe: PyTorch's "whole network capture" (torch.cuda.graphs docs): a few warm-up steps on a side stream,
gradients set to None before capture so the captured backward *writes* them (no accumulation), and the
optimizer step inside the graph (torch's fused AdamW with ``capturable=True``, or
:class:`~lorascope.train.master_adamw.MasterWeightAdamW` whose host part ``prepare`` runs before each replay).
Random numbers (dropout) advance per replay: the CUDA generator registers its Philox offsets with the graph.

Compiled regions (``speed.compile_layers``) must not compile during the capture: inductor reads values back to the
host while it compiles, which a capturing stream forbids, and the failed capture left the GPU context unusable
(docs/benchmarks.md, issue 17: a recompile of the decoder layers inside the capture; pytorch/pytorch#185074 —
dynamo does not know a capture is under way). So the warm-up runs the exact step first, the capture runs under
``torch.compiler.set_stance("fail_on_recompile")`` — a guard that fails there raises a clean error naming the
guard, before anything is compiled — and autocast's weight cache is off in both (the same global state, which
dynamo guards on, and no cached cast outliving the capture).
"""

from __future__ import annotations

from typing import Callable

import torch


class CapturedStep:
    """``step(*inputs) -> (loss, grad_norm)`` as device tensors; ``train_step(*static_inputs)`` must return the
    same pair and run forward, backward and the optimizer step. ``before_replay`` runs on the host before each
    replay (e.g. an optimizer's ``prepare``)."""

    def __init__(self, train_step: Callable[..., tuple[torch.Tensor, torch.Tensor]], example: tuple[torch.Tensor, ...],
                 params: list[torch.nn.Parameter], *, warmup: int = 3,
                 before_replay: Callable[[], None] | None = None):
        self.static = tuple(t.clone() for t in example)
        self.before_replay = before_replay or (lambda: None)
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    for p in params:
                        p.grad = None
                    self.before_replay()
                    train_step(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            for p in params:
                p.grad = None
            self.before_replay()
            self.graph = torch.cuda.CUDAGraph()
            with torch.compiler.set_stance("fail_on_recompile"), torch.cuda.graph(self.graph):
                self.loss, self.grad_norm = train_step(*self.static)
        finally:
            torch.set_autocast_cache_enabled(cache)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for buf, t in zip(self.static, inputs):
            if buf.shape != t.shape:
                raise ValueError(f"captured for input shape {tuple(buf.shape)}, got {tuple(t.shape)}")
            buf.copy_(t, non_blocking=True)
        self.before_replay()
        self.graph.replay()
        return self.loss, self.grad_norm


def static_target_loss(loss_module, labels: torch.Tensor) -> Callable:
    """``TargetTokenLoss``'s sum of target NLL for batches with ``labels``' target positions, without the
    boolean indexing that needs a host sync: the positions are found once here (same function, same
    reduction order of the gather)."""
    import torch.nn.functional as F

    from lorascope.data.tokenize import IGNORE_INDEX

    lm = loss_module.lm
    shift = labels[:, 1:]
    index = (shift != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)  # host sync, once
    targets = shift.reshape(-1).index_select(0, index)
    mask_in = None if loss_module.causal_no_mask else "mask"

    def fn(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = lm.model(input_ids=ids, attention_mask=None if mask_in is None else attention_mask,
                          use_cache=False).last_hidden_state
        selected = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, index)
        return F.cross_entropy(lm.lm_head(selected).float(), targets, reduction="sum")

    return fn
