"""Issue 8: the study's Ray executor on one 2-GPU machine, one Ray node per GPU, with a raylet killed mid-run.

Layout (one GPU per Ray node, the cleanest mapping of the 3-VM roles of docs/cluster.md onto 2 GPUs):
  node A = the Ray head, GPU 0, resources {vm1: 1, vm3: 1}  (FT training, data, zero-shot, weights, drift, serving)
  node B = a worker,     GPU 1, resources {vm2: 1}          (LoRA training + HPO)
Each node is started with CUDA_VISIBLE_DEVICES set to its GPU in the environment its raylet inherits, so Ray
maps the node's one GPU slot to that physical GPU (``ray.get_gpu_ids()`` and the workers' CUDA_VISIBLE_DEVICES).
Node B's raylet is SIGKILLed a few seconds after the first final-training job started on it: Ray marks the node
dead, the job is retried (``executor.max_retries``) on node A, and the study must still complete. The head is not
the one killed: it holds the GCS and the driver's connection (docs/cluster.md: a dead head ends the study).

The model is a random-weight folder at the Sheared-LLaMA-1.3B shape with a word-level tokenizer built in code, the
data synthetic MRPC (the study task) and SQuAD v2 (only as drift's out-of-task texts) mirrors: the machine has no
hub. Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED (ray, pydantic, optuna). Run on the GPU machine from the
repository root:

    mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && \
    PYTHONPATH=$PWD/src:/tmp/site python3 benchmarks/ray_multigpu.py --out $OUT

CPU rehearsal (tiny random model, same layout with no GPUs): ``.venv/bin/python benchmarks/ray_multigpu.py --tiny --out /tmp/rmg-out``.
Writes to --out: summary.md, summary.json, driver.log, gpu_util.csv, report.html, study_summary.md.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib
import json
import os
import random
import shutil
import signal
import statistics
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

import torchrun_scaling as t1  # noqa: E402  (SHAPE, WORDS, make_tokenizer)

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(SAFE_ENV)  # before anything starts: every Ray process inherits it
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

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

    times: dict[str, float] = {}

    def __init__(self, name: str, budget_s: float) -> None:
        self.name, self.budget = name, budget_s

    def __enter__(self):
        self.t = time.time()
        log(f"=== phase {self.name} (budget {self.budget:.0f}s)")
        return self

    def __exit__(self, et, ev, tb):
        dt = time.time() - self.t
        Phase.times[self.name] = round(dt, 1)
        if et is not None and et is not PhaseError:
            log(f"!!! phase {self.name} FAILED after {dt:.1f}s: {et.__name__}: {ev}")
            log(traceback.format_exc())
            raise PhaseError(f"phase {self.name} failed: {et.__name__}: {ev}") from ev
        over = "  (OVER BUDGET)" if dt > self.budget else ""
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
    from lorascope.study.jobs import stage_available

    info["stages"] = {k: stage_available(k) for k in ("drift", "serve", "stats", "report")}
    log(f"optional stages importable: {info['stages']}")
    if not all(info["stages"].values()):
        log("WARNING: some analysis stages are not importable; the DAG will leave them out")
    if not args.tiny and info["cuda_devices"] < (1 if args.share_gpu else 2):
        raise RuntimeError(f"need 2 GPUs, torch sees {info['cuda_devices']} (use --tiny for a CPU rehearsal)")
    return info


# -- (b) model + data -------------------------------------------------------------------------------------------

def make_model(folder: Path, tiny: bool) -> None:
    """torchrun_scaling.make_model, but initialised on the GPU when there is one (seconds instead of a minute)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        log(f"model folder exists: {folder}")
        return
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    dev = "cuda:0" if (torch.cuda.is_available() and not tiny) else "cpu"
    with torch.device(dev):
        model = LlamaForCausalLM(LlamaConfig(**t1.SHAPE, tie_word_embeddings=False))
    n = sum(p.numel() for p in model.parameters())
    log(f"random Llama {n / 1e9:.3f}B params initialised on {dev}; saving")
    model.save_pretrained(folder, safe_serialization=True)
    del model
    if dev != "cpu":
        torch.cuda.empty_cache()
    t1.make_tokenizer(folder)


def make_mrpc(folder: Path, n: int = 1200) -> None:
    """Synthetic MRPC as in torchrun_scaling, with disjoint ids per file (the data stage's leakage check rejects shared ids)."""
    rng = random.Random(0)
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (folder / "mrpc").mkdir(parents=True, exist_ok=True)
    for k, (name, size) in enumerate((("train.tsv", n), ("dev.tsv", 64), ("msr_paraphrase_test.txt", 64))):
        rows = [f"{rng.randint(0, 1)}\t{k * 10**6 + i}\t{k * 10**6 + i + 100000}\t"
                f"{' '.join(rng.choices(t1.WORDS, k=rng.randint(80, 120)))}\t"
                f"{' '.join(rng.choices(t1.WORDS, k=rng.randint(80, 120)))}\n" for i in range(size)]
        (folder / "mrpc" / name).write_text(header + "".join(rows))


def make_squad(folder: Path, articles: int = 36, per_article: int = 4) -> None:
    """A synthetic SQuAD v2 dev file (official JSON; the mirror's dev-only split needs ≥ 35 articles)."""
    rng = random.Random(1)
    data = []
    for a in range(articles):
        paragraphs = []
        words = rng.choices(t1.WORDS, k=90)
        context = " ".join(words)
        qas = []
        for q in range(per_article):
            qid = f"a{a}q{q}"
            question = " ".join(rng.choices(t1.WORDS, k=8)) + " ?"
            if q % 2:
                qas.append({"id": qid, "question": question, "answers": [], "is_impossible": True})
            else:
                i = rng.randrange(0, 85)
                text = " ".join(words[i:i + rng.randint(1, 4)])
                start = len(" ".join(words[:i])) + (1 if i else 0)
                assert context[start:start + len(text)] == text
                qas.append({"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}],
                            "is_impossible": False})
        paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    (folder / "squad_v2").mkdir(parents=True, exist_ok=True)
    (folder / "squad_v2" / "dev-v2.0.json").write_text(json.dumps({"version": "v2.0", "data": data}))


# -- (c) the cluster --------------------------------------------------------------------------------------------

def start_cluster(args):
    import ray
    from ray.cluster_utils import Cluster

    system = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
    gpus = 0 if args.tiny else 1
    cpus = 1 if args.tiny else args.cpus_per_node
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")

    def env_gpu(g: str) -> None:
        if args.tiny:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None) if saved is None else os.environ.update(CUDA_VISIBLE_DEVICES=saved)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = g  # the raylet (and its workers) inherit this: the node's GPU

    try:
        env_gpu("0")
        c = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=cpus, num_gpus=gpus, resources={"vm1": 1, "vm3": 1}, include_dashboard=False,
            _system_config=system))
        env_gpu("0" if args.share_gpu else "1")  # --share-gpu: a 1-GPU machine, both nodes on GPU 0
        node_b = c.add_node(num_cpus=cpus, num_gpus=gpus, resources={"vm2": 1})
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    nodes = {"A": c.head_node, "B": node_b}
    ids = {k: n.node_id for k, n in nodes.items()}
    log(f"cluster at {c.address}: " + ", ".join(f"node {k}={ids[k][:12]}" for k in ids))
    for n in ray.nodes():
        log(f"  ray node {n['NodeID'][:12]} alive={n['Alive']} resources="
            f"{ {k: v for k, v in n['Resources'].items() if not k.startswith('node:')} }")
    if not args.tiny:
        # Prove the mapping before the study: one tiny task per node reports its GPU.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_gpus=1, num_cpus=0)
        def probe():
            import torch

            uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "") or "") or None
            return (ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()],
                    os.environ.get("CUDA_VISIBLE_DEVICES"), uuid)

        res = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(ids[k], soft=False)).remote()
                       for k in ("A", "B")], timeout=120)
        for k, (nid, g, cvd, uuid) in zip(("A", "B"), res):
            log(f"  GPU probe node {k}: ray.get_gpu_ids()={g} CUDA_VISIBLE_DEVICES={cvd} uuid={uuid}")
        if args.share_gpu:
            log("  --share-gpu: both nodes use the one physical GPU (each holds one Ray GPU slot)")
        elif res[0][1] == res[1][1] or (res[0][3] and res[0][3] == res[1][3]):
            raise RuntimeError(f"both nodes map to the same GPU: {res}")
    return c, nodes, ids


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


# -- (f) the raylet killer --------------------------------------------------------------------------------------

def killer(args, out: Path, nodes, ids, state: dict, stop: threading.Event) -> None:
    """SIGKILL node B's raylet a few seconds after the first final-training job started on node B."""
    while not stop.is_set():
        for man in sorted((out / "jobs").glob("train-*/manifest.json")):
            try:
                rec = json.loads(man.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("status") == "running" and rec.get("node") == ids["B"]:
                job = man.parent.name
                log(f"KILL: {job} is running on node B; killing its raylet in {args.kill_delay}s")
                if stop.wait(args.kill_delay):
                    return
                import psutil

                pid = raylet_pid(nodes["B"])
                # The raylet's children are node B's workers (the running job among them). A raylet killed alone
                # leaves a running worker alive: it finishes and hands its result to the driver directly (seen
                # in the CPU rehearsal), so nothing is retried. --kill-mode node also kills them, as a lost VM would.
                kids = psutil.Process(pid).children(recursive=True) if args.kill_mode == "node" else []
                os.kill(pid, signal.SIGKILL)
                for k in kids:
                    try:
                        k.kill()
                    except psutil.Error:
                        pass
                state.update(killed_at=time.time(), job=job, pid=pid, mode=args.kill_mode,
                             workers_killed=[k.pid for k in kids])
                log(f"KILL: SIGKILL sent to node B's raylet (pid {pid}) and {len(kids)} worker process(es) "
                    f"{[k.pid for k in kids]} while {job} ran")
                return
        stop.wait(0.5)


# -- (d) the study ----------------------------------------------------------------------------------------------

def overrides(args, model: Path, data: Path, address: str) -> list[str]:
    o = [f"model.name_or_path={model}", "model.eos_token=null", "model.dtype=float32",
         "data.tasks=[mrpc]", "data.source=mirror", f"data.data_dir={data}", "data.max_length=512",
         "data.max_new_tokens=8", "data.subsample={train: 256, validation: 32, test: 64}", "data.probe_size=64",
         "seeds.replicates=[0, 1]", "baselines.random_draws=200",
         "ft.lr_grid=[5.0e-5]", "lora.lr_grid=[1.0e-3]",
         "train.methods=[ft, lora]", f"train.max_steps={args.steps}", "train.epochs={mrpc: 1}",
         "train.evals_per_epoch=1", "train.compile=false", "train.eval_batch_size=32",
         f"sanity.n_examples={args.sanity_n}", f"sanity.max_steps={args.sanity_steps}",
         f"sanity.lr={{ft: {args.sanity_lr_ft}, lora: {args.sanity_lr_lora}, lora_qv: {args.sanity_lr_lora}}}",
         "hpo.sampler=grid", "tracking.wandb=disabled",
         "drift.max_length=256", "drift.batch_size=32", "drift.forgetting_texts=32", "drift.models_per_pass=4",
         "serve.backends=[hf-peft, native]", "serve.scenarios=[base, merged, unmerged-1, multi-2]",
         "serve.batch_sizes=[1, 4]", "serve.output_modes=[fixed]", "serve.new_tokens=16", "serve.requests=6",
         "serve.warmup=1", "serve.correctness_prompts=2",
         "stats.bootstrap_resamples=1000",
         "executor.kind=ray", f"executor.address={address}", f"executor.max_retries={args.max_retries}",
         "output.note=Issue 8 benchmark. A RANDOM-weight model at the Sheared-LLaMA-1.3B shape on synthetic MRPC "
         "data; the numbers measure the machinery (placement, fault tolerance, wall time), not LoRA vs FT."]
    if args.tiny:
        o += ["data.max_length=384", "drift.batch_size=16", "serve.batch_sizes=[1, 2]", "serve.requests=3",
              "serve.new_tokens=8", "serve.cuda_graphs=false"]
    return o + list(args.set or [])


def prune(out: Path, job, outcome) -> None:
    """Free disk as jobs finish: an FT run folder holds ~27 GB (checkpoint 16 GB + best + model at 1.3B).
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


def run(args, out: Path, model: Path, data: Path, address: str, events: list) -> dict:
    from lorascope.config import load_config
    from lorascope.study.engine import run_study
    from lorascope.study.executors import StudyFailed

    cfg = load_config(REPO / "configs" / "study.yaml", overrides(args, model, data, address))

    def on_event(event, job, outcome):
        events.append({"t": time.time(), "event": event, "job": job.name, "kind": job.kind,
                       "attempt": (outcome or {}).get("attempt")})
        extra = ""
        if outcome and outcome.get("error"):
            extra = f" ERROR {outcome['error'][:600]}"
            if outcome.get("traceback"):
                log(f"traceback of {job.name}:\n{outcome['traceback'][-4000:]}")
        log(f"job {event:<9} {job.name}{extra}")
        if event == "completed" and not args.keep_checkpoints:
            prune(out, job, outcome)

    try:
        outcome, summary = run_study(cfg, out, executor="ray", on_event=on_event)
        return {"ok": True, "summary": str(summary), "counts": {s: outcome.count(s) for s in
                                                                ("completed", "skipped", "failed", "cancelled")}}
    except StudyFailed as exc:
        log(f"!!! STUDY FAILED:\n{exc}")
        return {"ok": False, "error": str(exc)}


# -- (g) summary ------------------------------------------------------------------------------------------------

def job_rows(out: Path, ids: dict, samples) -> list[dict]:
    rev = {v: k for k, v in ids.items()}
    rows = []
    for man in sorted((out / "jobs").glob("*/manifest.json")):
        rec = json.loads(man.read_text())
        job = rec.get("job") or {}
        start = rec.get("started_at") or rec.get("started") or rec.get("created")
        row = {"job": man.parent.name, "kind": job.get("kind"), "role": job.get("role"), "status": rec.get("status"),
               "node": rev.get(rec.get("node"), (rec.get("node") or "?")[:12]), "gpus": rec.get("gpus"),
               "attempt": rec.get("attempt")}
        row["_start_raw"] = start
        rows.append(row)
    return rows


def summarise(args, out: Path, dest: Path, ids: dict, events: list, kill: dict, result: dict, pre: dict,
              samples_path: Path) -> None:
    samples = read_samples(samples_path)
    rows = job_rows(out, ids, samples)
    # Start/end per job from the driver's events (first submission → final outcome).
    first = {}
    last = {}
    for e in events:
        if e["event"] == "started":
            first.setdefault(e["job"], e["t"])
        elif e["event"] in ("completed", "failed", "cancelled", "skipped"):
            last[e["job"]] = e["t"]
    study_t0 = min(first.values()) if first else T0
    for r in rows:
        r["start_s"] = round(first[r["job"]] - study_t0, 1) if r["job"] in first else None
        r["end_s"] = round(last[r["job"]] - study_t0, 1) if r["job"] in last else None
        r["wall_s"] = round(r["end_s"] - r["start_s"], 1) if r["start_s"] is not None and r["end_s"] is not None else None
        r.pop("_start_raw", None)
        g = r.get("gpus")
        if samples and g and r["start_s"] is not None and r["end_s"] is not None:
            a, b = first[r["job"]], last[r["job"]]
            u = [s[2] for s in samples if a <= s[0] <= b and str(s[1]) == str(g[0])]
            r["gpu_util_mean"] = round(statistics.mean(u), 1) if u else None
    stages: dict[str, dict] = {}
    for r in rows:
        if r["start_s"] is None or r["end_s"] is None:
            continue
        st = stages.setdefault(r["kind"], {"jobs": 0, "first_start_s": r["start_s"], "last_end_s": r["end_s"],
                                           "job_seconds": 0.0})
        st["jobs"] += 1
        st["first_start_s"] = min(st["first_start_s"], r["start_s"])
        st["last_end_s"] = max(st["last_end_s"], r["end_s"])
        st["job_seconds"] = round(st["job_seconds"] + r["wall_s"], 1)
    for st in stages.values():
        st["span_s"] = round(st["last_end_s"] - st["first_start_s"], 1)
    util = {}
    t_end = max(last.values()) if last else time.time()
    for gpu in sorted({s[1] for s in samples}):
        s = [x for x in samples if x[1] == gpu and study_t0 <= x[0] <= t_end]
        if s:
            util[gpu] = {"samples": len(s), "mean_util": round(statistics.mean(x[2] for x in s), 1),
                         "busy_fraction": round(sum(1 for x in s if x[2] > 0) / len(s), 2),
                         "max_util": max(x[2] for x in s), "max_mem_mib": max(x[3] for x in s)}
    retried = [r for r in rows if (r.get("attempt") or 1) > 1]
    report = sorted(glob.glob(str(out / "**" / "report.html"), recursive=True))
    if not result.get("ok"):
        verdict = "FAIL: " + (result.get("error") or "?")[:300]
    elif kill.get("pid") and retried:
        verdict = (f"PASS: the study completed on Ray after node B was killed mid-run ({kill.get('mode')} kill during "
                   f"{kill.get('job')}); retried: " + ", ".join(f"{r['job']} (attempt {r['attempt']}, node {r['node']})"
                                                           for r in retried))
    elif kill.get("pid"):
        verdict = f"PASS: the study completed; node B was killed ({kill.get('mode')}) during {kill.get('job')} but no job was retried"
    else:
        verdict = "PASS: the study completed (no node was killed)"
    summ = {"verdict": verdict, "tiny": args.tiny, "phases_s": Phase.times, "total_s": round(time.time() - T0, 1),
            "node_ids": ids, "layout": {"A": "head, GPU 0, {vm1, vm3}", "B": "worker, GPU 1, {vm2}"},
            "kill": {k: (round(v - study_t0, 1) if k == "killed_at" else v) for k, v in kill.items()},
            "retried": retried, "stages": stages, "gpu_util": util, "jobs": rows, "result": result,
            "report": report[0] if report else None, "preflight": pre}
    (dest / "summary.json").write_text(json.dumps(summ, indent=2, default=str))
    L = [f"# Ray executor on {'CPU (tiny rehearsal)' if args.tiny else '2 × H200'}: issue 8", "", f"**{verdict}**", "",
         f"Total {summ['total_s']} s; phases: " + ", ".join(f"{k} {v} s" for k, v in Phase.times.items()), "",
         "Nodes: A = Ray head, GPU 0, resources {vm1, vm3}; B = worker, GPU 1, resources {vm2}. "
         f"Kill: {summ['kill'] or 'none'}", "",
         "## Placement", "", "| job | kind | role | node | GPU | attempt | start s | end s | wall s | GPU util % |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["start_s"] is None, r["start_s"] or 0)):
        L.append(f"| {r['job']} | {r['kind']} | {r['role']} | {r['node']} | {','.join(r['gpus'] or []) or '-'} | "
                 f"{r['attempt']} | {r['start_s']} | {r['end_s']} | {r['wall_s']} | {r.get('gpu_util_mean', '-')} |")
    L += ["", "## Wall time per stage (s, from first submission to last outcome)", "",
          "| stage | jobs | span s | sum of job walls s |", "|---|---|---|---|"]
    for k, st in sorted(stages.items(), key=lambda kv: kv[1]["first_start_s"]):
        L.append(f"| {k} | {st['jobs']} | {st['span_s']} | {st['job_seconds']} |")
    L += ["", "## GPU utilisation during the study (nvidia-smi, 1 s samples)", "",
          "| GPU | samples | mean util % | busy fraction | max util % | max mem MiB |", "|---|---|---|---|---|---|"]
    for g, u in util.items():
        L.append(f"| {g} | {u['samples']} | {u['mean_util']} | {u['busy_fraction']} | {u['max_util']} | {u['max_mem_mib']} |")
    L += ["", "## Retried jobs", ""] + [f"- {r['job']}: attempt {r['attempt']}, finished on node {r['node']}"
                                       for r in retried] or ["- none"]
    L += ["", f"Report: {summ['report']}", f"Result: {json.dumps(result)[:1500]}"]
    (dest / "summary.md").write_text("\n".join(L) + "\n")
    log("summary written: " + str(dest / "summary.md"))
    print("\n".join(L), flush=True)
    if report:
        size = Path(report[0]).stat().st_size
        if size < 15 * 2**20:
            shutil.copy(report[0], dest / "report.html")
        else:
            log(f"report.html is {size / 2**20:.1f} MiB: not copied")
    study_summary = out / "summary.md"
    if study_summary.is_file():
        shutil.copy(study_summary, dest / "study_summary.md")
    if samples_path.is_file() and samples_path.stat().st_size < 15 * 2**20:
        shutil.copy(samples_path, dest / "gpu_util.csv")


def main() -> int:
    global LOG_PATH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="small files only (summary, report, log)")
    p.add_argument("--work", type=Path, default=None, help="model, data and the study folder (default /tmp/rmg[-tiny])")
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal: a 2-layer model, Ray nodes without GPUs")
    p.add_argument("--steps", type=int, default=16, help="train.max_steps of every run")
    p.add_argument("--sanity-n", type=int, default=4)
    p.add_argument("--sanity-steps", type=int, default=150)
    p.add_argument("--sanity-lr-ft", type=float, default=1.0e-4)
    p.add_argument("--sanity-lr-lora", type=float, default=3.0e-3)
    p.add_argument("--cpus-per-node", type=int, default=8)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--no-kill", action="store_true")
    p.add_argument("--share-gpu", action="store_true",
                   help="one physical GPU for both nodes (when only a 1-GPU machine is lent)")
    p.add_argument("--kill-mode", choices=("node", "raylet"), default="node",
                   help="node: the raylet and its worker processes (a lost VM); raylet: the raylet alone")
    p.add_argument("--kill-delay", type=float, default=4.0, help="seconds after the job started on node B")
    p.add_argument("--deadline", type=float, default=510.0, help="seconds from start: stop and summarise")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--set", nargs="*", help="extra config overrides key=value")
    args = p.parse_args()
    if args.tiny:
        t1.SHAPE.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                        num_key_value_heads=4)
        args.sanity_lr_ft, args.sanity_lr_lora = max(args.sanity_lr_ft, 3e-3), max(args.sanity_lr_lora, 1e-2)
        args.kill_delay = min(args.kill_delay, 2.0)
    args.out.mkdir(parents=True, exist_ok=True)
    LOG_PATH = args.out / "driver.log"
    LOG_PATH.write_text("")
    work = args.work or Path("/tmp/rmg-tiny" if args.tiny else "/tmp/rmg")
    work.mkdir(parents=True, exist_ok=True)
    study = work / "study"
    shutil.rmtree(study, ignore_errors=True)  # a fresh study every time: nothing may be skipped
    model, data = work / ("model-tiny" if args.tiny else "model-1.3b"), work / "data"
    events: list = []
    kill: dict = {}
    result: dict = {"ok": False, "error": "not started"}
    pre: dict = {}
    ids: dict = {}
    cluster = sampler = None
    stop = threading.Event()
    samples_path = work / "gpu_util.csv"

    def watchdog():
        if not stop.wait(max(1.0, args.deadline - (time.time() - T0))):
            log(f"!!! DEADLINE {args.deadline:.0f}s reached: summarising what finished and exiting")
            result.update(ok=False, error=f"deadline {args.deadline:.0f}s reached")
            try:
                summarise(args, study, args.out, ids, list(events), kill, result, pre, samples_path)
            finally:
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        with Phase("preflight", 30):
            pre = preflight(args)
        with Phase("build model + data", 90):
            make_model(model, args.tiny)
            make_mrpc(data)
            make_squad(data)
            log(f"model {model} ({sum(f.stat().st_size for f in model.iterdir()) / 2**30:.2f} GiB), data {data}")
        with Phase("ray cluster", 60):
            cluster, nodes, ids = start_cluster(args)
        sampler = start_sampler(samples_path)
        kt = None
        if not args.no_kill:
            kt = threading.Thread(target=killer, args=(args, study, nodes, ids, kill, stop), daemon=True)
            kt.start()
        with Phase("study", max(60.0, args.deadline - (time.time() - T0) - 20)):
            result = run(args, study, model, data, cluster.address, events)
        if not args.no_kill and not kill:
            log("WARNING: no final-training job ran on node B: nothing was killed")
    except PhaseError as exc:
        result = {"ok": False, "error": str(exc)}
    finally:
        stop.set()
        if sampler is not None:
            sampler.terminate()
        with Phase("summary + shutdown", 30):
            try:
                summarise(args, study, args.out, ids, events, kill, result, pre, samples_path)
            except Exception:  # noqa: BLE001
                log("!!! summary failed:\n" + traceback.format_exc())
            try:
                import ray

                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
            except Exception as exc:  # noqa: BLE001
                log(f"cluster shutdown: {type(exc).__name__}: {exc}")
    log(f"done in {time.time() - T0:.1f}s: {'OK' if result.get('ok') else 'FAILED'}")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
