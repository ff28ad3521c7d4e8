"""GPU training-speed switches (issue 3, item 10) that keep the loop's numerics: bf16 autocast compute over
fp32 master weights for every *trainable* parameter. Each function is a no-op where it does not apply (CPU,
fp32 runs), so CPU runs and their exact loss curves are unchanged. Measured in ``benchmarks/train_throughput.py``;
figures and the reasoning in ``docs/benchmarks.md`` (H200, Sheared-LLaMA-1.3B shape, 16 × 512: regional compile
is the big one, 1.6× (FT) and 2.0× (LoRA) per step; fused AdamW −9 % FT step time; bf16 frozen weights −4.7 GiB
peak for LoRA, speed within noise).

- :func:`cast_frozen_linear_weights` — LoRA: the frozen base ``nn.Linear`` weights (and the frozen LM head) are
  stored in bf16. Under bf16 autocast every matmul casts its fp32 weight to bf16 on each call anyway (autocast
  caches casts only for leaf tensors that require grad, so frozen weights are re-cast every forward); storing the
  bf16 copy gives bit-identical matmuls without the per-step casts and halves their memory. Norm weights and the
  embedding stay fp32: the embedding output sets the residual stream's dtype (fp32 under autocast).
- :func:`compile_layers` — regional ``torch.compile``: each decoder layer is compiled in place
  (``nn.Module.compile``), so parameter names and state dicts do not change and all layers share one compiled
  graph (compile time is one layer's, not the model's).
- :func:`adamw_kwargs` — ``fused=True`` for AdamW on CUDA (one kernel over all parameters instead of foreach
  launches; same update rule).
"""

from __future__ import annotations

import torch
from torch import nn

from lorascope.train.loss import unwrap_causal_lm


def applies(device: torch.device | str, bf16: bool) -> bool:
    """True where the speed switches change anything: CUDA with bf16 autocast."""
    return torch.device(device).type == "cuda" and bf16


def cast_frozen_linear_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the weights (and biases) of every frozen ``nn.Linear`` in ``dtype``; returns the number of elements cast.

    Only for runs under autocast to ``dtype``: there, ``F.linear(x, W_fp32)`` computes with ``W_fp32.to(dtype)``,
    which is exactly the tensor stored here. Trainable weights (FT, LoRA A/B) are left in fp32.
    """
    n = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if p is None or p.requires_grad or p.dtype == dtype:
                continue
            p.data = p.data.to(dtype)
            n += p.numel()
    return n


def prepare_lora_for_speed(model: nn.Module, device: torch.device | str, bf16: bool) -> int:
    """LoRA on CUDA with bf16 autocast: frozen Linear weights (base layers and LM head) stored in bf16.

    A no-op (returns 0) on CPU or without bf16 autocast. Call after ``apply_lora`` and before building the
    optimizer. Saving is unaffected: a PEFT adapter holds only the (fp32) LoRA weights, and ``lorascope merge``
    reloads the base model from disk.
    """
    if not applies(device, bf16):
        return 0
    return cast_frozen_linear_weights(model, torch.bfloat16)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return unwrap_causal_lm(model).model.layers


def compile_layers(model: nn.Module, **compile_kwargs) -> int:
    """Compile each decoder layer in place (regional compilation); returns the number of layers compiled.

    In place (``nn.Module.compile``) rather than ``torch.compile(module)``: no ``_orig_mod`` wrapper, so
    checkpoints, PEFT adapters and ``trainable_state`` keep their keys. The layers run through the same code
    object, so dynamo compiles one graph and reuses it for every layer (LoRA: two — layer 0's input needs no
    gradient; one more pair for eval mode, where dropout is off). Compile time on an H200: ~10 s (FT), ~16 s
    (LoRA). A new sequence length triggers one recompile with dynamic shapes, then no more. Call with
    ``use_cache=False`` in the forward (as ``TargetTokenLoss`` does): a KV cache object passed into the layers
    would specialise the graph per layer.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)


def adamw_kwargs(device: torch.device | str) -> dict:
    """Extra ``torch.optim.AdamW`` arguments: the fused CUDA kernel where available (same update rule)."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}

