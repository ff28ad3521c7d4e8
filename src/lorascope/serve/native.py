"""The ``native`` backend: prefill, then a decode loop over a static KV cache, CUDA graphs on GPU.

A decode step is captured once per (batch size, masked?) into a ``torch.cuda.CUDAGraph`` whose inputs and
outputs are static buffers (tokens, positions, cache column, per-row adapter routing, logits); the step
itself advances the token, position and cache column buffers, so the host loop only replays the graph (and,
with ``stop_at_eos``, reads one flag per step). Per-token times come from CUDA events recorded after each
step (host clock on CPU), so timing adds no synchronisation.

``forced_logits`` replays the very same graphs with the next input token overwritten from outside (teacher
forcing) and returns every step's logits: the correctness gate of the engine that is timed (§10).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from lorascope.serve.adapters import LoraWeights
from lorascope.serve.fused_lora import Routing, copy_routing
from lorascope.serve.native_model import KVCache, NativeLlama
from lorascope.serve.types import Generation, ServeError, cut_at_eos


@dataclass
class _State:
    """Static buffers of one batch size (reused by every call, and by the captured graph)."""

    cache: KVCache
    tok: torch.Tensor  # (B, 1) current input token
    pos: torch.Tensor  # (B, 1) rope position of the current token
    col: torch.Tensor  # (1,) cache column to write
    step: torch.Tensor  # (1,) output column
    valid: torch.Tensor  # (B, S) which cache columns each row may attend to
    out: torch.Tensor  # (B, max_new) generated tokens
    done: torch.Tensor  # (B,) row has produced EOS
    logits: torch.Tensor  # (B, vocab) of the latest step
    routing: Routing | None  # per-row adapters (None: engine without adapters)
    graphs: dict[bool, torch.cuda.CUDAGraph] = field(default_factory=dict)

    def view(self, masked: bool) -> Routing | None:
        """The routing a step reads: without masks when every row is on the single adapter (addmm path)."""
        if self.routing is None or masked:
            return self.routing
        return replace(self.routing, masks=None)


class NativeBackend:
    name = "native"

    def __init__(self, hf_model, *, adapters: list[LoraWeights] | None = None, merge: LoraWeights | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", eos_id: int | None = None,
                 pad_id: int = 0, max_prompt: int = 256, max_new: int = 64, cuda_graphs: bool = True,
                 decode: str = "fused", use_triton: bool | None = None, tune: bool | None = None):
        """``decode``/``use_triton``/``tune``: see ``NativeLlama`` (fused Triton kernel or the addmm path)."""
        self.model = NativeLlama(hf_model, adapters=adapters, merge=merge, dtype=dtype, device=device, decode=decode,
                                 use_triton=use_triton, tune=tune)
        self.device = self.model.device
        self.eos_id, self.pad_id = eos_id, pad_id
        self.max_prompt, self.max_new = max_prompt, max_new
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self._states: dict[int, _State] = {}
        self.compile_errors = self.model.prepare_kernels() if self.device.type == "cuda" else []

    # ----- state ---------------------------------------------------------------------------------------
    def _state(self, batch: int) -> _State:
        st = self._states.get(batch)
        if st is None:
            dev, seq = self.device, self.max_prompt + self.max_new
            z = lambda *shape, dtype=torch.long: torch.zeros(shape, device=dev, dtype=dtype)  # noqa: E731
            st = _State(cache=KVCache(self.model, batch, seq), tok=z(batch, 1), pos=z(batch, 1), col=z(1),
                        step=z(1), valid=z(batch, seq, dtype=torch.bool), out=z(batch, self.max_new),
                        done=z(batch, dtype=torch.bool), logits=z(batch, self.model.vocab, dtype=self.model.dtype),
                        routing=self.model.routing([0] * batch))  # all slots 0: every buffer, masks included
            self._states[batch] = st
        return st

    def _decode_step(self, st: _State, masked: bool) -> None:
        """One token for every row; all inputs and outputs are ``st``'s buffers (graph-capturable)."""
        st.valid.index_fill_(1, st.col, True)
        logits = self.model.forward(st.tok, st.pos, st.cache, st.col, st.valid[:, None, None, :], st.view(masked),
                                    logits_out=st.logits)
        nxt = logits.argmax(dim=-1)
        st.out.index_copy_(1, st.step, nxt[:, None])
        if self.eos_id is not None:
            st.done |= nxt == self.eos_id
        st.tok.copy_(nxt[:, None])
        st.pos += 1
        st.col += 1
        st.step += 1

    def _graph(self, st: _State, masked: bool) -> torch.cuda.CUDAGraph:
        """Capture once per (batch, masked); warm up on a side stream first, as the PyTorch docs require (the
        warm-up also compiles and tunes the fused kernels, which must not happen during capture)."""
        if masked not in st.graphs:
            bufs = (st.tok, st.pos, st.col, st.step, st.valid, st.out, st.done, st.logits)
            saved = [t.clone() for t in bufs]
            for buf in (st.pos, st.col, st.step):  # warm-up steps write at these: keep them in range (the cache
                buf.zero_()  # columns they write are rewritten by the prefill that follows, see ``_start``)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._decode_step(st, masked)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._decode_step(st, masked)
            for buf, old in zip(bufs, saved):
                buf.copy_(old)
            st.graphs[masked] = graph
        return st.graphs[masked]

    # ----- generation ----------------------------------------------------------------------------------
    def _slots(self, adapter_ids: Sequence[int | None] | None, batch: int) -> list[int]:
        """Engine slot ids: 0 = no adapter, a + 1 = adapter a."""
        if adapter_ids is None:
            return [0] * batch
        if not self.model.k and any(a is not None for a in adapter_ids):
            raise ServeError("this engine was started without adapters")
        if any(a is not None and not 0 <= a < self.model.k for a in adapter_ids):
            raise ServeError(f"adapter id out of range 0..{self.model.k - 1}: {list(adapter_ids)}")
        return [0 if a is None else a + 1 for a in adapter_ids]

    def _start(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None):
        """The batch's state with its routing copied into the static buffers (masked = the mask is needed), and
        its graph captured — before any prefill, because capture's warm-up steps write into the KV cache."""
        bsz = len(prompts)
        routing = self.model.routing(self._slots(adapter_ids, bsz))
        st = self._state(bsz)
        masked = routing is not None and routing.masks is not None
        if routing is not None:
            copy_routing(st.routing, routing)
        if self.use_graphs:
            self._graph(st, masked)
        return st, masked

    def _prefill(self, st: _State, prompts: Sequence[Sequence[int]], masked: bool) -> None:
        """Left-padded prompts; rope positions count real tokens only (as HF generate with an attention mask)."""
        bsz, t = len(prompts), max(len(p) for p in prompts)
        if t > self.max_prompt:
            raise ServeError(f"prompt of {t} tokens exceeds the engine's budget of {self.max_prompt}")
        ids = torch.full((bsz, t), self.pad_id, dtype=torch.long)
        real = torch.zeros((bsz, t), dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids[i, t - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            real[i, t - len(p):] = True
        ids, real = ids.to(self.device), real.to(self.device)
        pos = (real.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril()
        # keys: real and not in the future; a pad query may see itself (else its softmax row is empty → NaN)
        attn = (causal & real[:, None, :]) | torch.eye(t, dtype=torch.bool, device=self.device)
        st.valid.zero_()
        st.valid[:, :t] = real
        st.done.zero_()
        logits = self.model.forward(ids, pos, st.cache, 0, attn[:, None], st.view(masked))
        st.logits.copy_(logits)
        first = logits.argmax(dim=-1)
        st.out[:, 0] = first
        if self.eos_id is not None:
            st.done |= first == self.eos_id
        st.tok.copy_(first[:, None])
        st.pos.copy_(pos[:, -1:] + 1)
        st.col.fill_(t)
        st.step.fill_(1)

    def _step(self, st: _State, masked: bool) -> None:
        graph = self._graph(st, masked) if self.use_graphs else None
        graph.replay() if graph is not None else self._decode_step(st, masked)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                 max_new_tokens: int, stop_at_eos: bool) -> Generation:
        if max_new_tokens > self.max_new:
            raise ServeError(f"max_new_tokens {max_new_tokens} > the engine's budget {self.max_new}")
        bsz = len(prompts)
        st, masked = self._start(prompts, adapter_ids)  # (captures the graph once, before the clock starts)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        marks = []  # per generated token: a CUDA event, or a host time on CPU
        start_ev = self._mark(cuda)
        self._prefill(st, prompts, masked)
        marks.append(self._mark(cuda))
        for _ in range(max_new_tokens - 1):
            if stop_at_eos and bool(st.done.all()):
                break
            self._step(st, masked)
            marks.append(self._mark(cuda))
        if cuda:
            torch.cuda.synchronize(self.device)
            times = [start_ev.elapsed_time(ev) / 1e3 for ev in marks]
        else:
            times = [m - t0 for m in marks]
        out = st.out[:, : len(marks)].tolist()
        tokens = [cut_at_eos(row, self.eos_id, stop_at_eos) for row in out]
        return Generation(tokens=tokens, ttft_s=[times[0]] * bsz, e2e_s=[times[len(row) - 1] for row in tokens])

    @torch.inference_mode()
    def forced_logits(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                      forced: Sequence[Sequence[int]]) -> torch.Tensor:
        """Teacher forcing through the timed code path: prefill, then the decode step (the same CUDA graph as
        ``generate``) with each row's next input token overwritten by ``forced``. Returns (B, n, vocab) float32
        logits on the engine's device: position i predicts ``forced[:, i]`` from the prompt and forced[:, :i]."""
        n = len(forced[0])
        if any(len(f) != n for f in forced) or len(forced) != len(prompts) or not 0 < n <= self.max_new:
            raise ServeError(f"forced tokens: one row of 1..{self.max_new} tokens per prompt, all of one length")
        st, masked = self._start(prompts, adapter_ids)
        feed = torch.tensor([list(f) for f in forced], dtype=torch.long, device=self.device)
        out = torch.empty((len(prompts), n, self.model.vocab), dtype=torch.float32, device=self.device)
        self._prefill(st, prompts, masked)
        out[:, 0] = st.logits
        for i in range(1, n):
            st.tok.copy_(feed[:, i - 1: i])  # overwrite the step's own argmax with the reference's token
            self._step(st, masked)
            out[:, i] = st.logits
        return out

    @torch.inference_mode()
    def decode_step_fn(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                       graph: bool = True):
        """For profiling: prefill the batch, then return a callable that runs one decode step exactly as
        ``generate`` does (a graph replay, or the eager step). Each call advances one position."""
        st, masked = self._start(prompts, adapter_ids)
        self._prefill(st, prompts, masked)
        if graph and self.use_graphs:
            return self._graph(st, masked).replay

        def step():
            with torch.inference_mode():
                self._decode_step(st, masked)
        return step

    @staticmethod
    def _mark(cuda: bool):
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def close(self) -> None:
        self._states.clear()
