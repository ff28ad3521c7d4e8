"""How much of ΔW can be dropped (§9, RQ3): DARE and magnitude pruning, and writing W_base + f(ΔW) back.

- DARE — L. Yu, B. Yu, H. Yu, F. Huang, Y. Li, "Language Models are Super Mario: Absorbing Abilities
  from Homologous Models as a Free Lunch", ICML 2024, eq. 1–2: m_ij ~ Bernoulli(p) marks the *dropped*
  entries; ΔŴ = (1 − m) ⊙ ΔW / (1 − p), so E[ΔŴ] = ΔW. The mask is drawn from the caller's
  ``torch.Generator`` — never the global RNG — so the same seed gives the same mask.
- Magnitude pruning: keep the ⌈k·N⌉ entries of largest |ΔW_ij| per matrix, zero the rest (no rescale).

The task metric is re-evaluated by the caller: ``apply_delta_transform`` writes W_base + f(ΔW) into a
model's Linear weights in place, then the caller runs its evaluator.

Speed at 1.3B (1.2 G entries of ΔW per model): draw the DARE masks from a generator on the GPU (a CPU
generator makes 1.2 G float64 uniforms per pass, seconds each) and pass ``device`` so the transform runs
there; ``resident_deltas`` keeps the ΔW list on the GPU when it fits, so a pass does not re-copy 19 GB.
A given (seed, device type) gives the same masks run to run; a CPU and a CUDA generator give different ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from fractions import Fraction

import torch

from lorascope.weights.delta import LoraFactors, ModuleDelta

Transform = Callable[[torch.Tensor], torch.Tensor]


def dare_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean *keep* mask: each entry kept independently with probability 1 − p.

    The uniforms are drawn in float64 on the generator's device (so a CPU generator gives the same mask
    whatever device the result goes to), then moved to ``device``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop rate p must be in [0, 1), got {p}")
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64, device=generator.device)
    keep = u >= p  # P(u ≥ p) = 1 − p for u ~ U[0, 1)
    return keep if device is None else keep.to(device)


def dare(delta: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2024): drop each entry of ΔW with probability p, rescale survivors by 1/(1 − p).

    Returns a new tensor of ΔW's dtype and device; p = 0 returns a copy. The rescale is done in float64
    before casting back, so low-precision ΔW keeps E[dare(ΔW)] = ΔW up to one rounding.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError("dare needs an explicit torch.Generator (the global RNG is never used)")
    keep = dare_mask(delta.shape, p, generator, device=delta.device)
    if p == 0.0:
        return delta.clone()
    scaled = delta.to(torch.float64) / (1.0 - p)
    return torch.where(keep, scaled, torch.zeros((), dtype=torch.float64, device=delta.device)).to(delta.dtype)


def kept_count(n: int, keep_fraction: float) -> int:
    """⌈k·N⌉ in exact decimal arithmetic: k is read as the decimal it prints as, so 0.07·100 → 7, not 8."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    return min(n, math.ceil(Fraction(repr(float(keep_fraction))) * n))


def magnitude_prune(delta: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Keep exactly ⌈keep_fraction·N⌉ entries of largest |ΔW_ij| in this matrix; zero the others.

    Ties at the cut-off are broken deterministically: among entries of equal magnitude, the one earlier
    in row-major (flattened) order is kept — a *stable* descending sort of |ΔW|. No rescaling.
    """
    n = delta.numel()
    k = kept_count(n, keep_fraction)
    if k == n:
        return delta.clone()
    out = torch.zeros_like(delta)
    if k == 0:
        return out
    flat = delta.reshape(-1)
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    out.view(-1)[order] = flat[order]
    return out


def dare_transform(p: float, generator: torch.Generator) -> Transform:
    """A transform for ``apply_delta_transform``; the generator advances module by module (fixed order)."""
    return lambda d: dare(d, p, generator)


def magnitude_transform(keep_fraction: float) -> Transform:
    return lambda d: magnitude_prune(d, keep_fraction)


def _resolve(model: torch.nn.Module, name: str) -> torch.nn.Module:
    for candidate in (name, "base_model.model." + name):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise KeyError(f"model has no module {name!r}")


def resident_deltas(items: Iterable[ModuleDelta | LoraFactors], device: str | torch.device,
                    max_bytes: float | None = None) -> list[ModuleDelta]:
    """``items`` as a list of ``ModuleDelta`` (for repeated transform passes), each on ``device`` while the
    list stays within ``max_bytes`` — default: half the GPU's free memory, measured once before; no limit
    off CUDA — and on the CPU beyond (FT at 1.3B: 19 GB of float64 W_base and ΔW)."""
    device = torch.device(device)
    budget = math.inf if max_bytes is None else max_bytes
    if max_bytes is None and device.type == "cuda":
        budget = 0.5 * torch.cuda.mem_get_info(device)[0]
    out, used = [], 0
    for item in items:
        if isinstance(item, LoraFactors):
            item = item.as_delta()
        size = (item.base.numel() * item.base.element_size()) + (item.delta.numel() * item.delta.element_size())
        where = device if used + size <= budget else torch.device("cpu")
        used += size if where == device else 0
        out.append(ModuleDelta(item.name, item.base.to(where), item.delta.to(where)))
    return out


@torch.no_grad()
def apply_delta_transform(model: torch.nn.Module, deltas: Iterable[ModuleDelta | LoraFactors],
                          transform: Transform | None, *, device: str | torch.device | None = None) -> list[str]:
    """Write W_base + transform(ΔW) into ``model``'s Linear weights in place; returns the names written.

    The sum is formed in ΔW's dtype (float64 from ``ft_deltas`` / ``lora_deltas``) on ``device`` (default:
    where ΔW is) and cast once to the parameter's dtype and device. ``transform=None`` writes W_base + ΔW
    (the tuned weights); ``lambda d: torch.zeros_like(d)`` restores W_base. ``deltas`` is consumed once: for
    several transforms, keep a list (``resident_deltas``) or call ``ft_deltas`` / ``lora_deltas`` again. The
    model must be a plain (unwrapped or merged) model: a PEFT wrapper would still add its own B·A on top.
    """
    written = []
    for item in deltas:
        name, base, delta = item.as_delta() if isinstance(item, LoraFactors) else item
        if device is not None:
            base, delta = base.to(device), delta.to(device)
        module = _resolve(model, name)
        weight = getattr(module, "weight", None)
        if weight is None or weight.shape != delta.shape:
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"{name}: model weight {got} does not match ΔW {tuple(delta.shape)}")
        new = transform(delta) if transform is not None else delta
        if new.shape != delta.shape:
            raise ValueError(f"{name}: transform changed the shape {tuple(delta.shape)} → {tuple(new.shape)}")
        value = base.to(device=new.device, dtype=new.dtype) + new
        weight.copy_(value.to(device=weight.device, dtype=weight.dtype))
        written.append(name)
    return written
