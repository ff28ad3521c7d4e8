"""Correctness before speed (§10): a cell is timed only if its greedy outputs equal the fp32 transformers +
PEFT reference on fixed prompts. The reference of a row is the single-adapter PEFT result for that row's
adapter (or the bare model for a row without one), generated one prompt at a time (no padding)."""

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

    @torch.inference_mode()
    def one(self, prompt: Sequence[int], adapter: int | None, max_new: int, stop_at_eos: bool) -> list[int]:
        key = (tuple(prompt), adapter, max_new, stop_at_eos)
        if key not in self._cache:
            from transformers import GenerationConfig

            from lorascope.serve.types import cut_at_eos, stop_token

            cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=0,
                                   eos_token_id=stop_token(self.model, self.eos_id, stop_at_eos))
            ids = torch.tensor([list(prompt)], device=self.device)
            if adapter is None and self.names:
                with self.model.disable_adapter():
                    out = self.model.generate(input_ids=ids, generation_config=cfg)
            else:
                if self.names:
                    self.model.set_adapter(self.names[adapter])
                out = self.model.generate(input_ids=ids, generation_config=cfg)
            self._cache[key] = cut_at_eos(out[0, len(prompt):].tolist(), self.eos_id, stop_at_eos)
        return self._cache[key]


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
