"""§9 weight structure at the Sheared-LLaMA-1.3B shape on one GPU (issue 15, item 1): the fast path timed for one
task's FT and LoRA runs, checked against the float64-SVD reference path on a sample of modules in the same run.

What it builds (in a temp folder; the machine has no hub): a random-weight base (the 168 decoder Linear weights,
24 layers × q, k, v, o, gate, up, down, N(0, 0.02), fp32 safetensors), an FT copy (base + ΔW, ΔW = a rank-8
update whose top σ is c·σ_1(W) plus dense noise of Frobenius norm comparable to it — FT updates are dense with a
few strong directions) and a LoRA adapter in PEFT format (r = 16, α = 32, all 7 module types; random non-zero A
and B with σ_1(s·B·A) = c·σ_1(W)). c cycles over 0.05, 0.2, 0.6, 1.5 across modules, so some top-10 tuned vectors
are new directions (intruders) and most are not.

Phases (each reported and skipped on error; timestamps on every line):
  prims  — 2048-wide float64 SVD / eigh / eigvalsh and float32 eigh, one at a time (where the time goes);
  fast   — ``weights_reports`` for FT + LoRA (the weights stage's call: streamed from the files, one W_base basis
           per module shared by both), wall time on the GPU;
  check  — the reference path (``path="reference"``: float64 SVDs, as before issue 15) on the sample layers, every
           metric compared with the tolerance and the reason printed; its time, extrapolated to 168 modules;
  dare   — one DARE pass (p = 0.9) and one magnitude pass (keep 10%) writing W_base + f(ΔW) into a 1.3B model on
           the GPU, FT and LoRA, as the stage runs them (resident ΔW, CUDA generator), + the CPU-generator cost
           on one layer; magnitude on the GPU checked bitwise against the CPU;
  gram32 — (if time is left) the fast path with ``intruder_method="gram32"`` (float32 eigh + float64 refinement);
           its intruder decisions must equal the float64 ones.
The task-metric re-evaluations of the DARE curves (6 validation passes per model) are not part of this script.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed — torch, numpy, safetensors, transformers come with the
image and ``lorascope.weights`` imports no pydantic/optuna/ray. Usage (repository root, GPU machine):

    PYTHONPATH=src python benchmarks/weights_gpu.py --out $OUT        # ~2.5-3.5 min on one H200
    PYTHONPATH=src python benchmarks/weights_gpu.py --tiny --out /tmp/wg   # CPU smoke test (2 small layers)

Writes $OUT/weights_gpu.json (every number printed; rewritten after each phase and on SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lorascope.weights import (  # noqa: E402
    LLAMA_MODULE_TYPES,
    apply_delta_transform,
    dare_transform,
    ft_deltas,
    lora_factors,
    magnitude_prune,
    magnitude_transform,
    parse_module_name,
    resident_deltas,
    weights_reports,
)
from lorascope.weights.spectra import lowrank_singular_values  # noqa: E402

T0 = time.perf_counter()
LEVELS = (0.05, 0.2, 0.6, 1.5)   # σ_1(ΔW) / σ_1(W_base), cycled over modules
RANK, ALPHA = 16, 32


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shapes(hidden: int, inter: int) -> dict[str, tuple[int, int]]:
    return {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
            "o_proj": (hidden, hidden), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
            "down_proj": (hidden, inter)}


def module_name(layer: int, mtype: str) -> str:
    return f"model.layers.{layer}.{'self_attn' if mtype in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{mtype}"


def build(folder: Path, layers: int, hidden: int, inter: int, device: torch.device) -> dict:
    """Write base/, ft/ (fp32 safetensors, one file per layer) and adapter/ (PEFT); return generation facts."""
    from safetensors.torch import save_file

    for sub in ("base", "ft", "adapter"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=device).manual_seed(0)
    adapter: dict[str, torch.Tensor] = {}
    scaling = ALPHA / RANK
    for layer in range(layers):
        base_sd, ft_sd = {}, {}
        for t, (mtype, (m, n)) in enumerate(shapes(hidden, inter).items()):
            name = module_name(layer, mtype)
            c = LEVELS[(layer * 7 + t) % len(LEVELS)]
            w = 0.02 * torch.randn(m, n, generator=g, device=device)
            sigma1 = 0.02 * (math.sqrt(m) + math.sqrt(n))             # σ_1 of an m × n N(0, 0.02²) matrix
            p = torch.linalg.qr(torch.randn(m, 8, generator=g, device=device)).Q
            q = torch.linalg.qr(torch.randn(n, 8, generator=g, device=device)).Q
            top = c * sigma1 * torch.linspace(1.0, 0.3, 8, device=device)
            lowrank = (p * top) @ q.T
            noise_sd = float(lowrank.norm()) / math.sqrt(m * n)          # ‖noise‖_F ≈ ‖low-rank‖_F
            dw = lowrank + noise_sd * torch.randn(m, n, generator=g, device=device)
            base_sd[name + ".weight"] = w.cpu()
            ft_sd[name + ".weight"] = (w + dw).cpu()
            b = torch.randn(m, RANK, generator=g, device=device)
            a = torch.randn(RANK, n, generator=g, device=device) / math.sqrt(n)
            b *= c * sigma1 / float(lowrank_singular_values(b, a, scaling)[0])
            adapter[f"base_model.model.{name}.lora_A.weight"] = a.float().cpu()
            adapter[f"base_model.model.{name}.lora_B.weight"] = b.float().cpu()
        save_file(base_sd, str(folder / "base" / f"layer-{layer:02d}.safetensors"))
        save_file(ft_sd, str(folder / "ft" / f"layer-{layer:02d}.safetensors"))
    save_file(adapter, str(folder / "adapter" / "adapter_model.safetensors"))
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "target_modules": list(LLAMA_MODULE_TYPES), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "base_model_name_or_path": str(folder / "base")}, indent=1))
    return {"layers": layers, "hidden": hidden, "intermediate": inter, "levels": LEVELS, "lora_r": RANK,
            "lora_alpha": ALPHA, "ft_update": "rank-8 (top σ = c·σ1(W)) + dense noise of equal Frobenius norm"}


def prims(device: torch.device, n: int, tall: int) -> list[dict]:
    """Median of 3 runs of each primitive on one n × n (and tall × n) matrix."""
    g = torch.Generator(device=device).manual_seed(1)
    w = torch.randn(n, n, generator=g, device=device, dtype=torch.float64)
    t = torch.randn(tall, n, generator=g, device=device, dtype=torch.float64)
    gram = w @ w.T
    cases = {
        f"svd f64 {n}x{n} (reference: W_base)": lambda: torch.linalg.svd(w, full_matrices=False),
        f"svdvals f64 {n}x{n} (reference: σ of ΔW)": lambda: torch.linalg.svdvals(w),
        f"svd f64 {tall}x{n}": lambda: torch.linalg.svd(t, full_matrices=False),
        f"eigh f64 {n} (fast: W_base basis, tuned top-10)": lambda: torch.linalg.eigh(gram),
        f"eigvalsh f64 {n} (fast: σ of FT ΔW)": lambda: torch.linalg.eigvalsh(gram),
        f"eigh f32 {n} (gram32)": lambda: torch.linalg.eigh(gram.float()),
        f"qr f64 {tall}x{n} (fast: tall W_base)": lambda: torch.linalg.qr(t),
        f"gram f64 {tall}x{n} (TᵀT)": lambda: t.T @ t,
    }
    out = []
    for name, fn in cases.items():
        times = []
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        out.append({"primitive": name, "ms": round(1e3 * statistics.median(times), 2)})
        log(f"prims  {name:<52} {out[-1]['ms']:9.2f} ms")
    return out


def run_fast(folder: Path, device: torch.device, **kw) -> tuple[dict, float]:
    sync(device)
    t0 = time.perf_counter()
    reports = weights_reports({"FT": ft_deltas(folder / "base", folder / "ft", device=device),
                               "LoRA": lora_factors(folder / "adapter", folder / "base", device=device)},
                              device=device, **kw)
    sync(device)
    return reports, time.perf_counter() - t0


# Tolerances of the fast path against the float64 SVD (reason → docs/benchmarks.md and spectra.py):
TOL = {
    "sigma_abs_over_sigma1": 2e-7,     # Gram: |δσ_i| ≈ δλ/(2σ_i), δλ ≲ n·eps·λ_1 = 4.5e-13·λ_1 and σ_i ≥ 1.6e-6·σ_1 (else SVD): ≤ 1.4e-7·σ_1
    "energy_abs": 1e-10,               # energy uses σ² = λ directly: |δE_k| ≤ Σ|δλ|/Σλ ≤ n·(n·eps)
    "effective_rank_rel": 1e-6,        # smooth in σ/Σσ; the σ error above enters weighted by |log p| ≤ 40
    "stable_rank_rel": 1e-9,           # Σλ/λ_1: both ends accurate to n·eps relative
    "hoyer_rel": 1e-12,                # same ΔW entries (formed identically); only reduction order differs
    "max_cos_abs": 1e-6,               # W_base basis from eigh: vector error eps·λ_1/gap ≲ 1e-8 for simple σ
}


def compare(fast: dict, ref: dict, names: set[str]) -> dict:
    """Per label: max deviations of every metric over the sampled modules, and which checks failed."""
    out = {}
    for label in ref:
        f_by = {m["name"]: m for m in fast[label]["modules"] if m["name"] in names}
        dev = {k: 0.0 for k in TOL}
        exact_mismatch, margins = [], []
        for r in ref[label]["modules"]:
            f = f_by[r["name"]]
            s1 = max(r["sigma_max"], 1e-300)
            dev["sigma_abs_over_sigma1"] = max(dev["sigma_abs_over_sigma1"], float(np.max(np.abs(
                np.asarray(f["singular_values"]) - np.asarray(r["singular_values"])))) / s1)
            dev["energy_abs"] = max(dev["energy_abs"], float(np.max(np.abs(np.asarray(f["energy_curve"]) - r["energy_curve"]))))
            for key, tol_key in (("effective_rank", "effective_rank_rel"), ("stable_rank", "stable_rank_rel"),
                                 ("hoyer_sparsity", "hoyer_rel")):
                dev[tol_key] = max(dev[tol_key], abs(f[key] - r[key]) / max(abs(r[key]), 1e-300))
            dev["max_cos_abs"] = max(dev["max_cos_abs"], float(np.max(np.abs(
                np.asarray(f["intruder_detail"]["max_cos"]) - r["intruder_detail"]["max_cos"]))))
            for key in ("rank_at_energy", "numerical_rank", "intruders", "near_zero_fraction", "n_params"):
                if f[key] != r[key]:
                    exact_mismatch.append(f"{r['name']}:{key} {f[key]} vs {r[key]}")
            if f["intruder_detail"]["is_intruder"] != r["intruder_detail"]["is_intruder"]:
                exact_mismatch.append(f"{r['name']}:is_intruder")
            margins += [abs(c - r["intruder_detail"]["epsilon"]) for c in r["intruder_detail"]["max_cos"]]
        failed = [k for k, v in dev.items() if v > TOL[k]] + exact_mismatch
        out[label] = {"modules": len(ref[label]["modules"]), "max_deviation": dev, "tolerance": TOL,
                      "identical": ["rank_at_energy", "numerical_rank", "intruders", "is_intruder", "near_zero_fraction"],
                      "closest_intruder_margin": min(margins) if margins else None, "failed": failed,
                      "ok": not failed}
    return out


def summary_of(reports: dict) -> dict:
    out = {}
    for label, rep in reports.items():
        mods = rep["modules"]
        routes: dict[str, int] = {}
        methods: dict[str, int] = {}
        for m in mods:
            routes[m["spectrum_route"]] = routes.get(m["spectrum_route"], 0) + 1
            methods[m["intruder_detail"]["method"]] = methods.get(m["intruder_detail"]["method"], 0) + 1
        margins = [abs(c - m["intruder_detail"]["epsilon"]) for m in mods for c in m["intruder_detail"]["max_cos"]]
        out[label] = {"modules": len(mods), "intruders": sum(m["intruders"] for m in mods), "routes": routes,
                      "intruder_methods": methods, "closest_intruder_margin": min(margins),
                      "mean_effective_rank": statistics.mean(m["effective_rank"] for m in mods),
                      "mean_rank_at_90": statistics.mean(m["rank_at_energy"] for m in mods)}
    return out


def dare_phase(folder: Path, device: torch.device, hidden: int, inter: int, layers: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 128),
                      vocab_size=32000 if hidden >= 1024 else 256, max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)          # fp32, as configs/study.yaml loads the model
    out: dict = {}
    for label in ("FT", "LoRA"):
        items = (ft_deltas(folder / "base", folder / "ft", device=device) if label == "FT"
                 else lora_factors(folder / "adapter", folder / "base", device=device))
        sync(device)
        t0 = time.perf_counter()
        deltas = resident_deltas(items, device)
        sync(device)
        row = {"load_resident_s": round(time.perf_counter() - t0, 2),
               "on_device": sum(d.delta.device.type == device.type for d in deltas), "modules": len(deltas)}
        gen = torch.Generator(device=device).manual_seed(0)
        for what, transform in (("dare_p0.9", dare_transform(0.9, gen)), ("magnitude_keep0.1", magnitude_transform(0.1))):
            sync(device)
            t0 = time.perf_counter()
            apply_delta_transform(model, deltas, transform, device=device)
            sync(device)
            row[what + "_s"] = round(time.perf_counter() - t0, 2)
        # Check: the last magnitude pass on the GPU equals the CPU's stable sort, bit for bit, on one module.
        name, base, delta = deltas[-1]
        cpu = base.cpu() + magnitude_prune(delta.cpu(), 0.1)
        got = model.get_submodule(name).weight.detach().cpu()
        row["magnitude_gpu_equals_cpu"] = bool(torch.equal(got, cpu.to(got.dtype)))
        # DARE with a CPU generator (the stage before issue 15): one layer, extrapolated to all of them.
        one_layer = [d for d in deltas if parse_module_name(d.name)[0] == 0]
        cpu_gen = torch.Generator().manual_seed(0)
        sync(device)
        t0 = time.perf_counter()
        apply_delta_transform(model, one_layer, dare_transform(0.9, cpu_gen), device=device)
        sync(device)
        row["dare_cpu_generator_s_extrapolated"] = round((time.perf_counter() - t0) * len(deltas) / len(one_layer), 1)
        kept = float((model.get_submodule(one_layer[0].name).weight.detach().double()
                      != one_layer[0].base.to(device).double()).double().mean())
        row["dare_kept_fraction_one_module"] = round(kept, 4)
        out[label] = row
        log(f"dare   {label}: {json.dumps(row)}")
        del deltas, one_layer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/weights_gpu")))
    ap.add_argument("--tiny", action="store_true", help="2 small layers on the CPU: a smoke test of this script")
    ap.add_argument("--sample-layers", default="0,23", help="layers checked against the float64 reference")
    ap.add_argument("--budget-s", type=float, default=170.0, help="skip the optional gram32 phase if it would start later")
    ap.add_argument("--workdir", default=None, help="where the 10 GB of weights go (default: a temp folder)")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    layers, hidden, inter = (2, 64, 176) if args.tiny else (24, 2048, 5504)
    sample = {int(x) for x in args.sample_layers.split(",")} & set(range(layers)) or {0}
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "errors": {}}
    log(json.dumps({k: result[k] for k in ("device", "torch", "python", "date")}))
    folder = Path(tempfile.mkdtemp(prefix="weights_gpu-", dir=args.workdir))

    def save() -> None:  # after every phase, and on SIGTERM: a timeout keeps what was measured
        result["total_seconds"] = round(time.perf_counter() - T0, 1)
        (args.out / "weights_gpu.json").write_text(json.dumps(result, indent=1, default=str))

    def on_term(signum, frame):
        result["interrupted"] = f"signal {signum}"
        save()
        shutil.rmtree(folder, ignore_errors=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    def phase(name: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — a failed phase is reported, the others still run
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: FAILED {result['errors'][name]}\n{traceback.format_exc()}")
            return None
        finally:
            save()

    try:
        t0 = time.perf_counter()
        result["build"] = phase("build", lambda: build(folder, layers, hidden, inter, device))
        if result["build"] is None:
            raise SystemExit("could not write the weights: nothing to measure")
        result["build"]["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"build  {result['build']['seconds']} s → {folder}")
        if device.type == "cuda":
            result["prims"] = phase("prims", lambda: prims(device, hidden, inter))
        else:  # warm the solvers the same way on the CPU (tiny)
            torch.linalg.eigh(torch.eye(8, dtype=torch.float64, device=device))

        fast = phase("fast", lambda: run_fast(folder, device))
        if fast is not None:
            reports, secs = fast
            result["fast"] = {"seconds": round(secs, 1), "aim_s": 60, "summary": summary_of(reports)}
            log(f"fast   FT + LoRA, {sum(len(r['modules']) for r in reports.values())} module reports: {secs:.1f} s "
                f"{json.dumps(result['fast']['summary'])}")

            def check():
                names = {module_name(layer, t) for layer in sorted(sample) for t in LLAMA_MODULE_TYPES}
                pick = lambda items: (it for it in items if it.name in names)  # noqa: E731
                sync(device)
                t0 = time.perf_counter()
                ref = weights_reports({"FT": pick(ft_deltas(folder / "base", folder / "ft", device=device)),
                                       "LoRA": pick(lora_factors(folder / "adapter", folder / "base", device=device))},
                                      device=device, path="reference")
                sync(device)
                secs_ref = time.perf_counter() - t0
                cmp = compare(reports, ref, names)
                n_all = sum(len(r["modules"]) for r in reports.values()) // 2
                return {"sample_layers": sorted(sample), "reference_seconds": round(secs_ref, 1),
                        "reference_seconds_extrapolated": round(secs_ref * n_all / len(names), 1), "compare": cmp}

            result["check"] = phase("check", check)
            if result["check"]:
                for label, c in result["check"]["compare"].items():
                    log(f"check  {label}: {'OK' if c['ok'] else 'FAILED ' + str(c['failed'][:5])} "
                        f"max dev {json.dumps({k: float(f'{v:.2e}') for k, v in c['max_deviation'].items()})} "
                        f"closest |max_cos − ε| {c['closest_intruder_margin']:.2e}")
                log(f"check  reference path on {len(sample) * 7} modules × 2: {result['check']['reference_seconds']} s "
                    f"(→ {result['check']['reference_seconds_extrapolated']} s for all)")

        result["dare"] = phase("dare", lambda: dare_phase(folder, device, hidden, inter, layers))

        if time.perf_counter() - T0 < args.budget_s and fast is not None:
            def gram32():
                reps32, secs32 = run_fast(folder, device, intruder_method="gram32")
                same = all(a["intruder_detail"]["is_intruder"] == b["intruder_detail"]["is_intruder"]
                           for label in reps32 for a, b in zip(reps32[label]["modules"], reports[label]["modules"]))
                dev = max(abs(x - y) for label in reps32 for a, b in zip(reps32[label]["modules"], reports[label]["modules"])
                          for x, y in zip(a["intruder_detail"]["max_cos"], b["intruder_detail"]["max_cos"]))
                return {"seconds": round(secs32, 1), "decisions_identical": same, "max_cos_max_abs_dev": dev,
                        "summary": summary_of(reps32)}
            result["gram32"] = phase("gram32", gram32)
            if result["gram32"]:
                log(f"gram32 {json.dumps(result['gram32'])}")
        else:
            result["gram32"] = "skipped: time budget"
            log("gram32 skipped (time budget)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    save()
    print_table(result)


def print_table(r: dict) -> None:
    print("\n=== §9 weights at the 1.3B shape ===")
    if r.get("fast"):
        print(f"fast path, FT + LoRA, all metrics (no DARE re-evaluation): {r['fast']['seconds']} s (aim ≤ 60 s)")
        for label, s in r["fast"]["summary"].items():
            print(f"  {label:<5} intruders {s['intruders']:>4}  routes {s['routes']}  "
                  f"closest |max_cos − ε| {s['closest_intruder_margin']:.2e}")
    if r.get("check"):
        c = r["check"]
        print(f"reference path (float64 SVDs): {c['reference_seconds']} s on the sample → "
              f"≈ {c['reference_seconds_extrapolated']} s for all; speed-up ≈ "
              f"{c['reference_seconds_extrapolated'] / max(r['fast']['seconds'], 1e-9):.1f}×")
        for label, v in c["compare"].items():
            print(f"  check {label:<5} {'OK' if v['ok'] else 'FAILED'}  " +
                  "  ".join(f"{k} {d:.1e} (≤ {v['tolerance'][k]:.0e})" for k, d in v["max_deviation"].items()))
    if r.get("dare"):
        for label, v in r["dare"].items():
            print(f"DARE/magnitude {label:<5} load {v['load_resident_s']} s  DARE pass {v['dare_p0.9_s']} s  "
                  f"magnitude pass {v['magnitude_keep0.1_s']} s  (CPU generator ≈ {v['dare_cpu_generator_s_extrapolated']} s)"
                  f"  magnitude GPU == CPU: {v['magnitude_gpu_equals_cpu']}")
    if isinstance(r.get("gram32"), dict):
        g = r["gram32"]
        print(f"gram32 variant: {g['seconds']} s, decisions identical: {g['decisions_identical']}, "
              f"max |Δ max_cos| {g['max_cos_max_abs_dev']:.1e}")
    if r["errors"]:
        print("ERRORS:", json.dumps(r["errors"], indent=1))
    print(f"total {r['total_seconds']} s")


if __name__ == "__main__":
    main()
