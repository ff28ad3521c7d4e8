"""lorascope's own Llama forward pass for serving: plain PyTorch, static KV cache, batched mixed-adapter LoRA.

Weights are copied out of a transformers ``LlamaForCausalLM`` (so any HF Llama checkpoint works) into four
fused projections per layer — qkv, o, gate|up, down. LoRA for k resident adapters (§10 ``multi-k``):

* shrink: the k adapters' A matrices of a group are stacked as extra output rows of the group's base
  weight, so one GEMM yields the base output and every adapter's x·Aᵀ (Punica's "shrink", Chen et al. 2023,
  folded into the base GEMM: no extra launch, A is read once per step whatever the batch);
* select: the (rows, k·n·r) shrink output is multiplied by a one-hot mask of each row's adapter slot (id 0 =
  no adapter: an all-zero mask row, i.e. a zero A/B slot that is never stored);
* expand: one in-place ``addmm_`` with the adapters' B stacked as (k·n·r, d_out) — block-diagonal over the
  group's modules, scaled by α/r — adds B·(mask⊙x·Aᵀ) into the base output.

So a mixed batch costs two extra kernels per group, no per-adapter Python loop, and reads each resident
adapter once per step (vs once per row for gathered per-row B). With one adapter and every row on it, the
mask is skipped. Without adapters (``base``, ``merged``) no LoRA code runs at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorascope.serve.adapters import LoraWeights
from lorascope.serve.types import ServeError

GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gu": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}


@dataclass
class Group:
    """A fused projection: ``w`` = [W; A-stack] (d_out + k·n·r, d_in), ``b`` = B-stack (k·n·r, d_out) or None."""

    w: torch.Tensor
    b: torch.Tensor | None
    d_out: int
    n_mod: int


@dataclass
class Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    groups: dict[str, Group]


def _hf_linear(layer, module: str) -> torch.Tensor:
    block = layer.self_attn if module in GROUPS["qkv"] + GROUPS["o"] else layer.mlp
    lin = getattr(block, module)
    if getattr(lin, "bias", None) is not None:
        raise ServeError(f"{module} has a bias: the native engine serves bias-free Llama models only")
    return lin.weight.detach().float()


def _lora_stack(adapters: list[LoraWeights], li: int, modules: tuple[str, ...], shapes: list[tuple[int, int]]):
    """A rows (k·n·r, d_in) and block-diagonal B (k·n·r, Σd_out), slot-major then module-major, B scaled."""
    r = adapters[0].r
    d_in = shapes[0][1]
    d_outs = [s[0] for s in shapes]
    a_rows, b_rows = [], []
    for ad in adapters:
        for mi, module in enumerate(modules):
            pair = ad.pairs.get((li, module))
            a = pair[0] if pair is not None else torch.zeros(r, d_in)  # module not adapted: a zero slot
            b = pair[1] * ad.scaling if pair is not None else torch.zeros(d_outs[mi], r)
            block = torch.zeros(r, sum(d_outs))
            off = sum(d_outs[:mi])
            block[:, off: off + d_outs[mi]] = b.T
            a_rows.append(a)
            b_rows.append(block)
    return torch.cat(a_rows), torch.cat(b_rows)


class NativeLlama:
    """Weights + forward for prefill and one decode step. Not an ``nn.Module``: nothing here trains."""

    def __init__(self, hf_model, *, adapters: list[LoraWeights] | None = None, merge: LoraWeights | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        cfg = hf_model.config
        if getattr(cfg, "model_type", None) != "llama":
            raise ServeError(f"the native engine serves Llama models; got model_type={cfg.model_type!r}")
        self.device, self.dtype = torch.device(device), dtype
        self.d = cfg.hidden_size
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.d // self.n_heads
        self.inter = cfg.intermediate_size
        self.eps = cfg.rms_norm_eps
        self.vocab = cfg.vocab_size
        self.adapters = list(adapters or [])
        if self.adapters and len({a.r for a in self.adapters}) != 1:
            raise ServeError("all resident adapters must share one rank r (stacked A/B)")
        self.k = len(self.adapters)
        to = dict(device=self.device, dtype=dtype)
        inner = hf_model.model
        self.embed = inner.embed_tokens.weight.detach().to(**to)
        self.norm = inner.norm.weight.detach().to(**to)
        self.lm_head = hf_model.lm_head.weight.detach().to(**to)
        self.layers = [self._layer(li, layer, merge, to) for li, layer in enumerate(inner.layers)]
        self._rope_tables(inner.rotary_emb, cfg.max_position_embeddings)

    def _layer(self, li: int, layer, merge: LoraWeights | None, to: dict) -> Layer:
        groups = {}
        for gname, modules in GROUPS.items():
            ws = []
            for module in modules:
                w = _hf_linear(layer, module)
                if merge is not None and (li, module) in merge.pairs:  # merged: W + (α/r)·B·A, in fp32
                    a, b = merge.pairs[(li, module)]
                    w = w + merge.scaling * (b @ a).to(w.device)
                ws.append(w)
            w = torch.cat(ws)
            b_stack = None
            if self.adapters:
                a_stack, b_stack = _lora_stack(self.adapters, li, modules, [tuple(x.shape) for x in ws])
                w = torch.cat([w, a_stack.to(w.device)])
                b_stack = b_stack.to(**to).contiguous()
            groups[gname] = Group(w=w.to(**to).contiguous(), b=b_stack, d_out=sum(x.shape[0] for x in ws),
                                  n_mod=len(modules))
        return Layer(ln1=layer.input_layernorm.weight.detach().to(**to),
                     ln2=layer.post_attention_layernorm.weight.detach().to(**to), groups=groups)

    def _rope_tables(self, rotary, max_pos: int) -> None:
        """cos and sign-folded sin per position, as HF Llama computes them (fp32, then cast): rotate_half(x)·sin
        = flip_halves(x)·[-sin, sin], which saves the negation and concatenation kernels per layer."""
        inv_freq = rotary.inv_freq.detach().float().cpu()
        scale = float(getattr(rotary, "attention_scaling", 1.0))
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        half = inv_freq.numel()
        sin = emb.sin() * scale
        self.cos = (emb.cos() * scale).to(self.device, self.dtype)
        self.sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1).to(self.device, self.dtype)
        self.max_pos = max_pos

    # ----- building blocks -------------------------------------------------------------------------------
    def slot_masks(self, slot_ids: torch.Tensor) -> dict[int, torch.Tensor] | None:
        """One-hot masks (rows, k·n·r) for n = 1, 2, 3 modules per group; slot 0 = no adapter (all zeros).
        None when no mask is needed (no adapters, or one adapter used by every row)."""
        if not self.k:
            return None
        if self.k == 1 and bool((slot_ids == 1).all()):
            return None
        onehot = F.one_hot(slot_ids.long(), self.k + 1)[:, 1:].to(self.dtype)  # drop slot 0 ("no adapter")
        r = self.adapters[0].r
        return {n: onehot.repeat_interleave(n * r, dim=1).contiguous() for n in (1, 2, 3)}

    @staticmethod
    def project(x: torch.Tensor, g: Group, masks: dict[int, torch.Tensor] | None) -> torch.Tensor:
        y = F.linear(x, g.w)
        if g.b is None:
            return y
        base, h = y[:, : g.d_out], y[:, g.d_out:]
        if masks is not None:
            h = h * masks[g.n_mod]
        return base.addmm_(h, g.b)  # in place on the strided view: no extra add kernel

    def rope(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """qk (B, T, heads, hd); cos/sin (B, T, 1, hd)."""
        b, t, nh, hd = qk.shape
        flipped = qk.reshape(b, t, nh, 2, hd // 2).flip(-2).reshape(b, t, nh, hd)
        return torch.addcmul(qk * cos, flipped, sin)

    # ----- forward ---------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: "KVCache", write_at: torch.Tensor | int,
                attn_mask: torch.Tensor, masks: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """tokens/positions (B, T); writes K/V at cache columns [write_at, write_at + T) (an int slice for
        prefill, a 1-element tensor for a decode step); returns greedy next tokens (B,) of the last position.

        ``attn_mask`` is boolean, (B, 1, T, T) for prefill (attends to the fresh K/V) or (B, 1, 1, S) for a
        decode step (attends to the whole cache of S columns)."""
        bsz, t = tokens.shape
        h_, kv_, hd = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(tokens.reshape(-1), self.embed)
        if masks is not None and t > 1:
            masks = {n: m.repeat_interleave(t, dim=0) for n, m in masks.items()}
        cos = self.cos[positions].unsqueeze(2)
        sin = self.sin[positions].unsqueeze(2)
        decode = not isinstance(write_at, int)
        for li, layer in enumerate(self.layers):
            g = layer.groups
            hidden = F.rms_norm(x, (self.d,), layer.ln1, self.eps)
            qkv = self.project(hidden, g["qkv"], masks)
            qk = self.rope(qkv[:, : (h_ + kv_) * hd].reshape(bsz, t, h_ + kv_, hd), cos, sin)
            q = qk[:, :, :h_].transpose(1, 2)
            k = qk[:, :, h_:].transpose(1, 2)
            v = qkv[:, (h_ + kv_) * hd:].reshape(bsz, t, kv_, hd).transpose(1, 2)
            if decode:
                cache.k[li].index_copy_(2, write_at, k)
                cache.v[li].index_copy_(2, write_at, v)
                k, v = cache.k[li], cache.v[li]
            else:
                cache.k[li][:, :, write_at: write_at + t].copy_(k)
                cache.v[li][:, :, write_at: write_at + t].copy_(v)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=kv_ != h_)
            x = x + self.project(attn.transpose(1, 2).reshape(bsz * t, h_ * hd), g["o"], masks)
            hidden = F.rms_norm(x, (self.d,), layer.ln2, self.eps)
            gu = self.project(hidden, g["gu"], masks)
            x = x + self.project(F.silu(gu[:, : self.inter]) * gu[:, self.inter:], g["down"], masks)
        last = x.reshape(bsz, t, self.d)[:, -1]
        logits = F.linear(F.rms_norm(last, (self.d,), self.norm, self.eps), self.lm_head)
        return logits.argmax(dim=-1)


class KVCache:
    """Preallocated K/V for every layer: (B, kv_heads, S, head_dim), S = prompt budget + new tokens."""

    def __init__(self, model: NativeLlama, batch: int, seq: int):
        if seq > model.max_pos:
            raise ServeError(f"sequence budget {seq} exceeds the model's {model.max_pos} positions")
        shape = (batch, model.n_kv, seq, model.head_dim)
        self.k = [torch.zeros(shape, device=model.device, dtype=model.dtype) for _ in model.layers]
        self.v = [torch.zeros(shape, device=model.device, dtype=model.dtype) for _ in model.layers]
        self.batch, self.seq = batch, seq
