"""GPU: the fused LoRA projection kernel (lora_kernel.py, "v1") against the prototype (lora_kernel_v2.py), per
call, at the Llama 1.3B decode shapes, side by side with cuBLAS — and a correctness check of both.

    PYTHONPATH=src python benchmarks/lora_kernel_v2_gpu.py --out $OUT      # ≈ 2–4 min on one H200

For each shape (q/k/v, o, gate/up, down), adapters u ∈ {0, 1, 4, 8} (0, 16→32, 32, 64 LoRA columns) and rows
∈ {1, 16}, both kernels run every tile of a short list (the tiles the H200 tuner picked in
docs/results/serve_gpu_2026-11-29/native.json) and the best is reported, with cuBLAS's W-alone and
[W; A] + addmm_ times. Times are device times inside a CUDA graph (``lora_tuning.graph_time_us``). A tile
that fails to compile or gives a wrong result is reported and skipped. Writes lora_kernel_v2.json to --out.
Why v2 should be faster: /work/notes/sass_findings.md (and ``benchmarks/sass_inspect.py``).

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed (imports lorascope.serve only).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lorascope.serve import lora_kernel as v1
from lorascope.serve import lora_kernel_v2 as v2
from lorascope.serve.fused_lora import reference_projection
from lorascope.serve.lora_kernel import Workspace
from lorascope.serve.lora_tuning import _addmm_path, graph_time_us

SHAPES = {"qkv": ((2048, 2048, 2048), 2048), "o": ((2048,), 2048), "gateup": ((5504, 5504), 2048),
          "down": ((2048,), 5504)}
# (block_n, block_k, num_warps, num_stages); split-K from the heuristic's rule for 132 SMs (as the tuner's)
TILES = [(64, 128, 4, 4), (128, 128, 4, 3), (128, 256, 8, 2)]
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def tiles_for(widths, k, n_sm):
    waves = {(64, 128): 2, (128, 128): 2, (128, 256): 1}
    return [v1.heuristic_config(widths, k, torch.bfloat16, n_sm, block_n=bn, block_k=bk, waves=waves[(bn, bk)],
                                num_warps=nw, num_stages=ns) for bn, bk, nw, ns in TILES]


def problem(widths, k, u, rows, r, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    n = sum(widths)
    rnd = lambda *s: (torch.randn(*s, device=device, generator=gen) / k ** 0.5).to(torch.bfloat16)  # noqa: E731
    x = torch.randn(rows, k, device=device, generator=gen).to(torch.bfloat16)
    w_full = rnd(n + max(u, 1) * len(widths) * r, k)
    b = torch.randn(max(u, 1), r, n, device=device, generator=gen).to(torch.bfloat16)
    lora = None
    if u:
        lora = (w_full[n:], b, torch.arange(rows, device=device, dtype=torch.int32) % u,
                torch.arange(min(u, max(rows, 1)), device=device, dtype=torch.int32), r)
    return x, w_full, b, lora


def check(y, x, w, widths, lora) -> float:
    """max |y − ref| / (max |ref| + 1): bf16 rounding gives ≈ 1e-2 at most; a wrong adapter or tile O(1)."""
    ref = reference_projection(x, w, widths, lora).float()
    return float((y.float() - ref).abs().max() / (ref.abs().max() + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    ap.add_argument("--budget-s", type=float, default=210.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    r, results = 8, []
    for name, (widths, k) in SHAPES.items():
        for u in (0, 1, 4, 8):
            for rows in (1, 16):
                if time.time() - T0 > args.budget_s:
                    log("budget reached: stopping")
                    break
                x, w_full, b, lora = problem(widths, k, u if rows >= u else rows, rows, r, device)
                w = w_full[:sum(widths)]
                entry = {"shape": name, "adapters": u, "rows": rows, "cublas_base_us": graph_time_us(
                    lambda: F.linear(x, w))}
                if lora is not None:
                    uu = lora[3].numel()
                    entry["cublas_addmm_path_us"] = graph_time_us(_addmm_path(x, w_full, b, widths, r, uu, rows))
                for tag, mod in (("v1", v1), ("v2", v2)):
                    times, errors = {}, {}
                    for cfg in tiles_for(widths, k, n_sm):
                        key = str(cfg.__dict__)
                        try:
                            ws = Workspace(device)
                            y = mod.fused_lora_linear(x, w, widths, cfg, ws, lora)
                            err = check(y, x, w, widths, lora)
                            if not err < 2e-2:
                                errors[key] = f"wrong result: rel err {err:.3g}"
                                continue
                            times[key] = round(graph_time_us(
                                lambda cfg=cfg, ws=ws: mod.fused_lora_linear(x, w, widths, cfg, ws, lora)), 2)
                        except Exception as exc:  # report, skip, go on
                            errors[key] = f"{type(exc).__name__}: {exc}"[:300]
                    entry[tag] = {"us": times, "errors": errors, "best_us": min(times.values()) if times else None}
                results.append(entry)
                b1, b2 = entry["v1"]["best_us"], entry["v2"]["best_us"]
                log(f"{name:6s} u={u} rows={rows:2d}  cuBLAS {entry['cublas_base_us']:6.2f}  "
                    f"addmm {entry.get('cublas_addmm_path_us', float('nan')):6.2f}  v1 {b1}  v2 {b2}  "
                    f"errors {len(entry['v1']['errors'])}/{len(entry['v2']['errors'])}")
                (args.out / "lora_kernel_v2.json").write_text(json.dumps(results, indent=1))
    print("\nshape   u rows | cuBLAS  addmm |   v1    v2  | v2/v1  v2 vs own u=0")
    base = {(e["shape"], e["rows"]): e["v2"]["best_us"] for e in results if e["adapters"] == 0}
    for e in results:
        b1, b2, b0 = e["v1"]["best_us"], e["v2"]["best_us"], base.get((e["shape"], e["rows"]))
        ratio = f"{b2 / b1:5.2f}" if b1 and b2 else "  -  "
        over = f"{100 * (b2 / b0 - 1):+5.1f}%" if b2 and b0 else "  -  "
        print(f"{e['shape']:6s} {e['adapters']} {e['rows']:4d} | {e['cublas_base_us']:6.2f} "
              f"{e.get('cublas_addmm_path_us', float('nan')):6.2f} | {b1} {b2} | {ratio} {over}")


if __name__ == "__main__":
    main()
