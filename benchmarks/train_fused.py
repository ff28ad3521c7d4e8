"""Issue 17 on one H200: the fused LoRA kernels and the FT speed-ups, checked and timed side by side in one run.

Model, batches and FLOP count as benchmarks/train_throughput.py (Sheared-LLaMA-1.3B shape, random weights,
16 × 512; tgt = loss on 72 target tokens, lm = loss on every token; MFU against the 989.4 TFLOP/s datasheet).
Every variant keeps the study's numerics: fp32 master weights + bf16 autocast (docs/fused_lora.md).
Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED — lorascope.train.loss imports the config package
(pydantic), which the GPU image lacks.

Parts (``--only``, default all; each part is guarded: a failure is reported and the rest still runs):
  kernels  masks (Triton vs philox.py, bit for bit); each group's ops vs the PyTorch reference at layer shapes
           (same masks, bf16); block-size choices per kernel (the fastest is used below); per-group time of
           forward+backward for each expand variant next to the frozen base GEMMs alone (= the adapters' cost).
  ft       transformers as users run it (labels=, fused AdamW); ours today (fused AdamW, no mask, compiled
           layers); + captured step; + MasterWeightAdamW (bf16 working copies written by the optimizer); +
           both. Exactness of MasterWeightAdamW: 3 steps against the standard path, next to that path's own
           run-to-run spread.
  lora     transformers + PEFT as users run them; ours today (PEFT modules, bf16 frozen, compiled); the fused
           kernels (compiled); + captured step. Exactness: fused vs PEFT with the same masks (loss and every
           A/B gradient), fused eager vs fused compiled.
  profile  torch.profiler kernel time by kind for the fastest FT and LoRA variants.
  curves   200 optimizer steps of the fused path and of PEFT (compiled), same init and batches: loss curves.

Usage (GPU):  PYTHONPATH=src python benchmarks/train_fused.py --out $OUT
       (CPU smoke test of the plumbing, no timings worth reading): ... --device cpu --tiny --only lora
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from lorascope.train import speed  # noqa: E402
from lorascope.train.captured_step import CapturedStep, static_target_loss  # noqa: E402
from lorascope.train.fused_lora import FusedSettings, install_fused_lora  # noqa: E402
from lorascope.train.fused_lora.check import peft_with_fused_masks  # noqa: E402
from lorascope.train.loss import TargetTokenLoss  # noqa: E402
from lorascope.train.master_adamw import MasterWeightAdamW, working_copy_params  # noqa: E402
from train_throughput import (  # noqa: E402
    FULL,
    LORA,
    PEAK_BF16_DATASHEET,
    TINY,
    add_lora,
    build_llama,
    make_batch,
    n_rows,
    step_flops,
)

T0 = time.perf_counter()
OUT: dict = {"meta": {}, "checks": [], "timings": [], "kernels": [], "profiles": [], "curves": {}, "errors": []}
ARGS = None


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def save():
    if ARGS.out:
        Path(ARGS.out).mkdir(parents=True, exist_ok=True)
        Path(ARGS.out, "train_fused.json").write_text(json.dumps(OUT, indent=1, default=str))


def guarded(label, fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except Exception as exc:  # one failed variant must not lose the others' numbers
        import traceback

        traceback.print_exc()
        log(f"FAILED {label}: {type(exc).__name__}: {exc}")
        OUT["errors"].append({"part": label, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        free()
        return None


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def left() -> float:
    return ARGS.deadline_s - (time.perf_counter() - T0)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def autocast():
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)


def cuda_ms(fn, reps=10, warm=2, graph=True) -> float:
    """Median time of one ``fn()`` (CUDA events, batches of ``reps`` calls). ``graph``: replay ``fn`` captured in a
    CUDA graph, i.e. device time without host launch overhead (falls back to plain calls if capture fails)."""
    for _ in range(warm):
        fn()
    run = fn
    if DEVICE.type == "cuda" and graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run = g.replay
        except Exception as exc:  # noqa: BLE001 — timing still works, with host overhead included
            log(f"(CUDA graph capture failed, timing eagerly: {type(exc).__name__}: {str(exc)[:120]})")
            torch.cuda.synchronize()
    times = []
    for _ in range(5):
        if DEVICE.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(reps):
                run()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) / reps)
        else:
            t = time.perf_counter()
            for _ in range(reps):
                run()
            times.append((time.perf_counter() - t) * 1e3 / reps)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------- kernels
def group_problem(M, K, sizes, r=8, seed=0):
    from lorascope.train.fused_lora import kernels

    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    w_aug = torch.zeros(sum(sizes), K + kernels.padded_rank(len(sizes), r), dtype=torch.bfloat16, device=DEVICE)
    w_aug[:, :K] = rnd(sum(sizes), K, scale=0.02).bfloat16()
    return dict(x=rnd(M, K).bfloat16(), w_aug=w_aug, a=[rnd(r, K, scale=0.02) for _ in sizes],
                b=[rnd(n, r, scale=0.02) for n in sizes], seeds=torch.arange(1, len(sizes) + 1, device=DEVICE) * 7919,
                gy=rnd(M, sum(sizes), scale=1e-3).bfloat16(), K=K, r=r)


def run_group(pr, expand, backend, blocks, p=0.05, needs_dx=True):
    from lorascope.train.fused_lora.ops import lora_group_bwd, lora_group_fwd

    y, saved = lora_group_fwd(pr["x"], pr["w_aug"], pr["a"], pr["b"], pr["seeds"], pr["K"], pr["r"], 2.0, p, expand,
                              backend, blocks)
    dx, da, db = lora_group_bwd(pr["gy"], pr["x"], saved, pr["w_aug"], pr["a"], pr["b"], pr["seeds"], pr["K"], pr["r"],
                                2.0, p, expand, backend, blocks, needs_dx)
    return {"y": y, "dx": dx, "dA": da, "dB": db}


def part_kernels(shape):
    from lorascope.train.fused_lora import gemm, kernels, philox

    M = shape["B"] * shape["T"]
    d, f = shape["d"], shape["f"]
    kvd = d // shape["heads"] * shape["kv"]
    # masks: the kernel's bits are philox.py's bits
    seed = 2**40 + 12345
    got = kernels.drop_mask(torch.tensor([seed], device=DEVICE), M, d, LORA["dropout"])
    ref = ~philox.keep_mask(seed, M, d, LORA["dropout"], device=DEVICE)
    rec = {"check": "masks", "shape": [M, d], "equal": bool(torch.equal(got, ref)), "dropped": float(got.float().mean())}
    OUT["checks"].append(rec)
    log(f"masks ({M}×{d}, p={LORA['dropout']}): bit-equal to philox.py {rec['equal']}, dropped {rec['dropped']:.5f}")
    groups = {"qkv": (d, (d, kvd, kvd)), "o": (d, (d,)), "gate_up": (d, (f, f)), "down": (f, (d,))}
    default = kernels.Blocks()
    # exactness at layer shapes: kernels (each expand variant) vs the reference, same masks, bf16
    for name, (K, sizes) in groups.items():
        pr = group_problem(M, K, sizes)
        want = run_group(pr, "kaug", "torch", default.as_list())
        for expand in ("kaug", "addmm", "triton"):
            out = guarded(f"check {name}/{expand}", run_group, pr, expand, "triton", default.as_list())
            if out is None:
                continue
            errs = {k: rel(out[k], want[k]) for k in want}
            OUT["checks"].append({"check": "group vs reference (bf16, same masks)", "group": name, "expand": expand,
                                  "errors": errs})
            log(f"check {name:<7} {expand:<6} vs reference: " + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()))
        del pr, want
        free()
    # block sizes, on the q/k/v group (3 masks: the heaviest per element)
    pr = group_problem(M, d, (d, kvd, kvd))
    coef, p = 2.0 / (1 - LORA["dropout"]), LORA["dropout"]
    best = {}
    trials = {
        "shrink": [dict(shrink_bm=16, shrink_bk=64, shrink_warps=4), dict(shrink_bm=32, shrink_bk=64, shrink_warps=8),
                   dict(shrink_bm=32, shrink_bk=64, shrink_warps=4)],
        "grad_in": [dict(in_bm=32, in_bk=64, in_ms=16, in_warps=8), dict(in_bm=16, in_bk=64, in_ms=32, in_warps=4),
                    dict(in_bm=32, in_bk=64, in_ms=16, in_warps=4)],
        "grad_out": [dict(out_bm=256, out_bn=128, out_nb=4, out_warps=8), dict(out_bm=128, out_bn=128, out_nb=4, out_warps=4),
                     dict(out_bm=128, out_bn=64, out_nb=8, out_warps=4)],
        "gemm": [dict(gemm_bm=128, gemm_bn=256, gemm_bk=64, gemm_warps=8, gemm_stages=3),
                 dict(gemm_bm=128, gemm_bn=128, gemm_bk=64, gemm_warps=8, gemm_stages=4)],
    }
    saved = kernels.shrink(pr["x"], pr["a"], pr["seeds"], r=8, coef=coef, p=p, copy_x=True, blocks=default)
    gb, _ = kernels.grad_out(pr["gy"], pr["b"], saved[:, d:], r=8, blocks=default)
    gbc = (gb * coef).bfloat16()
    dx0 = torch.mm(pr["gy"], pr["w_aug"][:, :d])
    calls = {
        "shrink": lambda c: kernels.shrink(pr["x"], pr["a"], pr["seeds"], r=8, coef=coef, p=p, copy_x=True, blocks=c),
        "grad_out": lambda c: kernels.grad_out(pr["gy"], pr["b"], saved[:, d:], r=8, blocks=c),
        "grad_in": lambda c: kernels.grad_in(saved[:, :d], dx0, gbc, pr["a"], pr["seeds"], r=8, p=p, blocks=c),
        "gemm": lambda c: gemm.gemm_lora(pr["x"], pr["w_aug"], saved[:, d:], d, c),
    }
    bytes_moved = {"shrink": 4 * M * d, "grad_out": 2 * M * sum((d, kvd, kvd)), "grad_in": 6 * M * d, "gemm": 0}
    for kernel, options in trials.items():
        for opt in options:
            cfg = kernels.Blocks(**{**default.__dict__, **opt})
            ms = guarded(f"blocks {kernel} {opt}", cuda_ms, lambda: calls[kernel](cfg))
            if ms is None:
                continue
            rec = {"kernel": kernel, "blocks": opt, "ms": ms, "GBps": bytes_moved[kernel] / ms / 1e6}
            OUT["kernels"].append(rec)
            log(f"kernel {kernel:<8} {ms * 1e3:8.1f} µs  {rec['GBps']:7.0f} GB/s  {opt}")
            if kernel not in best or ms < best[kernel][0]:
                best[kernel] = (ms, opt)
    mm_ms = cuda_ms(lambda: torch.mm(pr["x"], pr["w_aug"][:, :d].t()))
    log(f"kernel cuBLAS x·Wᵀ (q/k/v stacked) {mm_ms * 1e3:8.1f} µs (the Triton GEMM's yardstick)")
    OUT["kernels"].append({"kernel": "cublas qkv mm", "ms": mm_ms})
    chosen = kernels.Blocks(**{**default.__dict__, **{k: v for _, o in best.values() for k, v in o.items()}})
    OUT["meta"]["blocks"] = chosen.__dict__
    del pr, saved, gb, gbc, dx0
    free()
    # per group: forward+backward of each expand variant vs the frozen base GEMMs alone
    per_layer = defaultdict(float)
    for name, (K, sizes) in groups.items():
        pr = group_problem(M, K, sizes)
        w = pr["w_aug"][:, :K]
        base = cuda_ms(lambda: (torch.mm(pr["x"], w.t()), torch.mm(pr["gy"], w)))
        rec = {"group": name, "base_ms": base}
        for expand in ("kaug", "addmm", "triton"):
            ms = guarded(f"time {name}/{expand}", cuda_ms, lambda: run_group(pr, expand, "triton", chosen.as_list()))
            if ms is not None:
                rec[expand] = ms
                per_layer[expand] += ms - base
        eager = guarded(f"time {name}/eager", cuda_ms, lambda: run_group(pr, "kaug", "triton", chosen.as_list()),
                        graph=False)
        rec["kaug_eager_launches"] = eager
        OUT["kernels"].append(rec)
        log(f"group {name:<7} fwd+bwd device time: base GEMMs {base:.3f} ms; " +
            "  ".join(f"{e} {rec[e]:.3f} (+{rec[e] - base:.3f})" for e in ("kaug", "addmm", "triton") if e in rec) +
            (f"; kaug launched eagerly {eager:.3f} ms (host overhead included)" if eager else ""))
        del pr
        free()
    layers = shape["layers"]
    for expand, extra in per_layer.items():
        log(f"adapters' cost per step ({layers} layers), {expand}: {extra * layers:.1f} ms (aim ≤ 11 ms)")
    OUT["meta"]["adapter_ms_per_step"] = {e: v * layers for e, v in per_layer.items()}
    fastest = min(per_layer, key=per_layer.get) if per_layer else "kaug"
    OUT["meta"]["expand"] = fastest
    return chosen, fastest


# ----------------------------------------------------------------------------------------------- steps
def record(name, method, mode, ms, batch, shape, peak=None, note=""):
    ids, mask, labels, lens = batch
    med = statistics.median(ms)
    fl = step_flops(shape, "ft" if method == "ft" else "lora", lens, n_rows(labels))
    rec = {"variant": name, "method": method, "mode": mode, "ms": med, "ms_min": min(ms), "ms_max": max(ms),
           "tok_s": sum(lens) / med * 1e3, "mfu": fl / (med / 1e3) / PEAK_BF16_DATASHEET, "peak_gib": peak, "note": note}
    OUT["timings"].append(rec)
    log(f"time  {name:<44} {mode:<3} {med:7.1f} ms  {rec['tok_s']:8.0f} tok/s  MFU {100 * rec['mfu']:5.1f}%  "
        f"(min {min(ms):.1f} max {max(ms):.1f})" + (f"  peak {peak:.1f} GiB" if peak else ""))
    save()
    return rec


def time_step(name, method, step, batches, shape, modes, note="", reset_peak=True):
    """``reset_peak=False``: the caller reset the peak counter already (a captured step allocates its graph's
    memory pool at capture, before the timed replays)."""
    for mode in modes:
        batch = batches[mode]
        if DEVICE.type == "cuda" and reset_peak:
            torch.cuda.reset_peak_memory_stats()
        ms = []
        for i in range(ARGS.warmup + ARGS.steps):
            t = time.perf_counter()
            e0 = torch.cuda.Event(enable_timing=True) if DEVICE.type == "cuda" else None
            if e0 is not None:
                e0.record()
            loss, gn = step(*batch[:3])
            lv, gv = float(loss), float(gn)  # one host sync per step, as lorascope's loop
            if e0 is not None:
                e1 = torch.cuda.Event(enable_timing=True)
                e1.record()
                e1.synchronize()
                dt = e0.elapsed_time(e1)
            else:
                dt = (time.perf_counter() - t) * 1e3
            if not (math.isfinite(lv) and math.isfinite(gv)):
                raise RuntimeError(f"{name}: loss {lv}, grad norm {gv}")
            if i >= ARGS.warmup:
                ms.append(dt)
        peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else None
        record(name, method, mode, ms, batch, shape, peak, note)


def std_step(loss_fn, params, opt):
    def step(ids, mask, labels):
        with autocast():
            loss = loss_fn(ids, mask, labels)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), gn
    return step


def master_step(loss_fn, opt):
    def step(ids, mask, labels):
        with autocast():
            loss = loss_fn(ids, mask, labels)
        loss.backward()
        gn = opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), gn
    return step


def ours(loss_mod):
    return lambda ids, mask, labels: loss_mod(ids, mask, labels)[0] / n_rows(labels)


def hf(model):
    return lambda ids, mask, labels: model(input_ids=ids, attention_mask=mask, labels=labels).loss


def adamw(params, lr, wd, **kw):
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}) if g["params"]]
    return groups if kw.pop("groups_only", False) else torch.optim.AdamW(groups, lr=lr, eps=1e-8, fused=True, **kw)


def time_captured(name, method, loss_mod, params, batches, shape, modes, make_opt, master):
    """The whole step in one CUDA graph, one capture per batch (the target positions are fixed at capture)."""
    for mode in modes:
        ids, mask, labels, _ = batches[mode]
        opt = make_opt()
        fn, rows = static_target_loss(loss_mod, labels), n_rows(labels)

        def train_step(ids_, mask_):
            with autocast():
                loss = fn(ids_, mask_) / rows
            loss.backward()
            if master:
                return loss.detach(), opt.apply()
            gn = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            return loss.detach(), gn

        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cap = CapturedStep(train_step, (ids, mask), params, before_replay=opt.prepare if master else None)
        time_step(name, method, lambda i, m, _labels: cap(i, m), {mode: batches[mode]}, shape, [mode],
                  note="whole step in one CUDA graph", reset_peak=False)
        del cap, opt
        for p in params:  # the captured gradients live in the graph's memory pool
            p.grad = None
        free()


# ----------------------------------------------------------------------------------------------- FT
def part_ft(shape, batches):
    model = build_llama(shape, DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = 1e-5, 0.01
    loss_mod = TargetTokenLoss(model, causal_no_mask=True)
    guarded("ft-hf", time_step, "FT transformers (labels=, fused AdamW)", "ft", std_step(hf(model), params, adamw(params, lr, wd)),
            batches, shape, ["tgt", "lm"], note="as users run it: fp32 + autocast, full logits, eager")
    speed.compile_layers(model)
    guarded("ft-ours", time_step, "FT ours today (fused AdamW, compiled)", "ft", std_step(ours(loss_mod), params, adamw(params, lr, wd)),
            batches, shape, ["tgt", "lm"])
    # before the master-weight optimizer, which turns the weights into bf16 copies (a failed capture raises before
    # compiling anything: captured_step.py, so the parts after it still run)
    guarded("ft-captured", time_captured, "FT ours today + captured step", "ft", loss_mod, params, batches, shape,
            ["tgt", "lm"], lambda: adamw(params, lr, wd, capturable=True), False)
    # exactness of the master-weight optimizer: 3 steps from the same state, vs the standard path twice
    snapshot = [p.detach().clone() for p in params]

    def three_steps(step):
        for p, s in zip(params, snapshot):
            p.data = s.clone()
        losses = []
        for _ in range(3):
            loss, _ = step(*batches["check"][:3])
            losses.append(float(loss))
        return losses

    def rel_l2(new, ref):
        """‖new − ref‖ / ‖ref‖ over every parameter's update (float64)."""
        num = sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(new, ref))
        return math.sqrt(num / sum(float(b.double().pow(2).sum()) for b in ref))

    def exactness():
        """The master-weight path against the standard one over 3 steps, next to the standard path run eagerly (the
        same numerics in another rounding order: the floor). The worst single weight is also recorded, but it says
        little for Adam: where a gradient is near 0, its first updates are ±lr from the sign of a rounding error."""
        ref_losses = three_steps(std_step(ours(loss_mod), params, adamw(params, lr, wd)))
        ref = [p.detach() - s for p, s in zip(params, snapshot)]
        again_losses = three_steps(std_step(ours(loss_mod), params, adamw(params, lr, wd)))
        again = [p.detach() - s for p, s in zip(params, snapshot)]
        spread = max(rel(a, r) for a, r in zip(again, ref))
        with torch.compiler.set_stance("force_eager"):
            eager_losses = three_steps(std_step(ours(loss_mod), params, adamw(params, lr, wd)))
        eager = [p.detach() - s for p, s in zip(params, snapshot)]
        for p, s in zip(params, snapshot):
            p.data = s.clone()
        opt = MasterWeightAdamW(adamw(params, lr, wd, groups_only=True), lr=lr, working=working_copy_params(model))
        # the optimizer turned the Linear weights into bf16 (p.data): compiled code must be rebuilt. On the H200
        # (torch 2.11) no guard caught the dtype change, and the layers compiled for fp32 weights read the bf16
        # storage as fp32 — an illegal memory access (run of 2026-11-30, no recompile in its log)
        torch._dynamo.reset()
        master_losses = []
        for _ in range(3):
            loss, _ = master_step(ours(loss_mod), opt)(*batches["check"][:3])
            master_losses.append(float(loss))
        masters = opt.masters()
        upd = [masters[id(p)] - s for p, s in zip(params, snapshot)]
        rec = {"check": "FT MasterWeightAdamW vs fp32+autocast+AdamW, 3 steps", "losses_ref": ref_losses,
               "losses_ref_again": again_losses, "losses_ref_eager": eager_losses, "losses_master": master_losses,
               "update_rel_l2": rel_l2(upd, ref), "update_rel_l2_floor_eager_vs_compiled": rel_l2(eager, ref),
               "update_worst_weight_rel_err": max(rel(a, b) for a, b in zip(upd, ref)),
               "update_worst_weight_rel_err_floor": max(rel(a, b) for a, b in zip(eager, ref)),
               "weight_update_rel_err_ref_vs_ref_again": spread,
               "update_rel_l2_compiled_vs_itself": rel_l2(again, ref)}
        OUT["checks"].append(rec)
        log(f"check FT master-weight AdamW, 3 steps: update ‖Δ‖/‖ref‖ {rec['update_rel_l2']:.1e} vs the standard path "
            f"eager-vs-compiled {rec['update_rel_l2_floor_eager_vs_compiled']:.1e}, compiled vs itself "
            f"{rec['update_rel_l2_compiled_vs_itself']:.1e}; "
            f"losses master {master_losses}, standard {ref_losses}, standard eager {eager_losses}")
        return opt

    opt = guarded("ft-master-check", exactness)
    del snapshot
    free()
    if opt is not None:
        guarded("ft-master", time_step, "FT ours + MasterWeightAdamW (bf16 copies)", "ft",
                master_step(ours(loss_mod), opt), batches, shape, ["tgt", "lm"])
        if ARGS.profile and left() > 60:
            guarded("profile ft", profile, "FT ours + MasterWeightAdamW", master_step(ours(loss_mod), opt),
                    batches["tgt"])
        guarded("ft-master-captured", time_captured, "FT ours + MasterWeightAdamW + captured step", "ft", loss_mod,
                params, batches, shape, ["tgt", "lm"], lambda: opt, True)
    del model, params, opt, loss_mod
    torch._dynamo.reset()
    free()


# ----------------------------------------------------------------------------------------------- LoRA
def part_lora(shape, batches, blocks, expand):
    model = add_lora(build_llama(shape, DEVICE))
    params = [p for p in model.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in params]
    lr = 2e-4
    guarded("lora-peft", time_step, "LoRA transformers+PEFT (labels=, fused AdamW)", "lora",
            std_step(hf(model), params, adamw(params, lr, 0.0)), batches, shape, ["tgt", "lm"],
            note="as users run it: fp32 frozen + autocast, full logits, eager")
    speed.cast_frozen_linear_weights(model)
    loss_mod = TargetTokenLoss(model, causal_no_mask=True)
    speed.compile_layers(model)
    guarded("lora-ours", time_step, "LoRA ours today (PEFT modules, compiled)", "lora",
            std_step(ours(loss_mod), params, adamw(params, lr, 0.0)), batches, shape, ["tgt", "lm"])
    settings = FusedSettings(backend="triton" if DEVICE.type == "cuda" else "torch", expand=expand,
                             blocks=tuple(blocks.as_list()) if blocks else None)
    handle = install_fused_lora(model, settings)
    log(f"fused LoRA installed: {handle.n_modules} modules in {len(handle.groups)} groups, {settings}")
    guarded("lora-exact", lora_exactness, model, handle, loss_mod, params, batches["check"])
    guarded("lora-fused", time_step, f"LoRA fused kernels ({expand}, compiled)", "lora",
            std_step(ours(loss_mod), params, adamw(params, lr, 0.0)), batches, shape, ["tgt", "lm"])
    if ARGS.profile and left() > 60:
        guarded("profile lora", profile, "LoRA fused kernels", std_step(ours(loss_mod), params, adamw(params, lr, 0.0)),
                batches["tgt"])
    # the capture before the curves: they remove the fused modules (handle.remove) to run PEFT's
    guarded("lora-fused-captured", time_captured, "LoRA fused kernels + captured step", "lora", loss_mod, params,
            batches, shape, ["tgt", "lm"], lambda: adamw(params, lr, 0.0, capturable=True), False)
    if "curves" in ARGS.only and left() > 40:
        guarded("curves", loss_curves, model, handle, loss_mod, params, init, batches)
    del model, params, loss_mod, handle
    torch._dynamo.reset()
    free()


def lora_exactness(model, handle, loss_mod, params, batch):
    """Same masks: the fused path (eager and compiled) vs PEFT's modules replaying them (eager)."""
    ids, mask, labels, _ = batch

    def loss_grads(seed=3):
        for p in params:
            p.grad = None
        torch.manual_seed(seed)
        with autocast():
            loss = ours(loss_mod)(ids, mask, labels)
        loss.backward()
        return float(loss), [p.grad.detach().float().clone() for p in params]

    model.train()
    with torch.compiler.set_stance("force_eager"):
        fused = loss_grads()
        with peft_with_fused_masks(handle):
            peft = loss_grads()
    compiled = loss_grads()
    for name, other in (("fused (eager) vs PEFT, same masks", peft), ("fused compiled vs fused eager", fused)):
        mine = fused if other is peft else compiled
        gerr = max(rel(a, b) for a, b in zip(mine[1], other[1]))
        gnorm = math.sqrt(sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(mine[1], other[1])) /
                          sum(float(b.double().pow(2).sum()) for b in other[1]))
        rec = {"check": name, "loss": mine[0], "loss_ref": other[0], "loss_rel_err": abs(mine[0] - other[0]) / abs(other[0]),
               "grad_worst_tensor_rel_err": gerr, "grad_rel_err": gnorm}
        OUT["checks"].append(rec)
        log(f"check {name}: loss {mine[0]:.6f} vs {other[0]:.6f} (rel {rec['loss_rel_err']:.1e}), grads rel "
            f"{gnorm:.1e} (worst tensor, max-norm {gerr:.1e})")
    for p in params:
        p.grad = None


def loss_curves(model, handle, loss_mod, params, init, batches):
    """200 steps (fewer if time is short), lr 1e-3, 4 fixed batches cycled (the loss falls by memorising them)."""
    shape = FULL if not ARGS.tiny else TINY
    pool = [make_batch(shape, "tgt", DEVICE, seed=200 + i) for i in range(4)]
    per_step = 0.14 if DEVICE.type == "cuda" else 1.0  # s per step, fused and PEFT on average (H200)
    n = max(10, min(ARGS.curve_steps, int((left() - 30) / (2 * per_step))))

    def run(label):
        for p, s in zip(params, init):
            p.data.copy_(s)
        step = std_step(ours(loss_mod), params, adamw(params, 1e-3, 0.0))
        losses = []
        for i in range(n):
            torch.manual_seed(10_000 + i)
            loss, _ = step(*pool[i % 4][:3])
            losses.append(float(loss))
        OUT["curves"][label] = losses
        log(f"curve {label}: {n} steps, loss {losses[0]:.4f} → {statistics.mean(losses[-10:]):.4f} (mean of last 10)")
        save()
        return losses

    model.train()
    fused = run("fused")
    handle.remove()
    peft = run("peft")
    diffs = [abs(a - b) for a, b in zip(fused, peft)]
    OUT["meta"]["curves"] = {"steps": n, "mean_abs_diff": statistics.mean(diffs), "max_abs_diff": max(diffs),
                             "final_fused": statistics.mean(fused[-10:]), "final_peft": statistics.mean(peft[-10:])}
    log(f"curves fused vs PEFT: mean |Δloss| {statistics.mean(diffs):.4f}, max {max(diffs):.4f} (different masks, "
        "same distribution: the two should agree within dropout noise)")


# ----------------------------------------------------------------------------------------------- profile, table
# first match wins: attention before GEMM (cuDNN's SDPA kernels are named "..._sdpa_sm90_flash_...")
KINDS = [("lora kernels (ours)", r"_shrink_kernel|_grad_in_kernel|_grad_out_kernel|_b_block_kernel|_gemm_lora_kernel"),
         ("optimizer (ours)", r"_adamw_kernel"), ("attention", r"flash|fmha|attention|sdpa|cudnn"),
         ("gemm (cuBLAS)", r"gemm|nvjet|xmma|cutlass|cublas|splitk|gemv|sm90_"),
         ("optimizer + clip", r"adam|multi_tensor|foreach|norm_kernel|lpnorm"),
         ("triton (inductor)", r"^triton_"), ("copy/fill", r"memcpy|memset|fill|copy"), ("other", r".")]


def profile(name, step, batch, n=2):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    sync()
    t = time.perf_counter()
    with prof(activities=[ProfilerActivity.CUDA]) as pr:
        for _ in range(n):
            loss, gn = step(*batch[:3])
            float(loss)
        sync()
    wall = (time.perf_counter() - t) / n * 1e3
    by, top = defaultdict(float), []
    for e in pr.key_averages():
        ms = (getattr(e, "self_device_time_total", 0.0) or 0.0) / n / 1e3
        if ms <= 0:
            continue
        kind = next(k for k, rx in KINDS if re.search(rx, e.key, re.I))
        by[kind] += ms
        top.append((ms, e.count // n, kind, e.key[:80]))
    top.sort(reverse=True)
    rec = {"variant": name, "wall_ms_profiled": wall, "kernel_ms": sum(by.values()), "by_kind_ms": dict(by),
           "top": [{"ms": a, "calls": c, "kind": k, "name": nm} for a, c, k, nm in top[:20]]}
    OUT["profiles"].append(rec)
    log(f"profile {name}: kernels {rec['kernel_ms']:.1f} ms/step, wall {wall:.1f} ms (under the profiler): " +
        ", ".join(f"{k} {v:.1f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])))
    for a, c, k, nm in top[:10]:
        log(f"    {a:6.2f} ms {c:5d}x  {k:<20} {nm}")


def tables():
    rows = OUT["timings"]
    print("\n| variant | mode | ms/step | tok/s | MFU % | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['mode']} | {r['ms']:.1f} | {r['tok_s']:.0f} | {100 * r['mfu']:.1f} | "
              f"{r['peak_gib'] or float('nan'):.1f} |")

    def get(prefix, mode):
        cands = [r for r in rows if r["variant"].startswith(prefix) and r["mode"] == mode]
        return max(cands, key=lambda r: r["tok_s"]) if cands else None

    print("\n| LoRA / FT tokens/s | tgt | lm |\n|---|---|---|")
    pairs = [("transformers+PEFT / transformers (users)", "LoRA transformers", "FT transformers"),
             ("ours today / ours today", "LoRA ours today", "FT ours today"),
             ("fused LoRA (best) / FT ours today (best)", "LoRA fused", "FT ours today"),
             ("fused LoRA (best) / FT ours (best of all)", "LoRA fused", "FT ours")]
    for label, lo, ft in pairs:
        cells = []
        for mode in ("tgt", "lm"):
            a, b = get(lo, mode), get(ft, mode)
            cells.append(f"{a['tok_s'] / b['tok_s']:.2f} ({a['tok_s']:.0f} / {b['tok_s']:.0f})" if a and b else "–")
            if a and b:
                OUT["meta"][f"ratio {label} {mode}"] = a["tok_s"] / b["tok_s"]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    ft = [r for r in rows if r["method"] == "ft" and r["variant"].startswith("FT ours")]
    if ft:
        best = max(ft, key=lambda r: r["mfu"])
        print(f"\nbest FT: {best['variant']} ({best['mode']}): MFU {100 * best['mfu']:.1f}% of 989.4 TFLOP/s (aim ≥ 50%)")


def main():
    global ARGS, DEVICE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--only", default="kernels,ft,lora,profile,curves")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--curve-steps", type=int, default=200)
    ap.add_argument("--deadline-s", type=float, default=300, help="optional parts shrink or skip past this")
    ARGS = ap.parse_args()
    ARGS.only = ARGS.only.split(",")
    ARGS.profile = "profile" in ARGS.only
    DEVICE = torch.device(ARGS.device)
    shape = TINY if ARGS.tiny else FULL
    import peft
    import transformers

    OUT["meta"].update({"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
                        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu", "shape": shape,
                        "lora": LORA, "args": vars(ARGS)})
    if DEVICE.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        import triton

        OUT["meta"]["triton"] = triton.__version__
    torch._logging.set_logs(recompiles=True)  # every recompile's failing guard in the log (the capture needs none)
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 32)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, {OUT['meta']['device']}")
    batches = {k: make_batch(shape, k, DEVICE, seed=i + 10) for i, k in enumerate(("tgt", "lm"))}
    batches["check"] = make_batch(shape, "tgt", DEVICE, seed=99)
    blocks, expand = None, "kaug"
    if "kernels" in ARGS.only and DEVICE.type == "cuda":
        got = guarded("kernels", part_kernels, shape)
        if got:
            blocks, expand = got
    if "ft" in ARGS.only:
        guarded("ft", part_ft, shape, batches)
    if "lora" in ARGS.only:
        guarded("lora", part_lora, shape, batches, blocks, expand)
    save()
    if OUT["errors"]:
        print("errors:", json.dumps(OUT["errors"], indent=1))
    tables()
    save()
    log("done")


DEVICE = torch.device("cpu")
if __name__ == "__main__":
    main()
