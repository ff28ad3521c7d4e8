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

That is the ``addmm`` decode path (two extra kernels per group in a mixed batch, one with a single adapter on
every row); prefill always takes it (large M: cuBLAS is the right tool there). The default ``fused`` decode
path runs each projection as ONE Triton kernel (``lora_kernel.py``): base GEMV, shrink, per-row adapter
selection and expansion in a single launch, so LoRA adds no launch at all; ``base``/``merged`` run the same
kernel without its LoRA part, so their comparison isolates the adapter's cost. On CPU the fused path is its
PyTorch reference (``fused_lora.reference_projection``). No per-adapter Python loop anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorascope.serve import lora_kernel
from lorascope.serve.adapters import LoraWeights
from lorascope.serve.fused_lora import Routing, reference_projection, route
from lorascope.serve.types import ServeError

DECODE_PATHS = ("fused", "addmm")

GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gu": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}


@dataclass
class Group:
    """A fused projection: ``w`` = [W; A-stack] (d_out + k·n·r, d_in); ``b`` = block-diagonal B-stack
    (k·n·r, d_out) for the addmm path and ``b_rows`` = the same B compactly, (k, r, d_out) — column j holds its
    own module's B — for the fused kernel; both None without adapters. ``widths``: the modules' d_out."""

    w: torch.Tensor
    b: torch.Tensor | None
    b_rows: torch.Tensor | None
    d_out: int
    n_mod: int
    widths: tuple[int, ...]
    configs: dict[int, lora_kernel.Config] | None = None  # the fused kernel's tiles per variant (prepare_kernels)


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
    """A rows (k·n·r, d_in) and block-diagonal B (k·n·r, Σd_out), slot-major then module-major, B scaled by α/r;
    and the compact B (k, r, Σd_out) = the block diagonal's non-zero blocks side by side."""
    r = adapters[0].r
    d_in = shapes[0][1]
    d_outs = [s[0] for s in shapes]
    a_rows, b_rows, compact = [], [], []
    for ad in adapters:
        per_module = []
        for mi, module in enumerate(modules):
            pair = ad.pairs.get((li, module))
            a = pair[0] if pair is not None else torch.zeros(r, d_in)  # module not adapted: a zero slot
            b = pair[1] * ad.scaling if pair is not None else torch.zeros(d_outs[mi], r)
            block = torch.zeros(r, sum(d_outs))
            off = sum(d_outs[:mi])
            block[:, off: off + d_outs[mi]] = b.T
            a_rows.append(a)
            b_rows.append(block)
            per_module.append(b.T)
        compact.append(torch.cat(per_module, dim=1))
    return torch.cat(a_rows), torch.cat(b_rows), torch.stack(compact)


class NativeLlama:
    """Weights + forward for prefill and one decode step. Not an ``nn.Module``: nothing here trains."""

    def __init__(self, hf_model, *, adapters: list[LoraWeights] | None = None, merge: LoraWeights | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", decode: str = "fused",
                 use_triton: bool | None = None, tune: bool | None = None):
        """``decode``: "fused" (one Triton kernel per projection) or "addmm" (the stacked-A GEMM, mask and
        ``addmm_``). ``use_triton``: run the fused kernel (default: on CUDA; on CPU only under
        ``TRITON_INTERPRET=1``, for tests) instead of its PyTorch reference. ``tune``: time a few tile shapes per
        projection on first use (default: on CUDA for 16-bit dtypes) instead of the heuristic."""
        if decode not in DECODE_PATHS:
            raise ServeError(f"decode path {decode!r} is not one of {DECODE_PATHS}")
        cfg = hf_model.config
        if getattr(cfg, "model_type", None) != "llama":
            raise ServeError(f"the native engine serves Llama models; got model_type={cfg.model_type!r}")
        self.device, self.dtype = torch.device(device), dtype
        self.decode = decode
        self.use_triton = self.device.type == "cuda" if use_triton is None else use_triton
        self.tune = (self.device.type == "cuda" and dtype != torch.float32) if tune is None else tune
        self.workspace = lora_kernel.Workspace(self.device)
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
                    w = w + merge.scaling * (b.to(w.device) @ a.to(w.device))
                ws.append(w)
            w = torch.cat(ws)
            b_stack = b_rows = None
            if self.adapters:
                a_stack, b_stack, b_rows = _lora_stack(self.adapters, li, modules, [tuple(x.shape) for x in ws])
                w = torch.cat([w, a_stack.to(w.device)])
                b_stack, b_rows = b_stack.to(**to).contiguous(), b_rows.to(**to).contiguous()
            groups[gname] = Group(w=w.to(**to).contiguous(), b=b_stack, b_rows=b_rows,
                                  d_out=sum(x.shape[0] for x in ws), n_mod=len(modules),
                                  widths=tuple(x.shape[0] for x in ws))
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
    def routing(self, slots: list[int]) -> Routing | None:
        """Per-row adapter routing for engine slot ids (0 = no adapter, a + 1 = adapter a); None without adapters.
        The one place rows meet adapters: both decode paths and prefill read what this returns."""
        if not self.k:
            return None
        return route(slots, self.k, self.adapters[0].r, self.dtype, self.device)

    @staticmethod
    def project(x: torch.Tensor, g: Group, masks: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """The addmm path: [W; A] GEMM, mask, in-place ``addmm_`` of the expansion."""
        y = F.linear(x, g.w)
        if g.b is None:
            return y
        base, h = y[:, : g.d_out], y[:, g.d_out:]
        if masks is not None:
            h = h * masks[g.n_mod]
        return base.addmm_(h, g.b)  # in place on the strided view: no extra add kernel

    def project_fused(self, x: torch.Tensor, g: Group, routing: Routing | None) -> torch.Tensor:
        """The fused path: one kernel (or its PyTorch reference) for base + every row's own adapter."""
        w = g.w[: g.d_out]  # [W; A] is contiguous, so are both views
        lora = None
        if g.b_rows is not None and routing is not None:
            lora = (g.w[g.d_out:], g.b_rows, routing.row_lora, routing.lora_ids, self.adapters[0].r)
        if not self.use_triton:
            return reference_projection(x, w, g.widths, lora)
        v = lora_kernel.variant(lora[3].numel() if lora is not None else 0, self.r, self.dtype)
        if g.configs is None or v not in g.configs:
            self.prepare_kernels()
        return lora_kernel.fused_lora_linear(x, w, g.widths, g.configs[v], self.workspace, lora)

    @property
    def r(self) -> int:
        return self.adapters[0].r if self.k else 1

    def prepare_kernels(self) -> list[str]:
        """Choose every fused projection's tiles per variant this engine can launch (no LoRA, or the LoRA column
        counts of U = 1..k distinct adapters) — tuned on CUDA for 16-bit dtypes, else the heuristic —
        and compile them now, so that nothing compiles inside a timed call or a graph capture."""
        if self.decode != "fused" or not self.use_triton:
            return []
        from lorascope.serve.lora_tuning import configs_for

        shapes = list(dict.fromkeys((g.widths, g.w.shape[1]) for g in self.layers[0].groups.values()))
        counts = range(1, self.k + 1) if self.k else [0]
        variants = sorted({lora_kernel.variant(u, self.r, self.dtype) for u in counts})
        configs = configs_for(shapes, variants, self.dtype, self.device, r=self.r, tune=self.tune)
        by_shape = {s: {v: configs[(s, v)] for v in variants} for s in shapes}
        for layer in self.layers:
            for g in layer.groups.values():
                g.configs = by_shape[(g.widths, g.w.shape[1])]
        if self.device.type != "cuda":
            return []
        return lora_kernel.precompile([(s[0], s[1], self.dtype, configs[(s, v)], -(-v // self.r) if v else 0, self.r)
                                       for s in shapes for v in variants], processes=1)

    def rope(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """qk (B, T, heads, hd); cos/sin (B, T, 1, hd)."""
        b, t, nh, hd = qk.shape
        flipped = qk.reshape(b, t, nh, 2, hd // 2).flip(-2).reshape(b, t, nh, hd)
        return torch.addcmul(qk * cos, flipped, sin)

    # ----- forward ---------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: "KVCache", write_at: torch.Tensor | int,
                attn_mask: torch.Tensor, routing: Routing | None, logits_out: torch.Tensor | None = None,
                ) -> torch.Tensor:
        """tokens/positions (B, T); writes K/V at cache columns [write_at, write_at + T) (an int slice for
        prefill, a 1-element tensor for a decode step); returns the logits (B, vocab) of the last position,
        written into ``logits_out`` when given (a graph's static buffer).

        ``attn_mask`` is boolean, (B, 1, T, T) for prefill (attends to the fresh K/V) or (B, 1, 1, S) for a
        decode step (attends to the whole cache of S columns). ``routing``: from ``routing()`` (None only for an
        engine without adapters)."""
        if self.k and routing is None:
            raise ServeError("an engine with adapters needs a routing (rows without an adapter: slot 0)")
        bsz, t = tokens.shape
        h_, kv_, hd = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(tokens.reshape(-1), self.embed)
        decode = not isinstance(write_at, int)
        fused = decode and self.decode == "fused"
        masks = routing.masks if routing is not None else None
        if masks is not None and t > 1:
            masks = {n: m.repeat_interleave(t, dim=0) for n, m in masks.items()}

        def project(inp: torch.Tensor, g: Group) -> torch.Tensor:
            return self.project_fused(inp, g, routing) if fused else self.project(inp, g, masks)

        cos = self.cos[positions].unsqueeze(2)
        sin = self.sin[positions].unsqueeze(2)
        for li, layer in enumerate(self.layers):
            g = layer.groups
            hidden = F.rms_norm(x, (self.d,), layer.ln1, self.eps)
            qkv = project(hidden, g["qkv"])
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
            x = x + project(attn.transpose(1, 2).reshape(bsz * t, h_ * hd), g["o"])
            hidden = F.rms_norm(x, (self.d,), layer.ln2, self.eps)
            gu = project(hidden, g["gu"])
            x = x + project(F.silu(gu[:, : self.inter]) * gu[:, self.inter:], g["down"])
        last = F.rms_norm(x.reshape(bsz, t, self.d)[:, -1], (self.d,), self.norm, self.eps)
        if logits_out is None:
            return F.linear(last, self.lm_head)
        return torch.mm(last, self.lm_head.t(), out=logits_out)


class KVCache:
    """Preallocated K/V for every layer: (B, kv_heads, S, head_dim), S = prompt budget + new tokens."""

    def __init__(self, model: NativeLlama, batch: int, seq: int):
        if seq > model.max_pos:
            raise ServeError(f"sequence budget {seq} exceeds the model's {model.max_pos} positions")
        shape = (batch, model.n_kv, seq, model.head_dim)
        self.k = [torch.zeros(shape, device=model.device, dtype=model.dtype) for _ in model.layers]
        self.v = [torch.zeros(shape, device=model.device, dtype=model.dtype) for _ in model.layers]
        self.batch, self.seq = batch, seq
