"""Engine registry: one module per engine behind the Engine protocol (stackgen.engines.base)."""

from __future__ import annotations

from stackgen.engines.base import Engine, LaunchContext, Unsupported, Weights
from stackgen.engines.llamacpp import LlamaCpp
from stackgen.engines.mlx import Mlx
from stackgen.engines.ollama import Ollama
from stackgen.engines.vllm import Vllm

ENGINES: dict[str, Engine] = {e.name: e for e in (LlamaCpp(), Ollama(), Vllm(), Mlx())}


def get(name: str) -> Engine:
    return ENGINES[name]


__all__ = ["ENGINES", "Engine", "LaunchContext", "Unsupported", "Weights", "get"]
