"""A results folder is bound to the config it was made with (the root ``manifest.json`` records it).

Every command that reads an existing results folder (``run``, ``stats``, ``report``, ``drift``, ``weights``,
``serve-bench``) starts from that recorded config, not from whatever ``configs/*.yaml`` the current directory
holds. Overrides of analysis sections (drift, serve, stats, the analysis seeds) and execution keys are allowed
— every stage manifest records how its config differs from the study's (``manifest.build_manifest``) and the
report shows it; an override of anything that defines the trained runs (model, data, training, LoRA) is an
error naming the key, raised before anything runs: those results would describe other models than the
folder's. A folder without a study manifest (e.g. runs made one by one with ``lorascope train``) takes the
given config, and the command says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorascope.config.load import config_diff, config_from_tree, dotted_get, key_role, parse_overrides
from lorascope.config.schema import StudyConfig
from lorascope.errors import ConfigError
from lorascope.results.layout import MANIFEST


def recorded_config(results_dir: str | Path) -> dict | None:
    """The resolved config in ``<results_dir>/manifest.json`` (the study's root manifest), or None."""
    path = Path(results_dir) / MANIFEST
    try:
        man = json.loads(path.read_text())
    except OSError:
        return None
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON; cannot tell which config this results folder was made with") \
            from None
    cfg = man.get("config") if isinstance(man, dict) else None
    return cfg if isinstance(cfg, dict) else None


def _show(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def training_changes(recorded: dict, cfg: StudyConfig, where: str) -> list[str]:
    """Lines naming every key that defines the trained runs and differs from the recorded config."""
    base = config_from_tree(recorded, (), f"{where}/{MANIFEST}").model_dump(mode="json")
    return [f"{key} = {_show(new)} (this folder was made with {_show(old)})"
            for key, old, new in config_diff(base, cfg.model_dump(mode="json")) if key_role(key) == "training"]


def check_same_training(results_dir: str | Path, cfg: StudyConfig) -> dict | None:
    """Raise ``ConfigError`` if ``cfg`` would train other runs than the folder's; returns the recorded config."""
    recorded = recorded_config(results_dir)
    if recorded is None:
        return None
    changed = training_changes(recorded, cfg, str(results_dir))
    if changed:
        raise ConfigError(f"{results_dir} was made with another configuration of the trained runs:\n  "
                          + "\n  ".join(changed) + "\nThese keys define the models the folder holds; to change them "
                          "use a new --out (analysis settings — drift, serve, stats — may change here).")
    return recorded


def folder_config(results_dir: str | Path, overrides: list[str] | None = None,
                  given: StudyConfig | None = None, *, note=None, fallback=None) -> StudyConfig:
    """The config a command uses on an existing results folder: the recorded one with ``overrides`` (analysis
    and execution keys only). ``given`` (a ``--config`` the user named) must agree on the trained runs; its
    analysis settings win over the recorded ones. Without a recorded config, ``given`` — else what ``fallback``
    (a callable, e.g. loading the CLI's default config file) returns, else the defaults — is used and ``note``
    (a callable) is told so."""
    overrides = list(overrides or [])
    recorded = recorded_config(results_dir)
    if recorded is None:
        if given is None and fallback is not None:
            given = fallback()
        if note is not None:
            note(f"{results_dir} has no study manifest ({MANIFEST} with a config): using "
                 + ("the given config" if given is not None else "the default config"))
        base = given.model_dump(mode="json") if given is not None else {}
        return config_from_tree(base, overrides, "--config" if given is not None else "<defaults>")
    bad = [key for key, _ in parse_overrides(overrides) if key_role(key) == "training"]
    if bad:
        verb = "defines" if len(bad) == 1 else "define"
        made_with = ", ".join(f"{k} = {_show(dotted_get(recorded, k))}" for k in bad)
        raise ConfigError(f"{', '.join(bad)} {verb} the trained runs of {results_dir}, which were made with "
                          f"{made_with}; a command reading this "
                          "folder may override only analysis settings (drift, serve, stats, seeds.probe, "
                          "seeds.bootstrap, seeds.replicates) and execution keys. Use `lorascope run` with a new "
                          "--out to train other models.")
    tree = recorded
    if given is not None:
        changed = training_changes(recorded, given, str(results_dir))
        if changed:
            raise ConfigError(f"the given config disagrees with {results_dir} on the trained runs:\n  "
                              + "\n  ".join(changed))
        tree = given.model_dump(mode="json")
    return config_from_tree(tree, overrides, f"{results_dir}/{MANIFEST}")
