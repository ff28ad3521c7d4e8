"""Compile the fused LoRA projection kernel ahead of time for sm_90 on a CPU machine and summarise its code.

Why: the H200 run (docs/benchmarks.md, "Per-call times of the fused kernel") showed the LoRA columns cost
+65–115% per call and the 16-column variant slower than the 32-column one; no GPU is needed to see what Triton
generated. This script reproduces the JIT's specialisation (the launch's argument binder, as
``JITFunction.run`` does it, with MockTensor pointers: 16-byte aligned like torch's allocations) against a fixed
``GPUTarget("cuda", 90, 32)``, compiles with Triton's bundled ptxas, and reports per (shape, variant, tiles):
registers, spills, shared memory, the main loop's memory instructions (PTX and SASS) and MMA counts.

    PYTHONPATH=src python benchmarks/sass_inspect.py --out /tmp/sass [--module lorascope.serve.lora_kernel]

``--kernels train`` does the same for the fused LoRA training kernels (lorascope.train.fused_lora.kernels) at the
q/k/v group of the 1.3B model (M = 8192, K = 2048, three modules, r = 8, p = 0.05, ``kaug``) with the tiles the
H200 run picked (docs/results/train_fused_2026-11-30/kernels.json). It also splits the main loop's hot path (the
loop less the rarely taken tie-break branches) by source line (``nvdisasm -g``: Philox rounds, mask slots,
comparisons, reductions, the rest) and by issue class, and prints issue/pipe/DRAM lower bounds next to the
measured time (benchmarks/sass_train.py).

    PYTHONPATH=src:benchmarks python benchmarks/sass_inspect.py --kernels train --out /tmp/sass_train

It never launches anything, so it runs without a GPU (TRITON_INTERPRET must be unset).

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed (imports lorascope.serve only, and runs on a CPU machine).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

# (widths, K) of the four decode projections of a Llama 1.3B layer, and the tiles the H200 tuner chose
# (docs/results/serve_gpu_2026-11-29/native.json, "tuning": best per shape and variant).
SHAPES = {"qkv": ((2048, 2048, 2048), 2048), "o": ((2048,), 2048), "gateup": ((5504, 5504), 2048),
          "down": ((2048,), 5504)}


def tuned_configs(native_json: Path) -> list[tuple[str, int, dict]]:
    """(shape name, variant, best config) for every tuning entry, plus each shape's 0-column best config
    compiled at every variant (same tiles, so the LoRA part is the only difference)."""
    log = json.loads(native_json.read_text())["tuning"]
    names = {v: k for k, v in SHAPES.items()}
    out = []
    for e in log:
        name = names[(tuple(e["widths"]), e["k"])]
        out.append((name, e["variant"], e["best"]))
    return out


def compile_variant(kmod, widths, k, variant, cfg: dict, dtype=torch.bfloat16, r=8):
    """Compile exactly what ``fused_lora_linear`` would launch (same constexprs, same specialisation)."""
    lk = kmod
    fn = lk._fused_lora_linear
    config = lk.Config(**cfg)
    u = 0 if variant == 0 else max(1, variant // r)
    cfg2, const = lk._meta(tuple(widths), k, dtype, config, u, r)
    d = tuple(widths) + (0,) * (3 - len(widths))
    ptrs = [MockTensor(dtype)] * 5 + [MockTensor(torch.int32)] * 2 + [MockTensor(torch.float32)] * 2 + [
        MockTensor(torch.int32)]
    steps = -(-k // cfg2.block_k)
    per = -(-steps // cfg2.split_k)
    args = ptrs + [1, k, d[0], d[1], d[2], max(u, 1), per, k, sum(d)]
    backend = make_backend(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(const)
    kwargs["debug"] = False
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=TARGET, options=options.__dict__), cfg2, const


def sass_of(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        return subprocess.run([str(BIN / "cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(path)


def ptxas_info(ptx: str) -> str:
    """ptxas -v on the PTX (registers, spill stores/loads, shared and stack bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "k.ptx"
        p.write_text(ptx)
        res = subprocess.run([str(BIN / "ptxas"), "-v", "-arch=sm_90a", str(p), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True)
        return res.stderr.strip()


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.M))


def loop_bodies(sass: str) -> list[list[str]]:
    """SASS instructions of each loop: from a backward BRA's target (cuobjdump prints absolute addresses, 4 hex
    digits or more past 0xffff) to it."""
    lines = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", ln)]
    addr = [int(re.match(r"\s+/\*([0-9a-f]+)\*/", ln).group(1), 16) for ln in lines]
    loops = []
    for i, ln in enumerate(lines):
        m = re.search(r"\bBRA\b\s+(?:\S+\s+)?0x([0-9a-f]+)", ln)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in addr:
            loops.append(lines[addr.index(int(m.group(1), 16)):i + 1])
    return loops


def summarise(name, variant, kernel, cfg, const) -> dict:
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    sass = sass_of(cubin)
    md = kernel.metadata
    info = ptxas_info(ptx)
    regs = int(re.search(r"Used (\d+) registers", info).group(1)) if "Used" in info else None
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    loops = loop_bodies(sass)
    main = max(loops, key=len) if loops else []
    body = "\n".join(main)
    warps = const["num_warps"]
    smem = md.shared
    # CTAs per SM on an H200 (132 SMs, 228 KiB shared memory per SM with 1 KiB reserved per CTA, 64 K registers
    # allocated per warp in units of 256): the limits the CUDA occupancy calculator applies
    regs_warp = -(-(regs or 1) * 32 // 256) * 256
    occ_regs = 65536 // (regs_warp * warps)
    occ_smem = (228 * 1024) // (smem + 1024)
    ctas_sm = min(occ_regs, occ_smem, 2048 // (32 * warps), 32)
    widths, k = SHAPES[name]
    grid = sum(-(-w // cfg.block_n) for w in widths) * cfg.split_k
    return {
        "shape": name, "variant": variant, "block_n": cfg.block_n, "block_k": cfg.block_k,
        "split_k": cfg.split_k, "num_warps": warps, "num_stages": const["num_stages"], "LC": const["LC"],
        "regs": regs, "spill_st": int(spill.group(1)) if spill else None, "spill_ld": int(spill.group(2)) if spill else None,
        "smem_bytes": smem, "ctas_per_sm_regs": occ_regs, "ctas_per_sm_smem": occ_smem, "ctas_per_sm": ctas_sm,
        "grid": grid, "waves": round(grid / (132 * ctas_sm), 2),
        "ptx": {
            "cp.async": _count(r"cp\.async\.(cg|ca)", ptx), "cp.async.bulk(TMA)": _count(r"cp\.async\.bulk", ptx),
            "ld.global": _count(r"ld\.global", ptx), "ld.global.v4": _count(r"ld\.global(\.\w+)*\.v4", ptx),
            "wgmma": _count(r"wgmma\.mma_async", ptx), "mma.sync": _count(r"\bmma\.sync", ptx),
            "ldmatrix": _count(r"ldmatrix", ptx), "bar.sync": _count(r"bar\.sync|barrier\.sync", ptx),
            "local": _count(r"(ld|st)\.local", ptx),
        },
        "sass_total": _count(r"^\s+/\*[0-9a-f]{4}\*/", sass),
        "loops": [len(body_) for body_ in loops],
        "main_loop": {
            "instrs": len(main), "LDGSTS": _count(r"LDGSTS", body), "LDG": _count(r"\bLDG\b", body),
            "LDG.128": _count(r"LDG\.E\.128|LDG\.E\.\S*128", body), "LDGSTS.128": _count(r"LDGSTS\.E\.\S*128|LDGSTS\.E\.BYPASS\.LTC128B\.128|LDGSTS.*\.128", body),
            "HMMA": _count(r"\bHMMA\b", body), "HGMMA": _count(r"\bHGMMA\b", body), "LDSM": _count(r"\bLDSM\b", body),
            "LDS": _count(r"\bLDS\b", body), "BAR": _count(r"\bBAR\b", body), "DEPBAR": _count(r"DEPBAR|LDGDEPBAR", body),
            "STL/LDL": _count(r"\b(STL|LDL)\b", body), "WARPGROUP": _count(r"WARPGROUP|WARPSYNC", body),
        },
        "sass_global": {"LDGSTS": _count(r"LDGSTS", sass), "LDG": _count(r"\bLDG\b", sass),
                        "HMMA": _count(r"\bHMMA\b", sass), "HGMMA": _count(r"\bHGMMA\b", sass),
                        "STL/LDL": _count(r"\b(STL|LDL)\b", sass)},
        "ptxas": info.splitlines()[-3:],
    }, ptx, sass, kernel.asm.get("ttgir", "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sass")
    ap.add_argument("--module", default="lorascope.serve.lora_kernel")
    ap.add_argument("--native", default="docs/results/serve_gpu_2026-11-29/native.json")
    ap.add_argument("--same-tiles", action="store_true",
                    help="also compile every variant with each shape's 0-column tiles")
    ap.add_argument("--kernels", choices=("serve", "train"), default="serve",
                    help="serve: the fused projection kernel (default); train: the fused LoRA training kernels")
    args = ap.parse_args()
    assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET: this compiles for sm_90"
    if args.kernels == "train":
        from sass_train import main as train_main  # benchmarks/ is this script's directory, first on sys.path

        train_main(Path(args.out))
        return
    kmod = importlib.import_module(args.module)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = tuned_configs(Path(args.native))
    if args.same_tiles:
        base = {n: c for n, v, c in jobs if v == 0}
        extra = [(n, v, base[n]) for n, v, c in jobs if v and c != base[n]]
        jobs += extra
    rows = []
    for name, variant, cfg in jobs:
        widths, k = SHAPES[name]
        tag = f"{name}_v{variant}_n{cfg['block_n']}k{cfg['block_k']}s{cfg['split_k']}w{cfg['num_warps']}p{cfg['num_stages']}"
        try:
            kernel, cfg2, const = compile_variant(kmod, widths, k, variant, cfg)
            row, ptx, sass, ttgir = summarise(name, variant, kernel, cfg2, const)
        except Exception as exc:  # report and go on
            print(f"{tag}: FAILED {type(exc).__name__}: {exc}"[:500])
            continue
        (out / f"{tag}.ptx").write_text(ptx)
        (out / f"{tag}.sass").write_text(sass)
        (out / f"{tag}.ttgir").write_text(ttgir)
        row["tag"] = tag
        rows.append(row)
        ml = row["main_loop"]
        print(f"{tag:44s} regs {row['regs']:>3} spill {row['spill_st']}/{row['spill_ld']} smem {row['smem_bytes']:>6} "
              f"cta/sm {row['ctas_per_sm']} grid {row['grid']} waves {row['waves']:.2f} loop {ml['instrs']:>4} LDGSTS {ml['LDGSTS']:>3} LDG {ml['LDG']:>3} HMMA {ml['HMMA']:>3} "
              f"HGMMA {ml['HGMMA']:>2} LDSM {ml['LDSM']:>3} BAR {ml['BAR']} | ptx cp.async {row['ptx']['cp.async']} "
              f"v4 {row['ptx']['ld.global.v4']} wgmma {row['ptx']['wgmma']} mma {row['ptx']['mma.sync']}", flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
