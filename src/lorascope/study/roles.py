"""The reference layout's roles (§14): vm1 full fine-tuning and baselines, vm2 LoRA training and HPO, vm3
evaluation, drift, weights and serving. Preferences, not pins: an idle node of another role takes work."""

from __future__ import annotations

ROLES = ("vm1", "vm2", "vm3")
METHOD_ROLE = {"ft": "vm1", "lora": "vm2", "lora_qv": "vm2"}


def method_role(params: dict) -> str:
    """A training job's role follows its method."""
    return METHOD_ROLE[params["method"]]
