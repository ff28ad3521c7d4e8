"""The captured step's loss (train/captured_step.py) is ``TargetTokenLoss`` computed capture-safely: its decoder
walk must give the same hidden states and loss as the model's own forward, on CPU, in float64 (the same ops in
the same order, so any difference beyond float64 rounding is a wrong mask, position or layer)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorascope.data.tokenize import IGNORE_INDEX
from lorascope.train.captured_step import causal_hidden, static_target_loss
from lorascope.train.loss import TargetTokenLoss


def _model(attn: str = "sdpa"):
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attn)
    gen = torch.Generator().manual_seed(0)
    model = LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():  # non-trivial weights everywhere (the default init leaves norms at exactly 1)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 12), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 5:8], labels[1, 11], labels[2, 2:12] = ids[0, 5:8], ids[1, 11], ids[2, 2:12]
    return ids, torch.ones_like(ids), labels


def test_causal_hidden_is_the_models_forward():
    model, (ids, _, _) = _model(), _batch()
    with torch.no_grad():
        want = model.model(input_ids=ids, use_cache=False).last_hidden_state
        got = causal_hidden(model, ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
    with torch.no_grad():  # the walk is causal: a later token changes nothing before it
        ids2 = ids.clone()
        ids2[:, -1] = (ids2[:, -1] + 1) % 97
        torch.testing.assert_close(causal_hidden(model, ids2)[:, :-1], got[:, :-1], rtol=1e-12, atol=1e-12)


def test_static_target_loss_equals_target_token_loss():
    model, (ids, mask, labels) = _model(), _batch()
    loss_mod = TargetTokenLoss(model, causal_no_mask=True)
    with torch.no_grad():
        want, n = loss_mod(ids, mask, labels)
        got = static_target_loss(loss_mod, labels)(ids, mask)
    assert int(n) == 3 + 1 + 10
    # both take float32 logits (``.float()``, as training under autocast does): the same rows in the same order,
    # so equal up to float32 rounding of the sum of 14 terms, whatever the CPU
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_the_fused_lora_path_draws_fresh_dropout_seeds_through_the_walk(model_dir):
    """The fused path draws each forward's dropout seeds in a pre-hook of the decoder stack; the walk must run it,
    or every replay of a captured step would reuse one set of masks. Same RNG state → same masks → same loss as
    ``TargetTokenLoss``; the next call → new masks."""
    from lorascope.train.fused_lora import FusedSettings, install_fused_lora
    from tests.test_fused_lora import _batch as fused_batch
    from tests.test_fused_lora import _lora_model

    model = _lora_model(model_dir, dropout=0.3)
    handle = install_fused_lora(model, FusedSettings(backend="torch"))
    model.train()
    ids, mask, labels = fused_batch()
    loss_mod = TargetTokenLoss(model, causal_no_mask=True)
    fn = static_target_loss(loss_mod, labels)
    with torch.no_grad():
        torch.manual_seed(11)
        want = float(loss_mod(ids, mask, labels)[0])
        torch.manual_seed(11)
        got = float(fn(ids, mask))
        seeds = handle.seeds.clone()
        again = float(fn(ids, mask))
    assert got == pytest.approx(want, rel=1e-6)  # float32 logits, as above
    assert not torch.equal(handle.seeds, seeds) and again != pytest.approx(got, rel=1e-6)
    with torch.no_grad():  # and without dropout's seeds changing anything, eval mode is deterministic
        model.eval()
        assert float(fn(ids, mask)) == float(fn(ids, mask))


def test_static_target_loss_refuses_what_it_cannot_capture():
    _, _, labels = _batch()
    with pytest.raises(ValueError, match="causal_no_mask"):
        static_target_loss(TargetTokenLoss(_model(), causal_no_mask=False), labels)
    with pytest.raises(ValueError, match="SDPA"):  # eager attention reads attention_mask=None as no mask at all
        causal_hidden(_model("eager"), _batch()[0])
    mistral = _model()
    mistral.model.config.model_type = "mistral"  # a sliding window the walk would not apply
    with pytest.raises(ValueError, match="Llama"):
        causal_hidden(mistral, _batch()[0])
