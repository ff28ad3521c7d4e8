"""LoRA dropout masks from Philox4x32-10, in pure PyTorch: the normative definition the Triton kernels mirror.

Every adapted module draws its own mask from its own 64-bit seed, so modules that share an input (q/k/v,
gate/up) still get independent masks, as PEFT's separate ``nn.Dropout`` modules give. A mask is a pure
function of (seed, row, column): the forward kernel generates it and the backward kernel generates it again
instead of storing it.

Element (m, k) of an (M, K) input belongs to Philox call ``c0 = m · ⌈K/8⌉ + k // 8`` (counter words
``c1 = c2 = c3 = 0``; key = the seed's low and high 32-bit halves). The call's four 32-bit outputs give eight
16-bit values; slot ``s = k % 8`` takes word ``s // 2``, half ``s % 2`` (0 = low bits). The element is dropped
when that 16-bit value ``u`` and, only on a tie, a second 16-bit value ``v`` from the same call with ``c1 = 1``
satisfy ``(u, v) < (T >> 16, T & 0xFFFF)`` lexicographically, with ``T = round(p · 2³²)``. As ``u·2¹⁶ + v`` is
uniform on [0, 2³²), the drop probability is exactly ``T / 2³²`` (within 2⁻³³ of p, finer than torch's float32
uniforms), while the second draw is needed only for one element in 65 536 — 16 bits per element instead of
32 halves the integer work, which bounds these memory-bound kernels (docs/fused_lora.md).

Philox4x32-10: Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC 2011), as in
Random123 and ``triton.language.philox`` (tested against Random123's known-answer vectors).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers (Random123 PHILOX_M4x32_0 / _1)
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
GROUP = 8  # input elements per Philox call (8 × 16 bits = 128 bits)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a · b`` for a 32-bit constant ``a`` and int64 tensors holding uint32 values,
    without overflowing int64: split b into 16-bit halves (each partial product < 2⁴⁸)."""
    hi_part = a * (b >> 16)  # < 2^48
    lo_part = a * (b & 0xFFFF)  # < 2^48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (((hi_part & 0xFFFF) << 16) + lo_part) & MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, key0: int, key1: int, rounds: int = ROUNDS):
    """Philox4x32-``rounds`` on int64 tensors holding uint32 counter words; returns four such tensors."""
    k0, k1 = key0 & MASK32, key1 & MASK32
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(ROUND_A, c0)
        hi1, lo1 = _mulhilo(ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + KEY_A) & MASK32, (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def threshold(p: float) -> int:
    """``T = round(p · 2³²)``: an element is dropped with probability exactly ``T / 2³²``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(round(p * 2**32), 2**32 - 1)


def _slots16(words, shape_groups: tuple[int, int]) -> torch.Tensor:
    """Four (rows, groups) uint32 tensors → (rows, groups · 8) 16-bit values in slot order 2·word + half."""
    w = torch.stack(words, dim=-1)  # (rows, groups, 4)
    halves = torch.stack((w & 0xFFFF, w >> 16), dim=-1)  # (rows, groups, 4, 2)
    return halves.reshape(shape_groups[0], shape_groups[1] * GROUP)


def draws16(seed: int, rows: int, cols: int, stage: int = 0, device=None) -> torch.Tensor:
    """The (rows, cols) 16-bit values of one module's input for ``seed``; stage 0 decides, stage 1 breaks ties."""
    groups = -(-cols // GROUP)
    if rows * groups >= 2**31:  # the kernels index Philox calls with int32
        raise ValueError(f"a ({rows}, {cols}) input needs more than 2^31 Philox calls")
    c0 = torch.arange(rows, dtype=torch.int64, device=device)[:, None] * groups + \
        torch.arange(groups, dtype=torch.int64, device=device)[None, :]
    zero = torch.zeros_like(c0)
    words = philox4x32(c0, zero + stage, zero, zero, seed & MASK32, (seed >> 32) & MASK32)
    return _slots16(words, (rows, groups))[:, :cols]


def keep_mask(seed: int, rows: int, cols: int, p: float, device=None) -> torch.Tensor:
    """The (rows, cols) boolean keep-mask of one module's input for ``seed`` (True = kept)."""
    t = threshold(p)
    t_hi, t_lo = t >> 16, t & 0xFFFF
    u = draws16(seed, rows, cols, 0, device)
    drop = u < t_hi
    tie = u == t_hi
    if bool(tie.any()):
        drop |= tie & (draws16(seed, rows, cols, 1, device) < t_lo)
    return ~drop
