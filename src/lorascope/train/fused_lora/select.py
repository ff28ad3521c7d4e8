"""Which LoRA training kernels a run uses (``train.lora_kernel``), and the self-check ``auto`` relies on.

``peft``: PEFT's modules (the CPU path, and the reference). ``fused``: the Triton kernels; refused where they
do not apply (no CUDA, no bf16 autocast, FSDP — whose sharding owns the base weights the fused path stacks).
``auto``: fused where it applies and where a self-check on the run's GPU passes — the kernels compile and
agree with the PyTorch reference (same masks, bit for bit; outputs and gradients at bf16 rounding level) —
else PEFT, with the reason logged. The check takes a few seconds (kernel compilation) once per process.
"""

from __future__ import annotations

import functools
import logging

import torch

from lorascope.errors import LorascopeError

log = logging.getLogger(__name__)

CHECK_RTOL = 3e-2  # relative to the largest magnitude: a few bf16 ulps (2⁻⁸) of difference in summation order


def applicable(device: torch.device, *, bf16: bool, strategy: str) -> str | None:
    """None if the fused kernels can run here, else why not."""
    if device.type != "cuda":
        return "not on CUDA"
    if not bf16:
        return "bf16 autocast is off (train.bf16_on_cuda=false)"
    if strategy == "fsdp":
        return "FSDP shards the base weights the fused path stacks"
    return None


def resolve_lora_kernel(setting: str, device: torch.device, *, bf16: bool, strategy: str) -> str:
    """``"fused"`` or ``"peft"`` for ``train.lora_kernel = setting``."""
    if setting == "peft":
        return "peft"
    why_not = applicable(device, bf16=bf16, strategy=strategy)
    if setting == "fused":
        if why_not:
            raise LorascopeError(f"train.lora_kernel=fused is not available: {why_not}")
        return "fused"
    if setting != "auto":
        raise LorascopeError(f"unknown train.lora_kernel {setting!r}")
    if why_not:
        return "peft"
    ok, detail = self_check(device.index if device.index is not None else torch.cuda.current_device())
    if not ok:
        log.warning("fused LoRA kernels failed their self-check, training with PEFT's modules: %s", detail)
        return "peft"
    return "fused"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


@functools.lru_cache(maxsize=None)
def self_check(device_index: int) -> tuple[bool, str]:
    """Kernels vs reference on a small q/k/v-like group (GQA sizes) on ``cuda:device_index``."""
    try:
        from lorascope.train.fused_lora import kernels, philox
        from lorascope.train.fused_lora.ops import lora_group_bwd, lora_group_fwd

        dev = torch.device("cuda", device_index)
        g = torch.Generator(device="cpu").manual_seed(0)
        # Sizes divisible by 16 like a real run's (Triton specialises on that), so the kernels compiled here
        # are mostly the ones training uses; ragged shapes are covered by the interpreter tests.
        M, K, r, sizes, p = 128, 256, 8, (64, 32, 32), 0.1

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(dev)

        mask = kernels.drop_mask(torch.tensor([12345], device=dev), M, K, p).cpu()
        if not torch.equal(mask, ~philox.keep_mask(12345, M, K, p)):
            return False, "dropout masks differ from philox.keep_mask"
        x = rnd(M, K).bfloat16()
        w_aug = torch.zeros(sum(sizes), K + kernels.padded_rank(3, r), dtype=torch.bfloat16, device=dev)
        w_aug[:, :K] = rnd(sum(sizes), K, scale=0.1).bfloat16()
        a_list = [rnd(r, K, scale=0.1) for _ in sizes]
        b_list = [rnd(n, r, scale=0.1) for n in sizes]
        seeds = torch.tensor([1, 2, 3], device=dev)
        gy = rnd(M, sum(sizes)).bfloat16()
        blocks = kernels.Blocks().as_list()
        out = {}
        for expand in ("kaug", "torch"):
            backend, exp = ("torch", "kaug") if expand == "torch" else ("triton", expand)
            w = w_aug.clone()
            y, saved = lora_group_fwd(x, w, a_list, b_list, seeds, K, r, 2.0, p, exp, backend, blocks)
            dx, da, db = lora_group_bwd(gy, x, saved, w, a_list, b_list, seeds, K, r, 2.0, p, exp, backend, blocks,
                                        True)
            out[expand] = (y, dx, da, db)
        errs = {n: _rel(a, b) for n, a, b in zip(("y", "dx", "dA", "dB"), out["kaug"], out["torch"])}
        bad = {n: e for n, e in errs.items() if not e <= CHECK_RTOL}
        return (not bad), f"relative errors {errs}"
    except Exception as exc:  # a kernel that does not compile here must not stop training: PEFT takes over
        return False, f"{type(exc).__name__}: {exc}"
