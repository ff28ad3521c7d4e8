"""Prompt formatting (§4): the generative formulation shared by training, evaluation and drift probes."""

from __future__ import annotations

from lorascope.data.types import Example, MrpcExample, SquadExample

MRPC_TEMPLATE = (
    "Sentence 1: {s1}\nSentence 2: {s2}\nQuestion: Do both sentences mean the same thing?\nAnswer:"
)
SQUAD_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"
MRPC_VERBALIZERS = {1: " yes", 0: " no"}
NO_ANSWER_TEXT = " unanswerable"


def mrpc_prompt(s1: str, s2: str) -> str:
    return MRPC_TEMPLATE.format(s1=s1, s2=s2)


def squad_prompt(context: str, question: str) -> str:
    return SQUAD_TEMPLATE.format(context=context, question=question)


def prompt(ex: Example) -> str:
    if isinstance(ex, MrpcExample):
        return mrpc_prompt(ex.sentence1, ex.sentence2)
    return squad_prompt(ex.context, ex.question)


def target(ex: Example) -> str:
    """The supervised continuation, without EOS (the tokenizer layer appends it)."""
    if isinstance(ex, MrpcExample):
        return MRPC_VERBALIZERS[ex.label]
    assert isinstance(ex, SquadExample)
    return " " + ex.answers[0] if ex.answers else NO_ANSWER_TEXT


def answer_from_generation(text: str) -> str:
    """Greedy output → SQuAD prediction: stop at the first newline; "unanswerable" (any case/space) → ""."""
    answer = text.split("\n", 1)[0].strip()
    return "" if answer.casefold() == NO_ANSWER_TEXT.strip() else answer
