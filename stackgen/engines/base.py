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


KEY_FD = "/dev/fd/3"  # where an engine that reads its key from a file finds it: a private file held open on fd 3


@dataclass(frozen=True)
class ApiKey:
    """How an engine takes an API key. `env`: the engine's own variable (containers, pods, vLLM everywhere);
    `file_flag`: a flag naming a file to read it from (llama-server --api-key-file), used where a file can be kept
    private (run.sh, `up`, systemd credentials). The value itself never lands in an argv or a written file."""

    env: str
    file_flag: str | None = None


class Engine(Protocol):
    name: str
    default_port: int
    display: str
    api_key: ApiKey | None  # None: the engine has no API key (it must stay on loopback)
    tls_flags: tuple[str, str] | None  # (certificate flag, key flag); None: the engine cannot serve TLS

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


@dataclass(frozen=True)
class Command:
    """What starts a service, built once for every way of starting it (run.sh, `up`, systemd): the argv, the
    engine's environment (no secret), and how the key reaches it: `key_mode` "file" (the argv names `key_file`),
    "env" (the engine reads `key_env`), or None (no key)."""

    argv: tuple[str, ...]
    env: dict[str, str]
    key_var: str | None = None  # serve.api_key_env: where the key is read from at start time
    key_mode: str | None = None
    key_env: str | None = None


def command(engine: Engine, plan: "ServicePlanLike", binary: str, model_ref: str, host: str, port: int,
            key_file: str | None = KEY_FD) -> Command:
    """The one builder of a service's command. `key_file`: where a file-reading engine finds the key (None: give
    it the key through its environment instead, as containers do)."""
    key_var = getattr(plan, "api_key_env", None)
    how = engine.api_key if key_var else None
    mode = None if how is None else ("file" if how.file_flag and key_file else "env")
    ctx = LaunchContext(binary=binary, model_ref=model_ref, host=host, port=port,
                        api_key_file=key_file if mode == "file" else None)
    return Command(tuple(engine.argv(plan, ctx)), engine.env(plan), key_var if mode else None, mode,
                   how.env if how is not None else None)


def tls_args(engine: Engine, plan: "ServicePlanLike") -> list[str]:
    tls = getattr(plan, "tls", None)
    if tls is None or engine.tls_flags is None:
        return []
    return [engine.tls_flags[0], tls.cert_file, engine.tls_flags[1], tls.key_file]


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
