"""``sass_inspect.py --kernels train``: the fused LoRA training kernels compiled ahead of time for sm_90 on a CPU.

Why: on an H200 ``shrink`` and ``grad_in`` moved 591–625 GB/s against ≈ 4.26 TB/s copy bandwidth
(docs/benchmarks.md, issue 17, "Kernel times at the q/k/v group") and docs/fused_lora.md blamed Philox's integer
work without a profile. This compiles exactly what ``kernels.shrink`` / ``grad_in`` / ``grad_out`` /
``write_b_block`` launch at the q/k/v group of the 1.3B model (M = 8192, K = 2048, three modules, r = 8,
p = 0.05, ``kaug``: x is a strided view of ``[x | xa]``), with the tiles of the H200 run
(docs/results/train_fused_2026-11-30/kernels.json, ``meta.blocks``), and reports per kernel: registers, spills,
shared memory, CTAs per SM, waves; the main loop's hot path (the loop less the forward branches inside it, i.e.
the tie-breaking second Philox draw, taken by a tile with probability ≈ elements/65 536) by issue class and by
source line (``nvdisasm -g``); and lower bounds on the time from instruction issue, the integer pipes and DRAM,
next to the measured time.

    PYTHONPATH=src:benchmarks python benchmarks/sass_inspect.py --kernels train --out /tmp/sass_train

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed (imports lorascope.train.fused_lora only, runs on a CPU).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import torch
import triton
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

from lorascope.train.fused_lora import kernels as fk
from lorascope.train.fused_lora.philox import GROUP, threshold
from sass_inspect import BIN, TARGET, loop_bodies, ptxas_info, sass_of

# H200: 132 SMs, 4 schedulers per SM issuing ≤ 1 warp instruction per cycle each; 1.98 GHz boost clock; copy
# bandwidth measured by benchmarks/train_throughput.py (docs/benchmarks.md, section 1). Integer pipes: 64 lanes per
# SM per clock for 32-bit multiply-add, compare, logic and shift (CUDA C++ Programming Guide, "Arithmetic
# Instructions", compute capability 9.0), i.e. 16 lanes per scheduler: a warp instruction holds its pipe 2 cycles.
SMS, SCHEDULERS, CLOCK_HZ, DRAM_BPS = 132, 4, 1.98e9, 4.26e12
M, K, N_MOD, R, P, N_QKV = 8192, 2048, 3, 8, 0.05, 2048
RUN_JSON = Path("docs/results/train_fused_2026-11-30/kernels.json")

ISSUE_CLASSES = [  # (name, opcode regex, integer pipe: "alu" / "fma" / None)
    ("IMAD.HI/WIDE", r"^IMAD\.(HI|WIDE)", "fma"),
    ("IMAD other", r"^IMAD", "fma"),
    ("LOP3/SHF/IADD3/PRMT/LEA", r"^(LOP3|SHF|IADD3|LEA|PRMT|VIADD|SGXT|VIMNMX|IMNMX|BMSK|POPC|FLO)", "alu"),
    ("ISETP/SEL/P2R/FSEL", r"^(ISETP|SEL|P2R|R2P|PLOP3|FSEL|FSETP)", "alu"),
    ("FP + F2FP", r"^(FADD|FMUL|FFMA|F2FP|F2F|HADD2|HMUL2|HFMA2|FMNMX|I2F|F2I)", None),
    ("MMA", r"^(HMMA|HGMMA|WARPGROUP)", None),
    ("global ld/st", r"^(LDG|LDGSTS|STG|LDGDEPBAR|RED|ATOM)", None),
    ("shared ld/st", r"^(LDS|STS|LDSM|STSM)", None),
    ("BAR/DEPBAR", r"^(BAR|DEPBAR|MEMBAR|FENCE|WARPSYNC)", None),
    ("SHFL/REDUX", r"^(SHFL|REDUX|VOTE)", None),
    ("uniform (U*)", r"^(U|R2UR|S2UR)", None),
    ("other", r".", None),
]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launches(b: fk.Blocks) -> list[dict]:
    """What ``kernels.py`` launches for the q/k/v group (arguments in its order; MockTensor = 16-byte aligned)."""
    bf, f32, i64 = MockTensor(torch.bfloat16), MockTensor(torch.float32), MockTensor(torch.int64)
    t, kg, width, rp = threshold(P), _cdiv(K, GROUP), fk.padded_rank(N_MOD, R), 16
    ld_saved, n_total = K + width, N_MOD * N_QKV  # [x | xa | 0] rows; stacked q/k/v outputs
    shrink = dict(name="shrink", fn=fk._shrink_kernel, warps=b.shrink_warps, iters=_cdiv(K, b.shrink_bk),
                  grid=_cdiv(M, b.shrink_bm), bytes=4 * M * K, tile=f"bm {b.shrink_bm} bk {b.shrink_bk}",
                  args=[bf, f32, f32, f32, i64, bf, M, K, K, ld_saved, K, kg, t >> 16, t & 0xFFFF, 2.0 / (1 - P)],
                  const=dict(R=R, RP=rp, N_MOD=N_MOD, PAD=width - N_MOD * R, DROPOUT=True, COPY_X=True,
                             DOT_F32=False, BM=b.shrink_bm, BK=b.shrink_bk, num_warps=b.shrink_warps))
    return [
        shrink,
        dict(name="grad_in", fn=fk._grad_in_kernel, warps=b.in_warps, iters=b.in_ms,
             grid=_cdiv(M, b.in_bm * b.in_ms) * _cdiv(K, b.in_bk), bytes=6 * M * K,
             tile=f"bm {b.in_bm} bk {b.in_bk} ms {b.in_ms}",
             args=[bf, bf, bf, f32, f32, f32, i64, f32, M, K, ld_saved, K, kg, t >> 16, t & 0xFFFF],
             const=dict(R=R, RP=rp, N_MOD=N_MOD, DROPOUT=True, WRITE_DX=True, DOT_F32=False, BM=b.in_bm,
                        BK=b.in_bk, MS=b.in_ms, num_warps=b.in_warps)),
        dict(name="grad_out", fn=fk._grad_out_kernel, warps=b.out_warps, iters=b.out_nb,
             grid=_cdiv(M, b.out_bm) * _cdiv(N_QKV, b.out_bn * b.out_nb) * N_MOD, bytes=2 * M * n_total,
             tile=f"bm {b.out_bm} bn {b.out_bn} nb {b.out_nb}",
             args=[bf, f32, f32, f32, bf, f32, f32, M, N_QKV, N_QKV, N_QKV, n_total, n_total, ld_saved, N_MOD * R],
             const=dict(R=R, RP=rp, DOT_F32=False, BM=b.out_bm, BN=b.out_bn, NB=b.out_nb, num_warps=b.out_warps)),
        dict(name="b_block", fn=fk._b_block_kernel, warps=4, iters=0, grid=_cdiv(n_total, 64), bytes=0, tile="bn 64",
             args=[bf, f32, f32, f32, N_QKV, N_QKV, n_total, K, ld_saved, width], const=dict(R=R, BN=64, CP=32)),
    ]


def compile_launch(fn, args: list, const: dict):
    """``triton.compile`` of what ``fn[grid](*args, **const)`` would build (the JIT's binder and specialisation)."""
    backend = make_backend(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(const, debug=False)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options.__dict__)


def line_map(cubin: bytes) -> dict[int, tuple[str, int]]:
    """SASS address → innermost (file name, line) from ``nvdisasm -g`` (Triton keeps line info in its cubins)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(BIN / "nvdisasm"), "-g", "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    where, out = ("?", 0), {}
    for ln in text.splitlines():
        m = re.match(r'\s*//## File "(.*)", line (\d+)', ln)
        if m:
            where = (Path(m.group(1)).name, int(m.group(2)))
        elif m := re.match(r"\s+/\*([0-9a-f]{4,})\*/", ln):
            out[int(m.group(1), 16)] = where
    return out


def _functions_by_line(path: Path) -> dict[int, str]:
    tree = ast.parse(path.read_text())
    return {n: f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
            for n in range(f.lineno, f.end_lineno + 1)}


def source_group(where: tuple[str, int], funcs: dict[int, str]) -> str:
    """Philox rounds (triton/language/random.py), reductions (standard.py) or the kernels.py function."""
    name, line = where
    if name == "random.py":
        return "philox rounds"
    if name == "standard.py":
        return "tl.max/reduce"
    if name == "kernels.py":
        return funcs.get(line, "kernels.py")
    return name


def _parse(ln: str) -> tuple[int, str]:
    m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*)", ln)
    ins = re.sub(r"^@!?U?P\w+\s+", "", m.group(2)).split(";")[0].strip()
    return int(m.group(1), 16), ins.split()[0] if ins else ""


def hot_path(loop: list[str]) -> list[tuple[int, str]]:
    """The loop's instructions less those that forward branches inside it jump over (the tie-breaking draw)."""
    ins = [_parse(ln) for ln in loop]
    lo, hi = ins[0][0], ins[-1][0]
    skipped = []
    for ln, (a, _) in zip(loop, ins):
        m = re.search(r"\bBRA\b\s+(?:\S+\s+)?0x([0-9a-f]+)", ln)
        if m and a < int(m.group(1), 16) <= hi:
            skipped.append((a, int(m.group(1), 16)))
    return [(a, op) for a, op in ins if lo <= a and not any(x < a < y for x, y in skipped)]


def summarise(job: dict, kernel, measured_us: float | None, funcs: dict[int, str]) -> tuple[dict, str]:
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    sass, info = sass_of(cubin), ptxas_info(ptx)
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spill = [int(v) for v in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info).groups()]
    smem, warps = kernel.metadata.shared, job["warps"]
    # CTAs per SM: 64 K registers (per-warp allocation in units of 256), 228 KiB shared memory (1 KiB reserved per
    # CTA), 64 warps, 32 CTAs: the limits of the CUDA occupancy calculator for sm_90
    ctas_sm = min(65536 // (_cdiv(regs * 32, 256) * 256 * warps), (228 * 1024) // (smem + 1024), 64 // warps, 32)
    row = {"kernel": job["name"], "tile": job["tile"], "warps": warps, "regs": regs, "spill_st_ld": spill,
           "smem_bytes": smem, "ctas_per_sm": ctas_sm, "grid": job["grid"],
           "waves": round(job["grid"] / (SMS * ctas_sm), 2), "measured_us": measured_us}
    loops = loop_bodies(sass)
    if not loops:
        return row, sass
    hot = hot_path(max(loops, key=len))
    ops = [op for _, op in hot]
    classes = Counter(next(n for n, pat, _ in ISSUE_CLASSES if re.match(pat, op)) for op in ops)
    pipe = {p: sum(classes[n] for n, _, q in ISSUE_CLASSES if q == p) for p in ("alu", "fma")}
    where = line_map(cubin)
    sources = Counter(source_group(where.get(a, ("?", 0)), funcs) for a, _ in hot)
    # one SM's share of the grid, its warps spread evenly over the 4 schedulers, each scheduler ≤ 1 issue per cycle
    ctas_busiest = _cdiv(job["grid"], SMS)
    warp_iters = ctas_busiest * warps / SCHEDULERS * job["iters"]
    bounds_us = {"issue": warp_iters * len(hot) / CLOCK_HZ * 1e6,
                 "alu_pipe": warp_iters * 2 * pipe["alu"] / CLOCK_HZ * 1e6,
                 "fma_pipe": warp_iters * 2 * pipe["fma"] / CLOCK_HZ * 1e6,
                 "philox_issue": warp_iters * sources["philox rounds"] / CLOCK_HZ * 1e6,
                 "dram": job["bytes"] / DRAM_BPS * 1e6}
    bytes_per_warp_iter = job["bytes"] / (job["grid"] * job["iters"] * warps) if job["bytes"] else 0
    row.update({
        "resident_warps_per_scheduler": min(ctas_busiest, ctas_sm) * warps / SCHEDULERS,
        "loop_instrs": len(loops and max(loops, key=len)), "hot_instrs": len(hot), "iters": job["iters"],
        "issue_classes": dict(classes.most_common()), "sources": dict(sources.most_common()),
        "global_ops": dict(Counter(op for op in ops if re.match(r"^(LDG|LDGSTS|STG)", op))),
        "bytes_per_warp_iter": bytes_per_warp_iter,
        "instrs_per_dram_byte": round(len(hot) / bytes_per_warp_iter, 3) if bytes_per_warp_iter else None,
        "bounds_us": {k: round(v, 1) for k, v in bounds_us.items()},
        "achieved_ipc_per_scheduler": round(bounds_us["issue"] / measured_us, 2) if measured_us else None,
    })
    return row, sass


def measured(run_json: Path) -> tuple[fk.Blocks, dict[str, float]]:
    """The tiles the H200 run used and each kernel's time at them (µs)."""
    data = json.loads(run_json.read_text())
    blocks = fk.Blocks(**data["meta"]["blocks"])
    times = {}
    for e in data["kernels"]:
        if "blocks" in e and all(getattr(blocks, k) == v for k, v in e["blocks"].items()):
            times[e["kernel"]] = e["ms"] * 1e3
    return blocks, times


def main(out: Path, run_json: Path = RUN_JSON) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    blocks, times = measured(run_json)
    funcs = _functions_by_line(Path(fk.__file__))
    rows = []
    for job in launches(blocks):
        try:
            kernel = compile_launch(job["fn"], job["args"], job["const"])
            row, sass = summarise(job, kernel, times.get(job["name"]), funcs)
        except Exception as exc:  # report and go on
            print(f"{job['name']}: FAILED {type(exc).__name__}: {exc}"[:500])
            continue
        for ext in ("ptx", "ttgir"):
            (out / f"{job['name']}.{ext}").write_text(kernel.asm[ext])
        (out / f"{job['name']}.sass").write_text(sass)
        rows.append(row)
        print(f"\n{row['kernel']} ({row['tile']}, {row['warps']} warps): regs {row['regs']} spill "
              f"{row['spill_st_ld']} smem {row['smem_bytes']} CTA/SM {row['ctas_per_sm']} grid {row['grid']} "
              f"waves {row['waves']} measured {row['measured_us']}", flush=True)
        for key in ("hot_instrs", "loop_instrs", "iters", "resident_warps_per_scheduler", "bytes_per_warp_iter",
                    "instrs_per_dram_byte", "achieved_ipc_per_scheduler", "global_ops", "issue_classes",
                    "sources", "bounds_us"):
            if key in row:
                print(f"  {key}: {row[key]}")
    (out / "summary_train.json").write_text(json.dumps(rows, indent=1))
    return rows
