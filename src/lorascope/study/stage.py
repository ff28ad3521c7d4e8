"""A stage of the study, declared once (``study/stages/<name>.py``): everything else is derived from it.

A ``Stage`` states its name (= the job kind), the config it reads, how it fans out into jobs, which stages it
comes after, its job function, the files it writes, how the driver ingests them into ``results.db``, the
report sections it feeds and its cost model. From these the DAG builder derives every job, its
dependencies and its key (``relevant``: a hash of exactly the config the stage declares it reads); ``lorascope
plan`` derives the plan and GPU-hours; the report derives the flow diagram; the driver the ingesters.

The declaration of what a stage reads is enforced, not trusted: its job function sees the config through a
``ConfigView`` that raises ``UndeclaredConfigRead`` on any key outside the declaration (execution-only keys
excepted), so a stage can never depend on a setting its key ignores (the drift job once read
``stats.confidence`` while its key covered only ``drift``: a changed confidence left stale intervals).
Selectors: ``"training"`` = everything that defines the trained runs (``result_hash``: model, data, training,
LoRA, HPO, sanity, the training seeds); a section (``"drift"``); or one key (``"stats.confidence"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lorascope.config.load import config_hash, key_role, result_hash
from lorascope.config.schema import StudyConfig
from lorascope.errors import LorascopeError


class UndeclaredConfigRead(LorascopeError):
    """A stage read a config key that its declaration (and so its job key) does not cover."""


@dataclass(frozen=True)
class After:
    """A dependency on the jobs of an earlier stage. ``match``: params that must be equal (e.g. ``("task",)``);
    ``where(mine, theirs, cfg)``: a further filter (e.g. the weights stage reads only the lowest replicate)."""

    stage: str
    match: tuple[str, ...] = ()
    where: Callable[[dict, dict, StudyConfig], bool] | None = None


EVERYTHING_BEFORE = "*"  # After(EVERYTHING_BEFORE): every job added before this stage's (statistics, report)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    reads: tuple[str, ...]
    fan_out: Callable[[StudyConfig], list[dict]]
    job_name: Callable[[dict], str]
    run: Callable[..., dict]
    after: tuple[After, ...] = ()
    role: str | Callable[[dict], str] = "vm3"
    gpus: float = 0.0
    ingest: Callable[..., None] | None = None
    report: tuple[str, ...] = ()
    cost: Callable[[Any, dict], dict] | None = None  # (plan.CostModel, params) → wall seconds by part
    include: Callable[[StudyConfig], bool] = field(default=lambda cfg: True)

    def role_of(self, params: dict) -> str:
        return self.role(params) if callable(self.role) else self.role

    @property
    def fn(self) -> str:
        return f"{self.run.__module__}:{self.run.__name__}"


def _value(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def relevant_hash(cfg: StudyConfig, reads: tuple[str, ...]) -> str:
    """The part of a job key that stands for the config: a hash of exactly what the stage reads."""
    tree = cfg.model_dump(mode="json")
    parts = {sel: (result_hash(cfg, length=64) if sel == "training" else _value(tree, sel)) for sel in sorted(reads)}
    return config_hash(parts)


def allowed(reads: tuple[str, ...], dotted: str) -> bool:
    """May a stage that declares ``reads`` read config key ``dotted``? Execution-only keys always."""
    role = key_role(dotted)
    if role == "execution":
        return True
    if role == "training" and "training" in reads:
        return True
    return any(dotted == sel or dotted.startswith(sel + ".") for sel in reads)


class _SectionView:
    """One config section, readable key by key within the declaration."""

    def __init__(self, section: Any, name: str, reads: tuple[str, ...], stage: str):
        object.__setattr__(self, "_s", section)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, key: str) -> Any:
        section = object.__getattribute__(self, "_s")
        if key in type(section).model_fields:
            dotted = f"{object.__getattribute__(self, '_name')}.{key}"
            if not allowed(object.__getattribute__(self, "_reads"), dotted):
                raise UndeclaredConfigRead(f"stage {object.__getattribute__(self, '_stage')!r} read {dotted}, which "
                                           "its declaration does not cover (study/stages/): declare it so that the "
                                           "stage's job key changes with it")
        return getattr(section, key)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a stage's config is read-only")


class ConfigView:
    """``StudyConfig`` as one stage may see it. Whole sections come back as they are when the stage declares
    them (or "training" covers them); a partly declared section comes back as a key-checked view.
    ``model_dump``/``model_copy`` pass through: recording the whole config in a manifest is not reading it."""

    def __init__(self, cfg: StudyConfig, reads: tuple[str, ...], stage: str):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_reads", tuple(reads))
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        cfg = object.__getattribute__(self, "_cfg")
        if name not in StudyConfig.model_fields:
            return getattr(cfg, name)
        reads, stage = object.__getattribute__(self, "_reads"), object.__getattribute__(self, "_stage")
        section = getattr(cfg, name)
        if not hasattr(type(section), "model_fields"):  # a plain value, e.g. ``name``
            if not allowed(reads, name):
                raise UndeclaredConfigRead(f"stage {stage!r} read {name}, which its declaration does not cover")
            return section
        keys = type(section).model_fields
        if all(allowed(reads, f"{name}.{k}") for k in keys):
            return section
        return _SectionView(section, name, reads, stage)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a stage's config is read-only")

    @property
    def unwrapped(self) -> StudyConfig:
        return object.__getattribute__(self, "_cfg")


def describe(stage: Stage) -> dict:
    """A stage as plain data (the plan's JSON, the report's flow diagram)."""
    return {"name": stage.name, "title": stage.title, "reads": list(stage.reads), "gpus": stage.gpus,
            "after": sorted({a.stage for a in stage.after}), "report": list(stage.report),
            "role": stage.role if isinstance(stage.role, str) else "by method"}

