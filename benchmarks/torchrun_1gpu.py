"""Issue 9 measurement: `lorascope train` as a single process, and under torchrun with DDP and FSDP on
one GPU, at the Sheared-LLaMA-1.3B shape (random weights), FT and LoRA. Prints tokens/s and peak memory.

Runs on the GPU machine (no hub, no ../shared): it writes a random-weight model folder with a word-level
tokenizer built in code, and a synthetic MRPC mirror, then launches the real CLI. Usage:

    python benchmarks/torchrun_1gpu.py --out $OUT [--steps 30]
    python benchmarks/torchrun_1gpu.py --out $OUT --lora-kernels fused peft   # issue 17: LoRA kernels end to end
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(num_hidden_layers=24, hidden_size=2048, intermediate_size=5504, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)


WORDS = [f"w{i}" for i in range(3000)]


def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    template = "Sentence 1 : 2 Question Do both sentences mean the same thing ? Answer yes no".split()
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + template + WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", model_max_length=4096)
    fast.save_pretrained(folder)


def make_model(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=False))
    model.save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)


def make_mrpc(folder: Path, n: int = 1200) -> None:
    rng = random.Random(0)
    words = WORDS
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (folder / "mrpc").mkdir(parents=True, exist_ok=True)
    for name, size in (("train.tsv", n), ("dev.tsv", 64), ("msr_paraphrase_test.txt", 64)):
        rows = [f"{rng.randint(0, 1)}\t{i}\t{i + 100000}\t{' '.join(rng.choices(words, k=rng.randint(80, 120)))}\t"
                f"{' '.join(rng.choices(words, k=rng.randint(80, 120)))}\n" for i in range(size)]
        (folder / "mrpc" / name).write_text(header + "".join(rows))


def run(kind: str, method: str, args, model: Path, data: Path, lora_kernel: str | None = None) -> dict:
    name = f"{kind}-{method}" + (f"-{lora_kernel}" if lora_kernel else "")
    out = Path("/tmp/lorascope-bench-runs") / name  # FT run folders hold ~25 GB: not under $OUT
    shutil.rmtree(out.parent, ignore_errors=True)
    lr = "2e-5" if method == "ft" else "2e-4"
    train = ["train", "--task", "mrpc", "--method", method, "--lr", lr, "--config", "configs/demo.yaml", "--out", str(out),
             f"model.name_or_path={model}", "model.eos_token=null", f"data.data_dir={data}", "data.tasks=[mrpc]",
             "data.subsample={}", f"train.max_steps={args.steps}", "train.effective_batch=16", "train.micro_batch=16",
             "train.evals_per_epoch=1", "train.eval_batch_size=64", f"train.checkpoint_every={args.steps}",
             "tracking.wandb=disabled"] + ([f"train.lora_kernel={lora_kernel}"] if lora_kernel else [])
    if kind == "single":
        cmd = [sys.executable, "-m", "lorascope.cli.main", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29611",
               "-m", "lorascope.cli.main", *train, f"train.strategy={kind}"]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - t0
    (args.out / f"{name}.log").write_text(res.stdout[-5000:] + res.stderr[-20000:])
    if res.returncode != 0:
        return {"kind": kind, "method": method, "name": name, "error": res.stderr[-800:]}
    steps = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r][5:]  # skip warm-up steps
    tok_s = sum(r["tokens"] for r in steps) / sum(r["step_time_s"] for r in steps)
    used = json.loads((out / "results.json").read_text()).get("lora_kernel") if (out / "results.json").is_file() else None
    return {"kind": kind, "method": method, "name": name, "lora_kernel": used, "tokens_per_s": round(tok_s), "peak_mem_gib": max(r.get("peak_mem_gib", 0.0) for r in steps),
            "median_step_s": statistics.median(r["step_time_s"] for r in steps),
            "tokens_per_step": statistics.mean(r["tokens"] for r in steps), "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--tiny", action="store_true", help="a 2-layer model: a CPU smoke test of this script")
    p.add_argument("--only", nargs="*", default=None, help="run names to run, e.g. fsdp-ft")
    p.add_argument("--lora-kernels", nargs="*", default=None,
                   help="issue 17: single-process LoRA runs with train.lora_kernel=each (e.g. fused peft) and one FT run")
    args = p.parse_args()
    if args.tiny:
        SHAPE.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_key_value_heads=4)
    args.out.mkdir(parents=True, exist_ok=True)
    model, data = Path("/tmp/rand13b-tiny" if args.tiny else "/tmp/rand13b"), Path("/tmp/synth")
    make_model(model)
    make_mrpc(data)
    if args.lora_kernels:  # issue 17: lorascope train, single process, LoRA with each kernel choice beside FT
        rows = [run("single", "lora", args, model, data, k) for k in args.lora_kernels]
        rows.append(run("single", "ft", args, model, data))
    else:
        rows = [run(kind, method, args, model, data) for method in ("lora", "ft") for kind in ("single", "ddp", "fsdp")
                if args.only is None or f"{kind}-{method}" in args.only]
    (args.out / "torchrun_1gpu.json").write_text(json.dumps(rows, indent=2))
    print(f"{'run':<20}{'tok/s':>10}{'peak GiB':>10}{'step s':>9}{'tok/step':>10}  lora_kernel")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<20} ERROR {r['error'][-300:]}")
        else:
            print(f"{r['name']:<20}{r['tokens_per_s']:>10}{r['peak_mem_gib']:>10.2f}"
                  f"{r['median_step_s']:>9.3f}{r['tokens_per_step']:>10.0f}  {r.get('lora_kernel')}")


if __name__ == "__main__":
    main()
