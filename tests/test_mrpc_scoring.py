"""MRPC scoring packs the prompt once with both verbalizers as masked branches (train/evaluate._packed); it must
equal scoring prompt + verbalizer as separate, unpadded sequences — the textbook formulation, computed here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorascope.data.mrpc import read_mrpc_tsv
from lorascope.data.prompts import prompt
from lorascope.data.tokenize import encode_eval_prompt
from lorascope.train.evaluate import _packed, score_mrpc, verbalizer_ids


def _separate_scores(model, tokenizer, examples, max_length: int) -> list[tuple[float, float]]:
    out = []
    for ex in examples:
        verb = verbalizer_ids(tokenizer, prompt(ex))
        p_ids, _ = encode_eval_prompt(tokenizer, ex, max_length - max(len(v) for v in verb.values()))
        pair = []
        for label in (1, 0):
            ids = torch.tensor([p_ids + verb[label]])
            logp = F.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            pair.append(sum(float(logp[len(p_ids) - 1 + k, t]) for k, t in enumerate(verb[label])))
        out.append(tuple(pair))
    return out


def test_packed_rows_mask_each_branch_from_the_other():
    ids, pos, allow = _packed([10, 11, 12], [[20, 21], [30]])
    assert ids == [10, 11, 12, 20, 21, 30]
    assert pos == [0, 1, 2, 3, 4, 3]  # the second branch starts where the first did
    assert allow[4].tolist() == [True, True, True, True, True, False]
    assert allow[5].tolist() == [True, True, True, False, False, True]  # "no" never sees "yes"
    assert allow[1].tolist() == [True, True, False, False, False, False]  # the prompt stays causal


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_scores_equal_separate_sequences(data_dir, model_dir, tokenizer, attn):
    from transformers import AutoModelForCausalLM

    # float64 weights so that the two formulations differ only by summation order (~1e-15 relative), a bound
    # that holds on any CPU; a masking or position bug moves log-probs by O(0.1) or more
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64, attn_implementation=attn).eval()
    examples = read_mrpc_tsv(data_dir / "mrpc" / "dev.tsv")[:9]
    max_length = 190  # short enough that some prompts are truncated, so rows in a batch differ in length
    with torch.no_grad():
        want = _separate_scores(model, tokenizer, examples, max_length)
    got = score_mrpc(model, tokenizer, examples, batch_size=4, max_length=max_length, device=torch.device("cpu"))
    assert any(r["truncated"] for r in got) and not all(r["truncated"] for r in got)
    # sdpa keeps float64 throughout: the formulations differ by summation order only (measured ~1e-15 relative).
    # eager normalises attention in float32 whatever the weights' dtype (transformers' eager_attention_forward), and
    # float32 sums over rows of different widths round differently: measured 1.6e-9 relative; 1e-6 is ~8 float32
    # ulps of headroom on any CPU and still 1e5 times below what a mask or position bug does.
    rtol = 1e-9 if attn == "sdpa" else 1e-6
    for rec, (yes, no), ex in zip(got, want, examples):
        assert abs(rec["logprob_yes"] - yes) <= rtol * max(1.0, abs(yes)), ex.id
        assert abs(rec["logprob_no"] - no) <= rtol * max(1.0, abs(no)), ex.id
        assert rec["pred"] == (1 if yes > no else 0)


def test_a_sliding_window_model_is_refused_not_silently_unwindowed(data_dir, model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.config.sliding_window = 64
    examples = read_mrpc_tsv(data_dir / "mrpc" / "dev.tsv")[:1]
    with pytest.raises(ValueError, match="sliding window of 64"):
        score_mrpc(model, tokenizer, examples, batch_size=1, max_length=190, device=torch.device("cpu"))
