"""Synthetic mirrors of the study's two tasks for machines without the hub: a word-level tokenizer whose vocabulary
covers both prompt templates, MRPC in the mirror's TSV layout and SQuAD v2 in the official JSON layout.

Used by benchmarks/ray_multigpu.py (the whole study on Ray at the 1.3B shape). Sizes follow the real data's
shape, not its content: MRPC sentences of 15–30 words (real: ~22), SQuAD v2 contexts of 100–140 words (real:
~120) with 1–3-word answers copied from the context and half the questions unanswerable (the v2 dev set's share).
Words are ``w0 … w2999`` (one token each); labels and answers are random, so no model can beat the trivial
baselines on them (the study's validity gate reports exactly that). Every file is written seeded: the same call
writes the same bytes.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NOT needed — this file imports nothing from lorascope.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [f"w{i}" for i in range(3000)]
# Every word the two templates of lorascope.data.prompts put around the inputs, split as PRE_TOKENS splits them:
# "Sentence 1:" → Sentence, 1, ":"; the SQuAD no-answer target is " unanswerable". A word missing here would become
# <unk>, which is also the pad token. "\n" is a token of its own, as in Llama's vocabulary (<0x0A>): SQuAD
# generation stops at it (lorascope.train.evaluate.newline_token_id).
TEMPLATE_WORDS = ["Sentence", "1", ":", "2", "Question", "Do", "both", "sentences", "mean", "the", "same", "thing",
                  "?", "Answer", "yes", "no", "Context", "unanswerable", "\n"]
SPECIALS = ["<unk>", "<s>", "</s>"]
PRE_TOKENS = r"\w+|[^\w\s]+|\n"


def make_tokenizer(folder: Path):
    """A word-level fast tokenizer (BOS added, EOS = </s>, pad = unk) saved into ``folder``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(dict.fromkeys(SPECIALS + TEMPLATE_WORDS + WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Whitespace's rule (\w+ | [^\w\s]+, everything else dropped) plus newlines kept as tokens.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRE_TOKENS), behavior="removed", invert=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", model_max_length=4096)
    fast.save_pretrained(folder)
    return fast


MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_FILES = (("train.tsv", "train"), ("dev.tsv", "validation"), ("msr_paraphrase_test.txt", "test"))


def make_mrpc(folder: Path, sizes: dict[str, int], words: tuple[int, int] = (15, 30), seed: int = 0) -> None:
    """``folder/mrpc/{train.tsv, dev.tsv, msr_paraphrase_test.txt}``; ids disjoint across files (the data
    stage's leakage check rejects a pair shared by two splits)."""
    rng = random.Random(seed)
    (folder / "mrpc").mkdir(parents=True, exist_ok=True)
    for k, (name, split) in enumerate(MRPC_FILES):
        rows = [f"{rng.randint(0, 1)}\t{k * 10**6 + i}\t{k * 10**6 + i + 100000}\t"
                f"{' '.join(rng.choices(WORDS, k=rng.randint(*words)))}\t"
                f"{' '.join(rng.choices(WORDS, k=rng.randint(*words)))}\n" for i in range(sizes[split])]
        (folder / "mrpc" / name).write_text(MRPC_HEADER + "".join(rows))


def squad_article(rng: random.Random, title: str, questions: int, context_words: tuple[int, int],
                  answerable_every: int = 2) -> dict:
    """One article, one paragraph; question q is answerable when ``q % answerable_every == 0``. An answer is a
    1–3-word span of the context; its ``answer_start`` is the span's character offset (checked)."""
    words = rng.choices(WORDS, k=rng.randint(*context_words))
    context = " ".join(words)
    qas = []
    for q in range(questions):
        qid = f"{title}_q{q}"
        question = " ".join(rng.choices(WORDS, k=rng.randint(6, 10))) + " ?"
        if q % answerable_every:
            qas.append({"id": qid, "question": question, "answers": [], "is_impossible": True})
            continue
        i = rng.randrange(0, len(words) - 3)
        text = " ".join(words[i:i + rng.randint(1, 3)])
        start = len(" ".join(words[:i])) + (1 if i else 0)
        if context[start:start + len(text)] != text:
            raise AssertionError(f"answer_start {start} does not point at {text!r}")
        qas.append({"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}],
                    "is_impossible": False})
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def make_squad(folder: Path, train_articles: int = 120, dev_articles: int = 24, questions: int = 6,
               context_words: tuple[int, int] = (100, 140), seed: int = 1) -> None:
    """``folder/squad_v2/{train-v2.0.json, dev-v2.0.json}`` (the official layout: the mirror then uses the
    ``official`` split — validation = a seeded 5% of the train articles, test = dev). Titles are unique across
    both files (a title or context in two splits is a leakage error)."""
    rng = random.Random(seed)
    (folder / "squad_v2").mkdir(parents=True, exist_ok=True)
    for name, prefix, n in (("train-v2.0.json", "Train", train_articles), ("dev-v2.0.json", "Dev", dev_articles)):
        data = [squad_article(rng, f"{prefix}_{a}", questions, context_words) for a in range(n)]
        (folder / "squad_v2" / name).write_text(json.dumps({"version": "v2.0", "data": data}))


def make_data(folder: Path, *, mrpc_sizes: dict[str, int] | None = None, squad_train_articles: int = 120,
              squad_dev_articles: int = 24) -> None:
    """Both mirrors under ``folder`` (the study's ``data.data_dir``)."""
    make_mrpc(folder, mrpc_sizes or {"train": 600, "validation": 64, "test": 128})
    make_squad(folder, squad_train_articles, squad_dev_articles)
