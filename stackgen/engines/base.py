"""The one small interface every engine module implements.

An engine knows: which hardware it can run on, which weight format it loads for a requested quant, how it sizes
memory (delegating the arithmetic to stackgen.memory), and how to build its command line. Command lines are built
here in Python; templates are only for file formats (units, compose files, Modelfiles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stackgen.memory import Budget, MemoryPlan
from stackgen.models import ModelFacts
from stackgen.spec import HardwareSpec, WorkloadSpec


class Unsupported(Exception):
    """This engine cannot serve this model/hardware; the message is the reason a user would accept."""


@dataclass(frozen=True)
class Weights:
    format: str  # GGUF quant (Q4_K_M), HF dtype (bf16/awq/fp8) or MLX bits (4bit)
    bytes: int
    source: str  # file | catalog | estimate
    note: str = ""


@dataclass(frozen=True)
class LaunchContext:
    """Target-specific values an argv needs: where the model and key file are from the engine's point of view."""

    binary: str
    model_ref: str  # a path or a registry reference as the engine reads it
    host: str
    port: int
    api_key_file: str | None = None


class Engine(Protocol):
    name: str
    default_port: int
    display: str

    def hardware_block(self, hw: HardwareSpec, explicit: bool) -> str | None:
        """Why this engine cannot run on `hw` at all (None when it can). `explicit`: the stack named the engine."""

    def weights(self, model: ModelFacts) -> Weights:
        """The weights this engine would load for `model` (raises Unsupported)."""

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights) -> MemoryPlan:
        ...

    def argv(self, plan: "ServicePlanLike", ctx: LaunchContext) -> list[str]:
        ...

    def env(self, plan: "ServicePlanLike") -> dict[str, str]:
        ...


class ServicePlanLike(Protocol):  # what argv() reads of a ServicePlan (avoids an import cycle)
    name: str
    spec: object
    model: ModelFacts
    workload: WorkloadSpec
    memory: MemoryPlan
    threads: int
    api_key_env: str | None


def apply_overrides(argv: list[str], overrides: dict, aliases: dict[str, str] | None = None) -> list[str]:
    """Engine-native overrides win over tuned flags: a tuned flag that an override names is removed first.

    `aliases` maps short flags to their long form so `-c` and `--ctx-size` count as the same flag.
    """
    aliases = aliases or {}
    canon = lambda f: aliases.get(f, f)  # noqa: E731
    names = {canon(_flag(k)) for k in overrides}
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("-") and canon(tok) in names:
            i += 1
            if i < len(argv) and not argv[i].startswith("-"):
                i += 1  # drop the tuned value too
            continue
        out.append(tok)
        i += 1
    for key in sorted(overrides):
        flag, value = _flag(key), overrides[key]
        if value is False or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            out.append(flag)
            if v is not True:
                out.append(_text(v))
    return out


def _flag(key: str) -> str:
    return key if key.startswith("-") else f"--{key}"


def _text(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
