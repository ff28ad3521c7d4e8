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

# Options every command spells the same way.
ConfigOpt = typer.Option(None, "--config", "-c", help="Study YAML (default: configs/demo.yaml if present; a results "
                         "folder's own config when the command reads one).")
DataDirOpt = typer.Option(None, "--data-dir", help="Local mirror folder (else $LORASCOPE_DATA_DIR, else config).")
TaskOpt = typer.Option(..., "--task", "-t", help="mrpc or squad_v2.")
MethodOpt = typer.Option(..., "--method", "-m", help="ft, lora or lora_qv.")
JsonOpt = typer.Option(False, "--json", help="Print JSON to stdout.")
OverridesArg = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted config overrides, e.g. data.max_length=256.")
ResultsDirArg = typer.Argument(
    ..., metavar="RESULTS_DIR", help="A study results folder (the output root of lorascope run)."
)


def resolve_config(config: Path | None, overrides: list[str] | None) -> StudyConfig:
    """``--config`` (default ``configs/demo.yaml`` when present, else the schema defaults) + overrides."""
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    return load_config(config, overrides or [])


def results_config(results_dir: Path, config: Path | None, overrides: list[str] | None) -> StudyConfig:
    """The config of a command that reads an existing results folder: the folder's own recorded config plus
    analysis overrides (``lorascope.results.config``); ``--config``, when given, must agree on the trained runs."""
    from lorascope.results.config import folder_config

    given = load_config(config, []) if config is not None else None
    # without a study manifest in the folder, fall back to the default config as every command does
    fallback = (lambda: load_config(DEFAULT_CONFIG, [])) if DEFAULT_CONFIG.is_file() else None
    return folder_config(
        results_dir, overrides, given, note=lambda msg: console.print(f"[yellow]note:[/] {msg}", highlight=False),
        fallback=fallback,
    )


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


def print_markdown(text: str) -> None:
    """Report sections on the terminal: rendered tables when it is one, the Markdown itself when redirected."""
    if console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        console.print(text, highlight=False, markup=False, soft_wrap=True)
