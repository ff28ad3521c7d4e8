"""Deployment benchmark (STUDY.md §10): serving LoRA adapters merged, unmerged and mixed, on three backends.

Modules that need no pydantic (``types``, ``adapters``, ``native_model``, ``native``, ``fused_lora``, ``lora_kernel``,
``lora_tuning``, ``hf_peft``, ``timing``, ``correctness``, ``gate``) can be imported on machines without lorascope's
config stack (``benchmarks/serve_gpu.py``).
"""
