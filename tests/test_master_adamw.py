"""MasterWeightAdamW (bf16 working copies + fp32 masters) against fp32 weights + bf16 autocast + clip_grad_norm_
+ torch's AdamW, on CPU (CPU autocast bf16 rounds exactly like CUDA's). The Triton kernel itself is checked under
the interpreter in tests/test_fused_lora.py; timing on the GPU in benchmarks/train_fused.py."""

from __future__ import annotations

import copy

import torch

from lorascope.train.loss import TargetTokenLoss
from lorascope.train.master_adamw import MasterWeightAdamW, working_copy_params


def _groups(model):
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def test_working_copies_reproduce_fp32_master_with_autocast(model_dir):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ref_model = LlamaForCausalLM.from_pretrained(str(model_dir)).float().train()
    model = copy.deepcopy(ref_model)
    working = working_copy_params(model)
    head = model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight and all(p is not head for p in working)  # tied: stays fp32
    assert len(working) == 5 * 7
    ref_opt = torch.optim.AdamW(_groups(ref_model), lr=1e-3, foreach=False)
    opt = MasterWeightAdamW(_groups(model), lr=1e-3, max_grad_norm=1.0, working=working, backend="torch")
    assert all(p.dtype == torch.bfloat16 for p in working)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        ids = torch.randint(3, 512, (4, 48), generator=g)
        labels = ids.clone()
        labels[:, :30] = -100
        losses, grads = [], []
        for m in (ref_model, model):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                nll, _ = TargetTokenLoss(m)(ids, torch.ones_like(ids), labels)
            (nll / 10).backward()
            losses.append(float(nll.detach()))
            grads.append({n: p.grad for n, p in m.named_parameters()})
        # Same forward (autocast's cast = the working copy) and the same bf16 gradient values, bit for bit.
        assert losses[0] == losses[1]
        for name, ref_grad in grads[0].items():
            assert torch.equal(ref_grad, grads[1][name].float()), name
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        norm = opt.step()
        opt.zero_grad(set_to_none=True)
        assert abs(float(norm) - float(ref_norm)) <= 1e-6 * float(ref_norm)  # summation order only
        masters = opt.masters()
        for (name, ref_p), p in zip(ref_model.named_parameters(), model.parameters()):
            master = masters[id(p)]
            # fp32 rounding (summation order in the norm, operation order in AdamW): ≤ 1e-6 of the weight scale
            assert float((master - ref_p.data).abs().max()) <= 1e-6 * float(ref_p.data.abs().max()), (step, name)
            if p.dtype == torch.bfloat16:
                assert torch.equal(p.data, master.to(torch.bfloat16))  # the copy is the master rounded (RNE)
            # Resynchronise: fp32-rounding differences would flip a few bf16 roundings next step and make the
            # next comparison one of two trajectories instead of one of two implementations of a step.
            ref_p.data.copy_(master)
            for key in ("exp_avg", "exp_avg_sq"):
                ref_opt.state[ref_p][key].copy_(opt.state[p][key])
