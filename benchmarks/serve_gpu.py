"""Serving benchmark at the Sheared-LLaMA-1.3B shape (random weights, random NONZERO r = 8 adapters on all 7 linear
modules), §10 scenarios × batch 1–16, one table for three engines:

* ``native-fused`` — lorascope's engine, decode projections as ONE Triton kernel each (base + LoRA, no extra launch);
* ``native-addmm`` — the same engine on the previous path ([W; A] cuBLAS GEMM, mask, ``addmm_``);
* ``hf-peft`` — transformers ``generate`` + PEFT (the reference users run), as many cells as the time budget allows;
* ``vllm`` — vLLM's offline engine (``serve/vllm_backend.py``) on bf16 folders of the same weights (base, and adapter
  0 merged), LoRA engines with ``max_loras`` = k + 1, CUDA graphs for exactly the batch sizes timed. vLLM exposes
  log-probabilities, not logits: its gate compares its log-probabilities of its own greedy tokens with the
  reference's on those tokens (``gate.engine_token_gate``).

Per cell: ≥ ``--requests`` (30) timed requests after one warm-up batch, fixed length (``--new-tokens`` 64, EOS
ignored), prompts of ``--prompt-len`` (128) tokens; p95 end-to-end latency and p50 TPOT; overheads vs ``merged`` and
vs ``base`` of the same engine and batch size, with bootstrap CIs over batches. Correctness first, per cell: the
timed bf16 engine (its graphs, its batch size, every resident adapter) is gated by teacher-forced logits against the
fp32 transformers + PEFT reference (``serve/gate.py``); each native engine is also run at fp32 (same code, same
graphs) and must reproduce the reference's greedy tokens exactly (a flip at a reference near-tie is reported as
such). A failed gate is printed next to the cell's numbers (the cell is still timed: this is a diagnostic run).
Per-kernel profiles (torch.profiler) of one decode step: merged vs unmerged-1 vs multi-8.

    PYTHONPATH=src python benchmarks/serve_gpu.py [--out DIR] [--budget-s 290] [--tiny] [--backends ...]
    python benchmarks/serve_gpu.py --render run1/serve_gpu.json [run2/serve_gpu.json ...]   # one table of several

Writes ``serve_gpu.json`` (every request, gate, profile, the kernel tuner's log) and ``serve_gpu.md`` to ``--out``
(default: $OUT). ``--tiny``: a small model, for a CPU smoke test of the script itself.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed — torch, transformers, peft, triton and ``lorascope.serve``
(which imports no pydantic/optuna/ray). The ``vllm`` backend needs vLLM on the path: ``benchmarks/vllm_gpu_site.sh``
(docs/benchmarks.md, "vLLM on the GPU").
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lorascope.serve.adapters import load_lora, random_adapter  # noqa: E402
from lorascope.serve.correctness import Reference  # noqa: E402
from lorascope.serve.gate import gate_cell  # noqa: E402
from lorascope.serve.hf_peft import HFPeftBackend  # noqa: E402
from lorascope.serve.native import NativeBackend  # noqa: E402
from serve_gpu_report import SCENARIO_ORDER, environment, profile_step, render  # noqa: E402

SCENARIOS = list(SCENARIO_ORDER)
BATCHES = [1, 2, 4, 8, 16]
PROFILED = {("native-fused", 1), ("native-fused", 16), ("native-addmm", 16)}  # × merged, unmerged-1, multi-8
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def save(args, results: dict, final: bool = False) -> str:
    """The JSON so far (a run cut short still leaves every finished cell: ``--render`` tables it), and at the
    end the table."""
    from lorascope.serve.lora_tuning import TUNING_LOG

    results["tuning"] = TUNING_LOG
    results["total_s"] = time.perf_counter() - T0
    results["complete"] = final
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_gpu.json").write_text(json.dumps(results, indent=1, default=str))
    if not final:
        return ""
    text = render(results)
    (args.out / "serve_gpu.md").write_text(text)
    return text


def n_adapters(scenario: str) -> int:
    fixed = {"base": 0, "merged": 0, "unmerged-1": 1}
    return fixed[scenario] if scenario in fixed else int(scenario.split("-")[1])


def row_ids(scenario: str, start: int, b: int):
    k = n_adapters(scenario)
    return [(start + i) % k for i in range(b)] if k else None


def build(tiny: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)  # head_dim 64: vLLM CPU
    else:  # princeton-nlp/Sheared-LLaMA-1.3B's shape
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)  # a script, not library code: the random weights are seeded here
    with torch.device(device):
        model = LlamaForCausalLM(cfg).float().eval()
    return cfg, model


def native(model, scenario, loras, dtype, device, decode, max_prompt, max_new):
    k = n_adapters(scenario)
    return NativeBackend(model, adapters=loras[:k] or None, merge=loras[0] if scenario == "merged" else None,
                         dtype=dtype, device=device, eos_id=None, max_prompt=max_prompt, max_new=max_new, decode=decode)


def hf(model_bf, scenario, dirs, dtype, device):
    k = 1 if scenario == "merged" else n_adapters(scenario)
    return HFPeftBackend(copy.deepcopy(model_bf), adapter_dirs=[str(d) for d in dirs[:k]] or None,
                         merge=scenario == "merged", dtype=dtype, device=device, eos_id=None)


def kernel_check(shapes, dtype, device) -> list[dict]:
    """The fused kernel alone on the real shapes, tuned tiles, a mixed batch (16 rows over 8 adapters and rows
    on none), vs its PyTorch reference: the worst |kernel − reference| over a rounding bound (2 bf16 roundings of
    y and of the shrink, ≥ 1 ulp apart at most — see tests/test_serve_lora_kernel.py), ≤ 1 when correct."""
    from lorascope.serve.fused_lora import reference_projection, route
    from lorascope.serve.lora_kernel import Workspace, fused_lora_linear, variant
    from lorascope.serve.lora_tuning import configs_for

    out, gen, r = [], torch.Generator(device=device).manual_seed(1), 8
    for widths, k in shapes:
        n = sum(widths)
        rnd = lambda *sh: (torch.randn(*sh, device=device, generator=gen) / k ** 0.5).to(dtype)  # noqa: E731
        x, w, a, b = rnd(16, k) * k ** 0.5, rnd(n, k), rnd(8 * len(widths) * r, k), rnd(8, r, n) * k ** 0.5
        rt = route([g % 9 for g in range(16)], 8, r, dtype, torch.device(device))
        lora = (a, b, rt.row_lora, rt.lora_ids, r)
        cfg = configs_for([(widths, k)], [variant(8, r, dtype)], dtype, torch.device(device))[((widths, k), 64)]
        got = fused_lora_linear(x, w, widths, cfg, Workspace(torch.device(device)), lora).float()
        want = reference_projection(x, w, widths, lora).float()
        bound = 2.0 ** -7 * want.abs() + 1e-3 * want.abs().max()
        out.append({"widths": list(widths), "k": k, "config": cfg.__dict__,
                    "worst_err_over_bound": float(((got - want).abs() / bound).max())})
    return out


def fp32_tokens_gate(engine, reference, prompts, scenario, n_new) -> dict:
    """Exact greedy tokens at fp32, 16 mixed rows as one batch (every resident adapter). A first difference where
    the reference's own top-1/top-2 gap is within fp32 noise (1e-4 of its largest logit) is a tie, not a bug."""
    k, rows = n_adapters(scenario), 16
    ids = row_ids(scenario, 0, rows)
    ref_ids = [0] * rows if scenario == "merged" else (ids or [None] * rows)
    batch = [prompts[g % len(prompts)] for g in range(rows)]
    got = engine.generate(batch, ids, n_new, False).tokens
    for i, (p, a, toks) in enumerate(zip(batch, ref_ids, got)):
        want = reference.one(p, a, n_new, False)
        if toks == want:
            continue
        j = next(j for j, (x, y) in enumerate(zip(toks, want)) if x != y)
        logits = reference.forced(p, a, want)[j]
        top = logits.topk(2).values
        gap, scale = float(top[0] - top[1]), float(logits.abs().max())
        status = "tie" if gap <= 1e-4 * scale and toks[j] == int(logits.topk(2).indices[1]) else "MISMATCH"
        return {"passed": status == "tie", "status": f"{status}: row {i} (adapter {a}) token {j}, reference top-2 "
                f"gap {gap:.2e} (logit scale {scale:.2f})", "k": k}
    return {"passed": True, "status": "equal", "k": k}


def time_cell(engine, scenario, prompts, b, n_new, requests, warmup: int = 1) -> dict:
    """``warmup`` untimed batches, then ⌈requests/b⌉ timed batches of the round-robin stream (prompt g, adapter
    g mod k)."""
    batches = []
    for j in range(warmup + math.ceil(requests / b)):
        timed = j >= warmup
        start = (j - warmup) * b if timed else len(prompts) // 2 + j * b
        batch = [prompts[(start + i) % len(prompts)] for i in range(b)]
        t0 = time.perf_counter()
        gen = engine.generate(batch, row_ids(scenario, start, b), n_new, False)
        wall = time.perf_counter() - t0
        if timed:
            tpot = [(e - t) / (len(tk) - 1) for e, t, tk in zip(gen.e2e_s, gen.ttft_s, gen.tokens)]
            batches.append({"e2e_s": gen.e2e_s, "ttft_s": gen.ttft_s, "tpot_s": tpot, "wall_s": wall,
                            "out_tokens": [len(t) for t in gen.tokens]})
    return {"batches": batches, "n": sum(len(x["e2e_s"]) for x in batches)}


def gate_native(engine, reference, gate_prompts, scenario, b, n_new, dtype) -> dict:
    res = gate_cell(engine, reference, gate_prompts, n_adapters(scenario), b, n_new, dtype,
                    merged=scenario == "merged")
    return res.summary()


class ShiftedSlots:
    """The timed engine made deliberately wrong for the gate's negative control: a row that asks for adapter a is
    served by adapter (a + 1) mod k. Only the gate's entry points are wrapped; everything else is the engine's."""

    def __init__(self, engine, k: int):
        self.engine, self.k = engine, k

    def __getattr__(self, name):
        fn = getattr(self.engine, name)  # AttributeError for a method the engine lacks: the gate picks by hasattr
        if name not in ("forced_logits", "decode_logprobs"):
            return fn
        return lambda prompts, ids, *rest: fn(prompts, [(a + 1) % self.k for a in ids], *rest)


def negative_control(args, engine, reference, gate_prompts, scenario, b, dtype) -> dict | None:
    """On the multi-8 engine at the largest batch: the same gate on the engine with its slots shifted must FAIL
    (on the GPU, with the bf16 engine that is timed; the CPU tests show it for the stand-in engines). An error
    here is recorded in the control, never in the timed cell."""
    if scenario != "multi-8" or b != max(args.batches):
        return None
    try:
        res = gate_native(ShiftedSlots(engine, n_adapters(scenario)), reference, gate_prompts, scenario, b,
                          args.new_tokens, dtype)
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    log(f"negative control (slots shifted by one): gate {'passed — WRONG' if res['passed'] else 'failed, as it must'}"
        f" (worst ratios ×{res['worst_rms_ratio']:.1f} rms, ×{res['worst_max_ratio']:.1f} max)")
    return res


def gate_and_time(args, eng, cell: dict, reference, prompts, gate_prompts, dtype, profile: bool = False) -> dict:
    """Gate the cell's engine at the cell's batch size, then time it (and profile one decode step if asked); a
    failure is recorded in the cell and the run goes on."""
    scenario, b = cell["scenario"], cell["batch"]
    try:
        cell["gate"] = gate_native(eng, reference, gate_prompts, scenario, b, args.new_tokens, dtype)
        cell.update(time_cell(eng, scenario, prompts, b, args.new_tokens, args.requests, args.warmup), status="ok")
        if (neg := negative_control(args, eng, reference, gate_prompts, scenario, b, dtype)) is not None:
            cell["negative_control"] = neg
        if profile:
            cell["profile"] = profile_step(eng, [prompts[i] for i in range(b)], row_ids(scenario, 0, b))
    except Exception as exc:
        traceback.print_exc()
        cell.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
    return cell


def run_native(args, model, model_bf, loras, reference, prompts, gate_prompts, device, dtype, results) -> None:
    max_prompt = len(prompts[0])
    for decode in ("fused", "addmm"):
        name = f"native-{decode}"
        if name not in args.backends:
            continue
        for scenario in args.scenarios:
            if time.perf_counter() - T0 > args.hard_stop_s:
                results["cells"] += [{"backend": name, "scenario": scenario, "batch": b, "status": "not run",
                                      "reason": f"past --hard-stop-s {args.hard_stop_s:.0f}"} for b in args.batches]
                continue
            try:
                eng32 = native(model, scenario, loras, torch.float32, device, decode, max_prompt, args.new_tokens)
                fp32 = fp32_tokens_gate(eng32, reference, gate_prompts, scenario, args.new_tokens)
                eng32.close()
                del eng32
                t_start = time.perf_counter()
                eng = native(model_bf, scenario, loras, dtype, device, decode, max_prompt, args.new_tokens)
                start_s = time.perf_counter() - t_start
            except Exception as exc:  # a variant that fails to build or compile is reported; the rest runs
                traceback.print_exc()
                for b in args.batches:
                    results["cells"].append({"backend": name, "scenario": scenario, "batch": b, "status": "failed",
                                             "reason": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            for b in args.batches:
                cell = {"backend": name, "scenario": scenario, "batch": b, "fp32_gate": fp32,
                        "engine_start_s": start_s, "compile_errors": getattr(eng, "compile_errors", [])}
                profile = device == "cuda" and (name, b) in PROFILED and scenario in ("merged", "unmerged-1", "multi-8")
                results["cells"].append(gate_and_time(args, eng, cell, reference, prompts, gate_prompts, dtype, profile))
            log(f"{name} {scenario}: fp32 gate {fp32['status']}; bf16 gates "
                f"{[c.get('gate', {}).get('passed') for c in results['cells'][-len(args.batches):]]}")
            eng.close()
            del eng
            torch.cuda.empty_cache() if device == "cuda" else None
            save(args, results)


def run_hf(args, model_bf, dirs, reference, prompts, gate_prompts, device, dtype, results) -> None:
    """Cells in order of cost (large batches first: fewer sequential requests), while the budget lasts; a cell
    starts only if its warm-up batch × its number of batches fits in the remaining time."""
    order = [s for s in ["merged", "unmerged-1", "multi-8", "base", "multi-2", "multi-4"] if s in args.scenarios]
    engines = {}
    for b in sorted(args.batches, reverse=True):
        for scenario in order:
            left = args.budget_s - (time.perf_counter() - T0)
            cell = {"backend": "hf-peft", "scenario": scenario, "batch": b}
            if left < 10:
                results["cells"].append({**cell, "status": "not run", "reason": "time budget"})
                continue
            try:
                if scenario not in engines:
                    engines[scenario] = hf(model_bf, scenario, dirs, dtype, device)
                eng = engines[scenario]
                cell["gate"] = gate_native(eng, reference, gate_prompts, scenario, b, args.new_tokens, dtype)
                t0 = time.perf_counter()
                batch = [prompts[i % len(prompts)] for i in range(b)]
                eng.generate(batch, row_ids(scenario, 0, b), args.new_tokens, False)  # warm-up and cost probe
                need = (time.perf_counter() - t0) * math.ceil(args.requests / b)
                if need > args.budget_s - (time.perf_counter() - T0):
                    cell.update(status="not run", reason=f"time budget (needs ≈ {need:.0f} s)")
                else:  # the probe above was this cell's first warm-up batch
                    cell.update(time_cell(eng, scenario, prompts, b, args.new_tokens, args.requests,
                                          max(args.warmup - 1, 0)), status="ok")
                    if (neg := negative_control(args, eng, reference, gate_prompts, scenario, b, dtype)) is not None:
                        cell["negative_control"] = neg
            except Exception as exc:
                traceback.print_exc()
                cell.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            results["cells"].append(cell)
            log(f"hf-peft {scenario} b={b}: {cell['status']}")
            save(args, results)


def vllm_folders(model, model_bf, dirs, tmp: Path) -> tuple[Path, Path]:
    """The bf16 weights and the weights with adapter 0 merged (PEFT's merge in fp32, then bf16) as folders."""
    from peft import PeftModel

    base, merged = tmp / "vllm-base", tmp / "vllm-merged"
    model_bf.save_pretrained(base)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(dirs[0]), is_trainable=False)
    peft_model.merge_and_unload().to(torch.bfloat16).save_pretrained(merged)
    return base, merged


def run_vllm(args, model, model_bf, dirs, reference, prompts, gate_prompts, dtype, results) -> None:
    """Every scenario on its own vLLM engine (LoRA engines: ``max_loras`` = k + 1, one slot kept free), each cell
    gated then timed like the native ones."""
    from lorascope.serve.vllm_backend import VLLMBackend, vllm_available

    # vLLM 0.24 builds its top-k/top-p sampler from FlashInfer unless told not to; greedy decoding needs neither,
    # and benchmarks/vllm_gpu_site.sh leaves FlashInfer out (set before vLLM's engine process starts: it inherits)
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    ok, why = vllm_available()
    if not ok:
        results["cells"] += [{"backend": "vllm", "scenario": sc, "batch": b, "status": "failed", "reason": why[:500]}
                             for sc in args.scenarios for b in args.batches]
        return
    import vllm

    results["vllm_version"] = vllm.__version__
    base, merged = vllm_folders(model, model_bf, dirs, Path(tempfile.mkdtemp()))
    # No prefix cache: the same prompts recur across a scenario's cells, and the native engines recompute every
    # prefill (the run of 2026-11-29 had vLLM's default, caching on: docs/benchmarks.md)
    extra = {"max_num_seqs": max(args.batches), "compilation_config": {"cudagraph_capture_sizes": args.batches},
             "enable_prefix_caching": False}
    for scenario in args.scenarios:
        k = n_adapters(scenario)
        if time.perf_counter() - T0 > args.hard_stop_s:
            results["cells"] += [{"backend": "vllm", "scenario": scenario, "batch": b, "status": "not run",
                                  "reason": f"past --hard-stop-s {args.hard_stop_s:.0f}"} for b in args.batches]
            continue
        try:
            t0 = time.perf_counter()
            eng = VLLMBackend(merged if scenario == "merged" else base, adapter_dirs=[str(d) for d in dirs[:k]],
                              rank=8, dtype="bfloat16", max_len=args.prompt_len + args.new_tokens + 8,
                              gpu_memory_utilization=0.3, extra=extra)
            start_s = time.perf_counter() - t0
        except Exception as exc:
            traceback.print_exc()
            results["cells"] += [{"backend": "vllm", "scenario": scenario, "batch": b, "status": "failed",
                                  "reason": f"{type(exc).__name__}: {exc}"[:500]} for b in args.batches]
            continue
        for b in args.batches:
            cell = {"backend": "vllm", "scenario": scenario, "batch": b, "engine_start_s": start_s,
                    "adapter_load_s": eng.adapter_load_s}
            results["cells"].append(gate_and_time(args, eng, cell, reference, prompts, gate_prompts, dtype))
        log(f"vllm {scenario}: started in {start_s:.1f} s; bf16 gates "
            f"{[c.get('gate', {}).get('passed') for c in results['cells'][-len(args.batches):]]}")
        eng.close()
        save(args, results)


def merge_runs(runs: list[dict]) -> dict:
    """Several runs' results as one: cells of later runs after earlier ones, each tagged with its run (overheads
    are taken within a run: serve_gpu_report.render), each run's environment kept."""
    if len(runs) == 1:
        return runs[0]
    envs = [f"run {i + 1}: {r.get('environment', 'environment not recorded')}"
            + (f", vLLM {r['vllm_version']}" if r.get("vllm_version") else "") for i, r in enumerate(runs)]
    return {**runs[0], "cells": [{**c, "run": i + 1} for i, r in enumerate(runs) for c in r["cells"]],
            "environment": "; ".join(envs),
            "total_s": sum(r.get("total_s", 0) for r in runs),
            "tuning": [t for r in runs for t in r.get("tuning") or []],
            "kernel_check": next((r["kernel_check"] for r in runs if r.get("kernel_check")), None)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "serve_gpu_out")))
    ap.add_argument("--budget-s", type=float, default=290.0, help="hf-peft cells stop past this time")
    ap.add_argument("--hard-stop-s", type=float, default=500.0, help="native scenarios not started past this time")
    ap.add_argument("--backends", default="native-fused,native-addmm,hf-peft")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches per cell before the timed ones")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="a subset, e.g. to fill cells a run missed")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--render", type=Path, nargs="+",
                    help="only print the table of earlier runs' serve_gpu.json (several: one table of all)")
    args = ap.parse_args()
    if args.render:
        print(render(merge_runs([json.loads(p.read_text()) for p in args.render])))
        return
    args.backends = args.backends.split(",")
    args.scenarios = [sc for sc in args.scenarios.split(",") if sc]
    args.batches = sorted(int(b) for b in args.batches.split(",") if b)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not args.scenarios or not args.batches:
        ap.error(f"--scenarios takes some of {', '.join(SCENARIOS)} (got {', '.join(unknown) or 'none'}); "
                 "--batches at least one size")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    cfg, model = build(args.tiny, device)
    tmp = Path(tempfile.mkdtemp())
    dirs = [random_adapter(cfg, tmp / f"a{i}", seed=100 + i) for i in range(8)]
    loras = [load_lora(d) for d in dirs]
    gen = np.random.default_rng(0)
    prompts = [gen.integers(3, cfg.vocab_size, size=args.prompt_len).tolist() for _ in range(48)]
    gate_prompts = [gen.integers(3, cfg.vocab_size, size=args.prompt_len).tolist() for _ in range(8)]
    log(f"model and 8 adapters built on {device}")
    checks = None
    if device == "cuda" and "native-fused" in args.backends:  # compile + tune every fused kernel once, up front
        from lorascope.serve.lora_tuning import prepare

        hd = cfg.hidden_size // cfg.num_attention_heads
        q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        shapes = [((q, kv, kv), cfg.hidden_size), ((cfg.hidden_size,), q),
                  ((cfg.intermediate_size, cfg.intermediate_size), cfg.hidden_size),
                  ((cfg.hidden_size,), cfg.intermediate_size)]
        errors = prepare({dtype: ([0, 16, 32, 64], True), torch.float32: ([0, 64], False)}, shapes,
                         torch.device(device))
        log(f"fused kernels compiled and tuned ({len(errors)} compile errors{': ' + errors[0] if errors else ''})")
        try:
            checks = kernel_check(shapes, dtype, device)
        except Exception as exc:
            traceback.print_exc()
            checks = [{"error": f"{type(exc).__name__}: {exc}"[:500]}]
        log(f"fused kernel vs PyTorch reference, mixed 8-adapter batch (err/bound ≤ 1 when correct): {checks}")
    reference = Reference(model, [str(d) for d in dirs], eos_id=None, device=device)
    pairs = {(tuple(gate_prompts[g % 8]), a) for g in range(16) for a in
             [None, 0] + [g % k for k in (2, 4, 8)]}
    reference.prefetch(sorted(pairs, key=str), args.new_tokens)
    log(f"fp32 reference: {len(pairs)} (prompt, adapter) greedy outputs")
    model_bf = copy.deepcopy(model).to(dtype)
    results = {"cells": [], "config": vars(args) | {"out": str(args.out)}, "device": device,
               "environment": environment(), "kernel_check": checks}
    run_native(args, model, model_bf, loras, reference, prompts, gate_prompts, device, dtype, results)
    if "hf-peft" in args.backends:
        run_hf(args, model_bf, dirs, reference, prompts, gate_prompts, device, dtype, results)
    if "vllm" in args.backends:
        run_vllm(args, model, model_bf, dirs, reference, prompts, gate_prompts, dtype, results)
    print(save(args, results, final=True), flush=True)
    log(f"done; wrote {args.out}/serve_gpu.md and serve_gpu.json")


if __name__ == "__main__":
    main()
