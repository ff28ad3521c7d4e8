"""A quiet console: lorascope prints its own progress; the libraries it drives do not print theirs.

transformers' weight-loading / shard-writing progress bars and its "Token indices sequence length is longer than
the specified maximum" warning (lorascope counts and reports truncation itself, §4), datasets' and the hub's
progress bars, and Optuna's per-trial INFO lines (17 and dozens per demo) are switched off — in the CLI's
process and in every worker process the executors start. Errors still surface.
"""

from __future__ import annotations

import logging
import os

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
    """Environment first (for libraries imported later, and for child processes), then the live loggers."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
