"""Tokenization (§4): training sequences with loss on target tokens only, evaluation prompts with the
context truncated from the end. Both report counts (dropped / truncated) for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lorascope.data.prompts import prompt, target
from lorascope.data.types import Example, MrpcExample, SquadExample

IGNORE_INDEX = -100  # the label value torch's cross_entropy skips


@dataclass(frozen=True)
class Encoded:
    """One training sequence. ``labels[i]`` is ``IGNORE_INDEX`` on prompt tokens."""

    id: str
    input_ids: list[int]
    labels: list[int]


def split_prompt_target(tokenizer, prompt_text: str, target_text: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with BOS) and of the target (+EOS), tokenized *jointly*.

    SentencePiece tokenizers merge across the boundary differently when the pieces are encoded apart,
    so the joint encoding is split at the prompt's length when the prompt's own ids are its prefix;
    otherwise the target is encoded on its own (rare; still well-defined).
    """
    p_ids = tokenizer(prompt_text)["input_ids"]
    full = tokenizer(prompt_text + target_text)["input_ids"]
    if full[: len(p_ids)] == p_ids:
        t_ids = full[len(p_ids) :]
    else:
        t_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"]
    return p_ids, t_ids + [tokenizer.eos_token_id]


def encode_train(tokenizer, examples: list[Example], max_length: int) -> tuple[list[Encoded], list[str]]:
    """Encode for training; sequences longer than ``max_length`` are dropped and their ids returned (§4)."""
    kept, dropped = [], []
    for ex in examples:
        p_ids, t_ids = split_prompt_target(tokenizer, prompt(ex), target(ex))
        ids = p_ids + t_ids
        if len(ids) > max_length:
            dropped.append(ex.id)
            continue
        kept.append(Encoded(ex.id, ids, [IGNORE_INDEX] * len(p_ids) + t_ids))
    return kept, dropped


def _truncated(ex: Example, keep: float) -> Example:
    """The example with its context cut to a fraction ``keep`` of its characters (from the end)."""
    if isinstance(ex, SquadExample):
        return replace(ex, context=ex.context[: int(len(ex.context) * keep)])
    assert isinstance(ex, MrpcExample)
    # MRPC has no context: cut the longer sentence, which loses the least of the pair.
    if len(ex.sentence1) >= len(ex.sentence2):
        return replace(ex, sentence1=ex.sentence1[: int(len(ex.sentence1) * keep)])
    return replace(ex, sentence2=ex.sentence2[: int(len(ex.sentence2) * keep)])


def encode_eval_prompt(tokenizer, ex: Example, budget: int) -> tuple[list[int], bool]:
    """Prompt ids no longer than ``budget`` tokens, truncating the context from its end if needed.

    Binary search over the kept fraction of context characters: tokenizer-agnostic and O(log n) encodes.
    Returns (ids, truncated?).
    """
    ids = tokenizer(prompt(ex))["input_ids"]
    if len(ids) <= budget:
        return ids, False
    lo, hi, best = 0.0, 1.0, None
    for _ in range(20):
        mid = (lo + hi) / 2
        cand = tokenizer(prompt(_truncated(ex, mid)))["input_ids"]
        if len(cand) <= budget:
            lo, best = mid, cand
        else:
            hi = mid
    if best is None:
        best = tokenizer(prompt(_truncated(ex, 0.0)))["input_ids"]
        if len(best) > budget:
            raise ValueError(f"example {ex.id}: the prompt without context is {len(best)} tokens > budget {budget}")
    return best, True


def token_lengths(tokenizer, examples: list[Example]) -> tuple[list[int], list[int]]:
    """(prompt lengths, full training-sequence lengths incl. EOS), batched for speed (statistics only)."""
    prompts = [prompt(ex) for ex in examples]
    fulls = [p + target(ex) for p, ex in zip(prompts, examples)]
    p_len = [len(x) for x in tokenizer(prompts, verbose=False)["input_ids"]] if prompts else []
    f_len = [len(x) + 1 for x in tokenizer(fulls, verbose=False)["input_ids"]] if fulls else []
    return p_len, f_len
