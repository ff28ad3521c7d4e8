"""The quiet console (lorascope/logs.py): libraries stay quiet whether they were imported before or after, and
quieting them does not import them (every CLI command calls it)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os, sys
for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
    os.environ.pop(key, None)
from lorascope.logs import quiet_optuna, quiet_third_party
quiet_third_party()
print("transformers" in sys.modules, "optuna" in sys.modules)
from transformers.utils import logging as hf_logging
import huggingface_hub.utils as hub
print(hf_logging.get_verbosity() == hf_logging.ERROR, hf_logging.is_progress_bar_enabled(),
      hub.are_progress_bars_disabled())
import optuna
quiet_optuna()
print(optuna.logging.get_verbosity() == optuna.logging.WARNING)
"""


def test_quiet_without_importing_and_quiet_once_imported():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True", "False", "True", "True"]
