"""The ``vllm`` backend (optional extra): vLLM's offline ``LLM`` engine, imported only when used.

§10: ``base`` runs on an engine started without LoRA; LoRA scenarios start with ``enable_lora=True``,
``max_lora_rank`` = the adapters' rank and ``max_loras = k + 1`` — with every slot full, vLLM has been seen
to apply an adapter to rows that asked for none, so one slot stays free. ``merged`` serves a merged model
folder (written by the caller). Per-request times come from vLLM's request metrics (``disable_log_stats=
False``): TTFT = ``first_token_latency``, e2e = TTFT + (last − first token timestamps).

vLLM exposes log-probabilities, not logits: ``decode_logprobs`` returns the engine's own log-probability of each
greedy token it generated (``logprobs=0``, vLLM's default ``raw_logprobs`` mode: log-softmax of the model's
logits), through the same decode path that is timed — the input of the engine-token gate (``gate.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from lorascope.serve.types import Generation, ServeError, cut_at_eos

INSTALL_HINT = ("the vllm backend needs the optional vLLM extra, which is not importable here; on CPU create "
                "a separate venv (make test-vllm, docs/serving.md), on GPU `pip install vllm`")


def vllm_available() -> tuple[bool, str]:
    """(importable?, reason) without importing vLLM's heavy engine modules twice."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return False, f"{INSTALL_HINT} ({type(exc).__name__}: {exc})"
    return True, ""


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: str | Path, *, adapter_dirs: Sequence[str | Path] | None = None, rank: int = 8,
                 dtype: str = "float32", eos_id: int | None = None, max_len: int = 512, seed: int = 0,
                 enforce_eager: bool = False, gpu_memory_utilization: float | None = None, extra: dict | None = None):
        """``extra``: further keyword arguments of ``vllm.LLM`` (e.g. ``max_num_seqs``, ``compilation_config``)."""
        ok, why = vllm_available()
        if not ok:
            raise ServeError(why)
        import torch
        from vllm import LLM

        if gpu_memory_utilization is None:  # on vLLM's CPU backend this is the fraction of host RAM reserved
            gpu_memory_utilization = 0.5 if torch.cuda.is_available() else 0.1

        self.adapter_dirs = [str(p) for p in (adapter_dirs or [])]
        self.eos_id = eos_id
        kwargs = dict(model=str(model_dir), dtype=dtype, max_model_len=max_len, seed=seed, disable_log_stats=False,
                      enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                      skip_tokenizer_init=True)  # token ids in and out: no tokenizer needed
        if self.adapter_dirs:
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=len(self.adapter_dirs) + 1)
        kwargs.update(extra or {})
        self.llm = LLM(**kwargs)
        self._requests = None
        try:
            self.adapter_load_s = self._load_adapters() if self.adapter_dirs else 0.0
        except BaseException:
            self.close()  # the engine process holds the GPU: stop it before the error leaves
            raise

    def _lora(self, i: int):
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"a{i}", i + 1, self.adapter_dirs[i])  # int ids start at 1 (0 = no LoRA)

    def _load_adapters(self) -> float:
        """vLLM loads adapters lazily: one 1-token request per adapter, timed, puts each in a slot."""
        t0 = time.perf_counter()
        for i in range(len(self.adapter_dirs)):
            self.generate([[1, 2]], [i], 1, False)
        return time.perf_counter() - t0

    def _run(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None, max_new_tokens: int,
             stop_at_eos: bool, logprobs: int | None = None):
        """vLLM's outputs for one batch of token-id prompts, rows routed to their adapters; and the wall time."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=not stop_at_eos,
                                stop_token_ids=[self.eos_id] if stop_at_eos and self.eos_id is not None else None,
                                detokenize=False, logprobs=logprobs)
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        lora = None
        if adapter_ids is not None and any(a is not None for a in adapter_ids):
            if not self.adapter_dirs:
                raise ServeError("this engine was started without adapters")
            lora = [self._lora(a) if a is not None else None for a in adapter_ids]
        t0 = time.perf_counter()
        outs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=lora)
        return outs, time.perf_counter() - t0

    def decode_logprobs(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                        max_new_tokens: int) -> tuple[list[list[int]], list[list[float]]]:
        """Greedy decode of ``max_new_tokens`` (EOS ignored) as ONE batch: each row's tokens and the engine's
        log-probability of each of them, as its sampler computed it on the decode path."""
        outs, _ = self._run(prompts, adapter_ids, max_new_tokens, False, logprobs=0)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logprobs = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs or [], toks)]
                    for o, toks in zip(outs, tokens)]
        return tokens, logprobs  # lengths are the caller's to check (gate.engine_token_gate does)

    def generate(self, prompts: Sequence[Sequence[int]], adapter_ids: Sequence[int | None] | None,
                 max_new_tokens: int, stop_at_eos: bool) -> Generation:
        outs, wall = self._run(prompts, adapter_ids, max_new_tokens, stop_at_eos)
        tokens, ttft, e2e = [], [], []
        for o in outs:
            toks = list(o.outputs[0].token_ids)
            if (
                stop_at_eos
                and o.outputs[0].finish_reason == "stop"
                and self.eos_id is not None
                and toks[-1:] != [self.eos_id]
            ):
                toks.append(self.eos_id)  # vLLM drops the stop token from the output; count it as §10's EOS
            tokens.append(cut_at_eos(toks, self.eos_id, stop_at_eos))
            m = o.metrics
            first = getattr(m, "first_token_latency", 0.0) if m is not None else 0.0
            span = (m.last_token_ts - m.first_token_ts) if m is not None and m.last_token_ts else 0.0
            ttft.append(first if first > 0 else wall)
            e2e.append(first + span if first > 0 else wall)
        return Generation(tokens=tokens, ttft_s=ttft, e2e_s=e2e, extra={"wall_s": wall})

    def close(self) -> None:
        """Stop vLLM's engine-core process now (it holds the GPU memory), rather than whenever it is collected."""
        import gc

        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()
