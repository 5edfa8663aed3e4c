"""mixcd: rehearsal samplers for fine-tuning, with mix-cd (arXiv 2402.08096) and its baselines."""

__version__ = "0.2.0"
