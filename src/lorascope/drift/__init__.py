"""Representation drift between a base and a tuned model (STUDY.md §8): CKA and cosine similarity.

All functions take (n, d) activations X (base) and Y (tuned) whose rows are the same examples.
- ``similarity``: linear CKA and debiased linear CKA in feature space, streamed (``LinearCKAAccumulator``).
- ``gram``: n×n reference formulations (biased / unbiased HSIC) and RBF CKA.
- ``cosine``: mean per-example cosine with a t-CI, raw and standardized with the base model's statistics.
"""

from lorascope.drift.cosine import CosineAccumulator, cosine_similarity, per_example_cosine
from lorascope.drift.gram import (
    cka_from_grams,
    hsic_biased,
    hsic_unbiased,
    linear_cka_debiased_gram,
    linear_cka_gram,
    median_pairwise_distance,
    rbf_cka,
    rbf_gram,
)
from lorascope.drift.similarity import (
    LinearCKAAccumulator,
    SimilarityInputError,
    linear_cka,
    linear_cka_all,
    linear_cka_debiased,
)

__all__ = [
    "CosineAccumulator",
    "LinearCKAAccumulator",
    "SimilarityInputError",
    "cka_from_grams",
    "cosine_similarity",
    "hsic_biased",
    "hsic_unbiased",
    "linear_cka",
    "linear_cka_all",
    "linear_cka_debiased",
    "linear_cka_debiased_gram",
    "linear_cka_gram",
    "median_pairwise_distance",
    "per_example_cosine",
    "rbf_cka",
    "rbf_gram",
]
