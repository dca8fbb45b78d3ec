"""stackgen: pick the bottleneck, not the benchmark."""

__version__ = "0.1.0"
