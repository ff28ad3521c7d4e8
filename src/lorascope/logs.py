"""A quiet console: lorascope prints its own progress; the libraries it drives do not print theirs.

transformers' weight-loading / shard-writing progress bars and its "Token indices sequence length is longer than
the specified maximum" warning (lorascope counts and reports truncation itself, §4), datasets' and the hub's
progress bars, and Optuna's per-trial INFO lines (17 and dozens per demo) are switched off — in the CLI's
process and in every worker process the executors start. Errors still surface.
"""

from __future__ import annotations

import os
import sys

_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DATASETS_VERBOSITY": "error",
    "WANDB_SILENT": "true",
    "RAY_DEDUP_LOGS": "1",
}


def quiet_third_party() -> None:
    """Environment first: transformers, the hub and datasets read it when they are imported (and child processes
    inherit it), so a command that never imports them does not pay for importing them here (~1 s). Libraries
    already imported are set live; Optuna resets its logger on import, so ``quiet_optuna`` runs where it is
    imported (train/hpo.py)."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    if "optuna" in sys.modules:
        quiet_optuna()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
