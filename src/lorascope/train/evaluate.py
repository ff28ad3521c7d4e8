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

from lorascope.config.protocol import PRIMARY_METRIC
from lorascope.data.prompts import MRPC_VERBALIZERS, answer_from_generation, prompt
from lorascope.data.tokenize import encode_eval_prompt, split_prompt_target
from lorascope.data.types import MrpcExample, SquadExample
from lorascope.metrics.classification import mrpc_metrics
from lorascope.metrics.squad_v2 import evaluate_examples, per_question_scores
from lorascope.train.loss import unwrap_causal_lm

PRIMARY = PRIMARY_METRIC  # the selection metric of validation (config/protocol.py)


def autocast_ctx(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def newline_token_id(tokenizer) -> int:
    nl = tokenizer.convert_tokens_to_ids("<0x0A>")
    if isinstance(nl, int) and nl != tokenizer.unk_token_id:
        return nl
    return tokenizer("\n", add_special_tokens=False)["input_ids"][-1]


def verbalizer_ids(tokenizer, prompt_text: str) -> dict[int, list[int]]:
    """Token ids of each verbalizer as it follows this prompt (joint tokenization, EOS excluded)."""
    return {
        label: split_prompt_target(tokenizer, prompt_text, text)[1][:-1] for label, text in MRPC_VERBALIZERS.items()
    }


def _packed(p_ids: list[int], verbs: list[list[int]]) -> tuple[list[int], list[int], torch.Tensor]:
    """One row that scores every verbalizer after one copy of the prompt: prompt, then each verbalizer's tokens,
    each branch seeing the prompt and its own earlier tokens only, at the positions it would have alone. So the
    prompt — nearly all the tokens — goes through the model once instead of once per label.

    Returns (ids, positions, allow): ``allow[i, j]`` (n × n, bool) = token i may attend to token j."""
    ids, pos, branch = list(p_ids), list(range(len(p_ids))), [-1] * len(p_ids)
    for b, v in enumerate(verbs):
        ids += v
        pos += list(range(len(p_ids), len(p_ids) + len(v)))
        branch += [b] * len(v)
    br = torch.tensor(branch)
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril_()
    return ids, pos, causal & ((br[None, :] == -1) | (br[None, :] == br[:, None]))


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
    """argmax over labels of the summed log-prob of the verbalizer tokens; one forward pass per batch, each row
    the prompt once with both verbalizers as branches (``_packed``: a 4-D attention mask and explicit positions,
    equal to scoring prompt + verbalizer separately — tested)."""
    lm = unwrap_causal_lm(model)
    # A custom 4-D mask replaces the model's own masking, sliding windows included (transformers passes it through
    # as given); rows longer than a window would then see too far back. Llama has no window; refuse otherwise.
    window = getattr(lm.config, "sliding_window", None)
    if window is not None and window < max_length:
        raise ValueError(f"MRPC scoring packs rows of up to {max_length} tokens with its own attention mask, but the "
                         f"model uses a sliding window of {window}: lower data.max_length to ≤ {window}")
    records = []
    labels = (1, 0)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        rows, meta = [], []
        for ex in batch:
            verb = verbalizer_ids(tokenizer, prompt(ex))
            # each branch alone (prompt + its verbalizer) stays within max_length, as when scored separately
            budget = max_length - max(len(v) for v in verb.values())
            p_ids, truncated = encode_eval_prompt(tokenizer, ex, budget)
            meta.append(truncated)
            rows.append((p_ids, [verb[label] for label in labels]))
        packed = [_packed(p, vs) for p, vs in rows]
        width = max(len(ids) for ids, _, _ in packed)
        ids = torch.full((len(packed), width), tokenizer.pad_token_id, dtype=torch.long)
        pos = torch.zeros((len(packed), width), dtype=torch.long)
        allow = torch.zeros((len(packed), 1, width, width), dtype=torch.bool)
        for r, (row_ids, row_pos, row_allow) in enumerate(packed):
            n = len(row_ids)
            ids[r, :n] = torch.tensor(row_ids)
            pos[r, :n] = torch.tensor(row_pos)
            allow[r, 0, :n, :n] = row_allow
            allow[r, 0, n:, 0] = True  # padding rows attend somewhere (an empty softmax row is NaN); never read
        # the additive mask in the dtype the attention scores have (bf16 under CUDA autocast, else the weights')
        dtype = torch.bfloat16 if device.type == "cuda" and bf16 else next(lm.parameters()).dtype
        mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
        ids, pos, mask = ids.to(device), pos.to(device), mask.to(device)
        with autocast_ctx(device, bf16):
            logits = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        for r, (ex, (p_ids, verbs)) in enumerate(zip(batch, rows)):
            scores, offset = [], len(p_ids)
            for v in verbs:
                # token k of a branch is predicted at the prompt's last position (k = 0) or at its own token k − 1;
                # only those few rows of logits are normalised, in float64 (cheap, and no float32 rounding)
                src = torch.tensor([len(p_ids) - 1] + [offset + k - 1 for k in range(1, len(v))], device=device)
                logp = F.log_softmax(logits[r, src].double(), dim=-1)
                scores.append(float(logp[torch.arange(len(v), device=device), torch.tensor(v, device=device)].sum()))
                offset += len(v)
            lp_yes, lp_no = scores
            pred = 1 if lp_yes > lp_no else 0  # ties → "no" (deterministic)
            records.append(
                {
                    "id": ex.id,
                    "label": ex.label,
                    "pred": pred,
                    "correct": int(pred == ex.label),
                    "logprob_yes": lp_yes,
                    "logprob_no": lp_no,
                    "truncated": meta[r],
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
