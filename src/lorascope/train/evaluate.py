"""Evaluation (§4): MRPC by verbalizer log-probabilities, SQuAD v2 by batched greedy decoding.

Both return (metrics, per-example records); the records are saved with the test predictions and feed
the paired tests of §11. Inputs longer than the budget have their context truncated from the end
(counted in ``truncated``).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from lorascope.data.prompts import MRPC_VERBALIZERS, answer_from_generation, prompt
from lorascope.data.tokenize import encode_eval_prompt, split_prompt_target
from lorascope.data.types import MrpcExample, SquadExample
from lorascope.metrics.classification import mrpc_metrics
from lorascope.metrics.squad_v2 import evaluate_examples, per_question_scores
from lorascope.train.loss import unwrap_causal_lm

PRIMARY = {"mrpc": "accuracy", "squad_v2": "f1"}


def autocast_ctx(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def newline_token_id(tokenizer) -> int:
    nl = tokenizer.convert_tokens_to_ids("<0x0A>")
    if isinstance(nl, int) and nl != tokenizer.unk_token_id:
        return nl
    return tokenizer("\n", add_special_tokens=False)["input_ids"][-1]


def _pad_right(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def verbalizer_ids(tokenizer, prompt_text: str) -> dict[int, list[int]]:
    """Token ids of each verbalizer as it follows this prompt (joint tokenization, EOS excluded)."""
    return {
        label: split_prompt_target(tokenizer, prompt_text, text)[1][:-1] for label, text in MRPC_VERBALIZERS.items()
    }


@torch.no_grad()
def score_mrpc(
    model,
    tokenizer,
    examples: Sequence[MrpcExample],
    *,
    batch_size: int,
    max_length: int,
    device: torch.device,
    bf16: bool = True,
) -> list[dict]:
    """argmax over labels of the summed log-prob of the verbalizer tokens; one forward pass per batch."""
    lm = unwrap_causal_lm(model)
    records = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        seqs, spans, meta = [], [], []
        for ex in batch:
            verb = verbalizer_ids(tokenizer, prompt(ex))
            budget = max_length - max(len(v) for v in verb.values())
            p_ids, truncated = encode_eval_prompt(tokenizer, ex, budget)
            meta.append(truncated)
            for label in (1, 0):
                seqs.append(p_ids + verb[label])
                spans.append((len(p_ids), len(verb[label])))
        ids, mask = _pad_right(seqs, tokenizer.pad_token_id, device)
        with autocast_ctx(device, bf16):
            logits = lm(input_ids=ids, attention_mask=mask).logits
        logp = F.log_softmax(logits.float(), dim=-1)
        scores = []
        for row, (p_len, v_len) in enumerate(spans):
            pos = torch.arange(p_len - 1, p_len - 1 + v_len, device=device)
            tgt = ids[row, p_len : p_len + v_len]
            scores.append(float(logp[row, pos, tgt].double().sum()))
        for i, ex in enumerate(batch):
            lp_yes, lp_no = scores[2 * i], scores[2 * i + 1]
            pred = 1 if lp_yes > lp_no else 0  # ties → "no" (deterministic)
            records.append(
                {
                    "id": ex.id,
                    "label": ex.label,
                    "pred": pred,
                    "correct": int(pred == ex.label),
                    "logprob_yes": lp_yes,
                    "logprob_no": lp_no,
                    "truncated": meta[i],
                }
            )
    return records


@torch.no_grad()
def generate_squad(
    model,
    tokenizer,
    examples: Sequence[SquadExample],
    *,
    batch_size: int,
    max_length: int,
    max_new_tokens: int,
    device: torch.device,
    bf16: bool = True,
    synced_gpus: bool = False,
) -> list[dict]:
    """Greedy decoding with a KV cache, left-padded batches, stop at EOS or newline (§4)."""
    lm = unwrap_causal_lm(model)
    stop = [tokenizer.eos_token_id, newline_token_id(tokenizer)]
    records = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompts, truncated = zip(*(encode_eval_prompt(tokenizer, ex, max_length - max_new_tokens) for ex in batch))
        T = max(len(p) for p in prompts)
        ids = torch.full((len(batch), T), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            mask[i, T - len(p) :] = 1
        with autocast_ctx(device, bf16):
            out = lm.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
                synced_gpus=synced_gpus,
            )
        for i, ex in enumerate(batch):
            gen = out[i, T:].tolist()
            cut = next((j for j, t in enumerate(gen) if t in stop), len(gen))
            text = tokenizer.decode(gen[:cut], skip_special_tokens=True)
            records.append(
                {"id": ex.id, "prediction": answer_from_generation(text), "generation": text, "truncated": truncated[i]}
            )
    return records


def evaluate(
    task: str,
    model,
    tokenizer,
    examples: Sequence,
    *,
    batch_size: int,
    max_length: int,
    max_new_tokens: int,
    device: torch.device,
    bf16: bool = True,
    synced_gpus: bool = False,
) -> tuple[dict, list[dict]]:
    """Metrics (percent) and per-example records for one split. ``metrics["truncated"]`` counts cut contexts."""
    was_training = model.training
    model.eval()
    try:
        if task == "mrpc":
            recs = score_mrpc(
                model, tokenizer, examples, batch_size=batch_size, max_length=max_length, device=device, bf16=bf16
            )
            metrics = dict(mrpc_metrics([r["label"] for r in recs], [r["pred"] for r in recs]))
        else:
            recs = generate_squad(
                model,
                tokenizer,
                examples,
                batch_size=batch_size,
                max_length=max_length,
                max_new_tokens=max_new_tokens,
                device=device,
                bf16=bf16,
                synced_gpus=synced_gpus,
            )
            preds = {r["id"]: r["prediction"] for r in recs}
            metrics = dict(evaluate_examples(list(examples), preds))
            exact, f1 = per_question_scores({ex.id: list(ex.answers) for ex in examples}, preds)
            for r, ex in zip(recs, examples):
                r.update(exact=exact[ex.id], f1=f1[ex.id], has_answer=not ex.is_impossible)
    finally:
        model.train(was_training)
    metrics["truncated"] = sum(r["truncated"] for r in recs)
    return metrics, recs
