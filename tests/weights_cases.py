"""Shared inputs of the §9 weights tests (test_weights.py, test_weights_fast.py): a base matrix with known
singular vectors and directions orthogonal to them, and a tiny random Llama."""

from __future__ import annotations

import numpy as np
import torch


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q


M, N = 96, 64
S = 10.0 * 0.9 ** np.arange(N)                      # distinct base singular values 10, 9, 8.1, …
Q = orthonormal(M, M, seed=1)
U, X = Q[:, :N], Q[:, N:]                           # X ⊥ span(U): directions new to W_base
V = orthonormal(N, N, seed=2)
W_BASE = U @ torch.diag(torch.as_tensor(S)) @ V.T


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()
