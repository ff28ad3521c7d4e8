"""Data-parallel scaling of `lorascope train` (issue 15, item 2; issue 9 measured one GPU): tokens/s of the real CLI
as a single process and under torchrun with DDP and FSDP2 on 1 and N GPUs, FT and LoRA, at the Sheared-LLaMA-1.3B
shape (random weights), and the loss curves of 1 and N ranks compared.

Batches. The GLOBAL batch is fixed for every run: per-rank micro-batch (default 16 sequences) × N; every sequence is
exactly --seq-len tokens (default 512), so "16 × 512 per rank". Each run's micro-batch and accumulation are derived
(``batch_for``): 1 rank = micro 16 × accumulation N, N ranks = micro 16 × accumulation 1, both satisfying the loop's
check effective_batch = micro × world × accumulation (src/lorascope/train/loop.py). Same global batch, same data
order and (by construction) the same dropout masks ⇒ the 1- and N-rank loss curves must agree up to bf16 and
reduction-order noise; the script prints their max relative difference per pair.

Runs, most important first (--budget-s may cut the tail): single-{lora,ft} (1 GPU) · ddp-{lora,ft} (N GPUs) ·
fsdp-{lora,ft} (N GPUs) · ddp-{lora,ft} (1 GPU) · fsdp-{lora,ft} (1 GPU). The N-GPU runs have the machine to
themselves; the 1-GPU runs of one kind run at the same time, LoRA on GPU 0 and FT on GPU 1 (each alone on its
GPU; the host — 32 cores — is shared), which keeps the whole script under 9 minutes. --serial runs one at a time.
tok/s = real tokens / summed step times over the steps after --warmup (compile) and before the profiled steps.
Scaling efficiency = tok/s(N GPUs) / (N × tok/s(single process, 1 GPU)). Aim: DDP on 2 GPUs ≥ 1.8×.
--profile: the N-GPU DDP runs record their last 3 steps with torch.profiler on every rank (kernel table by device
time, NCCL vs compute totals; $OUT/torchrun_scaling_profiles.txt) — where the time goes if the aim is missed.

Runs on the GPU machine (no hub, no ../shared): writes a random-weight model folder with a word-level tokenizer
built in code and a synthetic MRPC mirror, then launches the real CLI. Bundle (benchmarks/gpu_site.sh, docs/gpu.md):
NEEDED — the CLI reads the pydantic config. On the GPU machine (repository root):

    mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && \\
    PYTHONPATH=$PWD/src:/tmp/site python3 benchmarks/torchrun_scaling.py --out $OUT --profile   # ~8 min, 2×H200

Inside a device call shared with other scripts, pass ``--deadline $D`` (Unix time): waves that would not finish
by then are skipped and reported; ``--only <run names>`` runs them in a later call.

Issue 9's one-GPU table, approximately: ``--gpus 1 --per-rank-batch 16 --seq-len 222`` (it had ~222-token prompts).
CPU smoke test (gloo, 2 processes, a 2-layer model): ``python benchmarks/torchrun_scaling.py --tiny --out /tmp/ts``.
Writes to $OUT (rewritten after every wave, and on SIGTERM, so a timeout keeps what was measured):
torchrun_scaling.json (table, per-step metrics, curve comparison), torchrun_scaling_logs.txt (each run's error
and log tail), torchrun_scaling_profiles.txt (with --profile).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(num_hidden_layers=24, hidden_size=2048, intermediate_size=5504, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)
WORDS = [f"w{i}" for i in range(3000)]
# Tokens around the two sentences with the word-level tokenizer below: "<s> Sentence 1 :" ... "Sentence 2 :" ...
# "Question : Do both sentences mean the same thing ? Answer :" + the verbalizer (yes/no) + </s>. Checked in main().
OVERHEAD_TOKENS = 21
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def batch_for(global_batch: int, world: int, per_rank_micro: int) -> tuple[int, int, int]:
    """(effective_batch, micro_batch, accumulation) for ``world`` ranks with the global batch fixed: the micro-batch
    is the largest divisor of the per-rank share that is ≤ ``per_rank_micro``, so effective = micro × world × accum
    holds exactly (the training loop refuses anything else)."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} does not split over {world} ranks")
    share = global_batch // world
    micro = max(d for d in range(1, min(share, per_rank_micro) + 1) if share % d == 0)
    return global_batch, micro, share // micro


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
    return fast


def make_model(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)  # a benchmark script owns its process
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds, not a minute
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=False))
    model.save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)


def make_mrpc(folder: Path, seq_len: int, n_train: int, n_eval: int) -> None:
    """Synthetic MRPC mirror whose every training sequence is exactly ``seq_len`` tokens."""
    rng = random.Random(0)
    words = seq_len - OVERHEAD_TOKENS
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (folder / "mrpc").mkdir(parents=True, exist_ok=True)
    for name, size in (("train.tsv", n_train), ("dev.tsv", n_eval), ("msr_paraphrase_test.txt", n_eval)):
        rows = []
        for i in range(size):
            w1 = words // 2
            rows.append(f"{rng.randint(0, 1)}\t{i}\t{i + 100000}\t{' '.join(rng.choices(WORDS, k=w1))}\t"
                        f"{' '.join(rng.choices(WORDS, k=words - w1))}\n")
        (folder / "mrpc" / name).write_text(header + "".join(rows))


def check_lengths(model: Path, data: Path, seq_len: int) -> None:
    from transformers import AutoTokenizer

    from lorascope.data.prompts import prompt, target
    from lorascope.data.tokenize import split_prompt_target
    from lorascope.data.types import MrpcExample

    tok = AutoTokenizer.from_pretrained(model)
    line = (data / "mrpc" / "train.tsv").read_text().splitlines()[1].split("\t")
    ex = MrpcExample(id="x", sentence1=line[3], sentence2=line[4], label=int(line[0]))
    p, t = split_prompt_target(tok, prompt(ex), target(ex))
    if len(p) + len(t) != seq_len:
        raise SystemExit(f"synthetic sequences are {len(p) + len(t)} tokens, not {seq_len}: fix OVERHEAD_TOKENS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    def __init__(self, kind: str, method: str, world: int):
        self.kind, self.method, self.world = kind, method, world
        self.name = f"{kind}-{method}-{world}gpu"


def launch(run: Run, args, model: Path, data: Path, gpus: list[int], root: Path) -> subprocess.Popen:
    out = root / run.name
    shutil.rmtree(out, ignore_errors=True)
    eff, micro, accum = batch_for(args.global_batch, run.world, args.per_rank_batch)
    run.batch = {"effective_batch": eff, "micro_batch": micro, "accumulation": accum}
    lr = "2e-5" if run.method == "ft" else "2e-4"
    train = ["train", "--task", "mrpc", "--method", run.method, "--lr", lr, "--config", "configs/demo.yaml",
             "--out", str(out), f"model.name_or_path={model}", "model.eos_token=null", "model.dtype=float32",
             f"data.data_dir={data}", "data.tasks=[mrpc]", "data.subsample={}", f"data.max_length={args.seq_len}",
             "data.max_new_tokens=2", f"train.max_steps={args.steps}", f"train.effective_batch={eff}",
             f"train.micro_batch={micro}", "train.evals_per_epoch=1", f"train.eval_batch_size={args.eval_rows}",
             f"train.checkpoint_every={args.steps}", "train.epochs={mrpc: 1}", "tracking.wandb=disabled"]
    profiled = args.profile and run.kind == "ddp" and run.world > 1
    run.profiled_from = args.steps - args.profile_steps + 1 if profiled else None
    if run.kind == "single":
        cmd = [sys.executable, "-m", "lorascope.cli.main", *train]
    else:
        entry = ([str(Path(__file__).resolve()), "--profiled-cli", str(args.work / "profiles" / run.name),
                  str(run.profiled_from), str(args.profile_steps)] if profiled else ["-m", "lorascope.cli.main"])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(run.world), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), *entry, *train, f"train.strategy={run.kind}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads),
           "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
    run.log = (args.work / "logs" / f"{run.name}.log").open("w")
    run.t0, run.out, run.gpus = time.perf_counter(), out, gpus
    run.timeout = min(args.run_timeout_s, args.deadline - time.time() - 5) if args.deadline else args.run_timeout_s
    log(f"start  {run.name} on GPU {','.join(map(str, gpus))}: micro {micro} × world {run.world} × accum {accum}")
    return subprocess.Popen(cmd, stdout=run.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a run this script started and every process under it, by pid: torchrun's workers sit in sessions of
    their own, so neither the agent's process group nor a SIGKILL to the agent reaches them."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        tree = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def collect(run: Run, proc: subprocess.Popen, args) -> dict:
    try:
        rc = proc.wait(timeout=max(1.0, run.timeout - (time.perf_counter() - run.t0)))
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        proc.wait()
        rc = "timeout"
    run.log.close()
    wall = round(time.perf_counter() - run.t0, 1)
    row = {"run": run.name, "kind": run.kind, "method": run.method, "gpus": run.world, **run.batch, "wall_s": wall}
    metrics = run.out / "metrics.jsonl"
    if rc != 0 or not metrics.is_file():
        text = (args.work / "logs" / f"{run.name}.log").read_text()
        first = text.find("Traceback (most recent call last)")  # the failing rank's own error, not torchrun's summary
        shutil.rmtree(run.out, ignore_errors=True)
        return {**row, "error": f"exit {rc}: " + (text[first:first + 1500] if first >= 0 else text[-1500:])}
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    row["steps"] = [{k: r.get(k) for k in ("step", "loss", "grad_norm", "tokens", "step_time_s", "peak_mem_gib")}
                    for r in steps]
    shutil.rmtree(run.out, ignore_errors=True)  # FT folders hold ~27 GB (best, checkpoint with AdamW, final model)
    end = run.profiled_from - 2 if run.profiled_from else len(steps)  # the profiler's warm-up step is out too
    timed = steps[args.warmup:end]
    if not timed:
        return {**row, "error": f"no steps to time: {len(steps)} logged", "losses": [r["loss"] for r in steps]}
    return {**row, "tokens_per_s": round(sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed)),
            "median_step_s": statistics.median(r["step_time_s"] for r in timed), "timed_steps": len(timed),
            "tokens_per_step": statistics.mean(r["tokens"] for r in timed),
            "peak_mem_gib": max(r.get("peak_mem_gib", 0.0) for r in timed), "losses": [r["loss"] for r in steps]}


def schedule(methods: list[str], n: int, serial: bool) -> list[list[Run]]:
    """Waves of runs, most important first (the time budget may cut the tail); the runs of one wave go to
    different GPUs at the same time (each alone on its GPU), unless ``serial`` or there is one GPU."""
    def wave(kind: str, world: int) -> list[list[Run]]:
        runs = [Run(kind, m, world) for m in methods]
        return [[r] for r in runs] if serial or n == 1 or world > 1 else [runs]

    waves = wave("single", 1)
    if n > 1:
        waves += wave("ddp", n) + wave("fsdp", n)
    return waves + wave("ddp", 1) + wave("fsdp", 1)


def compare_curves(rows: list[dict], n: int) -> list[dict]:
    by = {r["run"]: r for r in rows if "losses" in r}
    out = []
    for method in ("lora", "ft"):
        for a, b in ((f"single-{method}-1gpu", f"ddp-{method}-{n}gpu"), (f"ddp-{method}-1gpu", f"ddp-{method}-{n}gpu"),
                     (f"fsdp-{method}-1gpu", f"fsdp-{method}-{n}gpu"), (f"single-{method}-1gpu", f"fsdp-{method}-{n}gpu")):
            if a in by and b in by and a != b:
                la, lb = by[a]["losses"], by[b]["losses"]
                k = min(len(la), len(lb))
                rel = [abs(x - y) / abs(x) for x, y in zip(la[:k], lb[:k])]
                out.append({"a": a, "b": b, "steps": k, "max_rel_diff": max(rel), "first_step_rel_diff": rel[0],
                            "loss_first_last": [la[0], la[k - 1]]})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/torchrun_scaling")))
    p.add_argument("--gpus", type=int, default=None, help="N (default: every visible GPU, at least 1)")
    p.add_argument("--per-rank-batch", type=int, default=16)
    p.add_argument("--global-batch", type=int, default=None, help="default: per-rank batch × N")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of tok/s (compile, allocator)")
    p.add_argument("--eval-rows", type=int, default=16, help="validation and test rows (evaluated once, at the end)")
    p.add_argument("--methods", nargs="+", default=["lora", "ft"])
    p.add_argument("--only", nargs="*", default=None, help="run names, e.g. ddp-lora-2gpu single-lora-1gpu")
    p.add_argument("--serial", action="store_true", help="never two runs at once (slower, no shared host)")
    p.add_argument("--profile", action="store_true", help="torch.profiler on the last steps of the N-GPU DDP runs")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=4, help="OMP_NUM_THREADS per process")
    p.add_argument("--run-timeout-s", type=float, default=200.0)
    p.add_argument("--budget-s", type=float, default=450.0, help="start no wave after this many seconds")
    p.add_argument("--deadline", type=float, default=None,
                   help="Unix time by which everything must be over (a shared device call): no wave starts later "
                        "than --min-wave-s before it, and a run is stopped at it")
    p.add_argument("--min-wave-s", type=float, default=110.0, help="with --deadline: the time a wave may need")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU (gloo): a smoke test")
    args = p.parse_args()
    if args.tiny:
        SHAPE.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_key_value_heads=4)
        args.per_rank_batch, args.seq_len, args.steps, args.warmup, args.eval_rows = 4, 64, 9, 2, 4
    import torch

    n = args.gpus or (2 if args.tiny else max(1, torch.cuda.device_count()))
    args.global_batch = args.global_batch or args.per_rank_batch * n
    args.work = Path("/tmp/lorascope-scaling-work")  # per-run logs and profiles; $OUT gets ≤ 4 files (device limit)
    shutil.rmtree(args.work, ignore_errors=True)
    for sub in ("logs", "profiles"):
        (args.work / sub).mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    root = (shm if shm.is_dir() and shutil.disk_usage(shm).free > 80 * 2**30 else Path("/tmp")) / "lorascope-scaling"
    model = Path("/tmp/scaling-model-tiny" if args.tiny else "/tmp/scaling-model-13b")
    data = Path(f"/tmp/scaling-mrpc-{args.seq_len}")
    make_model(model)
    steps_needed = args.steps * args.global_batch
    make_mrpc(data, args.seq_len, n_train=max(1200, steps_needed + args.global_batch), n_eval=args.eval_rows)
    check_lengths(model, data, args.seq_len)
    log(f"model {model}, data {data}, run folders under {root}; N = {n}, global batch {args.global_batch} × "
        f"{args.seq_len} tokens; {torch.cuda.device_count()} GPU(s)")

    rows: list[dict] = []
    running: list[tuple[Run, subprocess.Popen]] = []

    def on_term(signum, frame):  # `timeout` or the device's limit: stop our runs, keep what was measured
        for _, proc in running:
            kill_tree(proc)
        write_outputs(args, rows, n, torch, interrupted=f"signal {signum}")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    for wave in schedule(args.methods, n, args.serial):
        wave = [r for r in wave if args.only is None or r.name in args.only]
        if not wave:
            continue
        left = args.deadline - time.time() if args.deadline else math.inf
        if time.perf_counter() - T0 > args.budget_s or left < args.min_wave_s:
            rows += [{"run": r.name, "kind": r.kind, "method": r.method, "gpus": r.world, "error": "skipped: time budget"}
                     for r in wave]
            continue
        if wave[0].world > 1:
            running[:] = [(wave[0], launch(wave[0], args, model, data, list(range(n)), root))]
        else:
            running[:] = [(r, launch(r, args, model, data, [i % max(1, n)], root)) for i, r in enumerate(wave)]
        for r, proc in running:
            row = collect(r, proc, args)
            rows.append(row)
            log(f"done   {r.name}: " + (f"{row['tokens_per_s']} tok/s, median step {row['median_step_s']:.3f} s, "
                                         f"peak {row['peak_mem_gib']} GiB, wall {row['wall_s']} s"
                                         if "tokens_per_s" in row else f"FAILED {row['error'][-300:]}"))
        running.clear()
        write_outputs(args, rows, n, torch)
    result = write_outputs(args, rows, n, torch)
    print_table(result, rows)


def write_outputs(args, rows: list[dict], n: int, torch, interrupted: str | None = None) -> dict:
    """$OUT/torchrun_scaling.json (+ _logs.txt, _profiles.txt), rewritten after every wave so a kill keeps the rest."""
    base = {r["method"]: r["tokens_per_s"] for r in rows if r["kind"] == "single" and "tokens_per_s" in r}
    for r in rows:
        if "tokens_per_s" in r and r["method"] in base:
            r["speedup_vs_single_1gpu"] = round(r["tokens_per_s"] / base[r["method"]], 3)
            r["scaling_efficiency"] = round(r["speedup_vs_single_1gpu"] / r["gpus"], 3)
    profiles = sorted((args.work / "profiles").rglob("*.txt"))
    result = {"gpus": n, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "global_batch": args.global_batch, "per_rank_batch": args.per_rank_batch,
              "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
              "runs": [{k: v for k, v in r.items() if k not in ("losses", "steps")} for r in rows],
              "loss_curves": compare_curves(rows, n), "per_step": {r["run"]: r["steps"] for r in rows if "steps" in r},
              "profiles": [str(f.relative_to(args.work)) for f in profiles], "interrupted": interrupted,
              "total_s": round(time.perf_counter() - T0, 1)}
    (args.out / "torchrun_scaling.json").write_text(json.dumps(result, indent=1))
    with (args.out / "torchrun_scaling_logs.txt").open("w") as f:  # per run: its error, then the tail of its log
        for log_file in sorted((args.work / "logs").glob("*.log")):
            text = log_file.read_text(errors="replace")
            first = text.find("Traceback (most recent call last)")
            f.write(f"===== {log_file.stem}\n" + (text[first:first + 4000] + "\n-- tail --\n" if first >= 0 else "")
                    + text[-6000:] + "\n")
    if profiles:
        (args.out / "torchrun_scaling_profiles.txt").write_text(
            "".join(f"===== {f.relative_to(args.work)}\n{f.read_text()}\n" for f in profiles))
    return result


def print_table(result: dict, rows: list[dict]) -> None:
    print(f"\n{'run':<20}{'GPUs':>5}{'micro×acc':>11}{'tok/s':>9}{'×single':>9}{'eff.':>7}{'peak GiB':>10}{'step s':>8}")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"{r['run']:<20}{r['gpus']:>5}  ERROR {r['error'][-200:]}")
            continue
        print(f"{r['run']:<20}{r['gpus']:>5}{str(r['micro_batch']) + '×' + str(r['accumulation']):>11}"
              f"{r['tokens_per_s']:>9}{r.get('speedup_vs_single_1gpu', float('nan')):>9.2f}"
              f"{r.get('scaling_efficiency', float('nan')):>7.2f}{r['peak_mem_gib']:>10.2f}{r['median_step_s']:>8.3f}")
    print("\nloss curves, same global batch (expect agreement up to bf16 / reduction-order noise):")
    for c in result["loss_curves"]:
        print(f"  {c['a']:<18} vs {c['b']:<18} max rel diff {c['max_rel_diff']:.2e} over {c['steps']} steps "
              f"(step 1: {c['first_step_rel_diff']:.1e}; loss {c['loss_first_last'][0]:.3f} → {c['loss_first_last'][1]:.3f})")
    for f in result["profiles"]:
        print(f"profile: {f} (in torchrun_scaling_profiles.txt)")
    print(f"total {result['total_s']} s")


def profiled_cli(argv: list[str]) -> None:
    """``torchrun … torchrun_scaling.py --profiled-cli DIR FIRST N <lorascope args>``: the CLI with torch.profiler
    recording optimizer steps FIRST … FIRST+N−1 on this rank (a global optimizer-step hook advances it)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler import schedule as prof_schedule

    out, first, active, cli = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))

    def ready(prof) -> None:
        events = prof.key_averages()
        dev = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
        total = sum(dev(e) for e in events)
        nccl = sum(dev(e) for e in events if "nccl" in e.key.lower())
        gemm = sum(dev(e) for e in events if any(s in e.key.lower() for s in ("gemm", "cutlass", "sm90", "nvjet")))
        head = (f"rank {rank}: {active} optimizer steps profiled (steps {first}..{first + active - 1})\n"
                f"device time per step: total {total / active / 1e3:.1f} ms, NCCL {nccl / active / 1e3:.1f} ms, "
                f"GEMM {gemm / active / 1e3:.1f} ms, other {(total - nccl - gemm) / active / 1e3:.1f} ms "
                f"(NCCL overlaps compute on its own stream: compare with the step wall time in metrics)\n\n")
        try:
            table = events.table(sort_by="self_device_time_total", row_limit=40)
        except Exception:  # noqa: BLE001 — older torch names the column cuda
            table = events.table(sort_by="self_cuda_time_total", row_limit=40)
        (out / f"rank{rank}.txt").write_text(head + table)

    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []),
                   schedule=prof_schedule(wait=max(0, first - 2), warmup=1, active=active, repeat=1),
                   on_trace_ready=ready)
    prof.start()
    register_optimizer_step_post_hook(lambda *a, **k: prof.step())
    from lorascope.cli.main import app

    sys.argv = ["lorascope", *cli]
    try:
        app()
    finally:
        prof.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--profiled-cli":
        profiled_cli(sys.argv[2:])
    else:
        main()
