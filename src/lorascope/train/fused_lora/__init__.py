"""Fused LoRA training path (Triton forward and backward, PEFT's semantics): see docs/fused_lora.md."""

from lorascope.train.fused_lora.install import FusedLora, FusedSettings, install_fused_lora

__all__ = ["FusedLora", "FusedSettings", "install_fused_lora"]
