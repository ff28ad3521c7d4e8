"""Run by tests/test_fused_lora.py in a subprocess with TRITON_INTERPRET=1: the fused LoRA Triton kernels on
the CPU, against the PyTorch reference. Prints one JSON object.

Two interpreter quirks of triton 3.6 are worked around here, not in the library: with numpy ≥ 2.4, a Triton
scalar used as a loop bound fails ``int()`` (patched below); and the interpreter converts fp32 → bf16 by
truncation where the GPU rounds to nearest even, so bf16 results are compared loosely and fp32 ones tightly.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"

import triton.runtime.interpreter as _interp  # noqa: E402

_orig_patch = _interp._patch_lang_tensor


def _patch_lang_tensor(tensor, scope):
    _orig_patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


_interp._patch_lang_tensor = _patch_lang_tensor

import torch  # noqa: E402

from lorascope.train.fused_lora import kernels, philox, reference  # noqa: E402
from lorascope.train.fused_lora.ops import lora_group_bwd, lora_group_fwd  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def mask_cases(tie_seed: int) -> list[dict]:
    out = []
    for M, K, p, seed in (
        (40, 72, 0.05, 12345),
        (33, 172, 0.3, 2**61 + 7),
        (16, 64, 0.0, 1),
        (64, 128, 0.05, tie_seed),
    ):
        got = kernels.drop_mask(torch.tensor([seed]), M, K, p)
        out.append(
            {
                "shape": [M, K],
                "p": p,
                "seed": seed,
                "equal": bool(torch.equal(got, ~philox.keep_mask(seed, M, K, p))),
                "dropped": float(got.float().mean()),
            }
        )
    return out


def group_cases() -> list[dict]:
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    blocks = kernels.Blocks(
        shrink_bm=16,
        shrink_bk=32,
        in_bm=16,
        in_bk=32,
        in_ms=2,
        out_bm=32,
        out_bn=16,
        out_nb=2,
        gemm_bm=32,
        gemm_bn=32,
        gemm_bk=32,
    ).as_list()
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for sizes, expand, p, needs_dx in (
            ((48, 16, 16), "kaug", 0.2, True),
            ((40,), "addmm", 0.2, True),
            ((24, 24), "triton", 0.2, True),
            ((48, 16, 16), "kaug", 0.0, False),
        ):
            M, K, r = 50, 72, 8  # ragged: neither M nor K a multiple of the tiles
            x = rnd(M, K, dtype=dtype)
            w_aug = torch.zeros(sum(sizes), K + kernels.padded_rank(len(sizes), r), dtype=dtype)
            w_aug[:, :K] = rnd(sum(sizes), K, scale=0.2).to(dtype)
            a_list = [rnd(r, K, scale=0.3) for _ in sizes]
            b_list = [rnd(n, r, scale=0.3) for n in sizes]
            seeds = torch.tensor([11, 2**40 + 22, 33][: len(sizes)])
            gy = rnd(M, sum(sizes), dtype=dtype)
            res = {}
            for backend in ("torch", "triton"):
                w = w_aug.clone()
                y, saved = lora_group_fwd(x, w, a_list, b_list, seeds, K, r, 2.0, p, expand, backend, blocks)
                dx, da, db = lora_group_bwd(
                    gy, x, saved, w, a_list, b_list, seeds, K, r, 2.0, p, expand, backend, blocks, needs_dx
                )
                res[backend] = {"y": y, "saved": saved, "dA": da, "dB": db}
                if needs_dx:
                    res[backend]["dx"] = dx
                if backend == "triton":  # the kernel wrote blockdiag(B) next to the frozen weights, left W alone
                    expect = reference.block_diag_b(b_list, w.shape[1] - K)
                    b_block = rel(w[:, K:], expect) if torch.equal(w[:, :K], w_aug[:, :K]) else float("inf")
            errs = {k: rel(res["triton"][k], res["torch"][k]) for k in res["torch"]}
            out.append(
                {
                    "dtype": str(dtype),
                    "sizes": list(sizes),
                    "expand": expand,
                    "p": p,
                    "errors": errs,
                    "b_block_error": b_block,
                }
            )
    return out


def adamw_cases() -> list[dict]:
    """The master-weight AdamW kernel against the torch reference update (same hyperparameters, 3 steps)."""
    from lorascope.train.master_adamw import adamw_reference
    from lorascope.train.master_adamw_kernel import adamw_update

    g = torch.Generator().manual_seed(1)
    out = []
    for grad_dtype, copy in ((torch.bfloat16, True), (torch.float32, False)):
        n = 3000
        master = torch.randn(n, generator=g)
        m, v = torch.zeros(n), torch.zeros(n)
        ref = [master.clone(), m.clone(), v.clone()]
        work = master.to(torch.bfloat16) if copy else None
        lr, wd, b1, b2, eps = 1e-3, 0.01, 0.9, 0.999, 1e-8
        for step in (1, 2, 3):
            grad = torch.randn(n, generator=g).to(grad_dtype)
            clip = torch.tensor(0.7)
            hp = torch.tensor([lr, wd, b1, b2, eps, 1 - b1**step, (1 - b2**step) ** 0.5])
            adamw_update(master, grad, m, v, work, hp, clip, block=1024)
            adamw_reference(
                ref[0],
                grad,
                ref[1],
                ref[2],
                lr=lr,
                weight_decay=wd,
                beta1=b1,
                beta2=b2,
                eps=eps,
                step=step,
                clip_coef=clip,
            )
        out.append(
            {
                "grad_dtype": str(grad_dtype),
                "master": rel(master, ref[0]),
                "exp_avg": rel(m, ref[1]),
                "exp_avg_sq": rel(v, ref[2]),
                "copy": rel(work.float(), ref[0].to(torch.bfloat16).float()) if copy else 0.0,
            }
        )
    return out


if __name__ == "__main__":
    json.dump({"masks": mask_cases(int(sys.argv[1])), "groups": group_cases(), "adamw": adamw_cases()}, sys.stdout)
