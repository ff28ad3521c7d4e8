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
host while it compiles, which a capturing stream forbids, and a failed capture can leave the GPU context unusable
(pytorch/pytorch#185074: dynamo does not know a capture is under way). The warm-up runs the exact step first, and
the capture runs under ``torch.compiler.set_stance("fail_on_recompile")``: a guard that fails there raises a clean
error naming the guard before anything is compiled. That is how the H200 run of 2026-11-30 found why the layers
recompiled inside the capture: transformers 5.17 asks whether a CUDA stream is capturing when it decides between
SDPA's ``is_causal`` and a materialised causal mask (``transformers.utils.import_utils.is_tracing``; 5.19 asks only
when a padding mask is passed), so under capture the layers received a mask the warm-up never passed.
:func:`static_target_loss` therefore runs the decoder stack itself, without transformers' mask construction
(Llama, SDPA, causal batches without padding), and runs the stack's forward pre-hooks (the fused LoRA path draws
its dropout seeds there).
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

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for buf, t in zip(self.static, inputs):
            if buf.shape != t.shape:
                raise ValueError(f"captured for input shape {tuple(buf.shape)}, got {tuple(t.shape)}")
            buf.copy_(t, non_blocking=True)
        self.before_replay()
        self.graph.replay()
        return self.loss, self.grad_norm


def _forward_pre_hooks(module: torch.nn.Module, args: tuple) -> None:
    """The module's own forward pre-hooks, which calling its children directly would skip — e.g. the fused LoRA
    path's fresh dropout seeds per forward (``fused_lora/install.py``: ``seeds.random_`` on the device, so inside
    a capture it is a kernel whose Philox offset advances per replay)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if key in module._forward_pre_hooks_with_kwargs:
            hook(module, args, {})
        else:
            hook(module, args)


def causal_hidden(lm, ids: torch.Tensor) -> torch.Tensor:
    """(b, T, d) final hidden states of a Llama-family ``*ForCausalLM`` for a causal batch without padding: its
    model's forward (embedding, rotary embedding, decoder layers, final norm) with ``attention_mask=None``, the
    mask that transformers itself passes for such a batch outside a capture (SDPA's ``is_causal`` path) — but
    without asking whether a stream is capturing (module doc)."""
    base = lm.model
    # LlamaModel.forward only: other families add what this walk does not (Mistral/Qwen2 sliding windows, Gemma's
    # embedding scale)
    if base.config.model_type != "llama":
        raise ValueError(f"a captured step walks a Llama decoder stack, not '{base.config.model_type}'")
    if base.config._attn_implementation != "sdpa":  # eager attention would read attention_mask=None as "no mask"
        raise ValueError(f"a captured step needs SDPA attention (its is_causal path), not "
                         f"'{base.config._attn_implementation}'")
    _forward_pre_hooks(base, (ids,))
    hidden = base.embed_tokens(ids)
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    rope = base.rotary_emb(hidden, position_ids=positions)
    for layer in base.layers[: base.config.num_hidden_layers]:
        out = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rope, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple
    return base.norm(hidden)


def static_target_loss(loss_module, labels: torch.Tensor) -> Callable:
    """``TargetTokenLoss``'s sum of target NLL for batches with ``labels``' target positions, without the
    boolean indexing that needs a host sync: the positions are found once here (same function, same
    reduction order of the gather). Needs ``causal_no_mask`` (fixed-shape batches without padding)."""
    import torch.nn.functional as F

    from lorascope.data.tokenize import IGNORE_INDEX

    if not loss_module.causal_no_mask:
        raise ValueError("a captured step needs TargetTokenLoss(causal_no_mask=True): batches without padding")
    lm = loss_module.lm
    shift = labels[:, 1:]
    index = (shift != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)  # host sync, once
    targets = shift.reshape(-1).index_select(0, index)

    def fn(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = causal_hidden(lm, ids)
        selected = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, index)
        return F.cross_entropy(lm.lm_head(selected).float(), targets, reduction="sum")

    return fn
