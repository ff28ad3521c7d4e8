"""What STUDY.md fixes, key by key, so a config's departures from the protocol can be listed (the report's
Limitations; ``lorascope plan``). The protocol value is the schema default (every number STUDY.md fixes is a
default there), except where the schema default is a practical choice rather than the protocol's: the
backends (§10 names vllm too; it needs its own install) and the demo-only keys.

Execution-only keys (parallelism, batch sizes for evaluation, paths, tracking) are not protocol and never
listed.
"""

from __future__ import annotations

from typing import Any

from lorascope.config.load import dotted_get
from lorascope.config.schema import StudyConfig

# The primary test metric of each task (§5, §12): the validity gate, criterion A, HPO's selection, the report.
PRIMARY_METRIC = {"mrpc": "accuracy", "squad_v2": "f1"}
# Drift's out-of-task probes are the other task's inputs (§8).
OTHER_TASK = {"mrpc": "squad_v2", "squad_v2": "mrpc"}

# dotted key → the STUDY.md section that fixes it
PROTOCOL_KEYS: dict[str, str] = {
    "model.name_or_path": "§2", "model.eos_token": "§4",
    "data.max_length": "§4", "data.max_new_tokens": "§4", "data.subsample": "§3", "data.subsample_by_task": "§3",
    "data.probe_size": "§3, §8",
    "seeds.replicates": "§5",
    "ft.lr_grid": "§5", "ft.weight_decay": "§5",
    "lora.r": "§5", "lora.alpha": "§5", "lora.dropout": "§5", "lora.preset": "§5", "lora.lr_grid": "§5",
    "lora.weight_decay": "§5",
    "train.effective_batch": "§5", "train.warmup_ratio": "§5", "train.grad_clip": "§5", "train.epochs": "§5",
    "train.evals_per_epoch": "§5", "train.bf16_on_cuda": "§5",
    "sanity.n_examples": "§6", "sanity.max_steps": "§6", "sanity.loss_threshold": "§6",
    "drift.poolings": "§8", "drift.max_length": "§8", "drift.rbf_sigma_factor": "§8",
    "serve.backends": "§10", "serve.scenarios": "§10", "serve.batch_sizes": "§10", "serve.output_modes": "§10",
    "serve.new_tokens": "§10", "serve.requests": "§10",
    "stats.confidence": "§11", "stats.bootstrap_resamples": "§11", "stats.equivalence_margin": "§12",
    "stats.drift_reduction_threshold": "§12", "stats.overhead_threshold": "§12", "stats.min_timed_requests": "§10",
}
# Where the protocol's value is not the schema default.
PROTOCOL_VALUES: dict[str, Any] = {"serve.backends": ["vllm", "native", "hf-peft"],
                                   "drift.max_length": "the training length (data.max_length)"}


_MISSING = object()


def _resolved(config: dict | StudyConfig) -> tuple[dict, bool]:
    """The config with every default filled in (a manifest records the resolved config; an older or partial one
    is validated here). Returns (tree, complete): an invalid tree is used as it is, and keys it lacks are skipped."""
    if hasattr(config, "model_dump"):  # a StudyConfig, or a stage's view of one
        return config.model_dump(mode="json"), True
    try:
        return StudyConfig.model_validate(config).model_dump(mode="json"), True
    except ValueError:  # pydantic's ValidationError: e.g. a manifest written by an older schema
        return config, False


def departures(config: dict | StudyConfig) -> list[dict]:
    """``[{"key", "value", "protocol", "section"}]`` for every protocol key whose value differs; ``config`` is
    a resolved config (as a manifest records it) or a ``StudyConfig``."""
    tree, complete = _resolved(config)
    default = StudyConfig().model_dump(mode="json")
    out = []
    for key, section in PROTOCOL_KEYS.items():
        value = dotted_get(tree, key)
        if not complete and dotted_get(tree, key.rsplit(".", 1)[0]) is None:
            continue  # a partial config that does not say: not a departure we can claim
        protocol = PROTOCOL_VALUES.get(key, dotted_get(default, key))
        if key == "drift.max_length":
            if value is not None and value < (dotted_get(tree, "data.max_length") or 0):
                out.append({"key": key, "value": value, "protocol": protocol, "section": section})
            continue
        if key == "serve.backends" and value is not None and set(value) == set(protocol):
            continue
        if value != protocol:
            out.append({"key": key, "value": value, "protocol": protocol, "section": section})
    return out
