"""Load a YAML study config, apply dotted ``key=value`` overrides, validate, hash.

Errors name the file and the key: a researcher with a typo must see *where* it is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lorascope.config.schema import StudyConfig
from lorascope.errors import ConfigError


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes: a key repeated in one mapping is an error (PyYAML keeps the last
    silently), and ``1e-3`` is a float as in YAML 1.2 (PyYAML follows YAML 1.1, where a float needs a dot,
    so ``lr: 1e-3`` would be the string "1e-3")."""


def _no_duplicate_keys(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)
# The YAML 1.2 core-schema float (plus YAML 1.1's .inf/.nan spellings, which the schema then rejects).
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 — StrictLoader is a SafeLoader


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.epochs.mrpc=1", "seeds.replicates=[0,1]"]`` → ``[(dotted key, YAML-parsed value)]``."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. train.micro_batch=4")
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
        parsed.append((key, value))
    return parsed


def _known_fields(model_cls: type, path: list[str]) -> set[str] | None:
    """Field names at a dotted path of the schema, or None when the path leads into a free-form dict."""
    cls = model_cls
    for part in path:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        cls = field.annotation
        if not hasattr(cls, "model_fields"):
            return None
    return set(cls.model_fields)


def dotted_get(tree: dict, dotted: str) -> Any:
    """The value at a dotted key of a config tree (``"train.epochs"``), None where the path does not exist."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _apply_override(tree: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        known = _known_fields(StudyConfig, parts[:i])
        if known is not None and part not in known:
            raise ConfigError(f"{source}: unknown key {'.'.join(parts[: i + 1])!r} (known here: {sorted(known)})")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
        node = child
    known = _known_fields(StudyConfig, parts[:-1])
    if known is not None and parts[-1] not in known:
        raise ConfigError(f"{source}: unknown key {key!r} (known here: {sorted(known)})")
    node[parts[-1]] = value


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key {loc!r}")
        else:
            lines.append(f"  {loc}: {err['msg']} (got {_show(err.get('input'))})")
    return "\n".join(lines)


def _show(value: Any) -> str:
    """A value as the user wrote it (JSON/YAML-like), never a Python repr."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # nan/inf, or an object pydantic passed through
        return str(value)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    if "\x00" in text:
        raise ConfigError(f"config {path}: not a text file (it contains NUL bytes)")
    try:
        tree = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read ``path`` (or start from the schema defaults), apply overrides, validate.

    Raises ``ConfigError`` naming the file and key on unknown keys, bad types and malformed YAML.
    """
    source = str(path) if path is not None else "<defaults>"
    return config_from_tree(read_yaml(path) if path is not None else {}, overrides, source)


def config_from_tree(tree: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "<config>") -> StudyConfig:
    """Validate a config tree (e.g. the resolved config a results folder's manifest records) after overrides."""
    tree = copy.deepcopy(tree)
    for key, value in parse_overrides(overrides):
        _apply_override(tree, key, value, f"override {key}=… on {source}")
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal content → equal text, whatever the key order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_hash(cfg: StudyConfig | dict, length: int = 16) -> str:
    """Stable SHA-256 (hex prefix) of the resolved config, independent of key order."""
    tree = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg  # a StudyConfig or a stage's view of one
    return hashlib.sha256(canonical_json(tree).encode()).hexdigest()[:length]


# How a run is executed, not what it computes: excluded from ``result_hash`` so that, e.g., a DDP run and a
# single-process run resume from each other's checkpoints and share results.
# ``train.divergence_factor`` is a guard, not a recipe: a run that completed is the same run whatever it was.
# ``lora_kernel`` picks PEFT's modules or the fused kernels for the same LoRA (same function, same dropout rate,
# only another random stream for the masks), so a run's identity — and every existing result — is unchanged.
EXECUTION_KEYS = {"train": ("strategy", "compile", "checkpoint_every", "eval_batch_size", "divergence_factor",
                            "lora_kernel"),
                  "tracking": None, "output": None, "hpo": ("storage",), "executor": None}
# Analysis stages downstream of training: changing them must not invalidate (or re-run) a trained model,
# so ``result_hash`` — the training runs' identity — leaves them out; each analysis stage keys its own
# outputs with ``section_hash`` over what it reads.
DOWNSTREAM_SECTIONS = ("drift", "serve", "stats")
# Seeds that only the analysis stages read (probe sets, bootstrap / DARE draws) and the list of replicates
# (a run's identity has its own replicate; adding a seed must not retrain the existing ones).
DOWNSTREAM_SEEDS = ("probe", "bootstrap", "replicates")


def result_hash(cfg: StudyConfig, length: int = 16) -> str:
    """``config_hash`` without the execution-only keys (``EXECUTION_KEYS``) and the analysis sections."""
    tree = cfg.model_dump(mode="json")
    for section in DOWNSTREAM_SECTIONS:
        tree.pop(section, None)
    for key in DOWNSTREAM_SEEDS:
        tree.get("seeds", {}).pop(key, None)
    for section, keys in EXECUTION_KEYS.items():
        if keys is None:
            tree.pop(section, None)
        else:
            for key in keys:
                tree.get(section, {}).pop(key, None)
    return config_hash(tree, length)


def section_hash(cfg: StudyConfig, *sections: str, length: int = 16) -> str:
    """Hash of the training identity (``result_hash``), the analysis seeds and replicate list, and the named
    downstream sections, e.g. ``"drift"``: an analysis output is stale when the models it reads, its seeds
    or its own settings changed."""
    tree = cfg.model_dump(mode="json")
    seeds = {k: tree["seeds"][k] for k in DOWNSTREAM_SEEDS}
    return config_hash({"training": result_hash(cfg, length=64), "seeds": seeds, **{s: tree[s] for s in sections}},
                       length)


def key_role(dotted: str) -> str:
    """What a config key is to a results folder: ``"training"`` (it defines the trained runs: part of
    ``result_hash``), ``"analysis"`` (a downstream section or seed) or ``"execution"`` (how, not what)."""
    section, _, rest = dotted.partition(".")
    first = rest.split(".", 1)[0]
    if section in DOWNSTREAM_SECTIONS or (section == "seeds" and first in DOWNSTREAM_SEEDS):
        return "analysis"
    if section in EXECUTION_KEYS and (EXECUTION_KEYS[section] is None or first in EXECUTION_KEYS[section]):
        return "execution"
    if section == "name":
        return "execution"
    return "training"


def config_diff(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two config trees, as (key, value in a, value in b); a dict-valued
    key (e.g. ``train.epochs``) is compared whole when either side is not a dict."""
    out = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and prefix.count(".") < 1:
            out += config_diff(va, vb, dotted + ".")
        elif va != vb:
            out.append((dotted, va, vb))
    return out
