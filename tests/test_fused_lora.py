"""The fused LoRA training path (lorascope.train.fused_lora) on CPU: masks, exactness against PEFT, format,
compile, and the Triton kernels under the interpreter. GPU performance and bf16 exactness on an H200:
benchmarks/train_fused.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorascope.train.fused_lora import FusedSettings, install_fused_lora, philox
from lorascope.train.fused_lora.check import peft_with_fused_masks
from lorascope.train.loss import TargetTokenLoss

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- masks
def test_philox_matches_random123_known_answers():
    """Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors)."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, expected in cases:
        out = philox.philox4x32(*(torch.tensor([c]) for c in ctr), *key)
        assert tuple(int(o) for o in out) == expected


def _seed_with_tie(p: float, rows: int, cols: int) -> int:
    t_hi = philox.threshold(p) >> 16
    for seed in range(500):  # deterministic search; a tie has probability 1 − (1 − 2⁻¹⁶)^(rows·cols) per seed
        if bool((philox.draws16(seed, rows, cols) == t_hi).any()):
            return seed
    raise AssertionError("no seed with a tie found")


def test_mask_is_the_exact_32_bit_threshold():
    """keep ⇔ (u·2¹⁶ + v) ≥ T with u, v the two 16-bit draws: the lazy second draw changes nothing."""
    p, rows, cols = 0.05, 64, 200
    seed = _seed_with_tie(p, rows, cols)
    u32 = philox.draws16(seed, rows, cols, 0) * 65536 + philox.draws16(seed, rows, cols, 1)
    assert torch.equal(philox.keep_mask(seed, rows, cols, p), u32 >= philox.threshold(p))


def test_masks_have_rate_p_and_are_independent_across_modules():
    p, rows, cols = 0.05, 512, 1024
    n = rows * cols
    a = ~philox.keep_mask(1, rows, cols, p)
    b = ~philox.keep_mask(2, rows, cols, p)
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(float(a.float().mean()) - p) < 5 * sd  # fixed seeds: deterministic, 5σ of a fair draw
    assert abs(float(b.float().mean()) - p) < 5 * sd
    both = float((a & b).float().mean())  # independent masks: P(both dropped) = p²
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5
    assert philox.threshold(0.0) == 0 and bool(philox.keep_mask(3, 4, 16, 0.0).all())


# ----------------------------------------------------------------------------------------------- against PEFT
def _lora_model(model_dir, preset="lora", dtype=torch.float64, dropout=0.1):
    from transformers import LlamaForCausalLM

    from lorascope.config.schema import LoRAConfig
    from lorascope.models.lora import apply_lora

    model = LlamaForCausalLM.from_pretrained(str(model_dir)).to(dtype)
    model = apply_lora(model, LoRAConfig(r=8, alpha=16, dropout=dropout, preset=preset), init_seed=0, method=preset)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():  # PEFT starts B at 0, which would zero every A gradient
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (3, 40), generator=g)
    labels = ids.clone()
    labels[:, :25] = -100
    return ids, torch.ones_like(ids), labels


def _loss_and_grads(loss_mod, params, batches, seed=5):
    """Two micro-batches accumulated (exercises fresh seeds per forward and the group hand-over)."""
    for p in params:
        p.grad = None
    torch.manual_seed(seed)
    total = 0.0
    for ids, mask, labels in batches:
        nll, _ = loss_mod(ids, mask, labels)
        nll.backward()
        total += float(nll.detach())
    return total, [p.grad.clone() for p in params]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


@pytest.mark.parametrize("preset", ["lora", "lora_qv"])
def test_fused_path_matches_peft_with_the_same_masks(model_dir, preset):
    """float64, dropout 0.1, non-zero A and B: PEFT's modules + autograd vs the fused group ops (torch
    reference backend) give the same loss and the same gradients for every A and B, to float64 rounding."""
    model = _lora_model(model_dir, preset)
    handle = install_fused_lora(model, FusedSettings(backend="torch"))
    assert handle.n_modules == (35 if preset == "lora" else 10)
    loss_mod = TargetTokenLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    batches = [_batch(0), _batch(1)]
    fused_loss, fused_grads = _loss_and_grads(loss_mod, params, batches[:1])
    with peft_with_fused_masks(handle):
        peft_loss, peft_grads = _loss_and_grads(loss_mod, params, batches[:1])
    assert abs(fused_loss - peft_loss) <= 1e-12 * abs(peft_loss)
    for a, b in zip(fused_grads, peft_grads):  # float64: 1e-10 leaves room for summation order only
        assert float(b.abs().max()) > 0 and _close(a, b, 1e-10)
    # Dropout is really on: eval mode (no dropout, still the fused path under grad) gives another loss,
    # equal to PEFT's eval loss.
    model.eval()
    eval_loss, _ = _loss_and_grads(loss_mod, params, batches[:1])
    for _, _, group in handle.groups:
        group.enabled = False
    peft_eval, _ = _loss_and_grads(loss_mod, params, batches[:1])
    for _, _, group in handle.groups:
        group.enabled = True
    assert abs(eval_loss - peft_eval) <= 1e-12 * abs(peft_eval) and abs(eval_loss - fused_loss) > 1e-6 * abs(eval_loss)
    # Two accumulated micro-batches: each forward draws fresh masks; the same torch seed redraws them.
    model.train()
    l1, g1 = _loss_and_grads(loss_mod, params, batches, seed=7)
    l2, g2 = _loss_and_grads(loss_mod, params, batches, seed=7)
    l3, _ = _loss_and_grads(loss_mod, params, batches, seed=8)
    assert l1 == l2 and all(torch.equal(a, b) for a, b in zip(g1, g2)) and l1 != l3


def test_adapter_format_names_and_eval_path_unchanged(model_dir, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lorascope.train.checkpoint import trainable_state

    model = _lora_model(model_dir).eval()
    ids, mask, _ = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    keys = set(get_peft_model_state_dict(model))
    names = set(trainable_state(model))
    handle = install_fused_lora(model, FusedSettings(backend="torch"))
    assert set(get_peft_model_state_dict(model)) == keys and set(trainable_state(model)) == names
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(saved) == len(keys) and all("lora_" in k for k in saved)
    with torch.no_grad():  # no gradient (evaluation, generation): PEFT's own forward, never the groups
        calls = []
        for _, _, group in handle.groups:
            group.compute = lambda x, _c=calls: _c.append(1)
        during = model(input_ids=ids, attention_mask=mask).logits
    assert not calls and torch.equal(during, before)
    handle.remove()
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(after, before) and not any("lorascope_fused" in n for n, _ in model.named_modules())


def test_compiled_layers_share_one_graph_and_match_eager(model_dir):
    """torch.compile (aot_eager: the tracing that inductor would lower) goes through the group hand-over and
    the custom ops without graph breaks; layers 1…n share one graph (layer 0 has its own: its input needs
    no gradient)."""
    from torch._dynamo.utils import counters

    from lorascope.train import speed

    torch._dynamo.reset()
    counters.clear()
    model = _lora_model(model_dir, dtype=torch.float32)
    install_fused_lora(model, FusedSettings(backend="torch"))
    loss_mod = TargetTokenLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    eager = _loss_and_grads(loss_mod, params, [_batch()])
    speed.compile_layers(model, backend="aot_eager")
    compiled = _loss_and_grads(loss_mod, params, [_batch()])
    again = _loss_and_grads(loss_mod, params, [_batch()])
    assert eager[0] == compiled[0] == again[0]
    assert all(torch.equal(a, b) for a, b in zip(eager[1], compiled[1]))
    assert counters["stats"]["unique_graphs"] <= 2 and not counters["graph_break"]
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------- Triton kernels
def test_triton_kernels_match_reference_under_interpreter():
    """The kernels on CPU (TRITON_INTERPRET=1): masks bit for bit (including a tie for the second draw), the
    group's outputs and gradients at fp32 rounding in fp32 (≤ 1e-5 of the largest value), at bf16 rounding in
    bf16 (the interpreter truncates fp32 → bf16 where the GPU rounds to nearest: ≤ 2⁻⁵), for every expand
    variant and with and without dropout; the master-weight AdamW kernel against the torch update."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    tie = _seed_with_tie(0.05, 64, 128)
    out = subprocess.run([sys.executable, str(REPO / "tests" / "triton_interpreter_cases.py"), str(tie)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert all(m["equal"] for m in res["masks"]), res["masks"]
    assert len(res["groups"]) == 8
    for case in res["groups"]:
        tol = 1e-5 if case["dtype"] == "torch.float32" else 2**-5
        assert all(e <= tol for e in case["errors"].values()), case
        assert case["b_block_error"] <= (0.0 if case["dtype"] == "torch.float32" else 2**-7), case
    for case in res["adamw"]:
        # exp_avg_sq: the kernel forms 1 − β2 in fp32, as torch's fused CUDA AdamW; the reference in double
        assert case["master"] <= 1e-6 and case["exp_avg"] <= 1e-6 and case["exp_avg_sq"] <= 1e-4, case
        assert case["copy"] <= 2**-7, case


# ----------------------------------------------------------------------------------------------- selection
def test_lora_kernel_setting():
    from lorascope.config import config_hash, load_config, result_hash
    from lorascope.errors import LorascopeError
    from lorascope.train.fused_lora.select import resolve_lora_kernel

    a = load_config(REPO / "configs" / "demo.yaml")
    b = load_config(REPO / "configs" / "demo.yaml", ["train.lora_kernel=fused"])
    assert a.train.lora_kernel == "peft"  # the default: fused was exact but slower end to end on the H200
    assert result_hash(a) == result_hash(b) and config_hash(a) != config_hash(b)  # execution-only
    cpu = torch.device("cpu")
    assert resolve_lora_kernel("auto", cpu, bf16=False, strategy="single") == "peft"
    assert resolve_lora_kernel("peft", cpu, bf16=False, strategy="single") == "peft"
    with pytest.raises(LorascopeError, match="not on CUDA"):
        resolve_lora_kernel("fused", cpu, bf16=False, strategy="single")
    with pytest.raises(LorascopeError, match="FSDP"):
        resolve_lora_kernel("fused", torch.device("cuda"), bf16=True, strategy="fsdp")
