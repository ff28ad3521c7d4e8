"""The sanity gate (§6): before any grid, each (task, method) must memorise 10 training examples.

Train on ``n_examples`` training examples (fixed by the split seed, among those that fit ``max_length``)
until the step loss on targets is ≤ ``loss_threshold`` or ``max_steps``; then evaluate on the same
examples: MRPC accuracy and SQuAD EM must be 100%. A failure stops the study with the loss curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lorascope.config import result_hash
from lorascope.config.schema import StudyConfig
from lorascope.data.load import task_data
from lorascope.data.tokenize import encode_train
from lorascope.data.types import TaskData
from lorascope.errors import LorascopeError
from lorascope.io import atomic_write_json
from lorascope.manifest import is_completed, run_manifest
from lorascope.models.tokenizer import tokenizer_for
from lorascope.train.evaluate import evaluate
from lorascope.train.loop import LoopSettings, train_loop
from lorascope.train.loss import TargetTokenLoss
from lorascope.train.run import build_model, check_lr, default_device
from lorascope.train.seeds import run_seeds
from lorascope.train.tracking import Tracker

GATE_METRIC = {"mrpc": "accuracy", "squad_v2": "exact"}


class SanityGateFailed(LorascopeError):
    """A (task, method) could not memorise its sanity examples; the study must stop."""


def pick_examples(data: TaskData, tokenizer, n: int, max_length: int, seed: int) -> list:
    """``n`` training examples, seeded, among those whose training sequence fits ``max_length``."""
    fitting, _ = encode_train(tokenizer, data["train"], max_length)
    fit_ids = {e.id for e in fitting}
    pool = [ex for ex in data["train"] if ex.id in fit_ids]
    if len(pool) < n:
        raise SanityGateFailed(f"only {len(pool)} training examples fit max_length {max_length}; need {n}")
    idx = np.sort(np.random.default_rng([seed, 6]).choice(len(pool), size=n, replace=False))
    return [pool[i] for i in idx]


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def run_sanity(cfg: StudyConfig, task: str, method: str, out_dir: Path, *, data_dir: str | None = None,
               lr: float | None = None, device=None) -> dict:
    """Run the gate for one (task, method); writes ``sanity.json`` and the loss curve. Returns the verdict."""
    out_dir = Path(out_dir)
    sc = cfg.sanity
    lr = lr if lr is not None else sc.lr[method]
    check_lr(lr, f"sanity gate {task}/{method}: ")
    identity = f"sanity:{task}:{method}:{lr!r}:{result_hash(cfg)}"
    if is_completed(out_dir, identity=identity) and (out_dir / "sanity.json").is_file():
        return json.loads((out_dir / "sanity.json").read_text())
    device = device or default_device()
    seeds = run_seeds(cfg.seeds, 0)
    with run_manifest(
        out_dir, cfg, command=f"sanity {task} {method}", extra={"lr": lr, "identity": identity}
    ) as manifest:
        data = task_data(cfg, task, data_dir=data_dir)
        tokenizer = tokenizer_for(cfg.model)
        examples = pick_examples(data, tokenizer, sc.n_examples, cfg.data.max_length, cfg.seeds.split)
        train_enc, _ = encode_train(tokenizer, examples, cfg.data.max_length)
        model = build_model(cfg, method, seeds.init, device)
        # One batch = all examples, so "epochs" counts steps; max_steps caps them (§6: 300).
        settings = LoopSettings(
            lr=lr,
            weight_decay=0.0,
            epochs=sc.max_steps,
            effective_batch=len(train_enc),
            micro_batch=_largest_divisor(len(train_enc), cfg.train.micro_batch),
            warmup_ratio=0.0,
            grad_clip=cfg.train.grad_clip,
            evals_per_epoch=None,
            max_steps=sc.max_steps,
            checkpoint_every=sc.max_steps,
            bf16=cfg.train.bf16_on_cuda,
            stop_loss=sc.loss_threshold,
        )
        tracker = Tracker(
            out_dir, cfg.tracking, name=f"sanity-{task}-{method}", config={"lr": lr, "task": task, "method": method}
        )
        res = train_loop(
            TargetTokenLoss(model),
            model,
            train_enc,
            settings,
            seeds,
            out_dir,
            pad_id=tokenizer.pad_token_id,
            device=device,
            log=tracker.log,
            identity=identity,
        )
        metrics, records = evaluate(
            task,
            model,
            tokenizer,
            examples,
            batch_size=cfg.train.eval_batch_size,
            max_length=cfg.data.max_length,
            max_new_tokens=cfg.data.max_new_tokens,
            device=device,
            bf16=settings.bf16,
        )
        curve = [h["loss"] for h in res.history if "loss" in h]
        final_loss = curve[-1] if curve else None
        passed = metrics[GATE_METRIC[task]] == 100.0
        verdict = {
            "task": task,
            "method": method,
            "lr": lr,
            "n_examples": len(examples),
            "steps": res.steps,
            "final_loss": final_loss,
            "reached_loss_threshold": res.stopped_early,
            "metric": GATE_METRIC[task],
            "score": metrics[GATE_METRIC[task]],
            "passed": passed,
            "loss_curve": curve,
            "examples": [r["id"] for r in records],
            "records": records,
        }
        atomic_write_json(out_dir / "sanity.json", verdict)
        tracker.finish()
        manifest["passed"] = passed
    return verdict
