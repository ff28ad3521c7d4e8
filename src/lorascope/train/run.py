"""One training run end to end: data → model (FT or LoRA) → loop → best checkpoint → test predictions.

A run folder is a result only when its manifest says ``completed``; a diverged run leaves ``failed.json``
with diagnostics and a ``failed`` manifest, never ``results.json``. Rerunning a completed run returns its
results; rerunning an interrupted one resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from lorascope.config import config_hash, result_hash
from lorascope.config.schema import StudyConfig
from lorascope.data.load import task_data
from lorascope.data.prompts import prompt
from lorascope.data.tokenize import encode_train
from lorascope.data.types import TaskData
from lorascope.errors import LorascopeError
from lorascope.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from lorascope.manifest import is_completed, run_manifest
from lorascope.models.load import load_causal_lm
from lorascope.models.lora import apply_lora
from lorascope.models.tokenizer import tokenizer_for
from lorascope.results import layout
from lorascope.train import speed
from lorascope.train.checkpoint import latest_checkpoint, load_trainable_state, trainable_state
from lorascope.train.collapse import PROBE_PROMPTS, output_collapse
from lorascope.train.dist import DistInfo, barrier, root_unsharded, wrap_for_strategy
from lorascope.train.evaluate import PRIMARY, autocast_ctx, evaluate
from lorascope.train.fused_lora.install import install_fused_lora
from lorascope.train.fused_lora.select import resolve_lora_kernel
from lorascope.train.holdout import without_test
from lorascope.train.loop import LoopSettings, TrainingDiverged, train_loop
from lorascope.train.loss import TargetTokenLoss
from lorascope.train.seeds import run_seeds
from lorascope.train.tracking import Tracker

METHODS = ("ft", "lora", "lora_qv")


def check_lr(lr, where: str = "") -> None:
    """Refuse a learning rate that is not a finite number > 0; ``where`` prefixes the message (e.g. the gate)."""
    import math

    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise LorascopeError(f"{where}learning rate must be a finite number > 0, got {lr}")


@dataclass(frozen=True)
class RunSpec:
    """What distinguishes one run: task, method, learning rate, replicate; ``hpo`` runs never see test."""

    task: str
    method: str
    lr: float
    replicate: int = 0
    hpo: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        if self.method not in METHODS:
            raise LorascopeError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.replicate < 0:
            raise LorascopeError(f"replicate must be ≥ 0, got {self.replicate}")

    @property
    def name(self) -> str:
        return f"{self.task}-{self.method}-lr{self.lr:g}-r{self.replicate}" + ("-hpo" if self.hpo else "")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def loop_settings(cfg: StudyConfig, spec: RunSpec, device: torch.device) -> LoopSettings:
    method_cfg = cfg.ft if spec.method == "ft" else cfg.lora
    t = cfg.train
    return LoopSettings(lr=spec.lr, weight_decay=method_cfg.weight_decay, epochs=t.epochs[spec.task],
                        effective_batch=t.effective_batch, micro_batch=t.micro_batch, warmup_ratio=t.warmup_ratio,
                        grad_clip=t.grad_clip, evals_per_epoch=t.evals_per_epoch, max_steps=t.max_steps,
                        checkpoint_every=t.checkpoint_every, bf16=t.bf16_on_cuda and device.type == "cuda",
                        divergence_factor=t.divergence_factor)


def build_model(cfg: StudyConfig, method: str, init_seed: int, device: torch.device):
    if method not in METHODS:
        raise LorascopeError(f"unknown method {method!r}; expected one of {METHODS}")
    model = load_causal_lm(cfg.model, device)
    if method != "ft":
        model = apply_lora(model, cfg.lora, init_seed=init_seed, method=method)
    return model


def speed_up(model, cfg: StudyConfig, method: str, device: torch.device) -> str | None:
    """CUDA only (CPU numerics stay exact): frozen LoRA base weights in bf16 (what autocast computes with
    anyway), the fused LoRA kernels (``train.lora_kernel``; docs/fused_lora.md) and per-layer torch.compile.
    Measured in docs/benchmarks.md. Returns the LoRA kernels used ("fused" / "peft"; None for FT)."""
    bf16 = cfg.train.bf16_on_cuda and device.type == "cuda"
    kernel = None
    if method != "ft":
        speed.prepare_lora_for_speed(model, device, bf16)
        kernel = resolve_lora_kernel(cfg.train.lora_kernel, device, bf16=bf16, strategy=cfg.train.strategy)
        if kernel == "fused":
            install_fused_lora(model)
    if device.type == "cuda" and cfg.train.compile:
        speed.compile_layers(model)
    return kernel


def eager():
    """Evaluation (KV-cache decoding, no-grad scoring) runs eagerly: compiled layers would recompile for it."""
    import contextlib

    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def save_final_model(model, tokenizer, folder: Path, method: str) -> None:
    """LoRA: the adapter in PEFT format (loadable by PEFT and vLLM); FT: a full HF model folder."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if method == "ft":
            tokenizer.save_pretrained(tmp)


def _truncate_metrics_log(out_dir: Path) -> None:
    """Before a (re)start, drop log lines past the checkpoint it resumes from (they are recomputed identically);
    with no checkpoint the run starts from step 0, so every line of an earlier, killed attempt goes (a retried
    run killed before its first checkpoint logged its first steps twice)."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return
    ckpt = latest_checkpoint(out_dir / "checkpoints")
    step = json.loads((ckpt / "state.json").read_text())["step"] if ckpt is not None else 0
    keep = [ln for ln in path.read_text().splitlines() if json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def run_identity(cfg: StudyConfig, spec: RunSpec, data: TaskData) -> str:
    """What makes a run *this* run: spec, resolved config, and the data (split scheme, sizes, file hashes).
    A folder's results are reused, and its checkpoints resumed, only for the same identity."""
    import hashlib

    from lorascope.config.load import canonical_json

    tree = {"spec": spec.__dict__, "config": result_hash(cfg), "data": data.describe(),
            "files": [f.sha256 for f in data.files]}
    return hashlib.sha256(canonical_json(tree).encode()).hexdigest()[:16]


def check_folder_identity(out_dir: Path, identity: str) -> None:
    """Refuse to touch a folder that holds another run (before anything in it is overwritten)."""
    path = out_dir / "manifest.json"
    if path.is_file():
        found = json.loads(path.read_text()).get("identity")
        if found is not None and found != identity:
            raise LorascopeError(f"{out_dir} belongs to another run (different spec, config or data): "
                                 "refusing to overwrite or resume it. Use another --out or delete the folder.")


def run_training(cfg: StudyConfig, spec: RunSpec, out_dir: Path, *, data: TaskData | None = None,
                 data_dir: str | None = None, device: torch.device | None = None, dist: DistInfo = DistInfo()) -> dict:
    """Train, select the best validation checkpoint, evaluate on test (not in HPO). Returns ``results.json``.

    Under torchrun (``dist.world_size > 1``) every rank trains and validates; rank 0 alone writes, and after
    training evaluates test on a fresh unsharded copy of the best weights.
    """
    out_dir = Path(out_dir)
    device = device or default_device()
    seeds = run_seeds(cfg.seeds, spec.replicate)
    if data is None:
        data = task_data(cfg, spec.task, data_dir=data_dir, subsample=True)
    if spec.hpo:
        data = without_test(data)
    identity = run_identity(cfg, spec, data)
    if is_completed(out_dir, identity=identity) and (out_dir / "results.json").is_file():
        return json.loads((out_dir / "results.json").read_text())
    check_folder_identity(out_dir, identity)
    if dist.is_main:
        for stale in ("failed.json", "results.json"):
            (out_dir / stale).unlink(missing_ok=True)
    with run_manifest(out_dir, cfg, command=f"train {spec.name}", seeds={**cfg.seeds.model_dump(), **seeds.as_dict()},
                      extra={"run": spec.__dict__, "data": data.describe(), "identity": identity}) \
            if dist.is_main else _nullmanifest() as manifest:
        tokenizer = tokenizer_for(cfg.model)
        model = build_model(cfg, spec.method, seeds.init, device)
        lora_kernel = speed_up(model, cfg, spec.method, device)
        train_enc, dropped = encode_train(tokenizer, data["train"], cfg.data.max_length)
        settings = loop_settings(cfg, spec, device)
        tracker = Tracker(out_dir, cfg.tracking, name=spec.name, group=f"{cfg.name}-{config_hash(cfg)}",
                          config={"run": spec.__dict__, "settings": settings.__dict__, "seeds": seeds.as_dict()},
                          enabled=dist.is_main)
        if dist.is_main:
            _truncate_metrics_log(out_dir)
        barrier(dist)
        ev = dict(batch_size=cfg.train.eval_batch_size, max_length=cfg.data.max_length,
                  max_new_tokens=cfg.data.max_new_tokens, device=device, bf16=settings.bf16)

        def validate() -> dict:
            with root_unsharded(loss_module), eager():
                synced = dist.world_size > 1
                return evaluate(spec.task, model, tokenizer, data["validation"], **ev, synced_gpus=synced)[0]

        health_prompts = [prompt(ex) for ex in data["validation"][:PROBE_PROMPTS]]

        def probe(baseline: dict | None = None) -> dict:
            # Under the same autocast as training and validation: on CUDA the frozen LoRA base weights are bf16.
            with eager(), autocast_ctx(device, settings.bf16):
                return output_collapse(
                    model, tokenizer, health_prompts, device=device, max_length=cfg.data.max_length, baseline=baseline
                )

        def health() -> dict:
            with root_unsharded(loss_module):
                return probe(start_health)

        def on_best(step: int, metrics: dict) -> None:
            weights = trainable_state(model)  # collective under FSDP: every rank gathers
            if dist.is_main:
                atomic_write_bytes(out_dir / "best" / "weights.safetensors", save_safetensors(weights))
                atomic_write_json(out_dir / "best" / "best.json", {"step": step, "metrics": metrics})

        # The starting model's outputs, the baseline of the collapse checks: measured before the strategy wraps the
        # model (FSDP wants its first forward through the root module).
        start_health = probe() if health_prompts else None
        # No padding mask on CUDA: exact for right-padded batches, and attention takes its fused causal path.
        loss_module = wrap_for_strategy(
            TargetTokenLoss(model, causal_no_mask=device.type == "cuda"), model, dist, device
        )
        try:
            res = train_loop(
                loss_module,
                model,
                train_enc,
                settings,
                seeds,
                out_dir,
                pad_id=tokenizer.pad_token_id,
                device=device,
                dist=dist,
                validate=validate,
                primary=PRIMARY[spec.task],
                on_best=on_best,
                log=tracker.log,
                identity=identity,
                health=health if health_prompts else None,
            )
        except TrainingDiverged as exc:
            if dist.is_main:
                atomic_write_json(out_dir / "failed.json", {"error": str(exc), **exc.diagnostics}, allow_nan=True)
            tracker.finish("failed")
            raise
        barrier(dist)
        if dist.strategy != "single":  # under torchrun, whatever the world size
            if not dist.is_main:
                tracker.finish("completed")
                return {}
            # A fresh unsharded model on rank 0: test evaluation and saving need no collectives.
            model = build_model(cfg, spec.method, seeds.init, device)
            last = out_dir / "checkpoints" / f"step-{res.steps:06d}" / "weights.safetensors"
            load_trainable_state(model, load_file(last))
        if (out_dir / "best" / "weights.safetensors").is_file():
            load_trainable_state(model, load_file(out_dir / "best" / "weights.safetensors"))
        results = {
            "run": spec.__dict__,
            "name": spec.name,
            "data": data.describe(),
            "seeds": seeds.as_dict(),
            "steps": res.steps,
            "best_step": res.best_step,
            "validation_best": res.best_metric,
            "primary": PRIMARY[spec.task],
            "train_examples": len(train_enc),
            "train_dropped": len(dropped),
        }
        if not spec.hpo and dist.is_main:
            with eager():
                metrics, records = evaluate(spec.task, model, tokenizer, data["test"], **ev)
            results["test"] = metrics
            atomic_write_text(out_dir / "predictions_test.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        if dist.is_main:
            save_final_model(model, tokenizer, layout.saved_model_dir(out_dir, spec.method), spec.method)
            results["world_size"], results["strategy"] = dist.world_size, dist.strategy
            if lora_kernel is not None:
                results["lora_kernel"] = lora_kernel
            atomic_write_json(out_dir / "results.json", results)
            manifest["results"] = {k: results[k] for k in ("validation_best", "best_step", "steps")}
        tracker.finish("completed")
    return results


class _nullmanifest:
    """Ranks other than 0 write no manifest."""

    def __enter__(self):
        return {}

    def __exit__(self, *exc):
        return False
