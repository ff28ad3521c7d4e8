"""Per-row adapter routing for batched multi-LoRA, and the fused projection's math in PyTorch (the CPU path).

A batch's rows carry engine slot ids: 0 = no adapter, a + 1 = resident adapter a. ``route`` turns them into
what both LoRA paths of the native engine need, in static-shaped tensors (CUDA-graph friendly):

* ``masks`` — the ``addmm`` path (and every prefill): one-hot (rows, k·n·r) masks for n = 1, 2, 3 modules;
* ``row_lora`` / ``lora_ids`` — the fused path: the batch's distinct adapters compacted to ``lora_ids`` (length
  U = min(rows, k), padded with −1) and each row's index into it (−1 = no adapter), so a kernel reads the A
  and B of at most U adapters however many are resident (a round-robin batch of b rows over k adapters has
  min(b, k) distinct ones).

``reference_projection`` is y = x·Wᵀ + B_{a(i)}·(A_{a(i)}·x_i) per row i, in the kernel's precision order: fp32
accumulation of the base and the shrink, the shrink rounded once to the input dtype, the expansion added to
the fp32 base before the single rounding of y. No per-adapter Python loop: adapters are gathered per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class Routing:
    slots: torch.Tensor  # (rows,) long: 0 = no adapter, a + 1 = adapter a
    masks: dict[int, torch.Tensor] | None  # addmm path; None = no mask needed (k = 1, every row on it)
    row_lora: torch.Tensor  # (rows,) int32: index into lora_ids, −1 = no adapter
    lora_ids: torch.Tensor  # (U,) int32: adapter index, −1 = padding


def route(slots: Sequence[int], k: int, r: int, dtype: torch.dtype, device: torch.device) -> Routing:
    """Routing for engine slot ids (host ints) with k resident adapters of rank r."""
    slots = [int(s) for s in slots]
    distinct = list(dict.fromkeys(s - 1 for s in slots if s > 0))  # first appearance order
    u = max(min(len(slots), k), 1)
    row_lora = [distinct.index(s - 1) if s > 0 else -1 for s in slots]
    lora_ids = distinct + [-1] * (u - len(distinct))
    slot_t = torch.tensor(slots, dtype=torch.long, device=device)
    masks = None
    if k and not (k == 1 and all(s == 1 for s in slots)):
        onehot = F.one_hot(slot_t, k + 1)[:, 1:].to(dtype)  # drop slot 0 ("no adapter")
        masks = {n: onehot.repeat_interleave(n * r, dim=1).contiguous() for n in (1, 2, 3)}
    return Routing(slots=slot_t, masks=masks, row_lora=torch.tensor(row_lora, dtype=torch.int32, device=device),
                   lora_ids=torch.tensor(lora_ids, dtype=torch.int32, device=device))


def copy_routing(dst: Routing, src: Routing) -> None:
    """Into the static buffers a captured graph reads."""
    dst.slots.copy_(src.slots)
    dst.row_lora.copy_(src.row_lora)
    dst.lora_ids.copy_(src.lora_ids)
    if dst.masks is not None and src.masks is not None:
        for n, m in src.masks.items():
            dst.masks[n].copy_(m)


def row_adapters(row_lora: torch.Tensor, lora_ids: torch.Tensor) -> torch.Tensor:
    """Each row's adapter index (−1 = none), from the compacted form."""
    idx = row_lora.long()
    return torch.where(idx >= 0, lora_ids.long()[idx.clamp(min=0)], torch.full_like(idx, -1))


def reference_projection(x: torch.Tensor, w: torch.Tensor, widths: Sequence[int], lora: tuple | None) -> torch.Tensor:
    """The fused kernel's result in PyTorch. ``lora`` = (a (k·n·r, K), b (k, r, N), row_lora, lora_ids, r)."""
    acc = x.float() @ w.float().T
    if lora is not None:
        a, b, row_lora, lora_ids, r = lora
        n_mod = len(widths)
        adapter = row_adapters(row_lora, lora_ids)  # (M,)
        use = adapter >= 0
        sel = adapter.clamp(min=0)
        h = (x.float() @ a.float().T).reshape(x.shape[0], -1, n_mod, r)  # (M, k, n_mod, r)
        s = h[torch.arange(x.shape[0], device=x.device), sel]  # (M, n_mod, r): the row's own adapter
        s = (s * use[:, None, None]).to(x.dtype).float()  # rounded once, as the kernel does
        col_mod = torch.repeat_interleave(torch.arange(n_mod, device=x.device),
                                          torch.tensor(list(widths), device=x.device))
        s_col = s[:, col_mod, :]  # (M, N, r): the shrink of the module owning each column
        b_rows = b.float()[sel]  # (M, r, N)
        acc = acc + (s_col * b_rows.transpose(1, 2)).sum(-1)
    return acc.to(x.dtype)
