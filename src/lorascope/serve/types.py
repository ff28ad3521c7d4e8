"""What every serving backend returns, and the one interface they share (§10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from lorascope.errors import LorascopeError


class ServeError(LorascopeError):
    """A serving backend cannot run (missing extra, bad adapter, unsupported model)."""


@dataclass
class Generation:
    """One batch's output. Per request: generated token ids (EOS included when it stopped there), time to
    the first token and to the last token, in seconds from the moment the batch was submitted."""

    tokens: list[list[int]]
    ttft_s: list[float]
    e2e_s: list[float]
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    """A started engine for one scenario. ``adapter_ids[i]`` is an index into the engine's adapter list, or
    None for "no adapter"; ``adapter_ids=None`` means no adapter for any row (and no LoRA code when the
    engine was started without adapters)."""

    name: str

    def generate(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                 max_new_tokens: int, stop_at_eos: bool) -> Generation: ...

    def close(self) -> None: ...


def cut_at_eos(tokens: Sequence[int], eos_id: int | None, stop_at_eos: bool) -> list[int]:
    """Tokens up to and including the first EOS when stopping at EOS; all of them otherwise."""
    tokens = list(tokens)
    if stop_at_eos and eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1]
    return tokens


def stop_token(model, eos_id: int, stop_at_eos: bool) -> int:
    """The ``eos_token_id`` to give ``generate``: the model's end token, or — EOS *ignored* (fixed length) —
    an id outside the vocabulary, which greedy decoding can never produce. ``None`` does not work:
    transformers fills an unset ``eos_token_id`` from the checkpoint's generation config (and stops at EOS);
    ``min_new_tokens`` would *suppress* EOS, which changes the greedy tokens."""
    return eos_id if stop_at_eos else int(model.config.vocab_size)
