"""Serving benchmark at the Sheared-LLaMA-1.3B shape (random weights, random nonzero r=8 adapters on all 7
linear modules): ``native`` vs ``hf-peft`` over batch 1–16 and every §10 scenario.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed — torch, transformers, peft and ``lorascope.serve``
(which imports no pydantic/optuna/ray):
    PYTHONPATH=src python benchmarks/serve_gpu.py [--tiny] [--out DIR]
``--tiny`` runs a small shape (for a CPU smoke test before a GPU run).

Correctness first: (1) at fp32, every scenario of the native engine must equal the per-row single-adapter
PEFT reference (mixed adapters in one batch) token for token; (2) at bf16 the first tokens of native and
hf-peft are compared and the agreement is printed (bf16 rounding may legitimately flip later argmaxes).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lorascope.serve.adapters import load_lora, random_adapter  # noqa: E402
from lorascope.serve.correctness import Reference, first_mismatch  # noqa: E402
from lorascope.serve.hf_peft import HFPeftBackend  # noqa: E402
from lorascope.serve.native import NativeBackend  # noqa: E402

SCENARIOS = ["base", "merged", "unmerged-1", "multi-2", "multi-4", "multi-8"]


def build(tiny: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, vocab_size=512, max_position_embeddings=512)
    else:  # princeton-nlp/Sheared-LLaMA-1.3B's shape
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)  # a script, not library code: the random weights are seeded here
    with torch.device(device):
        model = LlamaForCausalLM(cfg).float().eval()
    return cfg, model


def adapter_ids(scenario: str, bsz: int):
    if scenario in ("base", "merged"):
        return None
    k = 1 if scenario == "unmerged-1" else int(scenario.split("-")[1])
    return [i % k for i in range(bsz)]


def native_engine(model, scenario, loras, dtype, device, max_new, graphs=True):
    k = 0 if scenario in ("base", "merged") else (1 if scenario == "unmerged-1" else int(scenario.split("-")[1]))
    return NativeBackend(model, adapters=loras[:k] or None, merge=loras[0] if scenario == "merged" else None,
                         dtype=dtype, device=device, eos_id=None, max_prompt=160, max_new=max_new, cuda_graphs=graphs)


def hf_engine(model, scenario, dirs, dtype, device):
    k = 0 if scenario == "base" else (1 if scenario in ("merged", "unmerged-1") else int(scenario.split("-")[1]))
    return HFPeftBackend(copy.deepcopy(model), adapter_dirs=[str(d) for d in dirs[:k]] or None,
                         merge=scenario == "merged", dtype=dtype, device=device, eos_id=None)


def check_fp32(model, loras, dirs, prompts, device, n_new) -> dict:
    ref = Reference(model, [str(d) for d in dirs], eos_id=None, device=device)
    out = {}
    for sc in SCENARIOS:
        eng = native_engine(model, sc, loras, torch.float32, device, n_new)
        ids = adapter_ids(sc, len(prompts))
        got = eng.generate(prompts, ids, n_new, False).tokens
        ref_ids = [0] * len(prompts) if sc == "merged" else (ids or [None] * len(prompts))
        want = [ref.one(p, a, n_new, False) for p, a in zip(prompts, ref_ids)]
        out[sc] = first_mismatch(got, want) or "equal"
        eng.close()
    return out


def time_cell(eng, scenario, prompts, bsz, n_new, warmup, reps) -> dict:
    e2e, tpot, walls, first = [], [], [], None
    for j in range(warmup + reps):
        start = (j - warmup) * bsz if j >= warmup else 16 + j  # the first timed batch starts at prompt 0
        batch = [prompts[(start + i) % len(prompts)] for i in range(bsz)]
        t0 = time.perf_counter()
        g = eng.generate(batch, adapter_ids(scenario, bsz), n_new, False)
        wall = time.perf_counter() - t0
        if j == warmup:
            first = g.tokens  # same prompts for every backend: compared across backends
        if j >= warmup:
            walls.append(wall)
            e2e += g.e2e_s
            tpot += [(e - t) / (len(tk) - 1) for e, t, tk in zip(g.e2e_s, g.ttft_s, g.tokens)]
    return {"p95_e2e_s": float(np.percentile(e2e, 95)), "p50_tpot_ms": float(np.median(tpot) * 1e3),
            "tok_s": bsz * n_new * reps / sum(walls), "first_tokens": first}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("serve_gpu_out"))
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip remaining hf-peft cells past this time")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t_start = time.perf_counter()
    cfg, model = build(args.tiny, device)
    tmp = Path(tempfile.mkdtemp())
    dirs = [random_adapter(cfg, tmp / f"a{i}", seed=100 + i) for i in range(8)]
    loras = [load_lora(d) for d in dirs]
    gen = np.random.default_rng(0)
    prompts = [gen.integers(3, cfg.vocab_size, size=128).tolist() for _ in range(32)]
    n_new = 64
    batch_sizes = [1, 2, 4, 8, 16]
    hf_batches = [1, 4, 16]
    hf_scenarios = ["base", "merged", "unmerged-1", "multi-2"] if not args.tiny else SCENARIOS

    fp32 = check_fp32(model, loras, dirs, prompts[:4], device, 8)
    print("fp32 correctness (native vs per-row PEFT reference, 4 prompts, 8 tokens):", fp32, flush=True)
    results: dict = {"native": {}, "hf-peft": {}}
    model_bf = copy.deepcopy(model).to(dtype)
    for sc in SCENARIOS:
        eng = native_engine(model_bf, sc, loras, dtype, device, n_new)
        for b in batch_sizes:
            results["native"][(sc, b)] = time_cell(eng, sc, prompts, b, n_new, 2, max(3, math.ceil(32 / b)))
        eng.close()
        print(f"[{time.perf_counter() - t_start:6.1f}s] native {sc} done", flush=True)
    agree = {}
    for sc in hf_scenarios:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget reached: hf-peft {sc} skipped", flush=True)
            continue
        eng = hf_engine(model_bf, sc, dirs, dtype, device)
        for b in hf_batches:
            results["hf-peft"][(sc, b)] = r = time_cell(eng, sc, prompts, b, n_new, 1, 2)
            nat = results["native"][(sc, b)]["first_tokens"]
            agree[(sc, b)] = float(np.mean([x[:4] == y[:4] for x, y in zip(r["first_tokens"], nat)]))
        eng.close()
        print(f"[{time.perf_counter() - t_start:6.1f}s] hf-peft {sc} done", flush=True)
    report(results, agree, fp32, args.out, device, batch_sizes)


def report(results, agree, fp32, out: Path, device, batch_sizes) -> None:
    import transformers
    import peft

    lines = [f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}, peft {peft.__version__}",
             "backend | scenario | batch | p95 e2e ms | ms/token (p50 TPOT) | tok/s | p95 overhead vs merged"]
    for backend, cells in results.items():
        for (sc, b), r in sorted(cells.items(), key=lambda kv: (SCENARIOS.index(kv[0][0]), kv[0][1])):
            ref = cells.get(("merged", b))
            ovh = f"{r['p95_e2e_s'] / ref['p95_e2e_s'] - 1:+.1%}" if ref and sc != "merged" else ""
            lines.append(f"{backend} | {sc} | {b} | {r['p95_e2e_s'] * 1e3:.1f} | {r['p50_tpot_ms']:.2f} | "
                         f"{r['tok_s']:.0f} | {ovh}")
    lines.append(f"bf16 first-4-token agreement native vs hf-peft (fraction of rows): "
                 f"{ {f'{k[0]}/b{k[1]}': v for k, v in agree.items()} }")
    lines.append(f"fp32 correctness: {fp32}")
    out.mkdir(parents=True, exist_ok=True)
    serial = {be: {f"{sc}/b{b}": {k: v for k, v in r.items() if k != 'first_tokens'} for (sc, b), r in c.items()}
              for be, c in results.items()}
    (out / "serve_gpu.json").write_text(json.dumps({"results": serial, "fp32": fp32,
                                                    "agree": {f"{k[0]}/b{k[1]}": v for k, v in agree.items()}}, indent=1))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
