"""Training: one loop for full fine-tuning and LoRA (§5), checkpoints and resume, sanity gate, HPO."""
