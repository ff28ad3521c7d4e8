"""The base model zero-shot with the study's prompts (§7): the floor every tuned model must clear."""

from __future__ import annotations

import json
from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.data.load import task_data
from lorascope.io import atomic_write_json, atomic_write_text
from lorascope.manifest import is_completed, run_manifest
from lorascope.models.load import load_causal_lm
from lorascope.models.tokenizer import tokenizer_for
from lorascope.train.evaluate import PRIMARY, evaluate
from lorascope.train.run import default_device


def run_zero_shot(cfg: StudyConfig, task: str, out_dir: Path, *, data_dir: str | None = None, device=None) -> dict:
    """Evaluate the untuned base model on the test split; writes ``results.json`` and per-example predictions."""
    out_dir = Path(out_dir)
    if is_completed(out_dir, cfg) and (out_dir / "results.json").is_file():
        return json.loads((out_dir / "results.json").read_text())
    device = device or default_device()
    with run_manifest(out_dir, cfg, command=f"zero-shot {task}"):
        data = task_data(cfg, task, data_dir=data_dir, subsample=True)
        tokenizer = tokenizer_for(cfg.model)
        model = load_causal_lm(cfg.model, device)
        metrics, records = evaluate(task, model, tokenizer, data["test"], batch_size=cfg.train.eval_batch_size,
                                    max_length=cfg.data.max_length, max_new_tokens=cfg.data.max_new_tokens,
                                    device=device, bf16=cfg.train.bf16_on_cuda)
        atomic_write_text(out_dir / "predictions_test.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        results = {"name": "base_zero_shot", "task": task, "data": data.describe(), "primary": PRIMARY[task],
                   "test": metrics}
        atomic_write_json(out_dir / "results.json", results)
    return results
