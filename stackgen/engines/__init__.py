"""Engine registry: one module per engine, each a subclass of stackgen.engines.base.Engine that owns its facts.

To add an engine: write its module here (the Engine attributes and methods), add it to ENGINES, add its flag
table under profiles/engines/ and its row(s) in resolve.DECISION_TABLE. Nothing outside this package names it."""

from __future__ import annotations

from stackgen.engines.base import KEY_FD, ApiKey, Command, Engine, LaunchContext, Unsupported, Weights, command
from stackgen.engines.llamacpp import LlamaCpp
from stackgen.engines.mlx import Mlx
from stackgen.engines.ollama import Ollama
from stackgen.engines.sglang import SGLang
from stackgen.engines.vllm import Vllm

ENGINES: dict[str, Engine] = {e.name: e for e in (LlamaCpp(), Ollama(), Vllm(), Mlx(), SGLang())}


def get(name: str) -> Engine:
    return ENGINES[name]


__all__ = ["ENGINES", "KEY_FD", "ApiKey", "Command", "Engine", "LaunchContext", "Unsupported", "Weights",
           "command", "get"]
