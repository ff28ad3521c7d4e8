"""Issue 15 item 3: the whole study on the Ray executor at the Sheared-LLaMA-1.3B shape, one Ray node per GPU on a
2-GPU machine, both tasks, every stage in one call — and a node killed mid-training.

Layout (one GPU per Ray node, the 3-VM roles of docs/cluster.md on 2 GPUs; vm3's work goes to whichever node is
free through the executor's soft placement, src/lorascope/study/executor_ray.py):
  node A  = the Ray head, GPU 0, resources {vm1: 1, vm3: 1}  (FT training, data, zero-shot, weights, drift, serving)
  node B  = a worker,     GPU 1, resources {vm2: 1}          (LoRA training + HPO)
  node B' = B's replacement (same GPU, same resources), added --replace-after s after the kill (a lost VM replaced;
            without it everything after the kill runs on one GPU and the call's 10 minutes do not suffice)
Each node is started with CUDA_VISIBLE_DEVICES set to its GPU in the environment its raylet inherits, so Ray
maps the node's one GPU slot to that physical GPU (a probe task per node reports it).

The kill (--kill-at checkpoint, the default): the first final-training job running on node B that has written its
mid-run checkpoint (train.checkpoint_every = steps/2) loses node B — its raylet and worker processes are SIGKILLed
--kill-delay s later, as a lost VM. Ray retries the job (executor.max_retries) on a live node; run_job resumes it
from the checkpoint on the shared folder. Afterwards the script checks that nothing was lost or duplicated: every
DAG job completed exactly once, each final run has one folder with one results.json and one metrics.jsonl line per
step 1..N, attempts are 1 (2 for the killed job), results.db holds each job and run once. --kill-at step kills after
the job's first logged step whatever was checkpointed; with --checkpoint-every = --steps the retry restarts from
step 0, and today its metrics.jsonl keeps the killed attempt's lines (train/run.py truncates the log only when a
checkpoint exists: the check reports the repeated steps). --kill-at start kills --kill-delay s after the job started.

Job order: serving is submitted right after the last final run (--no-serve-first: the library's order, after every
weights/drift job); same jobs and keys — the longest job of the tail then overlaps weights/drift on the other GPU.

The study: a random-weight model at the 1.3B shape (weights saved in --dtype; bf16 by default so FT checkpoints
stay 8 GB) with a word-level tokenizer built in code; synthetic MRPC and SQuAD v2 mirrors (benchmarks/
synthetic_tasks.py) as the study's two tasks; FT and LoRA × 2 seeds, --steps steps each, sanity gates, zero-shot,
a one-point lr grid, then weights, drift, serving (hf-peft + native: merged, unmerged-1, multi-2 at batch 1 and 4),
statistics and the report. The model cannot beat the trivial baselines, so the report's verdict is "not
assessable" (the validity gate) — expected; the run measures the machinery and the time of every job at 1.3B.
The study folder lives on /dev/shm when it has room (checkpoints at memory speed), else /tmp; checkpoints are
deleted as each job finishes (--keep-checkpoints keeps them).

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED (ray, pydantic, optuna). On the GPU machine
(nvidia-h200-x2, run(..., carry=[".gpu_site"], timeout_s=590)), from the repository root; estimated 7–8.5 min, and
--deadline 525 s stops the study and writes every output before the call's limit:

    mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && \\
    PYTHONPATH=$PWD/src:/tmp/site python3 benchmarks/ray_multigpu.py --out $OUT

The plan of phases (estimates per job, a simulated 2-GPU schedule) is printed first with expected timestamps;
--deadline (s from start) stops the study and still writes every output. CPU rehearsal (2-layer random model,
2 simulated Ray nodes without GPUs, same DAG, same kill): ``python benchmarks/ray_multigpu.py --tiny --out DIR``.
Writes to --out (8 files): summary.md (plan vs measured, kill, integrity checks, placement, stage times, GPU
utilisation per node over time, the report's verdict page), summary.json, per_job_times.json (per job: kind,
node, GPU, seconds, attempts, training tokens/s; for lorascope plan's cost model), driver.log, gpu_util.csv
(nvidia-smi, 1 s), report.md, report.html, study_summary.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "src"))

import ray_study_record as rec  # noqa: E402  (after the sys.path set-up above)
import synthetic_tasks as synth  # noqa: E402

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(SAFE_ENV)  # before anything starts: every Ray process inherits it
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHAPE = dict(num_hidden_layers=24, hidden_size=2048, intermediate_size=5504, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)  # Sheared-LLaMA-1.3B
TINY_SHAPE = dict(SHAPE, num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=4)
SUBSAMPLE = {"train": 256, "validation": 32, "test": 64}
EFFECTIVE_BATCH = 16  # configs/study.yaml
T0 = time.time()
LOG: list[str] = []
LOG_PATH: Path | None = None


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    LOG.append(line)
    if LOG_PATH is not None:
        with LOG_PATH.open("a") as f:
            f.write(line + "\n")


class PhaseError(RuntimeError):
    pass


class Phase:
    """``with Phase("name", budget_s):`` prints start/end with timestamps; any error becomes a loud PhaseError."""

    times: dict[str, dict] = {}

    def __init__(self, name: str, budget_s: float) -> None:
        self.name, self.budget = name, budget_s

    def __enter__(self):
        self.t = time.time()
        log(f"=== phase {self.name} (estimate {self.budget:.0f}s)")
        return self

    def __exit__(self, et, ev, tb):
        dt = time.time() - self.t
        Phase.times[self.name] = {"start_s": round(self.t - T0, 1), "seconds": round(dt, 1), "estimate_s": self.budget}
        if et is not None and et is not PhaseError:
            log(f"!!! phase {self.name} FAILED after {dt:.1f}s: {et.__name__}: {ev}")
            log(traceback.format_exc())
            raise PhaseError(f"phase {self.name} failed: {et.__name__}: {ev}") from ev
        over = "  (OVER ESTIMATE)" if dt > self.budget * 1.2 else ""
        log(f"=== phase {self.name} done in {dt:.1f}s{over}")
        return False


# -- (a) preflight ----------------------------------------------------------------------------------------------

MODULES = ["pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions", "yaml", "tqdm",
           "matplotlib", "cycler", "fontTools", "kiwisolver", "pyparsing", "PIL", "dateutil", "contourpy",
           "jinja2", "markupsafe", "numpy", "scipy", "safetensors", "optuna", "sqlalchemy", "alembic", "mako",
           "colorlog", "statsmodels", "patsy", "pandas", "sklearn", "joblib", "threadpoolctl", "psutil", "ray",
           "msgpack", "jsonschema", "referencing", "rpds", "jsonschema_specifications", "attrs", "click", "filelock",
           "packaging", "google.protobuf", "requests", "torch", "transformers", "peft", "tokenizers",
           "huggingface_hub"]


def preflight(args) -> dict:
    site = os.environ.get("LORASCOPE_SITE", "/tmp/site")
    info = {"python": sys.version.split()[0], "executable": sys.executable, "site": site, "modules": {}}
    missing = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        where = getattr(mod, "__file__", None) or str(getattr(mod, "__path__", ["?"])[0])
        origin = "bundle" if where.startswith(site) else ("venv" if "/.venv/" in where else "image")
        version = getattr(mod, "__version__", None)
        if version is None:
            try:
                from importlib.metadata import version as v

                version = v({"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "dateutil": "python-dateutil",
                             "fontTools": "fonttools", "google.protobuf": "protobuf", "rpds": "rpds-py",
                             "mako": "Mako", "markupsafe": "MarkupSafe"}.get(name, name))
            except Exception:  # noqa: BLE001
                version = "?"
        info["modules"][name] = {"version": str(version), "origin": origin}
    rows = [f"{n}={m['version']}[{m['origin']}]" for n, m in info["modules"].items()]
    log("modules: " + " ".join(rows))
    if missing:
        raise RuntimeError("required modules missing (add them to benchmarks/gpu_site.sh): " + "; ".join(missing))
    import torch

    info["torch"] = torch.__version__
    info["cuda_devices"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(info["cuda_devices"])]
    log(f"python {info['python']} torch {torch.__version__} cuda devices {info['cuda_devices']} {info['gpus']}")
    log("env: " + " ".join(f"{k}={os.environ.get(k)}" for k in (*SAFE_ENV, "CUDA_VISIBLE_DEVICES", "PYTHONPATH")))
    from lorascope.study.stages import STAGES

    info["stages"] = [s.name for s in STAGES]
    log(f"stages: {', '.join(info['stages'])}")
    if not args.tiny and info["cuda_devices"] < (1 if args.share_gpu else 2):
        raise RuntimeError(f"need 2 GPUs, torch sees {info['cuda_devices']} (use --tiny for a CPU rehearsal)")
    return info


# -- (b) model + data -------------------------------------------------------------------------------------------

def make_model(folder: Path, tiny: bool, dtype: str) -> None:
    """A random Llama at SHAPE (TINY_SHAPE), initialised on the GPU when there is one, saved in ``dtype``; the
    tokenizer is rewritten every time (cheap; a folder from an older script may lack the SQuAD words)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    stamp = folder / "rmg.json"
    want = {"shape": TINY_SHAPE if tiny else SHAPE, "dtype": dtype}
    if not ((folder / "config.json").exists() and stamp.is_file() and json.loads(stamp.read_text()) == want):
        shutil.rmtree(folder, ignore_errors=True)
        torch.manual_seed(0)  # a benchmark script owns its process
        dev = "cuda:0" if (torch.cuda.is_available() and not tiny) else "cpu"
        with torch.device(dev):
            model = LlamaForCausalLM(LlamaConfig(**want["shape"], tie_word_embeddings=False))
        model.to(getattr(torch, dtype))
        n = sum(p.numel() for p in model.parameters())
        log(f"random Llama {n / 1e9:.3f}B params initialised on {dev}; saving in {dtype}")
        model.save_pretrained(folder, safe_serialization=True)
        del model
        if dev != "cpu":
            torch.cuda.empty_cache()
        stamp.write_text(json.dumps(want))
    else:
        log(f"model folder exists: {folder}")
    synth.make_tokenizer(folder)


def pick_work(args) -> Path:
    """/dev/shm when it has room for the study's peak (FT checkpoints are written at memory speed), else /tmp."""
    if args.work is not None:
        return args.work
    if args.tiny:
        return Path("/tmp/rmg-tiny")
    need = 64 if args.dtype == "bfloat16" else 128  # GiB: ~57 (bf16) / ~110 (fp32) at the peak, see docstring
    shm = shutil.disk_usage("/dev/shm").free / 2**30 if Path("/dev/shm").is_dir() else 0.0
    tmp = shutil.disk_usage("/tmp").free / 2**30
    log(f"free space: /dev/shm {shm:.0f} GiB, /tmp {tmp:.0f} GiB (the study needs ~{need} GiB at its peak)")
    return Path("/dev/shm/rmg") if shm >= need else Path("/tmp/rmg")


# -- (c) the cluster --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def node_env(args, gpu: str):
    """The environment a raylet (and every worker it starts) inherits: its GPU and its CPU threads per job."""
    keys = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        if not args.tiny:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            # Ray would set OMP_NUM_THREADS = the job's num_cpus (1); the serving stage's fp32 reference runs the
            # 1.3B model on the CPU, so each job gets the node's cores instead (jobs on a node are ≤ 1 GPU job + CPU jobs).
            os.environ["OMP_NUM_THREADS"] = str(args.cpus_per_node)
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def node_args(args, resources: dict) -> dict:
    return dict(num_cpus=1 if args.tiny else args.cpus_per_node, num_gpus=0 if args.tiny else 1, resources=resources,
                object_store_memory=512 * 2**20)


def start_cluster(args):
    import ray
    from ray.cluster_utils import Cluster

    system = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
    with node_env(args, "0"):
        c = Cluster(initialize_head=True, head_node_args=dict(**node_args(args, {"vm1": 1, "vm3": 1}),
                                                              include_dashboard=False, _system_config=system))
    with node_env(args, "0" if args.share_gpu else "1"):  # --share-gpu: a 1-GPU machine, both nodes on GPU 0
        node_b = c.add_node(**node_args(args, {"vm2": 1}))
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    nodes = {"A": c.head_node, "B": node_b}
    ids = {k: n.node_id for k, n in nodes.items()}
    log(f"cluster at {c.address}: " + ", ".join(f"node {k}={ids[k][:12]}" for k in ids))
    for n in ray.nodes():
        log(f"  ray node {n['NodeID'][:12]} alive={n['Alive']} resources="
            f"{ {k: v for k, v in n['Resources'].items() if not k.startswith('node:')} }")
    if not args.tiny:
        probe_gpus(args, ids, ("A", "B"), with_torch=True)
    return c, nodes, ids


def probe_gpus(args, ids: dict, which, with_torch: bool) -> None:
    """One tiny task per node reports its GPU: Ray's id, CUDA_VISIBLE_DEVICES and (with torch) the device UUID;
    two nodes on one GPU are an error (unless --share-gpu)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe(use_torch: bool):
        uuid = None
        if use_torch:
            import torch

            uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "") or "") or None
        return [str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES"), uuid

    res = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(ids[k], soft=False)).remote(with_torch)
                   for k in which], timeout=120)
    for k, (g, cvd, uuid) in zip(which, res):
        log(f"  GPU probe node {k}: ray.get_gpu_ids()={g} CUDA_VISIBLE_DEVICES={cvd} uuid={uuid}")
    if args.share_gpu:
        log("  --share-gpu: both nodes use the one physical GPU (each holds one Ray GPU slot)")
    elif len(which) == 2 and (res[0][1] == res[1][1] or (res[0][2] and res[0][2] == res[1][2])):
        raise RuntimeError(f"both nodes map to the same GPU: {res}")


def add_replacement(args, cluster, ids: dict) -> None:
    """Node B' = a fresh node with B's GPU and resources (a lost VM replaced)."""
    with node_env(args, "0" if args.share_gpu else "1"):
        node = cluster.add_node(**node_args(args, {"vm2": 1}))
    ids["B'"] = node.node_id
    # No probe task here: it would queue behind the jobs B' takes at once. Each job's manifest records Ray's GPU
    # ids, i.e. the ids the node's CUDA_VISIBLE_DEVICES lists ("1" on B and B').
    log(f"REPLACE: node B' = {node.node_id[:12]} joined (GPU {'0' if args.share_gpu else '1'}, {{vm2: 1}})")


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


# -- (e) GPU sampler --------------------------------------------------------------------------------------------

def start_sampler(path: Path):
    if shutil.which("nvidia-smi") is None:
        log("nvidia-smi not found: no GPU utilisation samples")
        return None
    f = path.open("w")
    return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used",
                             "--format=csv,noheader,nounits", "-l", "1"], stdout=f, stderr=subprocess.DEVNULL)


def read_samples(path: Path) -> list[tuple[float, int, float, float]]:
    rows = []
    if not path.is_file():
        return rows
    for r in csv.reader(path.read_text().splitlines()):
        try:
            ts = datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((ts, int(r[1]), float(r[2]), float(r[3])))
        except (ValueError, IndexError):
            continue
    return rows


# -- (f) the node killer ----------------------------------------------------------------------------------------

def latest_step(folder: Path) -> int | None:
    try:
        return int((folder / "checkpoints" / "LATEST").read_text().strip().split("-")[-1])
    except (OSError, ValueError):
        return None


def kill_target(args, study: Path, ids: dict, seen: dict) -> tuple[str, dict, Path | None] | None:
    """A final-training job running on node B that is ready to lose its node (see --kill-at)."""
    for man in sorted((study / "jobs").glob("train-*/manifest.json")):
        try:
            rec_ = json.loads(man.read_text())
        except (OSError, ValueError):
            continue
        if rec_.get("status") != "running" or rec_.get("node") != ids["B"]:
            continue
        job = man.parent.name
        seen.setdefault(job, time.time())
        folders = rec.run_folders(study, rec_)
        folder = folders[0] if folders else None
        if args.kill_at == "start":
            if time.time() - seen[job] >= args.kill_delay:
                return job, rec_, folder
            continue
        if folder is None:
            continue
        if args.kill_at == "step":
            if 0 < len(rec.step_lines(folder / "metrics.jsonl")) < args.steps:
                return job, rec_, folder
            continue
        step = latest_step(folder)
        if step is not None and step < args.steps:  # the mid-run checkpoint, not the final one
            return job, rec_, folder
    return None


def wait_while(alive, seconds: float) -> bool:
    """Sleep up to ``seconds`` while the study runs; False when it ended meanwhile."""
    end = time.time() + seconds
    while time.time() < end:
        if not alive():
            return False
        time.sleep(min(0.1, max(0.0, end - time.time())))
    return alive()


def killer(args, study: Path, cluster, nodes, ids, state: dict, alive) -> None:
    """Lose node B (raylet + workers, --kill-mode node) while a final-training job runs on it; then add B'.
    Runs on the main thread (Ray's node start installs signal handlers) while the study runs in another."""
    import psutil

    seen: dict = {}
    while alive():
        found = kill_target(args, study, ids, seen)
        if found is None:
            time.sleep(0.2)
            continue
        job, man, folder = found
        if args.kill_at != "start":
            log(f"KILL: {job} on node B: checkpoint step {latest_step(folder)}, "
                f"{len(rec.step_lines(folder / 'metrics.jsonl'))} step lines; killing node B in {args.kill_delay}s")
            if not wait_while(alive, args.kill_delay):
                return
        pid = raylet_pid(nodes["B"])
        # The raylet's children are node B's workers (the running job among them). A raylet killed alone leaves a
        # running worker alive: it finishes and hands its result to the driver directly, so nothing is retried.
        kids = psutil.Process(pid).children(recursive=True) if args.kill_mode == "node" else []
        steps_logged = len(rec.step_lines(folder / "metrics.jsonl")) if folder else None
        ckpt = latest_step(folder) if folder else None
        os.kill(pid, signal.SIGKILL)
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass
        state.update(killed_at=time.time(), job=job, pid=pid, mode=args.kill_mode, kill_at=args.kill_at,
                     workers_killed=[k.pid for k in kids], attempt1_started=rec.iso_ts(man.get("started")),
                     steps_logged_at_kill=steps_logged, checkpoint_step_at_kill=ckpt,
                     run=folder.name if folder else None)
        log(f"KILL: SIGKILL sent to node B's raylet (pid {pid}) and {len(kids)} worker process(es) while {job} ran "
            f"(checkpoint step {ckpt}, {steps_logged} step lines logged)")
        if args.replace_after >= 0 and wait_while(alive, args.replace_after):
            try:
                add_replacement(args, cluster, ids)
                state["replacement_joined_at"] = time.time()
            except Exception as exc:  # noqa: BLE001 — the study goes on with node A alone
                log(f"!!! REPLACE failed: {type(exc).__name__}: {exc}")
                state["replacement_error"] = f"{type(exc).__name__}: {exc}"
        return


# -- (d) the study ----------------------------------------------------------------------------------------------

def overrides(args, model: Path, data: Path, address: str) -> list[str]:
    epochs = math.ceil(args.steps * EFFECTIVE_BATCH / SUBSAMPLE["train"])  # max_steps is the binding cap
    o = [f"model.name_or_path={model}", "model.eos_token=null", f"model.dtype={args.dtype}",
         "data.tasks=[mrpc, squad_v2]", "data.source=mirror", f"data.data_dir={data}", "data.max_length=512",
         "data.max_new_tokens=8",
         f"data.subsample={{train: {SUBSAMPLE['train']}, validation: {SUBSAMPLE['validation']}, test: {SUBSAMPLE['test']}}}",
         f"data.probe_size={args.probes}",
         "seeds.replicates=[0, 1]", "baselines.random_draws=200",
         "ft.lr_grid=[5.0e-5]", "lora.lr_grid=[1.0e-3]",
         "train.methods=[ft, lora]", f"train.max_steps={args.steps}", f"train.epochs={{mrpc: {epochs}, squad_v2: {epochs}}}",
         f"train.effective_batch={EFFECTIVE_BATCH}", f"train.micro_batch={EFFECTIVE_BATCH}",
         "train.evals_per_epoch=1", "train.compile=false", "train.eval_batch_size=32",
         f"train.checkpoint_every={args.checkpoint_every}",
         f"sanity.n_examples={args.sanity_n}", f"sanity.max_steps={args.sanity_steps}",
         f"sanity.lr={{ft: {args.sanity_lr_ft}, lora: {args.sanity_lr_lora}, lora_qv: {args.sanity_lr_lora}}}",
         "hpo.sampler=grid", "tracking.wandb=disabled",
         "drift.max_length=256", "drift.batch_size=32", f"drift.forgetting_texts={args.forgetting_texts}",
         "drift.models_per_pass=4",
         "serve.backends=[hf-peft, native]", "serve.scenarios=[merged, unmerged-1, multi-2]",
         "serve.batch_sizes=[1, 4]", "serve.output_modes=[fixed]", "serve.new_tokens=16",
         f"serve.requests={args.serve_requests}", "serve.warmup=1", "serve.correctness_prompts=1",
         "stats.bootstrap_resamples=1000",
         "executor.kind=ray", f"executor.address={address}", f"executor.max_retries={args.max_retries}",
         ("output.note=Issue 15 benchmark. A RANDOM-weight model at the Sheared-LLaMA-1.3B shape on synthetic MRPC and "
          "SQuAD v2 data; the numbers measure the machinery (placement, fault tolerance, wall time), not LoRA vs FT.")]
    if args.tiny:
        o += ["drift.batch_size=16", "serve.cuda_graphs=false"]
    return o + list(args.set or [])


def prune(out: Path, job, outcome) -> None:
    """Free space as jobs finish: an FT run folder holds 2 checkpoints + best + model (~21 GB in bf16 at 1.3B).
    Downstream stages read only <run>/model|adapter, results.json and predictions, never checkpoints/ or best/."""
    if job.kind not in ("sanity", "hpo", "train"):
        return
    task, method = job.params.get("task"), job.params.get("method")
    if job.kind == "sanity":
        roots = [out / task / "sanity" / method]
    elif job.kind == "hpo":
        roots = [p for p in (out / task / "hpo" / method).glob("*") if p.is_dir()]
    else:
        roots = [p for p in (out / task / "runs").glob(f"{task}-{method}-*-r{job.params['replicate']}")]
    for root in roots:
        for sub in ("checkpoints", "best"):
            shutil.rmtree(root / sub, ignore_errors=True)
        if job.kind == "hpo":
            shutil.rmtree(root / "model", ignore_errors=True)  # HPO trials: only hpo.json is read downstream


def study_thread(args, cfg, study: Path, ctx: dict) -> None:
    try:
        ctx["result"] = run(args, cfg, ctx["dag"], study, ctx["events"])
    except Exception as exc:  # noqa: BLE001 — reported in the summary like a failed study
        log("!!! study raised:\n" + traceback.format_exc())
        ctx["result"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def run(args, cfg, dag, out: Path, events: list) -> dict:
    from lorascope.study.engine import run_study
    from lorascope.study.executors import StudyFailed

    def on_event(event, job, outcome):
        o = outcome or {}
        events.append({"t": time.time(), "event": event, "job": job.name, "kind": job.kind,
                       "attempt": o.get("attempt"), "started": o.get("started"), "finished": o.get("finished"),
                       "node": o.get("node")})
        extra = ""
        if o.get("error"):
            extra = f" ERROR {o['error'][:600]}"
            if o.get("traceback"):
                log(f"traceback of {job.name}:\n{o['traceback'][-4000:]}")
        took = f" in {o['finished'] - o['started']:.1f}s (attempt {o.get('attempt')})" if o.get("started") else ""
        log(f"job {event:<9} {job.name}{took}{extra}")
        if event == "completed" and not args.keep_checkpoints:
            prune(out, job, outcome)

    try:
        outcome, summary = run_study(cfg, out, executor="ray", on_event=on_event, dag=dag)
        return {"ok": True, "summary": str(summary), "counts": {s: outcome.count(s) for s in
                                                                ("completed", "skipped", "failed", "cancelled")}}
    except StudyFailed as exc:
        log(f"!!! STUDY FAILED:\n{exc}")
        return {"ok": False, "error": str(exc)}


# -- (g) the plan: per-job estimates and a simulated 2-GPU schedule ----------------------------------------------

# Seconds per job on an H200 at the 1.3B shape, bf16 weights, this script's sizes — worker side (imports, loads,
# training, evaluation, checkpoint I/O on /dev/shm). Sources: issue 8's run (docs/benchmarks.md: data 17 s, sanity
# 23–38 s, zero-shot 25 s, HPO 12–34 s, final runs 7–20 s, with two jobs sharing one GPU and ~222-token prompts);
# the §9 fast path (~25 s per task) + 14 DARE/magnitude validation passes; drift (19 s for 1,000 probes; here 2 × 64
# probes but 5 model loads); serving = 6 engine pairs (an fp32 gate engine + the timed bf16 engine, each loading the
# model), the fused-kernel tuning once, an fp32 CPU reference for 2 (prompt, adapter) pairs, hf-peft at ~20–50 ms
# per token. The least certain is serving (±60 s).
GPU_ESTIMATE_S = {"data": 15, "sanity/ft": 25, "sanity/lora": 18, "zero_shot": 15, "hpo/ft": 20, "hpo/lora": 12,
                  "train/ft": 22, "train/lora": 13, "weights": 50, "drift": 35, "serve": 150, "stats": 8, "report": 8}
# The CPU rehearsal (--tiny, 2-core dev machine, measured): for the printed plan only.
TINY_ESTIMATE_S = {"data": 6, "sanity/ft": 4, "sanity/lora": 6, "zero_shot": 2, "hpo/ft": 6, "hpo/lora": 5,
                   "train/ft": 6, "train/lora": 6, "weights": 15, "drift": 10, "serve": 9, "stats": 4, "report": 1}
PHASE_ESTIMATE_S = {"preflight": 15, "build model + data": 15, "ray cluster": 20, "summary + shutdown": 10}
def print_plan(args, cfg, dag) -> tuple[dict, float]:
    """The estimated schedule: per stage, then the phases with expected timestamps. Returns (per job, makespan)."""
    table = TINY_ESTIMATE_S if args.tiny else GPU_ESTIMATE_S
    kill_extra = 0.0 if args.no_kill else (0.5 * table["train/lora"] + args.kill_delay
                                          + (max(args.replace_after, 0) + 8 if args.replace_after >= 0 else 60))
    sched = rec.simulate(dag, table, kill_extra)
    makespan = max(e for _, e, _ in sched.values())
    stages: dict[str, list] = {}
    for name, (s, e, _) in sched.items():
        st = stages.setdefault(dag[name].kind, [s, e, 0])
        st[0], st[1], st[2] = min(st[0], s), max(st[1], e), st[2] + 1
    log(f"PLAN ({'CPU rehearsal' if args.tiny else '2 × H200, 1.3B'}; per-job estimates {table}; "
        f"kill adds ~{kill_extra:.0f}s):")
    for kind, (s, e, n) in sorted(stages.items(), key=lambda kv: kv[1][0]):
        log(f"  study stage {kind:<10} {n:2d} job(s)  est. +{s:5.0f}s → +{e:5.0f}s of the study")
    t = time.time() - T0
    phases = {**{k: PHASE_ESTIMATE_S[k] for k in ("preflight", "build model + data", "ray cluster")},
              "study": makespan, "summary + shutdown": PHASE_ESTIMATE_S["summary + shutdown"]}
    at = 0.0
    for name, est in phases.items():
        log(f"  phase {name:<20} est. {est:5.0f}s  at +{at:5.0f}s → +{at + est:5.0f}s")
        at += est
    log(f"  total est. {at:.0f}s; now +{t:.0f}s; --deadline {args.deadline:.0f}s")
    return {n: {"start_s": round(s, 1), "end_s": round(e, 1), "node": nd} for n, (s, e, nd) in sched.items()}, makespan


def serve_first(dag):
    """The same DAG (same jobs, deps and keys) with ``serve`` inserted right after the last final run instead of
    after every weights/drift job. The executor submits ready jobs in topological order with ties broken by
    insertion order, so serving — the longest job of the tail, ready at the same moment as the last task's drift —
    is submitted first and overlaps weights/drift on the other GPU instead of running after them (the simulated
    2-GPU schedule: ~65 s shorter). Any topological order is a valid order for the executor."""
    from lorascope.study.dag import Dag

    jobs = dag.topological()
    if "serve" not in dag.jobs:
        return dag
    order = [j for j in jobs if j.name != "serve"]
    last_train = max(i for i, j in enumerate(order) if j.kind == "train")
    order.insert(last_train + 1, dag["serve"])
    out = Dag()
    for j in order:
        out.add(j.name, j.kind, j.fn, params=j.params, deps=j.deps, role=j.role, num_gpus=j.num_gpus,
                num_cpus=j.num_cpus, relevant=j.relevant)
    if any(out[n].key != dag[n].key for n in dag.jobs):
        raise RuntimeError("reordering changed a job key")
    return out


def plan_predictions(cfg, dag) -> dict[str, float]:
    """lorascope plan's cost model, per job, in seconds (what item 4 calibrates); {} if it cannot run."""
    try:
        from lorascope.study.plan import estimate

        return {j["name"]: j["seconds"] for j in estimate(cfg, dag)["jobs"]}
    except Exception as exc:  # noqa: BLE001 — a comparison, never a reason to stop
        log(f"lorascope plan estimate unavailable: {type(exc).__name__}: {exc}")
        return {}


# -- (h) summary ------------------------------------------------------------------------------------------------

def node_gpus(args) -> dict[str, int | None]:
    if args.tiny:
        return {"A": None, "B": None, "B'": None}
    return {"A": 0, "B": 0 if args.share_gpu else 1, "B'": 0 if args.share_gpu else 1}


def summarise(args, ctx: dict) -> None:
    study, dest, ids, kill, result = ctx["study"], args.out, ctx["ids"], ctx["kill"], ctx["result"]
    events, samples = list(ctx["events"]), read_samples(ctx["samples_path"])
    t0 = ctx.get("study_t0") or T0
    labels = {v: k for k, v in ids.items()}
    expected = ctx["expected_s"]
    rows = rec.job_table(study, events, labels, node_gpus(args), t0, samples, kill, ctx.get("plan_s"))
    for r in rows:
        if r["job"] in expected:
            r["estimate_s"] = round(expected[r["job"]]["end_s"] - expected[r["job"]]["start_s"], 1)
            r["estimate_start_s"] = expected[r["job"]]["start_s"]
    stages = rec.stage_table(rows)
    for kind, st in stages.items():
        mine = [v for n, v in expected.items() if n.split("-")[0] == kind or n == kind]
        if mine:
            st["estimate_span"] = [min(v["start_s"] for v in mine), max(v["end_s"] for v in mine)]
    cfg = ctx.get("cfg")
    checks = []
    if cfg is not None and ctx.get("dag") is not None:
        checks = rec.integrity(study, list(ctx["dag"].jobs), events, list(cfg.data.tasks), list(cfg.train.methods),
                               list(cfg.seeds.replicates), cfg.train.max_steps, kill.get("job"))
    t_end = max([e["t"] for e in events] or [time.time()])
    util, bins = rec.util_summary(samples, t0, t_end), rec.util_bins(samples, t0, t_end)
    page = rec.verdict_page(study / "report" / "report.md")
    retried = [r for r in rows if (r.get("attempts") or 1) > 1]
    verdict = machinery_verdict(result, kill, retried, checks)
    ctx["verdict"] = verdict
    summ = {"verdict": verdict, "tiny": args.tiny, "phases": Phase.times, "total_s": round(time.time() - T0, 1),
            "node_ids": ids, "node_gpu": node_gpus(args), "work": str(ctx["work"]),
            "layout": {"A": "head, GPU 0, {vm1, vm3}", "B": "worker, GPU 1, {vm2}", "B'": "B's replacement"},
            "kill": {k: (round(v - t0, 1) if k in ("killed_at", "attempt1_started", "replacement_joined_at") and v else v)
                     for k, v in kill.items()},
            "checks": checks, "stages": stages, "gpu_util": util, "gpu_util_10s": bins, "jobs": rows,
            "result": result, "overrides": ctx.get("overrides"), "preflight": ctx.get("pre"), "verdict_page": page}
    (dest / "summary.json").write_text(json.dumps(summ, indent=1, default=str))
    per_job = {"what": "per-job wall times of the issue-15 two-node study run (seconds = run_job's own clock, "
                       "worker side; training = optimizer steps only, from metrics.jsonl)",
               "machine": "CPU rehearsal (--tiny)" if args.tiny else ("1 × H200 (--share-gpu)" if args.share_gpu
                                                                       else "2 × H200, one Ray node per GPU"),
               "config": ctx.get("overrides"), "node_gpu": node_gpus(args),
               "jobs": [{k: r.get(k) for k in ("job", "kind", "task", "method", "node", "gpu", "seconds", "attempts",
                                               "start_s", "end_s", "queued_s", "estimate_s", "plan_predicted_s",
                                               "killed_attempt", "training", "gpu_util_mean")} for r in rows],
               "stages": stages}
    (dest / "per_job_times.json").write_text(json.dumps(per_job, indent=1, default=str))
    (dest / "summary.md").write_text(summary_markdown(args, summ, rows, stages, checks, util, bins, page, ctx))
    log("summary written: " + str(dest / "summary.md"))
    print((dest / "summary.md").read_text(), flush=True)
    for src, name in ((study / "report" / "report.html", "report.html"), (study / "report" / "report.md", "report.md"),
                      (study / "summary.md", "study_summary.md"), (ctx["samples_path"], "gpu_util.csv")):
        if src.is_file() and src.stat().st_size < 15 * 2**20:
            shutil.copy(src, dest / name)
        elif src.is_file():
            log(f"{src} is {src.stat().st_size / 2**20:.1f} MiB: not copied")


def machinery_verdict(result: dict, kill: dict, retried: list, checks: list) -> str:
    failed = [c["check"] for c in checks if not c["ok"]]
    if not result.get("ok"):
        return "FAIL: " + (result.get("error") or "?")[:300]
    if failed:
        return "FAIL: the study completed but integrity checks failed: " + "; ".join(failed)
    if kill.get("pid") and retried:
        return (f"PASS: the study completed on Ray after node B was lost during {kill.get('job')} "
                f"({kill.get('mode')} kill; its latest checkpoint: step {kill.get('checkpoint_step_at_kill')}, "
                f"{kill.get('steps_logged_at_kill')} step lines logged); retried: "
                + ", ".join(f"{r['job']} (attempt {r['attempts']}, node {r['node']})" for r in retried)
                + f"; {len(checks)} integrity checks passed")
    if kill.get("pid"):
        return f"PASS (weak): node B was killed during {kill.get('job')} but no job needed a retry"
    return "PASS (no kill): the study completed; no final-training job was caught on node B"


def _f(v, nd: int = 1) -> str:
    return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def summary_markdown(args, summ, rows, stages, checks, util, bins, page, ctx) -> str:
    kill = summ["kill"]
    L = [(f"# The study on Ray, one node per GPU, a node killed ({'CPU rehearsal' if args.tiny else '2 × H200'}): "
          "issue 15 item 3"), "", f"**{summ['verdict']}**", "",
         f"Total {summ['total_s']} s (deadline {args.deadline:.0f} s). Study folder on {summ['work']}.", "",
         "## Phases: estimate vs measured", "", "| phase | est. s | measured s | started at +s |", "|---|---:|---:|---:|"]
    for name, p in summ["phases"].items():
        L.append(f"| {name} | {p['estimate_s']:.0f} | {p['seconds']} | {p['start_s']} |")
    L += ["", "## Setup", "", ("Nodes: A = Ray head, GPU 0, {vm1, vm3}; B = worker, GPU 1, {vm2}; B' = B's replacement "
                               f"(same GPU and resources). Config overrides: `{' '.join(summ['overrides'] or [])}`"), "",
          "## The kill", ""]
    if kill.get("pid"):
        L.append(f"- {kill.get('mode')} kill ({kill.get('kill_at')}) of node B at +{kill.get('killed_at')} s of the study "
                 f"while `{kill.get('job')}` ran (run `{kill.get('run')}`; attempt 1 started at +{kill.get('attempt1_started')} s; "
                 f"latest checkpoint step {kill.get('checkpoint_step_at_kill')}, {kill.get('steps_logged_at_kill')} step "
                 f"lines logged); raylet pid {kill.get('pid')} and {len(kill.get('workers_killed') or [])} worker(s).")
        L.append(f"- Replacement node B' joined at +{kill.get('replacement_joined_at', '–')} s"
                 + (f" (error: {kill['replacement_error']})" if kill.get("replacement_error") else "") + ".")
    else:
        L.append("- no kill")
    L += ["", "## Integrity (nothing lost, nothing duplicated)", "", "| check | ok | detail |", "|---|---|---|"]
    L += [f"| {c['check']} | {'✔' if c['ok'] else '✘'} | {c['detail']} |" for c in checks] or ["| – | – | not run |"]
    L += ["", "## Placement and time per job (s from the study's start; seconds = run_job's clock)", "",
          "| job | role | node | GPU | attempts | queued | start | end | seconds | est. | plan | GPU util % | train tok/s |",
          "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tr = r.get("training") or {}
        note = " (killed on B, retried)" if r.get("killed_attempt") else ""
        L.append(f"| {r['job']}{note} | {r['role']} | {r['node']} | {_f(r['gpu'])} | {r['attempts']} | "
                 f"{_f(r.get('queued_s'))} | {_f(r['start_s'])} | {_f(r['end_s'])} | {_f(r['seconds'])} | "
                 f"{_f(r.get('estimate_s'))} | {_f(r.get('plan_predicted_s'))} | {_f(r.get('gpu_util_mean'))} | "
                 f"{_f(tr.get('tokens_per_s'))} |")
    L += ["", "## Wall time per stage", "",
          "| stage | jobs | first start | last end | span s | est. span | sum of job s | lorascope plan s |",
          "|---|---:|---:|---:|---:|---|---:|---:|"]
    for k, st in stages.items():
        est = st.get("estimate_span")
        L.append(f"| {k} | {st['jobs']} | {st['first_start_s']} | {st['last_end_s']} | {st['span_s']} | "
                 f"{f'+{est[0]:.0f} → +{est[1]:.0f}' if est else '–'} | {st['job_seconds']} | {st['predicted_s']} |")
    L += ["", "## GPU utilisation per node (nvidia-smi, 1 s samples)", "",
          "| GPU (node) | samples | mean util % | busy fraction | max util % | max mem GiB |", "|---|---|---|---|---|---|"]
    owner = {0: "A", 1: "B, then B'"} if not args.share_gpu else {0: "A and B"}
    for g, u in util.items():
        L.append(f"| {g} ({owner.get(g, '?')}) | {u['samples']} | {u['mean_util']} | {u['busy_fraction']} | "
                 f"{u['max_util']} | {u['max_mem_gib']} |")
    if bins:
        gpus = sorted(bins)
        L += ["", "Over time (mean util % / max GiB per 10 s):", "",
              "| from +s | " + " | ".join(f"GPU {g}" for g in gpus) + " |", "|---:|" + "---|" * len(gpus)]
        starts = sorted({b["from_s"] for g in gpus for b in bins[g]})
        by = {g: {b["from_s"]: b for b in bins[g]} for g in gpus}
        for s in starts:
            L.append(f"| {s:.0f} | " + " | ".join(f"{by[g][s]['util']} / {by[g][s]['mem_gib']}" if s in by[g] else "–"
                                                for g in gpus) + " |")
    L += ["", "## The report's verdict page (report/report.md)", "", page or "(no report.md)", "",
          f"Result: {json.dumps(summ['result'])[:1500]}"]
    return "\n".join(L) + "\n"


def main() -> int:
    global LOG_PATH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="small files only (summary, report, log)")
    p.add_argument("--work", type=Path, default=None, help="model, data and the study folder "
                   "(default /dev/shm/rmg if it has room, else /tmp/rmg; --tiny: /tmp/rmg-tiny)")
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal: a 2-layer model, Ray nodes without GPUs")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="model weights (default bfloat16 on GPU: 8 GB FT checkpoints; float32 for --tiny)")
    p.add_argument("--steps", type=int, default=16, help="train.max_steps of every HPO and final run")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default steps/2: one mid-run checkpoint")
    p.add_argument("--probes", type=int, default=64, help="data.probe_size (drift probes per set)")
    p.add_argument("--forgetting-texts", type=int, default=32)
    p.add_argument("--serve-requests", type=int, default=6, help="timed requests per serving cell (≥ 5: 2 batches at 4)")
    p.add_argument("--sanity-n", type=int, default=4)
    p.add_argument("--sanity-steps", type=int, default=150)
    p.add_argument("--sanity-lr-ft", type=float, default=1.0e-4)
    p.add_argument("--sanity-lr-lora", type=float, default=3.0e-3)
    p.add_argument("--cpus-per-node", type=int, default=min(12, max(1, (os.cpu_count() or 2) // 2)))
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--no-kill", action="store_true")
    p.add_argument("--share-gpu", action="store_true",
                   help="one physical GPU for both nodes (when only a 1-GPU machine is lent)")
    p.add_argument("--kill-mode", choices=("node", "raylet"), default="node",
                   help="node: the raylet and its worker processes (a lost VM); raylet: the raylet alone")
    p.add_argument("--kill-at", choices=("checkpoint", "step", "start"), default="checkpoint",
                   help="checkpoint: --kill-delay s after the job's mid-run checkpoint (the retry resumes from it); "
                        "step: after its first logged step, whatever was checkpointed (with --checkpoint-every = "
                        "--steps the retry restarts from step 0); start: --kill-delay s after it started")
    p.add_argument("--kill-delay", type=float, default=None,
                   help="s (default: 1 after the checkpoint / step, 4 after the start; halved for --tiny)")
    p.add_argument("--replace-after", type=float, default=2.0, help="s after the kill node B' joins (< 0: never)")
    p.add_argument("--deadline", type=float, default=525.0, help="seconds from start: stop and summarise")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--set", nargs="*", help="extra config overrides key=value")
    p.add_argument("--no-serve-first", dest="serve_first", action="store_false",
                   help="keep the library's job order (serving submitted after every weights/drift job)")
    p.add_argument("--plan-only", action="store_true", help="print the plan of phases and exit (no model, no Ray)")
    args = p.parse_args()
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    args.checkpoint_every = args.checkpoint_every or max(1, args.steps // 2)
    if args.kill_delay is None:
        args.kill_delay = (4.0 if args.kill_at == "start" else 1.0) / (2 if args.tiny else 1)
    if args.tiny:
        args.sanity_lr_ft, args.sanity_lr_lora = max(args.sanity_lr_ft, 3e-3), max(args.sanity_lr_lora, 1e-2)
    if args.plan_only:
        from lorascope.config import load_config
        from lorascope.study.jobs import build_study_dag

        cfg = load_config(REPO / "configs" / "study.yaml", overrides(args, Path("/nonexistent/model"), Path("/tmp"), "auto"))
        dag = build_study_dag(cfg)
        print_plan(args, cfg, serve_first(dag) if args.serve_first else dag)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    LOG_PATH = args.out / "driver.log"
    LOG_PATH.write_text("")
    work = pick_work(args)
    work.mkdir(parents=True, exist_ok=True)
    study = work / "study"
    shutil.rmtree(study, ignore_errors=True)  # a fresh study every time: nothing may be skipped
    model, data = work / ("model-tiny" if args.tiny else "model-1.3b"), work / "data"
    ctx: dict = {"study": study, "work": work, "events": [], "kill": {}, "ids": {}, "expected_s": {},
                 "result": {"ok": False, "error": "not started"}, "samples_path": work / "gpu_util.csv"}
    cluster = sampler = None
    stop = threading.Event()
    summary_lock = threading.Lock()

    def summarise_once():
        with summary_lock:
            if ctx.get("summarised"):
                return
            ctx["summarised"] = True
            summarise(args, ctx)

    def watchdog():
        if not stop.wait(max(1.0, args.deadline - (time.time() - T0))):
            log(f"!!! DEADLINE {args.deadline:.0f}s reached: summarising what finished and exiting")
            ctx["result"] = {"ok": False, "error": f"deadline {args.deadline:.0f}s reached"}
            try:
                summarise_once()
            finally:
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        with Phase("preflight", PHASE_ESTIMATE_S["preflight"]):
            ctx["pre"] = preflight(args)
        with Phase("build model + data", PHASE_ESTIMATE_S["build model + data"]):
            make_model(model, args.tiny, args.dtype)
            synth.make_data(data)
            log(f"model {model} ({sum(f.stat().st_size for f in model.iterdir()) / 2**30:.2f} GiB), data {data}")
        with Phase("ray cluster", PHASE_ESTIMATE_S["ray cluster"]):
            cluster, nodes, ctx["ids"] = start_cluster(args)
            from lorascope.config import load_config
            from lorascope.study.jobs import build_study_dag

            ctx["overrides"] = overrides(args, model, data, cluster.address)
            ctx["cfg"] = cfg = load_config(REPO / "configs" / "study.yaml", ctx["overrides"])
            ctx["dag"] = dag = serve_first(build_study_dag(cfg, study)) if args.serve_first else build_study_dag(cfg, study)
            ctx["expected_s"], makespan = print_plan(args, cfg, dag)
            ctx["plan_s"] = plan_predictions(cfg, dag)
        sampler = start_sampler(ctx["samples_path"])
        ctx["study_t0"] = time.time()
        with Phase("study", makespan):
            # The study runs in a thread; this (main) thread kills node B and starts B' (Ray's node start needs
            # the main thread: it installs signal handlers).
            worker = threading.Thread(target=study_thread, args=(args, cfg, study, ctx), daemon=True)
            worker.start()
            if not args.no_kill:
                killer(args, study, cluster, nodes, ctx["ids"], ctx["kill"], worker.is_alive)
            worker.join()
        if not args.no_kill and not ctx["kill"]:
            log("WARNING: no final-training job was caught on node B: nothing was killed")
    except PhaseError as exc:
        ctx["result"] = {"ok": False, "error": str(exc)}
    finally:
        stop.set()
        if sampler is not None:
            sampler.terminate()
        with Phase("summary + shutdown", PHASE_ESTIMATE_S["summary + shutdown"]):
            try:
                summarise_once()
            except Exception:  # noqa: BLE001
                log("!!! summary failed:\n" + traceback.format_exc())
            try:
                import ray

                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
            except Exception as exc:  # noqa: BLE001
                log(f"cluster shutdown: {type(exc).__name__}: {exc}")
    ok = ctx["result"].get("ok") and str(ctx.get("verdict", "")).startswith("PASS")
    log(f"done in {time.time() - T0:.1f}s: {'OK' if ok else 'FAILED'} — {ctx.get('verdict', '(no verdict)')[:200]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
