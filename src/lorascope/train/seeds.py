"""Named seeds (§5): ``init`` (LoRA init), ``data`` (example order), ``dropout``; one set per replicate.

A replicate's seed for a name is a hash of (base seed, name, replicate), so the streams are independent
of each other and adding a replicate never changes another's seeds.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from lorascope.config.schema import SeedsConfig

NAMES = ("init", "data", "dropout")


def derive_seed(base: int, name: str, replicate: int) -> int:
    digest = hashlib.sha256(f"lorascope:{name}:{base}:{replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class RunSeeds:
    replicate: int
    init: int
    data: int
    dropout: int

    def as_dict(self) -> dict:
        return asdict(self)


def run_seeds(cfg: SeedsConfig, replicate: int) -> RunSeeds:
    return RunSeeds(replicate=replicate, **{n: derive_seed(getattr(cfg, n), n, replicate) for n in NAMES})
