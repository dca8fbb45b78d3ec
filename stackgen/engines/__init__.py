"""Engine registry: one module per engine behind the Engine protocol (stackgen.engines.base)."""

from __future__ import annotations

from stackgen.engines.base import KEY_FD, ApiKey, Command, Engine, LaunchContext, Unsupported, Weights, command
from stackgen.engines.llamacpp import LlamaCpp
from stackgen.engines.mlx import Mlx
from stackgen.engines.ollama import Ollama
from stackgen.engines.sglang import SGLang
from stackgen.engines.vllm import Vllm

ENGINES: dict[str, Engine] = {e.name: e for e in (LlamaCpp(), Ollama(), Vllm(), Mlx(), SGLang())}


# What each engine reads its API key from, for targets that pass it through the environment (containers, pods).
KEY_ENV: dict[str, str] = {n: e.api_key.env for n, e in ENGINES.items() if e.api_key is not None}


def get(name: str) -> Engine:
    return ENGINES[name]


__all__ = ["ENGINES", "KEY_ENV", "KEY_FD", "ApiKey", "Command", "Engine", "LaunchContext", "Unsupported", "Weights",
           "command", "get"]
