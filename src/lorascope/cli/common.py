"""Shared CLI plumbing: config loading from options, user-facing errors, JSON printing."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.text import Text

from lorascope.config import load_config
from lorascope.config.schema import StudyConfig
from lorascope.errors import LorascopeError

console = Console(stderr=True)
DEFAULT_CONFIG = Path("configs/demo.yaml")


def resolve_config(config: Path | None, overrides: list[str] | None) -> StudyConfig:
    """``--config`` (default ``configs/demo.yaml`` when present, else the schema defaults) + overrides."""
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    return load_config(config, overrides or [])


def results_config(results_dir: Path, config: Path | None, overrides: list[str] | None) -> StudyConfig:
    """The config of a command that reads an existing results folder: the folder's own recorded config plus
    analysis overrides (``lorascope.folder_config``); ``--config``, when given, must agree on the trained runs."""
    from lorascope.folder_config import folder_config

    given = load_config(config, []) if config is not None else None
    if given is None and DEFAULT_CONFIG.is_file():
        # without a study manifest in the folder, fall back to the default config as every command does
        from lorascope.folder_config import recorded_config

        if recorded_config(results_dir) is None:
            given = load_config(DEFAULT_CONFIG, [])
    return folder_config(results_dir, overrides, given,
                         note=lambda msg: console.print(f"[yellow]note:[/] {msg}", highlight=False))


def user_errors(fn: Callable) -> Callable:
    """Print a LorascopeError as one clear red message and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LorascopeError as exc:
            console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None

    return wrapper


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
