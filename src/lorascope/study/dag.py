"""The study as a DAG of content-addressed jobs (§14).

A ``Job`` is one unit of work (a data stage, one HPO search, one final run, ...). Its *key* hashes what
determines its result: its kind, its parameters, the config it reads (a ``relevant`` hash computed by the
DAG builder, e.g. ``result_hash`` for training, ``section_hash(cfg, "drift")`` for drift) and the keys of
the jobs it depends on. So a config change invalidates exactly the jobs that read it and everything
downstream of them, and nothing else.

A job is *done* when ``<out>/jobs/<name>/manifest.json`` says ``completed`` with ``identity`` = its key
(the manifest's existing identity mechanism, ``is_completed(folder, identity=key)``). Stage outputs live
where the stages always put them (``<task>/runs/...``); the job folder only records that the job ran to
the end, for which key, where, in how many attempts, and its summary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from lorascope.config.load import canonical_json
from lorascope.errors import LorascopeError
from lorascope.manifest import is_completed, read_manifest
from lorascope.results import layout
from lorascope.study.roles import ROLES

KEY_VERSION = 1  # bump when the meaning of a job kind changes, so every key changes with it


@dataclass(frozen=True)
class Job:
    """One node of the study DAG. ``fn`` is ``"module:function"``, imported only where the job runs."""

    name: str
    kind: str
    fn: str
    params: dict = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    role: str = "vm3"
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    relevant: str = ""  # hash of the config this job reads (see module docstring)
    key: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "fn": self.fn, "params": dict(self.params),
                "deps": list(self.deps), "role": self.role, "num_gpus": self.num_gpus, "num_cpus": self.num_cpus,
                "relevant": self.relevant, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**{**d, "deps": tuple(d["deps"]), "params": dict(d["params"])})


def job_key(name: str, kind: str, params: dict, relevant: str, dep_keys: Iterable[str]) -> str:
    # The name (itself derived from the params in the study DAG) keeps two jobs that compute the same thing
    # under different names, and so in different folders, from sharing a key and a store row.
    tree = {"v": KEY_VERSION, "name": name, "kind": kind, "params": params, "config": relevant,
            "deps": sorted(dep_keys)}
    return hashlib.sha256(canonical_json(tree).encode()).hexdigest()[:20]


def job_dir(out_dir: str | Path, name: str) -> Path:
    return layout.job_dir(out_dir, name)


def is_done(out_dir: str | Path, job: Job) -> bool:
    return is_completed(job_dir(out_dir, job.name), identity=job.key)


def job_record(out_dir: str | Path, name: str) -> dict | None:
    """The job folder's manifest (status, identity, attempt, node, result), or None."""
    return read_manifest(job_dir(out_dir, name))


class Dag:
    """Jobs by name, added in dependency order; keys are computed on ``add`` from the deps' keys."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def add(self, name: str, kind: str, fn: str, *, params: dict | None = None, deps: Iterable[str] = (),
            role: str = "vm3", num_gpus: float = 0.0, num_cpus: float = 1.0, relevant: str = "") -> Job:
        if name in self.jobs:
            raise LorascopeError(f"duplicate job name {name!r}")
        if role not in ROLES:
            raise LorascopeError(f"job {name!r}: unknown role {role!r} (expected one of {ROLES})")
        deps = tuple(dict.fromkeys(deps))
        missing = [d for d in deps if d not in self.jobs]
        if missing:  # adding in dependency order also rules out cycles
            raise LorascopeError(f"job {name!r} depends on unknown jobs {missing}")
        params = dict(params or {})
        key = job_key(name, kind, params, relevant, (self.jobs[d].key for d in deps))
        job = Job(name, kind, fn, params, deps, role, float(num_gpus), float(num_cpus), relevant, key)
        self.jobs[name] = job
        return job

    def __iter__(self) -> Iterator[Job]:
        return iter(self.topological())

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, name: str) -> Job:
        return self.jobs[name]

    def topological(self) -> list[Job]:
        """Kahn's algorithm, ties broken by insertion order, so the order is the same on every run."""
        order_index = {name: i for i, name in enumerate(self.jobs)}
        indegree = {name: len(job.deps) for name, job in self.jobs.items()}
        children = self.children()
        ready = [n for n, d in indegree.items() if d == 0]
        out: list[Job] = []
        while ready:
            ready.sort(key=order_index.__getitem__)
            name = ready.pop(0)
            out.append(self.jobs[name])
            for child in children[name]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        if len(out) != len(self.jobs):
            raise LorascopeError("the job graph has a cycle")
        return out

    def children(self) -> dict[str, list[str]]:
        kids: dict[str, list[str]] = {name: [] for name in self.jobs}
        for job in self.jobs.values():
            for dep in job.deps:
                kids[dep].append(job.name)
        return kids

    def descendants(self, name: str) -> set[str]:
        """Every job that (transitively) depends on ``name``: cancelled when ``name`` fails."""
        kids, seen, stack = self.children(), set(), [name]
        while stack:
            for child in kids[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def by_kind(self) -> dict[str, list[Job]]:
        groups: dict[str, list[Job]] = {}
        for job in self.topological():
            groups.setdefault(job.kind, []).append(job)
        return groups
