"""Weight structure and sparsity of fine-tuning updates ΔW, FT vs LoRA (STUDY.md §9, RQ3).

- ``metrics``: norms, spectrum (energy curve, effective / stable rank, rank at 90% energy), sparsity.
- ``intruders``: intruder dimensions (Shuttleworth et al. 2024).
- ``delta``: ΔW per module for FT (two models) and LoRA (a PEFT adapter folder, or its factors), and
  ``weights_report`` (a fast path and the float64-SVD reference path).
- ``spectra``: the fast path's float64 Gram eigendecompositions and LoRA's exact low-rank spectrum.
- ``dare``: DARE (Yu et al. 2024) and magnitude pruning of ΔW, written back into a model for re-evaluation.
- ``figures``: spectra, effective rank and intruders per layer, DARE curves (imported on demand:
  ``from lorascope.weights import figures``, so the package works without a display stack).
"""

from lorascope.weights.dare import (
                                    apply_delta_transform,
                                    dare,
                                    dare_mask,
                                    dare_transform,
                                    kept_count,
                                    magnitude_prune,
                                    magnitude_transform,
                                    resident_deltas,
)
from lorascope.weights.delta import (
                                    LLAMA_MODULE_TYPES,
                                    LoraFactors,
                                    ModuleDelta,
                                    WeightSource,
                                    ft_deltas,
                                    lora_deltas,
                                    lora_factors,
                                    module_order_key,
                                    parse_module_name,
                                    summarize_layers,
                                    weights_report,
                                    weights_reports,
)
from lorascope.weights.intruders import (
                                    IntruderResult,
                                    intruder_dimensions,
                                    left_singular_vectors,
                                    top_left_singular_vectors,
)
from lorascope.weights.metrics import (
                                    effective_rank,
                                    energy_curve,
                                    frobenius_norm,
                                    hoyer_sparsity,
                                    module_report,
                                    near_zero_fraction,
                                    numerical_rank,
                                    rank_at_energy,
                                    relative_frobenius_norm,
                                    singular_values,
                                    stable_rank,
)

__all__ = [
    "LLAMA_MODULE_TYPES", "IntruderResult", "LoraFactors", "ModuleDelta", "WeightSource",
    "apply_delta_transform", "dare", "dare_mask", "dare_transform", "effective_rank", "energy_curve",
    "frobenius_norm", "ft_deltas", "hoyer_sparsity", "intruder_dimensions", "kept_count",
    "left_singular_vectors", "lora_deltas", "lora_factors", "magnitude_prune", "magnitude_transform",
    "module_order_key", "module_report", "near_zero_fraction", "numerical_rank", "parse_module_name", "rank_at_energy",
    "relative_frobenius_norm", "resident_deltas", "singular_values", "stable_rank", "summarize_layers",
    "top_left_singular_vectors", "weights_report", "weights_reports",
]
