"""Serving backends on the tiny pretrained stories260k with seeded random NONZERO adapters (§10 correctness).

Every backend must reproduce the fp32 transformers + PEFT greedy tokens, mixed batches row by row (both decode
paths of the native engine, and its Triton kernel under the interpreter); in bf16, the teacher-forced logits
gate must pass a correct engine and catch a deliberately wrong one.
"""

from __future__ import annotations

import math

import pytest
import torch

from lorascope.serve.adapters import load_lora, perturbed_copy, random_adapter
from lorascope.serve.correctness import Reference, check_backend, first_mismatch
from lorascope.serve.gate import (
    TAU_MAX,
    TAU_RMS,
    deviation,
    engine_token_gate,
    gate_cell,
    teacher_forced_gate,
    token_logprobs,
)
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


@pytest.mark.parametrize("decode,stop", [("fused", False), ("fused", True), ("addmm", False)])
def test_native_matches_reference_every_scenario(hf_model, adapters, prompts, reference, decode, stop):
    loras = [load_lora(a) for a in adapters]
    n = len(prompts)
    cases = [(_native(hf_model, decode=decode), None, [None] * n),
             (_native(hf_model, merge=loras[0], decode=decode), None, [0] * n),
             (_native(hf_model, adapters=loras[:1], decode=decode), [0] * n, [0] * n),
             (_native(hf_model, adapters=loras, decode=decode), [0, 1, 2, None], [0, 1, 2, None])]
    for engine, ids, ref_ids in cases:
        assert check_backend(engine, reference, prompts, ids, ref_ids, NEW, stop) is None


def test_native_mixed_rows_equal_single_adapter_runs(hf_model, adapters, prompts):
    engine = _native(hf_model, adapters=[load_lora(a) for a in adapters])
    ids = [2, None, 0, 1]
    mixed = engine.generate(prompts, ids, NEW, False).tokens
    for row, (p, a) in enumerate(zip(prompts, ids)):
        assert mixed[row] == engine.generate([p], [a], NEW, False).tokens[0]


def test_native_triton_kernel_end_to_end(hf_model, adapters, prompts, reference, triton_device):
    """The engine's decode through the Triton kernel itself (interpreted on CPU): mixed adapters, exact fp32
    tokens. Few tokens: the interpreter runs every program of 20 kernels per step in Python."""
    loras = [load_lora(a) for a in adapters]
    engine = NativeBackend(hf_model, adapters=loras, eos_id=EOS, max_prompt=32, max_new=3, device=triton_device,
                           use_triton=True, tune=False)
    ids = [2, None, 0, 1]
    assert check_backend(engine, reference, prompts, ids, ids, 3, False) is None
    assert all(g.configs for layer in engine.model.layers for g in layer.groups.values())  # the kernel ran


def test_forced_logits_align_with_the_reference_in_fp32(hf_model, adapters, prompts, reference):
    """Teacher forcing through the decode loop predicts the same positions as one reference forward: in fp32
    the two differ only by summation order (≪ 1e-4 of the logits' scale), an off-by-one position by O(1)."""
    loras = [load_lora(a) for a in adapters]
    ids = [1, None, 2, 0]
    forced = [reference.one(p, a, NEW, False) for p, a in zip(prompts, ids)]
    for decode in ("fused", "addmm"):
        got = _native(hf_model, adapters=loras, decode=decode).forced_logits(prompts, ids, forced)
        assert got.shape == (4, NEW, hf_model.config.vocab_size)
        for i, (p, a) in enumerate(zip(prompts, ids)):
            want = reference.forced(p, a, forced[i])
            rms, mx = deviation(got[i], want)
            assert mx <= 1e-4 * float(want.abs().max()), (decode, i, mx)
            assert torch.equal(want.argmax(-1), torch.tensor(forced[i]))  # the reference's own greedy tokens


@pytest.mark.parametrize("decode", ["fused", "addmm"])
def test_bf16_gate_passes_the_engine_and_fails_a_swapped_slot(hf_model, adapters, prompts, reference, decode):
    """§10's gate of the timed engine: bf16, teacher-forced logits vs fp32, relative to bf16 transformers+PEFT."""
    loras = [load_lora(a) for a in adapters]
    ids = [0, 1, 2, None]
    right = NativeBackend(hf_model, adapters=loras, dtype=torch.bfloat16, eos_id=EOS, max_prompt=32, max_new=NEW,
                          decode=decode)
    ok = teacher_forced_gate(right, reference, prompts, ids, ids, NEW, torch.bfloat16)
    assert ok.passed and ok.reason is None, ok.reason
    assert ok.worst_rms_ratio < 0.75 * TAU_RMS and all(r["scale_rms"] > 0 for r in ok.rows)
    wrong = NativeBackend(hf_model, adapters=[loras[1], loras[0], loras[2]], dtype=torch.bfloat16, eos_id=EOS,
                          max_prompt=32, max_new=NEW, decode=decode)
    bad = teacher_forced_gate(wrong, reference, prompts, ids, ids, NEW, torch.bfloat16)
    assert not bad.passed and bad.reason.startswith("teacher-forced gate, row 0 (adapter 0)")
    assert bad.worst_rms_ratio > 4 * TAU_RMS and bad.worst_max_ratio > 4 * TAU_MAX  # far outside, not marginal
    assert [r["rms_ratio"] <= TAU_RMS for r in bad.rows] == [False, False, True, True]  # rows 2, 3 unaffected


def test_gate_cell_covers_every_adapter_at_batch_one(hf_model, adapters, prompts, reference):
    loras = [load_lora(a) for a in adapters]
    engine = NativeBackend(hf_model, adapters=loras, dtype=torch.bfloat16, eos_id=EOS, max_prompt=32, max_new=4)
    res = gate_cell(engine, reference, prompts, 3, 1, 4, torch.bfloat16)
    assert res.passed and [r["adapter"] for r in res.rows] == [0, 1, 2]
    merged = NativeBackend(hf_model, merge=loras[0], dtype=torch.bfloat16, eos_id=EOS, max_prompt=32, max_new=4)
    res = gate_cell(merged, reference, prompts, 0, 2, 4, torch.bfloat16, merged=True)
    assert res.passed and [r["adapter"] for r in res.rows] == [0, 0]


def test_benchmark_gates_the_timed_bf16_engine(hf_model, adapters, prompts, monkeypatch):
    """A bug only the timed bf16 engine has (its routing swaps adapters 0 and 1 when two or more are resident)
    passes the fp32 greedy-token gate, fails the teacher-forced gate, and its cells are failed, not timed."""
    import copy

    from lorascope.serve.bench import BenchSettings, run_benchmark
    from lorascope.serve.engines import EngineSpec
    from lorascope.serve.native_model import NativeLlama

    real = NativeLlama.routing

    def bf16_only_bug(self, slots):
        if self.dtype == torch.bfloat16 and self.k >= 2:
            slots = [{1: 2, 2: 1}.get(s, s) for s in slots]
        return real(self, slots)

    monkeypatch.setattr(NativeLlama, "routing", bf16_only_bug)
    spec = EngineSpec(load_hf=lambda: copy.deepcopy(hf_model), model_dir=None, device=torch.device("cpu"),
                      dtype=torch.bfloat16, eos_id=EOS, pad_id=0, max_prompt=32, max_new=4)
    gate_spec = EngineSpec(**{**spec.__dict__, "dtype": torch.float32, "cuda_graphs": False})
    settings = BenchSettings(backends=["native"], scenarios=["unmerged-1", "multi-2"], batch_sizes=[2],
                             output_modes=["fixed"], new_tokens=4, requests=2, warmup=0, correctness_prompts=2)
    out = run_benchmark(settings, spec, adapters, prompts, prompts[:2], gate_spec=gate_spec)
    cells = {c["scenario"]: c for c in out["cells"]}
    assert out["correctness"] == {"native/unmerged-1": "passed", "native/multi-2": "passed"}  # fp32: fine
    assert cells["unmerged-1"]["status"] == "ok" and out["correctness_forced"]["native/unmerged-1/b2"]["passed"]
    assert cells["multi-2"]["status"] == "failed" and not cells["multi-2"]["requests"]
    assert "teacher-forced gate, row 0 (adapter 0)" in cells["multi-2"]["reason"]


def test_hf_peft_mixed_batch_matches_reference(hf_model, adapters, prompts, reference):
    import copy

    engine = HFPeftBackend(copy.deepcopy(hf_model), adapter_dirs=adapters, eos_id=EOS)
    assert check_backend(engine, reference, prompts, [1, 0, None, 2], [1, 0, None, 2], NEW, False) is None
    merged = HFPeftBackend(copy.deepcopy(hf_model), adapter_dirs=adapters[:1], merge=True, eos_id=EOS)
    assert check_backend(merged, reference, prompts, None, [0] * 4, NEW, True) is None
    bf16 = HFPeftBackend(copy.deepcopy(hf_model), adapter_dirs=adapters, dtype=torch.bfloat16, eos_id=EOS)
    assert teacher_forced_gate(bf16, reference, prompts, [1, 0, None, 2], [1, 0, None, 2], NEW, torch.bfloat16).passed


def test_gate_catches_a_swapped_adapter_slot(hf_model, adapters, prompts, reference):
    """A wrong engine (slots 0 and 1 swapped) must be reported with the first differing row and token."""
    loras = [load_lora(a) for a in adapters]
    wrong = _native(hf_model, adapters=[loras[1], loras[0], loras[2]])
    reason = check_backend(wrong, reference, prompts, [0, 1, 2, None], [0, 1, 2, None], NEW, False)
    assert reason is not None and reason.startswith("row 0, token ")


class _TokenEngine:
    """An engine that exposes log-probabilities of its own greedy tokens and no logits (as vLLM does), built from
    a bf16 native engine: decode, then its teacher-forced logits on its own tokens."""

    def __init__(self, engine):
        self.engine = engine

    def decode_logprobs(self, prompts, adapter_ids, n_new):
        tokens = self.engine.generate(prompts, adapter_ids, n_new, False).tokens
        logits = self.engine.forced_logits(prompts, adapter_ids, tokens)
        return tokens, [token_logprobs(lg, t).tolist() for lg, t in zip(logits, tokens)]


def test_token_logprobs_against_a_hand_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    got = token_logprobs(logits, [2, 1])
    want = [3.0 - math.log(math.e + math.e ** 2 + math.e ** 3), -math.log(3.0)]  # Python floats: float64
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)  # float64 rounding only


def test_engine_token_gate_passes_a_bf16_engine_and_fails_a_swapped_slot(hf_model, adapters, prompts, reference):
    """The gate of an engine without logits (vLLM): its log-probabilities of its own bf16 greedy tokens vs the
    fp32 reference teacher-forced on those tokens, relative to bf16 transformers + PEFT."""
    loras = [load_lora(a) for a in adapters]
    ids = [0, 1, 2, None]
    right = _TokenEngine(NativeBackend(hf_model, adapters=loras, dtype=torch.bfloat16, eos_id=EOS, max_prompt=32,
                                       max_new=NEW))
    ok = engine_token_gate(right, reference, prompts, ids, ids, NEW, torch.bfloat16)
    assert ok.passed, ok.reason
    assert len(ok.rows) == 4 and all(r["scale_rms"] > 0 for r in ok.rows)
    wrong = _TokenEngine(NativeBackend(hf_model, adapters=[loras[1], loras[0], loras[2]], dtype=torch.bfloat16,
                                       eos_id=EOS, max_prompt=32, max_new=NEW))
    bad = gate_cell(wrong, reference, prompts, 3, 4, NEW, torch.bfloat16)  # gate_cell picks the token gate
    assert not bad.passed and bad.reason.startswith("teacher-forced gate, row 0 (adapter 0)")
    assert [r["adapter"] for r in bad.rows] == [0, 1, 2, 0]  # round-robin over the 3 resident adapters
    assert [r["rms_ratio"] <= TAU_RMS for r in bad.rows] == [False, False, True, False]  # adapter 2 unaffected


class _CertainReference:
    """A reference whose model is all but certain of token 0 at every position, identically in fp32 and bf16."""

    def forced(self, prompt, adapter, tokens, dtype=torch.float32):
        logits = torch.zeros(len(tokens), 5)
        logits[:, 0] = 30.0
        return logits


class _FixedEngine:
    def __init__(self, tokens, logprobs):
        self.tokens, self.logprobs = tokens, logprobs

    def decode_logprobs(self, prompts, adapter_ids, n_new):
        return self.tokens, self.logprobs


def test_engine_token_gate_floors_its_scale_at_fp32_rounding_and_checks_lengths():
    """With p ≈ 1 everywhere, bf16 transformers + PEFT deviates by ~0; an engine whose fp32 log-softmax differs
    by a few ulps (here 1e-7 absolute, on logits of 30) must still pass, and one off by 0.5 must fail."""
    from lorascope.serve.types import ServeError

    ref, n = _CertainReference(), 4
    exact = float(token_logprobs(ref.forced([1], None, [0] * n), [0] * n)[0])
    ok = engine_token_gate(_FixedEngine([[0] * n], [[exact + 1e-7] * n]), ref, [[1]], None, [None], n, torch.bfloat16)
    assert ok.passed, ok.reason
    bad = engine_token_gate(_FixedEngine([[0] * n], [[exact - 0.5] * n]), ref, [[1]], None, [None], n, torch.bfloat16)
    assert not bad.passed
    with pytest.raises(ServeError, match="returned"):
        engine_token_gate(_FixedEngine([[0] * (n - 1)], [[exact] * (n - 1)]), ref, [[1]], None, [None], n,
                          torch.bfloat16)


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
    for key, (_, sb) in src.pairs.items():
        assert torch.equal(la.pairs[key][0], lb.pairs[key][0])
        rel = (la.pairs[key][1] - sb).norm() / sb.norm()
        assert 0.05 < rel < 0.2


def test_reference_prefetch_equals_one_by_one(hf_model, adapters, reference):
    """Batched reference generation (rows of one adapter and one length, no padding) gives the same tokens."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (6,), generator=gen).tolist() for _ in range(4)]
    pairs = [(p, a) for p in prompts for a in (None, 1)]
    batched = Reference(hf_model, adapters, eos_id=EOS)
    calls, generate = [], batched.model.generate
    batched.model.generate = lambda **kw: calls.append(kw["input_ids"].shape) or generate(**kw)
    batched.prefetch(pairs, NEW)
    got = [batched.one(p, a, NEW, False) for p, a in pairs]
    assert calls == [(4, 6), (4, 6)]  # one batch per adapter; ``one`` then only reads the cache
    assert got == [reference.one(p, a, NEW, False) for p, a in pairs]


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
