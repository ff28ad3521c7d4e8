"""The ``hf-peft`` backend (§10's reference): transformers ``generate`` + PEFT, as users run it today.

Mixed batches use PEFT's ``adapter_names=`` argument to ``generate`` (one name per row; ``"__base__"`` = no
adapter), which PEFT routes through ``LoraLayer._mixed_batch_forward`` — a Python loop over the batch's
unique adapters (peft 0.21, ``peft/tuners/lora/layer.py``). Per-token times come from a stopping criterion
that ``generate`` calls once per new token (after a device synchronisation).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from lorascope.serve.types import Generation, ServeError, cut_at_eos, stop_token

BASE_NAME = "__base__"


class _Clock:
    """A ``StoppingCriteria`` that never stops: it records when each new token exists."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.t0 = device, [], 0.0

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self.t0)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFPeftBackend:
    name = "hf-peft"

    def __init__(self, hf_model, *, adapter_dirs: Sequence[str] | None = None, merge: bool = False,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", eos_id: int | None = None,
                 pad_id: int = 0):
        """``hf_model`` is taken over (moved, wrapped). ``merge=True`` merges ``adapter_dirs[0]`` and unloads
        PEFT (plain weights); no ``adapter_dirs`` serves the bare transformers model (no PEFT at all)."""
        self.device, self.eos_id, self.pad_id = torch.device(device), eos_id, pad_id
        model = hf_model.to(self.device, dtype).eval()
        self.names: list[str] = []
        if adapter_dirs:
            from peft import PeftModel

            dirs = list(adapter_dirs)
            model = PeftModel.from_pretrained(model, str(dirs[0]), adapter_name="a0", is_trainable=False)
            for i, path in enumerate(dirs[1:] if not merge else [], start=1):
                model.load_adapter(str(path), adapter_name=f"a{i}", is_trainable=False)
            self.names = [f"a{i}" for i in range(len(dirs) if not merge else 1)]
            if merge:
                model, self.names = model.merge_and_unload(), []
            model = model.to(self.device, dtype).eval()
        self.model = model

    def _row_names(self, adapter_ids: Sequence[int | None] | None, bsz: int) -> list[str] | None:
        if not self.names:
            if adapter_ids is not None and any(a is not None for a in adapter_ids):
                raise ServeError("this engine was started without adapters")
            return None
        ids = adapter_ids if adapter_ids is not None else [None] * bsz
        return [BASE_NAME if a is None else self.names[a] for a in ids]

    def _left_padded(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask), (B, T) on the CPU, left-padded: every row's next token is at column T."""
        t = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, t - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, t - len(seq):] = 1
        return ids, mask

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                 max_new_tokens: int, stop_at_eos: bool) -> Generation:
        from transformers import GenerationConfig, StoppingCriteriaList

        bsz = len(prompts)
        ids, mask = self._left_padded(prompts)
        t = ids.shape[1]
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stop_token(self.model, self.eos_id, stop_at_eos),
            pad_token_id=self.pad_id,
        )
        names = self._row_names(adapter_ids, bsz)
        kwargs = {"adapter_names": names} if names is not None else {}
        clock = _Clock(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        clock.t0 = time.perf_counter()
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=gen_cfg,
            stopping_criteria=StoppingCriteriaList([clock]),
            **kwargs,
        )
        tokens = [cut_at_eos(row, self.eos_id, stop_at_eos) for row in out[:, t:].tolist()]
        times = clock.times
        return Generation(tokens=tokens, ttft_s=[times[0]] * bsz, e2e_s=[times[len(row) - 1] for row in tokens])

    @torch.inference_mode()
    def forced_logits(
        self,
        prompts: Sequence[Sequence[int]],
        adapter_ids: Sequence[int | None] | None,
        forced: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """Teacher forcing (the correctness gate): one forward over prompt + forced tokens, left-padded, with the
        rows' adapters (``adapter_names``, as ``generate`` routes them); (B, n, vocab) float32 logits, position
        i predicting forced[:, i]."""
        n = len(forced[0])
        seqs = [list(p) + list(f[:-1]) for p, f in zip(prompts, forced)]
        bsz = len(seqs)
        ids, mask = self._left_padded(seqs)
        t = ids.shape[1]
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # as generate does for left padding
        names = self._row_names(adapter_ids, bsz)
        kwargs = {"adapter_names": names} if names is not None else {}
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            **kwargs,
        )
        return out.logits[:, t - n :].float()

    def close(self) -> None:
        self.model = None
