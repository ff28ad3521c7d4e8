"""lorascope: does LoRA preserve a model's representations better than full fine-tuning?"""

__version__ = "0.1.0"
