"""The fused multi-LoRA projection kernel (serve/lora_kernel.py) and its PyTorch reference (serve/fused_lora.py).

On CPU the kernel runs under Triton's interpreter (``triton_device`` fixture). Every check compares with the
exact result computed in float64 from the same (rounded) inputs, within a worst-case rounding bound derived
per element (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1: a sum of n products computed in
floating point with unit roundoff u, in any order, is off by at most n·u·Σ|terms|):

* fp32 inputs: |y − y_exact| ≤ (K + r + 2)·2⁻²⁴·M, with M = |x|·|W|ᵀ + (|x|·|A|ᵀ)·|B| for the row's adapter;
* bf16 inputs: products are exact in fp32, sums as above, plus the two bf16 roundings the kernel makes — the
  shrink s before the expansion (ε·|s|·|B|) and y itself (ε·|y|), ε = 2⁻⁸ (round to nearest, as the GPU and
  PyTorch do). Triton 3.6's interpreter *truncates* fp32 → bf16 (``cast_impl`` passes no rounding mode to
  ``_convert_float``), so for the interpreted kernel ε = 2⁻⁷, truncation's bound.

These bounds hold on any machine and any summation order; a wrong adapter, module or column is off by O(M).
"""

from __future__ import annotations

import pytest
import torch

from lorascope.serve.fused_lora import reference_projection, route, row_adapters
from lorascope.serve.lora_kernel import Config, Workspace, fused_lora_linear, heuristic_config, interpreting, lora_cols


def _problem(widths, k_dim, n_adapters, r, rows, dtype, seed):
    """Random base weight, n_adapters adapters with NONZERO A and B (α/r folded into B), inputs."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(widths)
    x = torch.randn(rows, k_dim, generator=gen).to(dtype)
    w = (torch.randn(n, k_dim, generator=gen) / k_dim ** 0.5).to(dtype)
    a = (torch.randn(n_adapters * len(widths) * r, k_dim, generator=gen) / k_dim ** 0.5).to(dtype)
    b = torch.randn(n_adapters, r, n, generator=gen).to(dtype)  # O(1): the LoRA term is as large as the base
    return x, w, a, b


def _exact(x, w, a, b, widths, adapters, r):
    """float64 y and the rounding bound's two magnitudes, row by row from the definitions (a Python loop over
    rows on purpose: independent of the gathered formulation under test)."""
    x, w, a, b = (t.double() for t in (x, w, a, b))
    n_mod = len(widths)
    y = x @ w.T
    mag = x.abs() @ w.abs().T
    s_b = torch.zeros_like(y)
    for i, ad in enumerate(adapters):
        if ad < 0:
            continue
        col = 0
        for m, width in enumerate(widths):
            a_m = a[(ad * n_mod + m) * r: (ad * n_mod + m + 1) * r]  # (r, K)
            b_m = b[ad, :, col: col + width]  # (r, width)
            s = x[i] @ a_m.T
            y[i, col: col + width] += s @ b_m
            mag[i, col: col + width] += (x[i].abs() @ a_m.abs().T) @ b_m.abs()
            s_b[i, col: col + width] = s.abs() @ b_m.abs()
            col += width
    return y, mag, s_b


def _assert_within_bound(got, x, w, a, b, widths, adapters, r, truncating=False):
    y, mag, s_b = _exact(x, w, a, b, widths, adapters, r)
    n_terms = x.shape[1] + r + 2
    tol = n_terms * 2.0 ** -24 * mag
    if got.dtype != torch.float32:
        eps = 2.0 ** -7 if truncating else 2.0 ** -8  # bf16 unit roundoff (truncation: twice that)
        tol = tol + 1.01 * eps * (y.abs() + s_b)
    err = (got.double() - y).abs()
    assert bool((err <= tol).all()), f"max excess {float((err - tol).max()):.3g}, worst err {float(err.max()):.3g}"


CASES = [  # widths (q, k, v-like or gate, up-like), K, adapters, r, rows, config
    ((48, 24, 24), 80, 3, 4, 5, Config(block_n=16, block_k=16, split_k=1)),  # even K, no split
    ((48, 24, 24), 80, 3, 4, 5, Config(block_n=32, block_k=32, split_k=3)),  # uneven K, split-K, partial blocks
    ((40, 40), 48, 4, 8, 6, Config(block_n=16, block_k=16, split_k=2)),  # U = 4 adapters → 32 LoRA columns
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_mixed_batch_matches_exact_and_reference(triton_device, case, dtype):
    widths, k_dim, n_ad, r, rows, cfg = CASES[case]
    x, w, a, b = _problem(widths, k_dim, n_ad, r, rows, dtype, seed=case)
    slots = [(i % (n_ad + 1)) for i in range(rows)]  # mixed, with rows on no adapter (slot 0)
    rt = route(slots, n_ad, r, dtype, torch.device("cpu"))
    adapters = row_adapters(rt.row_lora, rt.lora_ids).tolist()
    assert sorted(set(adapters)) == [-1] + list(range(n_ad))
    dev = triton_device
    lora = (a.to(dev), b.to(dev), rt.row_lora.to(dev), rt.lora_ids.to(dev), r)
    got = fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, Workspace(dev), lora).cpu()
    _assert_within_bound(got, x, w, a, b, widths, adapters, r, truncating=interpreting())
    ref = reference_projection(x, w, widths, (a, b, rt.row_lora, rt.lora_ids, r))
    _assert_within_bound(ref, x, w, a, b, widths, adapters, r)


def test_each_row_equals_its_single_adapter_result(triton_device):
    """Mixing adapters in one batch changes no row: row i equals the same kernel run on an engine holding only
    row i's adapter (or none)."""
    widths, k_dim, n_ad, r, rows, cfg = CASES[1]
    dev = triton_device
    x, w, a, b = _problem(widths, k_dim, n_ad, r, rows, torch.float32, seed=7)
    slots = [3, 0, 1, 3, 2]
    rt = route(slots, n_ad, r, torch.float32, dev)
    mixed = fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, Workspace(dev),
                              (a.to(dev), b.to(dev), rt.row_lora, rt.lora_ids, r)).cpu()
    n_mod = len(widths)
    for i, slot in enumerate(slots):
        if slot == 0:
            single = fused_lora_linear(x[i:i + 1].to(dev), w.to(dev), widths, cfg, Workspace(dev)).cpu()
            _assert_within_bound(single, x[i:i + 1], w, a, b, widths, [-1], r)
        else:
            ad = slot - 1
            a1 = a[ad * n_mod * r: (ad + 1) * n_mod * r]
            one = route([1], 1, r, torch.float32, dev)
            single = fused_lora_linear(x[i:i + 1].to(dev), w.to(dev), widths, cfg, Workspace(dev),
                                       (a1.to(dev), b[ad: ad + 1].to(dev), one.row_lora, one.lora_ids, r)).cpu()
        # both are within the rounding bound of the same exact row, so within twice it of each other
        y, mag, _ = _exact(x[i:i + 1], w, a, b, widths, [slot - 1], r)
        tol = 2 * (k_dim + r + 2) * 2.0 ** -24 * mag
        assert bool(((mixed[i:i + 1].double() - single.double()).abs() <= tol).all())


def test_split_k_is_deterministic_and_graph_replayable(triton_device):
    """The serial split-K reduction sums partials in a fixed order (bitwise-equal repeats) and leaves every tile
    counter at zero, so the next launch — a CUDA graph replay — starts clean. Rows > 16 use two row blocks."""
    widths, k_dim, n_ad, r = (32, 32), 64, 2, 4
    dev = triton_device
    x, w, a, b = _problem(widths, k_dim, n_ad, r, 20, torch.float32, seed=3)
    slots = [i % 3 for i in range(20)]
    rt = route(slots, n_ad, r, torch.float32, dev)
    ws, cfg = Workspace(dev), Config(block_n=16, block_k=16, split_k=4)
    lora = (a.to(dev), b.to(dev), rt.row_lora, rt.lora_ids, r)
    first = fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, ws, lora)
    second = fused_lora_linear(x.to(dev), w.to(dev), widths, cfg, ws, lora)
    assert torch.equal(first, second)
    assert all(int(lock.abs().sum()) == 0 for _, _, lock in ws._bufs.values())
    _assert_within_bound(first.cpu(), x, w, a, b, widths, row_adapters(rt.row_lora, rt.lora_ids).tolist(), r)


def test_base_only_kernel(triton_device):
    """``merged``/``base``: the same kernel without its LoRA part."""
    widths, k_dim = (24, 40), 56
    dev = triton_device
    x, w, a, b = _problem(widths, k_dim, 1, 4, 3, torch.bfloat16, seed=5)
    got = fused_lora_linear(x.to(dev), w.to(dev), widths, Config(16, 16, 2), Workspace(dev)).cpu()
    _assert_within_bound(got, x, w, a, b, widths, [-1, -1, -1], 4, truncating=interpreting())


def test_routing_compacts_the_batch_adapters():
    rt = route([3, 0, 1, 3, 2], 3, 4, torch.float32, torch.device("cpu"))
    assert rt.lora_ids.tolist() == [2, 0, 1] and rt.row_lora.tolist() == [0, -1, 1, 0, 2]
    assert row_adapters(rt.row_lora, rt.lora_ids).tolist() == [2, -1, 0, 2, 1]
    few = route([2, 2, 0, 0], 8, 4, torch.float32, torch.device("cpu"))  # U = min(rows, k) = 4, one used
    assert few.lora_ids.tolist() == [1, -1, -1, -1] and few.row_lora.tolist() == [0, 0, -1, -1]
    assert few.masks[2].shape == (4, 8 * 2 * 4) and few.masks[2][0].sum() == 8 and few.masks[2][2].sum() == 0
    assert route([1, 1], 1, 4, torch.float32, torch.device("cpu")).masks is None  # one adapter, every row on it
    assert lora_cols(1, 8) == 16 and lora_cols(3, 8) == 32 and lora_cols(8, 8) == 64


def test_heuristic_config_fills_the_gpu():
    """A GEMV needs every SM streaming: at N = 2048 the K dimension is split, at N = 11008 it need not be."""
    narrow = heuristic_config((2048,), 5504, torch.bfloat16, n_sm=132)
    wide = heuristic_config((5504, 5504), 2048, torch.bfloat16, n_sm=132)
    assert narrow.split_k > 1 and 16 * narrow.split_k >= 132
    assert wide.split_k <= 4 and 86 * wide.split_k >= 132
    tiny = heuristic_config((64, 32, 32), 64, torch.float32, n_sm=4)
    assert tiny.block_n <= 32 and tiny.block_k == 64


HOPPER_COMPILE = r'''
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lorascope.serve.lora_kernel import _fused_lora_linear

ptrs = ["x_ptr", "w_ptr", "a_ptr", "b_ptr", "y_ptr", "row_lora_ptr", "lora_ids_ptr", "ws_ptr", "wss_ptr", "lock_ptr"]
types = ["*bf16"] * 5 + ["*i32", "*i32", "*fp32", "*fp32", "*i32"]
ints = ["M", "K", "D0", "D1", "D2", "U", "steps_per_split", "stride_xm", "stride_ym"]
consts = ["NMOD", "R", "LC", "HAS_LORA", "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "EVEN_K", "DOT_PRECISION", "WIDEN"]
sig = {**dict(zip(ptrs, types)), **{n: "i32" for n in ints}, **{n: "constexpr" for n in consts}}
names = list(sig)
# what the JIT infers at run time for 16-aligned tensors and K, widths, strides divisible by 16 (as at the 1.3B shape)
attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ptrs + ["K", "D0", "D1", "stride_xm", "stride_ym"]}
out = {}
for has_lora, split in ((True, 4), (False, 1)):
    const = dict(NMOD=3, R=8, LC=16, HAS_LORA=has_lora, BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=split,
                 EVEN_K=True, DOT_PRECISION="tf32", WIDEN=False)
    kernel = triton.compile(ASTSource(_fused_lora_linear, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": 4, "num_stages": 3})
    ptx = kernel.asm["ptx"]
    out[str(has_lora)] = {"cp_async": len(re.findall(r"cp\.async", ptx)), "mma": len(re.findall(r"\bmma\.", ptx)),
                          "atomics": re.findall(r"@%p\d+ atom\.global\.gpu\.acq_rel\.\w+", ptx),
                          "shared": kernel.metadata.shared}
print(json.dumps(out))
'''


def test_kernel_compiles_for_hopper_with_pipelined_loads():
    """No GPU needed: Triton compiles the kernel for sm_90 (its bundled ptxas). The W/A/x loads must be
    software-pipelined (cp.async into shared memory — a GEMV that waits on each tile is latency-bound), the
    split-K counter must be one predicated acq_rel atomic per program, and the tiles must fit shared memory."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    run = subprocess.run([sys.executable, "-c", HOPPER_COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for variant in out.values():
        assert variant["cp_async"] > 0 and variant["mma"] > 0 and variant["shared"] <= 160 * 1024
    assert [a.split()[1] for a in out["True"]["atomics"]] == ["atom.global.gpu.acq_rel.add",
                                                              "atom.global.gpu.acq_rel.exch"]
    assert out["False"]["atomics"] == []  # no split: no counter
