"""Training throughput and peak memory, FT vs LoRA, at the Sheared-LLaMA-1.3B shape (issue 3, item 10).

One script, one process, side by side:

* the paths users run today — transformers ``model(input_ids, attention_mask, labels=...)`` (full logits),
  PEFT LoRA for LoRA, torch AdamW (foreach), fp32 master weights + bf16 autocast; plus FT in pure bf16 as the
  earlier reference had it (different numerics: bf16 weights and optimizer);
* lorascope's path (``TargetTokenLoss``: LM head on target positions only) as it is, then with one speed
  switch added at a time (``lorascope.train.speed``): frozen Linear weights stored in bf16 (LoRA), fused
  AdamW, no padding mask (causal/flash path), regional ``torch.compile``.

Experiments kept for the record (measured, not adopted; docs/benchmarks.md): a hand-written LoRA autograd
function (``install_fast_lora``, ``--only fastlora``), CUDA graphs (``--compile-mode reduce-overhead``), clipping
folded into fused AdamW (``+clipfold``); ``--profile`` adds a torch.profiler kernel breakdown; ``floor`` times the
frozen model without adapters (LoRA's lower bound).

Every variant is first checked against the plain path (fp32 master + autocast, mask passed, eager) on the same
weights and a right-padded batch: relative error of the loss and of all trainable gradients. The plain path's
own error against an fp32 (no autocast) run is printed as the scale of bf16 rounding. Then each variant is timed
(warm-up, then per-step CUDA events; median), with peak memory. The table comes last; JSON goes to ``--out``.

Batches (random weights and token ids; the hub is unreachable from the GPU machine):
  tgt — 16 × 512 real tokens, loss on the last 2–8 tokens of each sequence (SQuAD/MRPC-like answers + EOS);
  lm  — 16 × 512 real tokens, loss on every token (what the PEFT/HF reference measured);
  pad — 16 sequences of 384–512 real tokens right-padded to 512, targets as in tgt; tok/s counts real tokens.

FLOPs per step (useful model FLOPs; PaLM/torchtitan convention, attention counted non-causal):
  FT:   6·N_layers·tokens + 12·L·d·Σ len² + 6·d·V·rows
  LoRA: 4·N_layers·tokens + 6·N_lora·tokens + 12·L·d·Σ len² + 4·d·V·rows
N_layers = parameters of the decoder layers' Linear weights; rows = positions whose logits the objective needs
(targets in tgt/pad, all positions in lm) — the same for a variant that computes full logits anyway. Frozen
weights (LoRA) need no weight-gradient GEMM: 2 (forward) + 2 (input gradient) instead of 6.

Bundle (benchmarks/gpu_site.sh, docs/gpu.md): NEEDED on the GPU machine — lorascope.data and lorascope.train import
the pydantic config. Usage (repository root):
    mkdir -p /tmp/site && tar -xJf .gpu_site/site.tar.xz -C /tmp/site && \\
    PYTHONPATH=$PWD/src:/tmp/site python benchmarks/train_throughput.py --out $OUT      (GPU, full shape)
    PYTHONPATH=src python benchmarks/train_throughput.py --device cpu --tiny              (CPU smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lorascope.data.tokenize import IGNORE_INDEX  # noqa: E402
from lorascope.train import speed  # noqa: E402
from lorascope.train.loss import TargetTokenLoss, unwrap_causal_lm  # noqa: E402

FULL = dict(layers=24, d=2048, f=5504, heads=16, kv=16, vocab=32000, maxpos=4096, B=16, T=512)
TINY = dict(layers=2, d=64, f=172, heads=4, kv=4, vocab=512, maxpos=256, B=4, T=64)
LORA = dict(r=8, alpha=16.0, dropout=0.05)
PEAK_BF16_DATASHEET = 989.4e12  # H100/H200 SXM dense bf16 (datasheet 1979 with sparsity)
PAD_ID = 0

T0 = time.perf_counter()
CUDAGRAPHS = False  # set by --compile-mode reduce-overhead


def step_begin():
    """With CUDA graphs (cudagraph trees), tell torch a new training step starts (its outputs may be reused)."""
    if CUDAGRAPHS:
        torch.compiler.cudagraph_mark_step_begin()
RECORDS: list[dict] = []
CHECKS: list[dict] = []
META: dict = {}


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


# ----------------------------------------------------------------------------------------------- model, batches
def build_llama(shape, device, dtype=torch.float32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["d"], intermediate_size=shape["f"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv"], max_position_embeddings=shape["maxpos"], rms_norm_eps=1e-5,
                      tie_word_embeddings=False, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def add_lora(model, seed=0):
    """lorascope's own ``apply_lora`` (PEFT), r=8, α=16, dropout 0.05, all linear layers; B made non-zero
    (PEFT initialises B = 0, which would make every A-gradient zero and the gradient check vacuous)."""
    from lorascope.config.schema import LoRAConfig
    from lorascope.models.lora import apply_lora

    model = apply_lora(model, LoRAConfig(**LORA, preset="lora"), init_seed=seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def make_batch(shape, kind, device, seed):
    """(input_ids, attention_mask, labels, lens); right padding with PAD_ID; labels IGNORE_INDEX off-target."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = shape["B"], shape["T"], shape["vocab"]
    ids = torch.randint(3, V, (B, T), generator=g)
    if kind == "pad":
        lens = torch.randint(T * 3 // 4, T + 1, (B,), generator=g)
        lens[0] = T
    else:
        lens = torch.full((B,), T)
    mask = (torch.arange(T)[None, :] < lens[:, None]).long()
    ids[mask == 0] = PAD_ID
    labels = torch.full((B, T), IGNORE_INDEX)
    if kind == "lm":
        labels = torch.where(mask.bool(), ids, labels)
    else:
        k = torch.randint(2, 9, (B,), generator=g)
        for i in range(B):
            n = int(lens[i])
            labels[i, n - int(k[i]):n] = ids[i, n - int(k[i]):n]
    return ids.to(device), mask.to(device), labels.to(device), [int(x) for x in lens]


def n_rows(labels) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def step_flops(shape, method, lens, rows) -> float:
    L, d, f, V, r = shape["layers"], shape["d"], shape["f"], shape["vocab"], LORA["r"]
    kvd = d // shape["heads"] * shape["kv"]
    n_layers = L * (2 * d * d + 2 * d * kvd + 3 * d * f)
    n_lora = L * r * (2 * (d + d) + 2 * (d + kvd) + 3 * (d + f))
    tok = sum(lens)
    attn = 12 * L * d * sum(x * x for x in lens)
    if method == "ft":
        return 6 * n_layers * tok + attn + 6 * d * V * rows
    if method == "lora":
        return 4 * n_layers * tok + 6 * n_lora * tok + attn + 4 * d * V * rows
    if method == "frozen":  # forward + input gradients only: LoRA's floor without adapters
        return 4 * n_layers * tok + attn + 4 * d * V * rows
    raise ValueError(method)


# ----------------------------------------------------------------------------------------------- experiment: fused LoRA linear
# Tried as a library candidate and measured: faster than PEFT in eager mode, no faster once the layers are compiled
# (inductor already fuses PEFT's casts/dropout/scale/add), so it stays here, not in lorascope.train.speed.
class _LoraLinearFn(torch.autograd.Function):
    """``y = x Wᵀ (+ bias) + s · drop(x) Aᵀ Bᵀ`` in bf16 with hand-picked GEMMs, for a frozen base weight.

    Same function and the same bf16 roundings as PEFT's ``lora.Linear`` under bf16 autocast, with two
    exceptions of one bf16 ulp: the LoRA product is added inside the base GEMM's epilogue (``addmm_``:
    ``y + s·(xa Bᵀ)`` rounded once, instead of rounding ``xa Bᵀ``, ``·s`` and ``+`` separately), and dropout
    acts on the bf16 input (PEFT drops the fp32 input, then autocast rounds it). Dropout is per module and
    independent, as in PEFT (a different mask stream from PEFT's, so not bit-equal to it under dropout).
    Backward: ``dx = g W`` with ``+ (g B s) A`` accumulated in the same buffer (``addmm_``), no gradient
    for ``x`` when it needs none (layer 0), fp32 gradients for the fp32 A/B masters (as autocast's casts give).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float, training: bool):
        bf16 = torch.bfloat16
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = weight if weight.dtype == bf16 else weight.to(bf16)
        a, b = lora_a.to(bf16), lora_b.to(bf16)
        if training and p > 0:
            xd, mask = torch.native_dropout(x2, p, True)
        else:
            xd, mask = x2, None
        xa = xd @ a.t()  # (M, r)
        y = x2 @ w.t() if bias is None else torch.addmm(bias.to(bf16), x2, w.t())
        y.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(w, a, b, xd, xa, mask)
        ctx.scaling, ctx.p, ctx.shape, ctx.has_bias = scaling, p, shape, bias is not None
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        w, a, b, xd, xa, mask = ctx.saved_tensors
        s = ctx.scaling
        g = gy.reshape(-1, gy.shape[-1]).to(torch.bfloat16)
        gxa = (g @ b).mul_(s)  # (M, r): gradient at the LoRA bottleneck
        grad_b = (g.t() @ xa).mul_(s).float() if ctx.needs_input_grad[4] else None
        grad_a = (gxa.t() @ xd).float() if ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ w
            if mask is None:
                grad_x.addmm_(gxa, a)
            else:
                grad_x.add_(torch.ops.aten.native_dropout_backward(gxa @ a, mask, 1.0 / (1.0 - ctx.p)))
            grad_x = grad_x.view(ctx.shape)
        grad_bias = g.sum(0).float() if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


class _FastLoraMixin:
    """Forward of a PEFT ``lora.Linear`` through :class:`_LoraLinearFn` when it applies (one plain LoRA adapter,
    not merged, frozen base, bf16 autocast on); PEFT's own forward otherwise (CPU fp32 runs, evaluation without
    autocast, merged or disabled adapters)."""

    def forward(self, x, *args, **kwargs):
        dev = x.device.type
        names = self.active_adapters
        if (args or kwargs or self.disable_adapters or self.merged or len(names) != 1
                or not torch.is_autocast_enabled(dev) or torch.get_autocast_dtype(dev) != torch.bfloat16):
            return super().forward(x, *args, **kwargs)
        name = names[0]
        if name not in self.lora_A or name in self.lora_variant or self.base_layer.weight.requires_grad:
            return super().forward(x, *args, **kwargs)
        drop = self.lora_dropout[name]
        p = float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
        return _LoraLinearFn.apply(x.to(torch.bfloat16), self.base_layer.weight, self.base_layer.bias,
                                   self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name]),
                                   p, self.training)


_FAST_CLASSES: dict[type, type] = {}


def install_fast_lora(model: nn.Module) -> int:
    """Route every PEFT ``lora.Linear`` (on an ``nn.Linear`` base) through :class:`_LoraLinearFn`; returns the count.

    Swaps each module's class for a subclass, so parameters, names, ``save_pretrained`` and PEFT's own forward
    (used whenever the fast path does not apply) are unchanged.
    """
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for module in model.modules():
        cls = type(module)
        if not isinstance(module, LoraLinear) or isinstance(module, _FastLoraMixin):
            continue
        if not isinstance(module.base_layer, nn.Linear):
            continue
        if cls not in _FAST_CLASSES:
            _FAST_CLASSES[cls] = type("Fast" + cls.__name__, (_FastLoraMixin, cls), {})
        module.__class__ = _FAST_CLASSES[cls]
        n += 1
    return n


# ----------------------------------------------------------------------------------------------- helpers
class Ctx:
    def __init__(self, device, amp=True):
        self.device = device
        self.amp = amp

    def autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def make_adamw(params, lr, wd, fused):
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, **kw)


def ours_loss(loss_mod):
    def fn(ids, mask, labels):
        nll, n = loss_mod(ids, mask, labels)
        return nll / n_rows(labels)
    return fn


def hf_loss(model):
    def fn(ids, mask, labels):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    return fn


def grad_errors(params, ref):
    num = den = 0.0
    worst = 0.0
    for p, r in zip(params, ref):
        g = p.grad
        if g is None:
            g = torch.zeros_like(r)
        d = float((g.double() - r.double()).pow(2).sum())
        n = float(r.double().pow(2).sum())
        num, den = num + d, den + n
        if n > 0:
            worst = max(worst, math.sqrt(d / n))
    return math.sqrt(num / den) if den > 0 else float("nan"), worst


class State:
    """The method's model, its trainable parameters' snapshot and the plain path's reference loss/grads."""

    def __init__(self, model, params, check_batch, ctx):
        self.model, self.params, self.check_batch, self.ctx = model, params, check_batch, ctx
        self.snapshot = [p.detach().clone() for p in params]
        self.ref_loss = None
        self.ref_grads = None
        self.extra_bytes = sum(t.numel() * t.element_size() for t in self.snapshot)

    def restore(self):
        with torch.no_grad():
            for p, s in zip(self.params, self.snapshot):
                p.copy_(s)
        for p in self.params:
            p.grad = None

    def loss_and_grads(self, loss_fn, train, amp=True):
        self.restore()
        self.model.train(train)
        ids, mask, labels, _ = self.check_batch
        ctx = self.ctx.autocast() if amp else contextlib.nullcontext()
        step_begin()
        with ctx:
            loss = loss_fn(ids, mask, labels)
        loss.backward()
        return float(loss)

    def set_reference(self, loss_fn):
        l32 = self.loss_and_grads(loss_fn, train=False, amp=False)
        g32 = [p.grad.detach().clone() for p in self.params]
        lref = self.loss_and_grads(loss_fn, train=False, amp=True)
        gerr, gworst = grad_errors(self.params, g32)
        del g32
        self.ref_loss = lref
        self.ref_grads = [p.grad.detach().float().clone() for p in self.params]
        self.extra_bytes += sum(t.numel() * t.element_size() for t in self.ref_grads)
        for p in self.params:
            p.grad = None
        return {"loss_fp32": l32, "loss_amp": lref, "loss_rel_err": abs(lref - l32) / abs(l32),
                "grad_rel_err": gerr, "grad_worst_tensor_rel_err": gworst}

    def check(self, name, loss_fn, train=False):
        t = time.perf_counter()
        loss = self.loss_and_grads(loss_fn, train=train)
        sync(self.ctx.device)
        dt = time.perf_counter() - t
        gerr, gworst = grad_errors(self.params, self.ref_grads)
        for p in self.params:
            p.grad = None
        rec = {"variant": name, "loss": loss, "loss_rel_err": abs(loss - self.ref_loss) / abs(self.ref_loss),
               "grad_rel_err": gerr, "grad_worst_tensor_rel_err": gworst, "train_mode": train, "seconds": round(dt, 2)}
        CHECKS.append(rec)
        ok = math.isfinite(loss) and rec["loss_rel_err"] < 2e-2 and gerr < 5e-2
        log(f"check {name:<34} loss {loss:.6f} rel {rec['loss_rel_err']:.2e}  grad rel {gerr:.2e} "
            f"(worst tensor {gworst:.2e})  {'ok' if ok else 'MISMATCH'}  [{dt:.1f}s]")
        rec["ok"] = ok
        return rec


def clip_step(params, opt, clip_fold):
    """Clip to norm 1.0 and step. ``clip_fold``: fused AdamW divides the grads by its ``grad_scale`` (the hook
    GradScaler uses), so clipping costs one norm pass instead of norm + an in-place scale of every grad."""
    if not params:
        return 0.0
    if clip_fold:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
        opt.grad_scale = torch.clamp(norm / 1.0, min=1.0)  # grads / max(1, ‖g‖) = clip to 1.0 (eps aside)
        gn = norm
    else:
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(gn)


def profile_step(name, st, loss_fn, opt, batch, args, clip_fold=False, n=2):
    """CUDA kernel time per step by kind (torch.profiler), to see where a step's time goes."""
    if st.ctx.device.type != "cuda" or not args.profile:
        return None
    import re
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    ids, mask, labels, _ = batch
    sync(st.ctx.device)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step_begin()
            with st.ctx.autocast():
                loss = loss_fn(ids, mask, labels)
            loss.backward()
            clip_step(st.params, opt, clip_fold)
        sync(st.ctx.device)
    wall = (time.perf_counter() - t) / n * 1e3
    kinds = [("gemm", r"gemm|nvjet|xmma|cutlass|cublas|splitk|gemv|sm90_|sm80_"), ("attention", r"flash|fmha|attention|sdpa"),
             ("optimizer", r"adam|multi_tensor|foreach|norm_kernel|lpnorm"), ("triton (fused elementwise)", r"^triton_"),
             ("copy/fill", r"memcpy|memset|fill|copy"), ("other aten", r".")]
    by_kind, top = defaultdict(float), []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", 0.0) or 0.0
        if us <= 0:
            continue
        kind = next(k for k, rx in kinds if re.search(rx, e.key, re.I))
        by_kind[kind] += us / n / 1e3
        top.append((us / n / 1e3, e.count // n, kind, e.key[:90]))
    top.sort(reverse=True)
    total = sum(by_kind.values())
    rec = {"variant": name, "wall_ms_profiled": wall, "kernel_ms": total, "by_kind_ms": dict(by_kind),
           "top": [{"ms": a, "calls": c, "kind": k, "name": nm} for a, c, k, nm in top[:15]]}
    META.setdefault("profiles", []).append(rec)
    log(f"profile {name}: kernels {total:.1f} ms/step (wall {wall:.1f} ms under the profiler): " +
        ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    for a, c, k, nm in top[:8]:
        log(f"    {a:6.2f} ms  {c:4d}x  {k:<12} {nm}")
    st.restore()
    return rec


def timed(name, method, mode, shape, st, loss_fn, opt, batches, args, check=None, train=True, note="", clip_fold=False):
    device = st.ctx.device
    ids, mask, labels, lens = batches[mode]
    rows = n_rows(labels)
    params = st.params
    st.model.train(train)
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_alloc = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    times, first = [], None
    n_warm, n_time = args.warmup, args.steps
    losses = []
    for i in range(n_warm + n_time):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        t = time.perf_counter()
        step_begin()
        with st.ctx.autocast():
            loss = loss_fn(ids, mask, labels)
        loss.backward()
        gn = clip_step(params, opt, clip_fold)
        lv = float(loss.detach())  # the loop reads the loss and the grad norm every step: one sync per step, as there
        if device.type == "cuda":
            e1.record()
            e1.synchronize()
            ms = e0.elapsed_time(e1)
        else:
            ms = (time.perf_counter() - t) * 1e3
        if i == 0:
            first = time.perf_counter() - t
        if i >= n_warm:
            times.append(ms)
            losses.append(lv)
        if not (math.isfinite(lv) and math.isfinite(gn)):
            raise RuntimeError(f"{name}: non-finite loss {lv} / grad norm {gn}")
    med = statistics.median(times)
    tok = sum(lens)
    fl = step_flops(shape, method, lens, rows)
    peak = (torch.cuda.max_memory_allocated() - st.extra_bytes) / 2**30 if device.type == "cuda" else float("nan")
    rec = {"variant": name, "method": method, "mode": mode, "note": note, "ms_median": med, "ms_min": min(times),
           "ms_max": max(times), "tokens": tok, "rows": rows, "tok_s": tok / med * 1e3, "flops_step": fl,
           "tflops": fl / med / 1e9, "mfu_datasheet": fl / (med / 1e3) / PEAK_BF16_DATASHEET,
           "first_step_s": first, "peak_gib": peak, "resident_gib_before": (base_alloc - st.extra_bytes) / 2**30,
           "loss_last": losses[-1], "train_mode": train, "check": check}
    if META.get("gemm_ceiling_tflops"):
        rec["frac_gemm_ceiling"] = rec["tflops"] / META["gemm_ceiling_tflops"]
    RECORDS.append(rec)
    log(f"time  {name:<34} {mode:<3} {med:8.1f} ms  {rec['tok_s']:9.0f} tok/s  {rec['tflops']:6.1f} TFLOP/s  "
        f"MFU {100 * rec['mfu_datasheet']:5.1f}%  peak {peak:6.2f} GiB  first step {first:.1f}s  "
        f"(min {min(times):.1f} max {max(times):.1f})")
    write_json(args)
    return rec


def write_json(args):
    if not args.out:
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "train_throughput.json").write_text(json.dumps({"meta": META, "checks": CHECKS, "timings": RECORDS},
                                                                  indent=1, default=str))


def guarded(fn, label, errors):
    try:
        return fn()
    except Exception as exc:  # keep going: one failed variant must not lose the others' numbers
        import traceback

        traceback.print_exc()
        log(f"FAILED {label}: {type(exc).__name__}: {exc}")
        errors.append({"variant": label, "error": f"{type(exc).__name__}: {exc}"})
        free(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        return None


def time_left(args):
    return args.deadline_s - (time.perf_counter() - T0)


# ----------------------------------------------------------------------------------------------- ceilings
def gemm_ceiling(device, args):
    if device.type != "cuda":
        return {}
    out = {}
    shapes = {"8192^3": (8192, 8192, 8192), "qkvo 8192x2048x2048": (8192, 2048, 2048),
              "gate/up 8192x2048x5504": (8192, 2048, 5504), "down 8192x5504x2048": (8192, 5504, 2048),
              "lora-A 8192x2048x8": (8192, 2048, 8)}
    for name, (m, k, n) in shapes.items():
        sets = [(torch.randn(m, k, device=device, dtype=torch.bfloat16), torch.randn(k, n, device=device, dtype=torch.bfloat16))
                for _ in range(2)]
        for a, b in sets * 3:
            a @ b
        reps = 20
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(reps):
            a, b = sets[i % 2]
            a @ b
        e1.record()
        e1.synchronize()
        ms = e0.elapsed_time(e1) / reps
        out[name] = 2 * m * k * n / ms / 1e9
        log(f"gemm  {name:<26} {ms:7.3f} ms  {out[name]:6.1f} TFLOP/s")
    del sets
    # device-to-device copy bandwidth (bytes read + written)
    x = torch.empty(2**30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        y.copy_(x)
    e1.record()
    e1.synchronize()
    out["copy_TBps"] = 2 * x.numel() * 10 / (e0.elapsed_time(e1) / 1e3) / 1e12
    log(f"copy  {out['copy_TBps']:.2f} TB/s (read+write)")
    del x, y
    free(device)
    return out


# ----------------------------------------------------------------------------------------------- idea (2) check
def mask_equivalence(model, batch, device):
    """fp32, no autocast: target-position logits (and all real positions' hidden states) with the padding mask
    vs attention_mask=None (causal path), on a right-padded batch."""
    lm = unwrap_causal_lm(model)
    ids, mask, labels, lens = batch
    was = model.training
    model.eval()
    with torch.no_grad():
        h_mask = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        h_none = lm.model(input_ids=ids, attention_mask=None, use_cache=False).last_hidden_state
        sel = (labels[:, 1:] != IGNORE_INDEX)
        lg_mask = lm.lm_head(h_mask[:, :-1][sel]).float()
        lg_none = lm.lm_head(h_none[:, :-1][sel]).float()
        real = mask.bool()
        out = {"target_logits_max_abs_diff": float((lg_mask - lg_none).abs().max()),
               "target_logits_max_abs": float(lg_mask.abs().max()),
               "real_hidden_max_abs_diff": float((h_mask[real] - h_none[real]).abs().max()),
               "real_hidden_max_abs": float(h_mask[real].abs().max()),
               "pad_hidden_max_abs_diff": float((h_mask[~real] - h_none[~real]).abs().max()) if (~real).any() else 0.0}
    model.train(was)
    log(f"mask vs no-mask (fp32, right-padded): target logits max|Δ| {out['target_logits_max_abs_diff']:.2e} "
        f"(max|logit| {out['target_logits_max_abs']:.2f}); real-position hidden max|Δ| {out['real_hidden_max_abs_diff']:.2e}; "
        f"pad positions differ by {out['pad_hidden_max_abs_diff']:.2e} (unused)")
    return out


# ----------------------------------------------------------------------------------------------- FT
def run_ft(shape, device, batches, args, errors):
    ctx = Ctx(device)
    model = build_llama(shape, device)
    params = trainable(model)
    st = State(model, params, batches["check"], ctx)
    META["mask_equivalence_ft_init"] = mask_equivalence(model, batches["check"], device)
    plain = TargetTokenLoss(model)
    META["ft_plain_vs_fp32"] = st.set_reference(ours_loss(plain))
    log(f"FT plain (autocast) vs fp32: {META['ft_plain_vs_fp32']}")
    lr, wd = 1e-5, 0.01

    def stage(name, loss_fn, modes, fused, check_train=False, note="", clip_fold=False, profile=False, check=True):
        chk = st.check(name, loss_fn, train=check_train) if check else None
        opt = make_adamw(params, lr, wd, fused)
        for mode in modes:
            guarded(lambda: timed(name, "ft", mode, shape, st, loss_fn, opt, batches, args, check=chk, note=note,
                                  clip_fold=clip_fold), f"{name}/{mode}", errors)
            st.restore()
        if profile:
            guarded(lambda: profile_step(name, st, loss_fn, opt, batches["tgt"], args, clip_fold), f"profile {name}", errors)
        del opt
        free(device)

    nomask = TargetTokenLoss(model, causal_no_mask=True)
    if not args.skip_eager:
        guarded(lambda: stage("FT hf (labels=, full logits)", hf_loss(model), ["tgt", "lm"], False,
                              note="transformers model(..., labels=); fp32 master + autocast; foreach AdamW"), "ft-hf", errors)
        guarded(lambda: stage("FT ours plain", ours_loss(plain), ["tgt", "lm", "pad"], False,
                              note="TargetTokenLoss, mask, foreach AdamW (lorascope today)"), "ft-plain", errors)
        guarded(lambda: stage("FT ours +fused", ours_loss(plain), ["tgt"], True), "ft-fused", errors)
        guarded(lambda: stage("FT ours +fused +nomask", ours_loss(nomask), ["tgt", "lm", "pad"], True), "ft-nomask", errors)
    if not args.no_compile:
        cg = " +cudagraphs" if CUDAGRAPHS else ""
        speed.compile_layers(model, **({"mode": args.compile_mode} if args.compile_mode else {}))
        guarded(lambda: stage("FT ours +fused +nomask +compile" + cg, ours_loss(nomask), ["tgt", "lm", "pad"], True,
                              check_train=True, note="regional compile; check in train mode (no dropout in FT)",
                              profile=True), "ft-compile", errors)
        guarded(lambda: stage("FT ours +fused +nomask +compile +clipfold" + cg, ours_loss(nomask), ["tgt", "lm"], True,
                              check=False, clip_fold=True,
                              note="clipping folded into fused AdamW's grad_scale (one norm pass, no scale pass)"),
                "ft-clipfold", errors)
        META["dynamo_ft"] = dynamo_counters()
    del st, model, plain, nomask, params
    torch._dynamo.reset()
    free(device)


def run_ft_bf16(shape, device, batches, args, errors):
    """transformers FT in pure bf16 (bf16 weights, bf16 AdamW): the earlier reference's faster FT number."""
    model = build_llama(shape, device, dtype=torch.bfloat16)
    params = trainable(model)
    st = State(model, params, batches["check"], Ctx(device, amp=False))
    st.snapshot, st.extra_bytes = [], 0  # not checked (other numerics); nothing to restore
    opt = make_adamw(params, 1e-5, 0.01, False)
    for mode in ("tgt", "lm"):
        guarded(lambda: timed("FT hf pure bf16 (other numerics)", "ft", mode, shape, st, hf_loss(model), opt, batches,
                              args, note="bf16 weights + bf16 AdamW states; no autocast"), f"ft-bf16/{mode}", errors)
    del opt, st, model, params
    free(device)


# ----------------------------------------------------------------------------------------------- LoRA
def run_lora(shape, device, batches, args, errors, fast=False):
    if fast:
        return run_fast_lora(shape, device, batches, args, errors)
    ctx = Ctx(device)
    model = add_lora(build_llama(shape, device))
    params = trainable(model)
    st = State(model, params, batches["check"], ctx)
    plain = TargetTokenLoss(model)
    META["lora_plain_vs_fp32"] = st.set_reference(ours_loss(plain))
    log(f"LoRA plain (autocast) vs fp32: {META['lora_plain_vs_fp32']}")
    META["lora_trainable_params"] = sum(p.numel() for p in params)
    lr, wd = 2e-4, 0.0

    def stage(name, loss_fn, modes, fused, note="", check=True, eval_modes=(), profile=False):
        chk = st.check(name, loss_fn, train=False) if check else None
        opt = make_adamw(params, lr, wd, fused)
        for mode in modes:
            guarded(lambda: timed(name, "lora", mode, shape, st, loss_fn, opt, batches, args, check=chk, note=note),
                    f"{name}/{mode}", errors)
            st.restore()
        if profile:
            guarded(lambda: profile_step(name, st, loss_fn, opt, batches["tgt"], args), f"profile {name}", errors)
        for mode in eval_modes:
            guarded(lambda: timed(name + " [dropout off]", "lora", mode, shape, st, loss_fn, opt, batches, args,
                                  check=chk, train=False, note=note + "; eval mode: LoRA dropout off"),
                    f"{name}/eval/{mode}", errors)
            st.restore()
        del opt
        free(device)

    if not args.skip_eager:
        guarded(lambda: stage("LoRA peft (labels=, full logits)", hf_loss(model), ["tgt", "lm"], False,
                              note="PEFT get_peft_model; model(..., labels=); fp32 + autocast; foreach AdamW"), "lora-peft", errors)
        guarded(lambda: stage("LoRA ours plain", ours_loss(plain), ["tgt", "lm", "pad"], False,
                              note="TargetTokenLoss, mask, fp32 frozen weights, foreach AdamW (lorascope today)"),
                "lora-plain", errors)
    n = speed.prepare_lora_for_speed(model, device, bf16=True) or speed.cast_frozen_linear_weights(model)
    META["lora_frozen_elements_cast_bf16"] = n
    nomask = TargetTokenLoss(model, causal_no_mask=True)
    if not args.skip_eager:
        guarded(lambda: stage("LoRA ours +bf16frozen", ours_loss(plain), ["tgt"], False,
                              note="frozen Linear weights stored bf16 (expect bit-identical check)"), "lora-bf16", errors)
        guarded(lambda: stage("LoRA ours +bf16frozen +fused", ours_loss(plain), ["tgt"], True, check=False), "lora-fused", errors)
        guarded(lambda: stage("LoRA ours +bf16frozen +fused +nomask", ours_loss(nomask), ["tgt", "lm", "pad"], True,
                              eval_modes=["tgt"]), "lora-nomask", errors)
    if not args.no_compile:
        speed.compile_layers(model, **({"mode": args.compile_mode} if args.compile_mode else {}))
        name = "LoRA ours +bf16frozen +fused +nomask +compile" + (" +cudagraphs" if CUDAGRAPHS else "")
        # train-mode graph first (the one training uses), then the eval-mode graph for the exact check
        guarded(lambda: stage(name, ours_loss(nomask), ["tgt", "lm", "pad"], True, check=False, profile=True,
                              note="regional compile; train mode (dropout 0.05)"), "lora-compile", errors)
        if time_left(args) > 40:
            guarded(lambda: stage(name, ours_loss(nomask), [], True, eval_modes=["tgt"],
                                  note="regional compile"), "lora-compile-eval", errors)
        else:
            log("skipped: compiled eval-mode check (time)")
        META["dynamo_lora"] = dynamo_counters()
    del st, model, plain, nomask, params
    torch._dynamo.reset()
    free(device)


def run_fast_lora(shape, device, batches, args, errors):
    """LoRA through ``install_fast_lora`` (above) (one autograd function per adapted Linear), on top of the
    bf16 frozen weights, fused AdamW and the no-mask path; eager, then compiled."""
    ctx = Ctx(device)
    model = add_lora(build_llama(shape, device))
    params = trainable(model)
    st = State(model, params, batches["check"], ctx)
    plain = TargetTokenLoss(model)
    META["fastlora_plain_vs_fp32"] = st.set_reference(ours_loss(plain))
    speed.prepare_lora_for_speed(model, device, bf16=True) or speed.cast_frozen_linear_weights(model)
    META["fastlora_modules"] = install_fast_lora(model)
    nomask = TargetTokenLoss(model, causal_no_mask=True)
    loss_fn = ours_loss(nomask)
    lr, wd = 2e-4, 0.0

    def stage(name, modes, check=True, eval_modes=(), profile=False, note=""):
        chk = st.check(name, loss_fn, train=False) if check else None
        opt = make_adamw(params, lr, wd, True)
        for mode in modes:
            guarded(lambda: timed(name, "lora", mode, shape, st, loss_fn, opt, batches, args, check=chk, note=note),
                    f"{name}/{mode}", errors)
            st.restore()
        for mode in eval_modes:
            guarded(lambda: timed(name + " [dropout off]", "lora", mode, shape, st, loss_fn, opt, batches, args,
                                  check=chk, train=False, note=note + "; eval mode: LoRA dropout off"),
                    f"{name}/eval/{mode}", errors)
            st.restore()
        if profile:
            guarded(lambda: profile_step(name, st, loss_fn, opt, batches["tgt"], args), f"profile {name}", errors)
        del opt
        free(device)

    base = "LoRA ours +bf16frozen +fused +nomask +fastlora"
    guarded(lambda: stage(base, ["tgt"], note="install_fast_lora (this script): one autograd.Function per adapted Linear"),
            "fastlora-eager", errors)
    if not args.no_compile:
        speed.compile_layers(model)
        guarded(lambda: stage(base + " +compile", ["tgt", "lm", "pad"], check=False, profile=True,
                              note="regional compile; train mode (dropout 0.05)"), "fastlora-compile", errors)
        if time_left(args) > 60:
            guarded(lambda: stage(base + " +compile", [], eval_modes=["tgt"]), "fastlora-compile-eval", errors)
        META["dynamo_fastlora"] = dynamo_counters()
    del st, model, plain, nomask, params, loss_fn
    torch._dynamo.reset()
    free(device)


def run_frozen_floor(shape, device, batches, args, errors):
    """LoRA's floor: the frozen bf16 model's forward + input gradients (no adapters, no optimizer), compiled."""
    model = build_llama(shape, device)
    for p in model.parameters():
        p.requires_grad_(False)
    speed.cast_frozen_linear_weights(model)
    model.enable_input_require_grads()
    st = State(model, [], batches["check"], Ctx(device))
    loss_mod = TargetTokenLoss(model, causal_no_mask=True)
    if not args.no_compile:
        speed.compile_layers(model)
    for mode in ("tgt",):
        guarded(lambda: timed("floor: frozen bf16, no adapters" + ("" if args.no_compile else " +compile"), "frozen",
                              mode, shape, st, ours_loss(loss_mod), None, batches, args,
                              note="forward + input grads only: what LoRA costs without its adapters"),
                f"floor/{mode}", errors)
    guarded(lambda: profile_step("floor", st, ours_loss(loss_mod), None, batches["tgt"], args), "profile floor", errors)
    del st, model, loss_mod
    torch._dynamo.reset()
    free(device)


def dynamo_counters():
    """How many graphs dynamo compiled (one per layer *kind* and mode is the aim: layers share one graph)."""
    from torch._dynamo.utils import counters

    out = {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break", "recompiles")}
    log(f"dynamo counters: {out}")
    return out


# ----------------------------------------------------------------------------------------------- table
def table(args):
    cols = ["variant", "mode", "ms/step", "tok/s", "TFLOP/s", "MFU%", "%gemm", "peak GiB", "1st step s", "loss rel", "grad rel"]
    rows = []
    for r in RECORDS:
        c = r.get("check") or {}
        rows.append([r["variant"], r["mode"], f"{r['ms_median']:.1f}", f"{r['tok_s']:.0f}", f"{r['tflops']:.0f}",
                     f"{100 * r['mfu_datasheet']:.1f}", f"{100 * r.get('frac_gemm_ceiling', float('nan')):.0f}",
                     f"{r['peak_gib']:.1f}", f"{r['first_step_s']:.1f}", f"{c.get('loss_rel_err', float('nan')):.1e}",
                     f"{c.get('grad_rel_err', float('nan')):.1e}"])
    w = [max(len(str(x)) for x in col) for col in zip(cols, *rows)] if rows else [len(c) for c in cols]
    line = lambda xs: "| " + " | ".join(str(x).ljust(n) for x, n in zip(xs, w)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (n + 2) for n in w) + "|"] + [line(x) for x in rows]
    return "\n".join(out)


def summary():
    best = {}
    for r in RECORDS:
        if " ours" not in r["variant"] or "dropout off" in r["variant"]:
            continue
        k = (r["method"], r["mode"])
        if k not in best or r["tok_s"] > best[k]["tok_s"]:
            best[k] = r
    lines = []
    for mode in ("tgt", "lm", "pad"):
        ft, lo = best.get(("ft", mode)), best.get(("lora", mode))
        if ft and lo:
            lines.append(f"{mode}: best ours LoRA {lo['tok_s']:.0f} tok/s ({lo['variant']}) / best ours FT {ft['tok_s']:.0f} "
                         f"tok/s ({ft['variant']}) = {lo['tok_s'] / ft['tok_s']:.2f}x; FT MFU {100 * ft['mfu_datasheet']:.1f}% "
                         f"of 989 TFLOP/s, {100 * ft.get('frac_gemm_ceiling', float('nan')):.0f}% of measured GEMM ceiling")
            META[f"ratio_lora_over_ft_{mode}"] = lo["tok_s"] / ft["tok_s"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model and batch (CPU smoke test)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for the layers, e.g. reduce-overhead (CUDA graphs)")
    ap.add_argument("--skip-eager", action="store_true", help="only the compiled stages of ft/lora (plus their checks)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler kernel breakdown of the compiled variants")
    ap.add_argument("--only", default="ft,lora,fastlora,ftbf16,floor", help="comma list of parts to run")
    ap.add_argument("--deadline-s", type=float, default=480, help="skip optional parts past this many seconds")
    args = ap.parse_args()
    device = torch.device(args.device)
    global CUDAGRAPHS
    CUDAGRAPHS = args.compile_mode == "reduce-overhead" and device.type == "cuda"
    shape = TINY if args.tiny else FULL
    import peft
    import transformers

    META.update({"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                 "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
                 "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                 "shape": shape, "lora": LORA, "warmup": args.warmup, "steps": args.steps,
                 "peak_datasheet_tflops": PEAK_BF16_DATASHEET / 1e12})
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 reference path: true fp32
    for knob in ("recompile_limit", "cache_size_limit"):  # several layer graphs (train/eval, layer 0) per code object
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 32)
    log(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} on {META['device']}")
    errors: list[dict] = []
    META["errors"] = errors
    ceil = gemm_ceiling(device, args)
    META["gemm"] = ceil
    if ceil:
        META["gemm_ceiling_tflops"] = ceil["8192^3"]
    batches = {k: make_batch(shape, k, device, seed=i + 10) for i, k in enumerate(("tgt", "lm", "pad"))}
    batches["check"] = make_batch(shape, "pad", device, seed=99)
    parts = args.only.split(",")
    if "ft" in parts:
        guarded(lambda: run_ft(shape, device, batches, args, errors), "ft", errors)
    if "lora" in parts:
        guarded(lambda: run_lora(shape, device, batches, args, errors), "lora", errors)
    if "fastlora" in parts:
        guarded(lambda: run_lora(shape, device, batches, args, errors, fast=True), "fastlora", errors)
    if "ftbf16" in parts and time_left(args) > 40:
        guarded(lambda: run_ft_bf16(shape, device, batches, args, errors), "ft-bf16", errors)
    if "floor" in parts and time_left(args) > 90:
        guarded(lambda: run_frozen_floor(shape, device, batches, args, errors), "floor", errors)
    s = summary()
    write_json(args)
    print("\nchecks vs plain path (fp32 master + autocast, mask, eager), right-padded batch, tgt labels:")
    for c in CHECKS:
        print(f"  {c['variant']:<48} loss rel {c['loss_rel_err']:.1e}  grad rel {c['grad_rel_err']:.1e}  "
              f"worst tensor {c['grad_worst_tensor_rel_err']:.1e}  {'ok' if c['ok'] else 'MISMATCH'}")
    for k in ("ft_plain_vs_fp32", "lora_plain_vs_fp32"):
        if k in META:
            print(f"  scale of bf16 rounding, {k}: loss rel {META[k]['loss_rel_err']:.1e}  grad rel {META[k]['grad_rel_err']:.1e}")
    if errors:
        print("errors:", json.dumps(errors, indent=1))
    print(f"\nGEMM ceiling (bf16 8192^3, measured): {META.get('gemm_ceiling_tflops', float('nan')):.0f} TFLOP/s; "
          f"MFU% is against the datasheet {PEAK_BF16_DATASHEET / 1e12:.0f} TFLOP/s; %gemm against the measured ceiling")
    print(table(args))
    print(s)
    log("done")


if __name__ == "__main__":
    main()
