"""llmbench: benchmark causal language models by size, accuracy, latency, memory and cost."""

__version__ = "0.1.0"
