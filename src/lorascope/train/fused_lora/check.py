"""PEFT's own LoRA forward, replayed with the fused path's dropout masks: the reference the fused path is
checked against (CPU tests in float64, the GPU script at bf16 level).

Inside :func:`peft_with_fused_masks` the groups hand every call back to PEFT's ``lora.Linear.forward``, each
module's ``lora_dropout`` is a :class:`PhiloxDropout` that applies the mask the fused path drew for that module
(same seed, ``philox.keep_mask``), and the seeds stay as the last fused forward left them. So a fused
forward/backward followed by the same forward/backward inside this context computes the same function
with the same masks through two independent code paths: PEFT's modules and autograd on one side, the fused
group ops on the other.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from lorascope.train.fused_lora.install import ADAPTER, FusedLora
from lorascope.train.fused_lora.philox import keep_mask


class PhiloxDropout(nn.Module):
    """``nn.Dropout(p)`` whose mask is the fused path's mask for ``seed`` (over the input flattened to 2-D)."""

    def __init__(self, p: float, seed: torch.Tensor):
        super().__init__()
        self.p, self.seed = p, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        M, K = x.numel() // x.shape[-1], x.shape[-1]
        if x.is_cuda:
            from lorascope.train.fused_lora.kernels import drop_mask

            keep = ~drop_mask(self.seed.reshape(1), M, K, self.p)
        else:
            keep = keep_mask(int(self.seed), M, K, self.p, device=x.device)
        return torch.where(keep.reshape(x.shape), x / (1.0 - self.p), torch.zeros((), dtype=x.dtype, device=x.device))


@contextlib.contextmanager
def peft_with_fused_masks(handle: FusedLora):
    """PEFT's forward with the fused path's current masks (see the module docstring)."""
    saved = []
    for _, _, group in handle.groups:
        group.enabled = False
        for j, m in enumerate(group.members):
            saved.append((m, m.lora_dropout[ADAPTER]))
            m.lora_dropout[ADAPTER] = PhiloxDropout(group.p, group.seeds[j]).train(m.training)
    handle.draw_seeds = False
    try:
        yield
    finally:
        handle.draw_seeds = True
        for m, drop in saved:
            m.lora_dropout[ADAPTER] = drop
        for _, _, group in handle.groups:
            group.enabled = True
