"""Causal-LM loss on target tokens only (§4), computed where the targets are.

The LM head runs only on positions that predict a target token: for classification-style targets a
handful per sequence instead of the whole (batch × length × vocab) logits tensor, which at vocab 32k is
the largest activation of the step. The loss is a *sum*; the caller divides by the number of target
tokens of the whole global batch, so gradient accumulation and data parallelism give the gradient of
one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorascope.data.tokenize import IGNORE_INDEX


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` module under PEFT / DDP / compile wrappers (LoRA layers are injected in place)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class TargetTokenLoss(nn.Module):
    """``forward(input_ids, attention_mask, labels) -> (sum of target-token NLL, n target tokens)``.

    Wrapping this module (not the LM) in DDP keeps DDP's forward hooks on the path that computes the loss.

    ``causal_no_mask=True`` drops the padding mask and lets attention take its causal (``is_causal``) path,
    which SDPA runs with its fused causal kernels (cuDNN/flash on an H200) instead of the masked one. It is
    exact for right-padded batches (the loop's ``collate``): in a causal model a real token attends only to
    earlier positions, all of them real, so the hidden states at real positions — the only ones that predict
    targets — are the same with or without the mask (``benchmarks/train_throughput.py``: fp32 target logits
    and real-position hidden states identical, max |Δ| = 0, on CPU and H200). Pad positions then compute
    values no loss reads. Off by default. Never use it with left padding.
    """

    def __init__(self, model: nn.Module, causal_no_mask: bool = False):
        super().__init__()
        self.model = model
        self.lm = unwrap_causal_lm(model)
        self.causal_no_mask = causal_no_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        mask_in = None if self.causal_no_mask else attention_mask
        # use_cache=False: training needs no KV cache (it would only hold tensors and, under torch.compile,
        # specialise each layer's graph); the outputs are the same either way.
        hidden = self.lm.model(
            input_ids=input_ids, attention_mask=mask_in, use_cache=False
        ).last_hidden_state  # (b, T, d)
        shift_labels = labels[:, 1:]  # position t predicts token t+1
        mask = shift_labels != IGNORE_INDEX  # (b, T-1)
        selected = hidden[:, :-1][mask]  # (n_targets, d)
        logits = self.lm.lm_head(selected).float()  # (n_targets, vocab); fp32 log-softmax under autocast
        nll = F.cross_entropy(logits, shift_labels[mask], reduction="sum")
        return nll, mask.sum()
