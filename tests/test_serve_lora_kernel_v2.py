"""The prototype fused LoRA kernel (serve/lora_kernel_v2.py) against the exact result, the PyTorch reference and
single-adapter runs — the same checks, bounds and helpers as tests/test_serve_lora_kernel.py (see its docstring
for the rounding bound: Higham §3.1, plus the kernel's two bf16 roundings)."""

from __future__ import annotations

import pytest
import torch

from lorascope.serve import lora_kernel_v2 as v2
from lorascope.serve.fused_lora import reference_projection, route, row_adapters
from lorascope.serve.lora_kernel import Config, Workspace, interpreting

from .test_serve_lora_kernel import CASES, _assert_within_bound, _exact, _problem

V2_CASES = CASES + [  # split 3 → the partial load pads the split axis to 4; one adapter → 32 columns, 24 padding
    ((48, 24, 24), 96, 1, 8, 3, Config(block_n=16, block_k=16, split_k=3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(V2_CASES)))
def test_v2_mixed_batch_matches_exact_and_reference(triton_device, case, dtype):
    widths, k_dim, n_ad, r, rows, cfg = V2_CASES[case]
    x, w, a, b = _problem(widths, k_dim, n_ad, r, rows, dtype, seed=case)
    slots = [(i % (n_ad + 1)) for i in range(rows)]  # mixed, with rows on no adapter (slot 0)
    rt = route(slots, n_ad, r, dtype, torch.device("cpu"))
    adapters = row_adapters(rt.row_lora, rt.lora_ids).tolist()
    assert sorted(set(adapters)) == [-1] + list(range(n_ad))
    dev = triton_device
    lora = (a.to(dev), b.to(dev), rt.row_lora.to(dev), rt.lora_ids.to(dev), r)
    got = v2.fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, Workspace(dev), lora).cpu()
    _assert_within_bound(got, x, w, a, b, widths, adapters, r, truncating=interpreting())
    ref = reference_projection(x, w, widths, (a, b, rt.row_lora, rt.lora_ids, r))
    _assert_within_bound(ref, x, w, a, b, widths, adapters, r)


def test_v2_each_row_equals_its_single_adapter_result(triton_device):
    widths, k_dim, n_ad, r, rows, cfg = CASES[1]  # uneven K, split-K 3, partial column blocks
    dev = triton_device
    x, w, a, b = _problem(widths, k_dim, n_ad, r, rows, torch.float32, seed=11)
    slots = [3, 0, 1, 3, 2]
    rt = route(slots, n_ad, r, torch.float32, dev)
    mixed = v2.fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, Workspace(dev),
                                 (a.to(dev), b.to(dev), rt.row_lora, rt.lora_ids, r)).cpu()
    n_mod = len(widths)
    for i, slot in enumerate(slots):
        if slot == 0:
            single = v2.fused_lora_linear(x[i:i + 1].to(dev), w.to(dev), widths, cfg, Workspace(dev)).cpu()
        else:
            ad = slot - 1
            a1 = a[ad * n_mod * r: (ad + 1) * n_mod * r]
            one = route([1], 1, r, torch.float32, dev)
            single = v2.fused_lora_linear(x[i:i + 1].to(dev), w.to(dev), widths, cfg, Workspace(dev),
                                          (a1.to(dev), b[ad: ad + 1].to(dev), one.row_lora, one.lora_ids, r)).cpu()
        # both are within the rounding bound of the same exact row, so within twice it of each other
        y, mag, _ = _exact(x[i:i + 1], w, a, b, widths, [slot - 1], r)
        tol = 2 * (k_dim + r + 2) * 2.0 ** -24 * mag
        assert bool(((mixed[i:i + 1].double() - single.double()).abs() <= tol).all()), f"row {i} (slot {slot})"


def test_v2_split_k_repeats_bitwise_and_resets_counters(triton_device):
    widths, k_dim, n_ad, r = (32, 32), 64, 2, 4
    dev = triton_device
    x, w, a, b = _problem(widths, k_dim, n_ad, r, 20, torch.float32, seed=3)
    rt = route([i % 3 for i in range(20)], n_ad, r, torch.float32, dev)
    ws, cfg = Workspace(dev), Config(block_n=16, block_k=16, split_k=4)
    lora = (a.to(dev), b.to(dev), rt.row_lora, rt.lora_ids, r)
    first = v2.fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, ws, lora)
    second = v2.fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, ws, lora)
    assert torch.equal(first, second)
    assert all(int(lock.abs().sum()) == 0 for _, _, lock in ws._bufs.values())
    _assert_within_bound(first.cpu(), x, w, a, b, widths, row_adapters(rt.row_lora, rt.lora_ids).tolist(), r)


def test_v2_variant_and_stages():
    """≥ 32 LoRA columns (the 16-column shrink dot made Triton replicate the base dot over warps); no more
    pipeline buffers than K steps per split."""
    assert v2.variant(0, 8, torch.bfloat16) == 0
    assert v2.variant(1, 8, torch.bfloat16) == 32 and v2.variant(4, 8, torch.bfloat16) == 32
    assert v2.variant(8, 8, torch.bfloat16) == 64 and v2.variant(1, 8, torch.float32) == 64
    cfg = Config(block_n=64, block_k=128, split_k=8, num_warps=4, num_stages=4)
    assert v2.fit_stages(cfg, 32, torch.bfloat16, 2048).num_stages == 3  # 2 steps per split
    assert v2.fit_stages(cfg, 32, torch.bfloat16, 5504).num_stages == 4  # 6 steps per split
