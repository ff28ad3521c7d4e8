"""Serving backends on the tiny pretrained stories260k with seeded random NONZERO adapters (§10 correctness).

Every backend must reproduce the fp32 transformers + PEFT greedy tokens, mixed batches row by row, and the
gate must catch a deliberately wrong engine.
"""

from __future__ import annotations

import pytest
import torch

from lorascope.serve.adapters import load_lora, perturbed_copy, random_adapter
from lorascope.serve.correctness import Reference, check_backend, first_mismatch
from lorascope.serve.hf_peft import HFPeftBackend
from lorascope.serve.native import NativeBackend

NEW = 12
EOS = 1  # "<s>": the demo's end token (stories260K ends stories with it)


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [random_adapter(hf_model.config, root / f"a{i}", seed=10 + i) for i in range(3)]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["Once upon a time", "The little dog ran to the park and saw", "Lily", "Tom had a red ball. He"]
    return [tokenizer(t)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def reference(hf_model, adapters):
    return Reference(hf_model, adapters, eos_id=EOS)


def _native(hf_model, **kw):
    return NativeBackend(hf_model, eos_id=EOS, max_prompt=32, max_new=NEW, **kw)


def test_random_adapters_are_nonzero_and_change_outputs(hf_model, adapters, prompts, reference):
    lora = load_lora(adapters[0])
    assert len(lora.pairs) == 5 * 7
    assert all(a.abs().min() > 0 or a.abs().sum() > 0 for a, _ in lora.pairs.values())
    assert all(b.abs().sum() > 0 for _, b in lora.pairs.values())  # a zero B would prove nothing
    base = [reference.one(p, None, NEW, False) for p in prompts]
    tuned = [[reference.one(p, i, NEW, False) for p in prompts] for i in range(3)]
    assert all(t != base for t in tuned)
    assert tuned[0] != tuned[1] != tuned[2]


@pytest.mark.parametrize("stop", [False, True])
def test_native_matches_reference_every_scenario(hf_model, adapters, prompts, reference, stop):
    loras = [load_lora(a) for a in adapters]
    n = len(prompts)
    cases = [(_native(hf_model), None, [None] * n),
             (_native(hf_model, merge=loras[0]), None, [0] * n),
             (_native(hf_model, adapters=loras[:1]), [0] * n, [0] * n),
             (_native(hf_model, adapters=loras), [0, 1, 2, None], [0, 1, 2, None])]
    for engine, ids, ref_ids in cases:
        assert check_backend(engine, reference, prompts, ids, ref_ids, NEW, stop) is None


def test_native_mixed_rows_equal_single_adapter_runs(hf_model, adapters, prompts):
    engine = _native(hf_model, adapters=[load_lora(a) for a in adapters])
    ids = [2, None, 0, 1]
    mixed = engine.generate(prompts, ids, NEW, False).tokens
    for row, (p, a) in enumerate(zip(prompts, ids)):
        assert mixed[row] == engine.generate([p], [a], NEW, False).tokens[0]


def test_hf_peft_mixed_batch_matches_reference(hf_model, adapters, prompts, reference):
    import copy

    engine = HFPeftBackend(copy.deepcopy(hf_model), adapter_dirs=adapters, eos_id=EOS)
    assert check_backend(engine, reference, prompts, [1, 0, None, 2], [1, 0, None, 2], NEW, False) is None
    merged = HFPeftBackend(copy.deepcopy(hf_model), adapter_dirs=adapters[:1], merge=True, eos_id=EOS)
    assert check_backend(merged, reference, prompts, None, [0] * 4, NEW, True) is None


def test_gate_catches_a_swapped_adapter_slot(hf_model, adapters, prompts, reference):
    """A wrong engine (slots 0 and 1 swapped) must be reported with the first differing row and token."""
    loras = [load_lora(a) for a in adapters]
    wrong = _native(hf_model, adapters=[loras[1], loras[0], loras[2]])
    reason = check_backend(wrong, reference, prompts, [0, 1, 2, None], [0, 1, 2, None], NEW, False)
    assert reason is not None and reason.startswith("row 0, token ")


def test_timings_are_ordered_and_natural_mode_stops_at_eos(hf_model, adapters, prompts):
    engine = _native(hf_model, adapters=[load_lora(adapters[0])])
    gen = engine.generate(prompts, [0, 0, None, 0], NEW, True)
    for toks, ttft, e2e in zip(gen.tokens, gen.ttft_s, gen.e2e_s):
        assert 0 < ttft <= e2e
        assert EOS not in toks[:-1] and (len(toks) == NEW or toks[-1] == EOS)
    fixed = engine.generate(prompts, [0, 0, None, 0], NEW, False)
    assert all(len(t) == NEW for t in fixed.tokens)


def test_perturbed_copy_is_seeded_and_relative(adapters, tmp_path):
    a = perturbed_copy(adapters[0], tmp_path / "p1", 0.1, torch.Generator().manual_seed(3))
    b = perturbed_copy(adapters[0], tmp_path / "p2", 0.1, torch.Generator().manual_seed(3))
    src, la, lb = load_lora(adapters[0]), load_lora(a), load_lora(b)
    for key, (sa, sb) in src.pairs.items():
        assert torch.equal(la.pairs[key][0], lb.pairs[key][0])
        rel = (la.pairs[key][1] - sb).norm() / sb.norm()
        assert 0.05 < rel < 0.2


def test_first_mismatch_reports_position():
    assert first_mismatch([[1, 2, 3]], [[1, 2, 3]]) is None
    assert first_mismatch([[1, 2], [4, 5]], [[1, 2], [4, 6]]) == "row 1, token 1: got 5, want 6"
    assert first_mismatch([[1]], [[1, 2]]) == "row 0, token 1: got <end>, want 2"


def test_fixed_length_ignores_the_checkpoints_own_end_token(hf_model, prompts):
    """Regression: ``eos_token_id=None`` let transformers fill in the checkpoint's end token and stop there,
    so "fixed" outputs were short. Make the checkpoint's end token the model's first greedy token."""
    import copy

    model = copy.deepcopy(hf_model)
    first = Reference(model, [], eos_id=EOS).one(prompts[0], None, NEW, False)
    assert len(first) == NEW
    model.generation_config.eos_token_id = first[0]
    ref = Reference(model, [], eos_id=first[0])
    assert ref.one(prompts[0], None, NEW, False) == first  # fixed: goes on past the end token
    assert ref.one(prompts[0], None, NEW, True) == first[:1]  # natural: stops on it
    engine = HFPeftBackend(model, eos_id=first[0])
    assert engine.generate([prompts[0]], None, NEW, stop_at_eos=False).tokens == [first]
    assert engine.generate([prompts[0]], None, NEW, stop_at_eos=True).tokens == [first[:1]]
