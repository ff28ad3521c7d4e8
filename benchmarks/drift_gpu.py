"""Drift (§8) at the study's scale: 1,000 probes × all 25 representation points of a Sheared-LLaMA-1.3B-shaped
model (random weights), base vs one tuned model, through ``lorascope.drift.compute.layer_drift`` — the code
the drift stage runs. Checks, then times, several variants side by side in one process:

- check: the streamed (feature-space, float64) linear and debiased CKA at a few layers equal the n×n Gram
  formulations computed from the same pooled features in float64;
- time + peak memory: mean pooling only; mean + token-level; mean + last + token (the study default).

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED on the GPU machine — lorascope.drift imports lorascope.data,
whose package imports the pydantic config. Usage (repository root; ``--tiny``: CPU smoke test):
    mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && \\
    PYTHONPATH=$PWD/src:/tmp/site python benchmarks/drift_gpu.py [--n 1000] [--batch 32] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


class IdsTokenizer:
    """The benchmark's "prompts" are token-id lists already; this passes them through ``batches``."""

    pad_token_id = 0

    def __call__(self, ids):
        return {"input_ids": ids}


def build(shape: str, device, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape == "1.3b":  # princeton-nlp/Sheared-LLaMA-1.3B config.json
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)
    else:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, vocab_size=512, max_position_embeddings=512)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)  # a benchmark script owns its process; library code never does this
    with torch.device(device):
        base = LlamaForCausalLM(cfg).eval()
        tuned = LlamaForCausalLM(cfg).eval()
    tuned.load_state_dict(base.state_dict())
    g = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.no_grad():  # a fine-tuned-like update: small relative change of every block weight
        for p in tuned.model.layers.parameters():
            p.add_(0.02 * p.std() * torch.randn(p.shape, generator=g, device=device))
    return base, tuned, cfg


def probes(n: int, vocab: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, size=n)
    return [rng.integers(3, vocab, size=int(t)).tolist() for t in lengths]


def check_against_gram(base, tuned, prompts, device, batch, layers) -> list[dict]:
    """Streamed CKA (as in layer_drift) vs the Gram formulation on the same mean-pooled features."""
    from lorascope.drift.capture import batches, hidden_states, pool
    from lorascope.drift.gram import linear_cka_debiased_gram, linear_cka_gram
    from lorascope.drift.similarity import LinearCKAAccumulator

    feats = {layer: ([], []) for layer in layers}
    accs = {layer: None for layer in layers}
    for ids, mask in batches(IdsTokenizer(), prompts, batch, 10**6, device):
        hb, ht = hidden_states(base, ids, mask, device, True), hidden_states(tuned, ids, mask, device, True)
        for layer in layers:
            x, y = pool(hb[layer], mask, "mean"), pool(ht[layer], mask, "mean")
            accs[layer] = accs[layer] or LinearCKAAccumulator(x.shape[1], y.shape[1])
            accs[layer].update(x, y)
            feats[layer][0].append(x.double().cpu().numpy())
            feats[layer][1].append(y.double().cpu().numpy())
    out = []
    for layer in layers:
        X, Y = np.concatenate(feats[layer][0]), np.concatenate(feats[layer][1])
        streamed = accs[layer].result()
        ref = {"linear_cka": float(linear_cka_gram(X, Y)), "linear_cka_debiased": float(linear_cka_debiased_gram(X, Y))}
        out.append({"layer": layer, **{f"{k}_streamed": streamed[k] for k in ref}, **{f"{k}_gram": v for k, v in ref.items()},
                    "max_abs_diff": max(abs(streamed[k] - ref[k]) for k in ref)})
    return out


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return res, time.perf_counter() - t, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    from lorascope.drift.compute import drift_score, layer_drift

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    t0 = time.perf_counter()
    base, tuned, cfg = build("tiny" if args.tiny else "1.3b", device, seed=0)
    build_s = time.perf_counter() - t0
    prompts = probes(args.n, cfg.vocab_size, args.min_len, args.max_len, seed=0)
    tokens = sum(len(p) for p in prompts)
    import transformers

    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "n": args.n, "tokens": tokens, "batch": args.batch, "layers": cfg.num_hidden_layers + 1,
                      "d": cfg.hidden_size, "build_s": round(build_s, 1),
                      "date": time.strftime("%Y-%m-%d")}), flush=True)

    layers = [0, cfg.num_hidden_layers // 2, cfg.num_hidden_layers]
    for row in check_against_gram(base, tuned, prompts, device, args.batch, layers):
        print("check", json.dumps(row), flush=True)
        assert row["max_abs_diff"] < 1e-6, row

    variants = {"mean": ("mean",), "mean+token": ("mean", "token"), "mean+last+token": ("mean", "last", "token")}
    for name, poolings in variants.items():
        run = lambda: layer_drift(base, {"tuned": tuned}, IdsTokenizer(), prompts, batch_size=args.batch,
                                  max_length=10**6, device=device, bf16=True, poolings=poolings)
        res, secs, peak = timed(run, device)
        d = {how: round(drift_score(rows), 5) for how, rows in res["tuned"].items()}
        print("time", json.dumps({"variant": name, "seconds": round(secs, 2), "peak_alloc_gib": peak and round(peak, 1),
                                  "tokens_per_s": round(2 * tokens / secs), "drift": d}), flush=True)


if __name__ == "__main__":
    main()
