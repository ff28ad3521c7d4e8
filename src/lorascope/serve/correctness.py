"""Correctness before speed (§10): a cell is timed only if its greedy outputs equal the fp32 transformers +
PEFT reference on fixed prompts. The reference of a row is the single-adapter PEFT result for that row's
adapter (or the bare model for a row without one), generated one prompt at a time (no padding).

The reference also gives teacher-forced logits (one forward over prompt + tokens) in fp32 and in a low
precision (bf16): the inputs of the teacher-forced gate of a bf16 engine (``gate.py``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch

from lorascope.serve.types import Backend


class Reference:
    """fp32 greedy outputs of transformers + PEFT, computed once per (adapter, prompt) and cached."""

    def __init__(self, hf_model, adapter_dirs: Sequence[str | Path], *, eos_id: int | None, device="cpu"):
        from peft import PeftModel

        self.eos_id, self.device = eos_id, torch.device(device)
        model = copy.deepcopy(hf_model).to(self.device, torch.float32).eval()
        self.names = [f"a{i}" for i in range(len(adapter_dirs))]
        if adapter_dirs:
            model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name="a0", is_trainable=False)
            for name, path in zip(self.names[1:], adapter_dirs[1:]):
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.model = model
        self._cache: dict[tuple, list[int]] = {}
        self._low: dict[torch.dtype, object] = {}  # the same PEFT model cast to a lower precision, made on demand
        self._logits: dict[tuple, torch.Tensor] = {}

    def _select(self, model, adapter: int | None):
        """A context in which ``model`` computes with ``adapter`` (None: the bare model)."""
        import contextlib

        if adapter is None and self.names:
            return model.disable_adapter()
        if self.names:
            model.set_adapter(self.names[adapter])
        return contextlib.nullcontext()

    @torch.inference_mode()
    def forced(self, prompt: Sequence[int], adapter: int | None, tokens: Sequence[int],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Logits (n, vocab), float32, that predict ``tokens`` one by one given the prompt and the tokens before
        (teacher forcing: one forward, no padding), computed by transformers + PEFT in ``dtype``."""
        key = (tuple(prompt), adapter, tuple(tokens), dtype)
        if key not in self._logits:
            model = self.model
            if dtype != torch.float32:
                if dtype not in self._low:
                    self._low[dtype] = copy.deepcopy(self.model).to(dtype)
                model = self._low[dtype]
            ids = torch.tensor([list(prompt) + list(tokens[:-1])], device=self.device)
            with self._select(model, adapter):
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:]
            self._logits[key] = logits.float()
        return self._logits[key]

    @torch.inference_mode()
    def one(self, prompt: Sequence[int], adapter: int | None, max_new: int, stop_at_eos: bool) -> list[int]:
        key = (tuple(prompt), adapter, max_new, stop_at_eos)
        if key not in self._cache:
            from transformers import GenerationConfig

            from lorascope.serve.types import cut_at_eos, stop_token

            cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=0,
                                   eos_token_id=stop_token(self.model, self.eos_id, stop_at_eos))
            ids = torch.tensor([list(prompt)], device=self.device)
            with self._select(self.model, adapter):
                out = self.model.generate(input_ids=ids, generation_config=cfg)
            self._cache[key] = cut_at_eos(out[0, len(prompt):].tolist(), self.eos_id, stop_at_eos)
        return self._cache[key]


    @torch.inference_mode()
    def prefetch(self, pairs: Sequence[tuple[Sequence[int], int | None]], max_new: int) -> None:
        """Fixed-length greedy outputs for many (prompt, adapter) pairs at once: the rows of one adapter and one
        prompt length form one ``generate`` batch — no padding, so the same computation as one by one up to fp32
        summation order in batched GEMMs (a GPU-time saving for large models; ``one`` then reads the cache)."""
        from transformers import GenerationConfig

        from lorascope.serve.types import stop_token

        groups: dict[tuple, list[tuple[int, ...]]] = {}
        for prompt, adapter in pairs:
            if (tuple(prompt), adapter, max_new, False) not in self._cache:
                groups.setdefault((adapter, len(prompt)), []).append(tuple(prompt))
        cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=0,
                               eos_token_id=stop_token(self.model, self.eos_id, False))
        for (adapter, length), prompts in groups.items():
            prompts = list(dict.fromkeys(prompts))
            ids = torch.tensor([list(p) for p in prompts], device=self.device)
            with self._select(self.model, adapter):
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
            for prompt, row in zip(prompts, out[:, length:].tolist()):
                self._cache[(prompt, adapter, max_new, False)] = row


def first_mismatch(got: Sequence[Sequence[int]], want: Sequence[Sequence[int]]) -> str | None:
    """None when equal; else 'row i, token j: got a, want b' for the first difference (length counts)."""
    for i, (g, w) in enumerate(zip(got, want)):
        if list(g) == list(w):
            continue
        j = next((j for j, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
        a = g[j] if j < len(g) else "<end>"
        b = w[j] if j < len(w) else "<end>"
        return f"row {i}, token {j}: got {a}, want {b}"
    if len(got) != len(want):
        return f"got {len(got)} rows, want {len(want)}"
    return None


def check_backend(backend: Backend, reference: Reference, prompts: Sequence[Sequence[int]],
                  engine_ids: Sequence[int | None] | None, reference_ids: Sequence[int | None],
                  max_new: int, stop_at_eos: bool) -> str | None:
    """Run the prompts as ONE batch (mixed adapters for multi-k) and compare every row with its reference.

    ``engine_ids`` are the engine's own adapter indices (None: plain engine); ``reference_ids`` the reference's
    (for ``merged`` the merged adapter's index, though the engine has none). Returns None or the mismatch."""
    got = backend.generate(prompts, engine_ids, max_new, stop_at_eos).tokens
    want = [reference.one(p, a, max_new, stop_at_eos) for p, a in zip(prompts, reference_ids)]
    return first_mismatch(got, want)
