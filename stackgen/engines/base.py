"""The one small interface every engine module implements.

An engine knows: which hardware it can run on, which weight format it loads for a requested quant, how it sizes
memory (delegating the arithmetic to stackgen.memory), and how to build its command line. Command lines are built
here in Python; templates are only for file formats (units, compose files, Modelfiles).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

from stackgen.errors import PlanError
from stackgen.memory import KV_BYTES_PER_ELEMENT, NO_PINS, VLLM_KV_BYTES, Budget, MemoryPlan, Pins
from stackgen.models import LongContext, ModelFacts
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


# ---------------------------------------------------------------------------------------------- planned knobs


@dataclass(frozen=True)
class Knob:
    """A flag (or Modelfile PARAMETER / daemon variable) that the planner sizes: an override of it is planned with
    the user's value. `knob` names the Pins field (`kv_k`/`kv_v`: the K or V half of kv_cache_type)."""

    knob: str
    keys: tuple[str, ...]  # every spelling an override key may use
    parse: Callable[[Any], Any]


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).lstrip("-").isdigit() or int(v) < 1:
        raise ValueError("a positive whole number")
    return int(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isdigit():
        raise ValueError("a whole number, 0 or more (0 turns it off)")
    return int(v)


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError("a number between 0 and 1")
    try:
        f = float(v)
    except ValueError:
        raise ValueError("a number between 0 and 1") from None
    if not 0 < f <= 1:
        raise ValueError("a number between 0 and 1")
    return f


def _layers(v: Any) -> int:
    if isinstance(v, str) and v.lower() in ("all", "max"):
        return 10**6  # more than any model has: every layer
    if isinstance(v, str) and v.lower() == "auto":
        raise ValueError("a number of layers or 'all' (stackgen pins the split from its plan; 'auto' would let the "
                         "engine decide again)")
    if isinstance(v, int) and not isinstance(v, bool) and v == -1:
        return 10**6
    if isinstance(v, bool) or not str(v).isdigit():
        raise ValueError("a number of layers or 'all'")
    return int(v)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        text = str(v).lower() if not isinstance(v, bool) else ("on" if v else "off")
        if text not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return text
    return parse


def _flash(v: Any) -> str:
    if isinstance(v, bool) or str(v).lower() in ("1", "0", "true", "false"):
        return "on" if str(v).lower() in ("1", "true") else "off"
    return _choice("on", "off", "auto")(v)


LLAMA_KV = _choice(*KV_BYTES_PER_ELEMENT)
VLLM_KV = _choice(*VLLM_KV_BYTES)


class OverrideError(PlanError):
    """An override the planner cannot read: a knob given twice (`-c` and `--ctx-size`), or an unreadable value."""

    def __init__(self, where: str, key: str, detail: str, hint: str):
        super().__init__(f"{where}.{key}: {detail} ({hint})")
        self.key, self.detail, self.hint = key, detail, hint


def pins_from_overrides(engine: "Engine", overrides: dict, where: str) -> Pins:
    """The planned knobs `overrides` pins for `engine`; OverrideError for a knob given twice or a value the planner
    cannot read. Overrides of other flags pass through unplanned."""
    found, errors = _read_overrides(engine, overrides, where)
    if errors:
        raise errors[0]
    if not found:
        return NO_PINS
    values = {knob: v for knob, (_, v) in found.items()}
    k_type, v_type = values.pop("kv_k", None), values.pop("kv_v", None)
    if k_type or v_type:
        k_type, v_type = k_type or v_type, v_type or k_type
        values["kv_cache_type"] = k_type if k_type == v_type else f"{k_type}/{v_type}"
    said = []
    for knob, (key, _) in found.items():
        name = "kv_cache_type" if knob in ("kv_k", "kv_v") else knob
        flag = key if key.startswith("-") or key.isupper() or "_" in key else f"--{key}"
        said.append((name, f"{flag} {overrides[key]}" if overrides[key] is not True else flag))
    return replace(Pins(**values), said=tuple(said))


def override_problems(engine: "Engine", overrides: dict, where: str) -> list[OverrideError]:
    """Every override of `engine` that conflicts with another or cannot be planned (for `validate`)."""
    return _read_overrides(engine, overrides, where)[1]


def _read_overrides(engine: "Engine", overrides: dict, where: str):
    found: dict[str, tuple[str, Any]] = {}
    errors: list[OverrideError] = []
    aliases = getattr(engine, "aliases", {})
    spelled: dict[str, str] = {}
    for key, value in overrides.items():
        flag = _flag(key)
        canon = aliases.get(flag, flag)
        if canon in spelled:  # two spellings of one flag, planned or not (`-a` and `--alias`)
            errors.append(OverrideError(where, key, f"{spelled[canon]} and {key} are the same {engine.display} "
                                        "flag", "keep one"))
            continue
        spelled[canon] = key
        for k in getattr(engine, "knobs", ()):
            if key not in k.keys and f"--{key}" not in k.keys:
                continue
            what = k.knob.replace("kv_k", "K cache type").replace("kv_v", "V cache type").replace("_", " ")
            if k.knob in found:
                errors.append(OverrideError(where, key, f"{found[k.knob][0]} and {key} both set the {what} of "
                                            f"{engine.display}", "keep one of them"))
                continue
            try:
                found[k.knob] = (key, k.parse(value))
            except ValueError as exc:
                errors.append(OverrideError(where, key, f"{value!r} is not a value stackgen can plan for the {what}",
                                            f"write {exc}"))
    return found, errors


class Engine(Protocol):
    name: str
    default_port: int
    display: str
    api_key: ApiKey | None  # None: the engine has no API key (it must stay on loopback)
    tls_flags: tuple[str, str] | None  # (certificate flag, key flag); None: the engine cannot serve TLS
    knobs: tuple[Knob, ...]  # the flags the planner sizes (overrides of them are planned with the user's value)
    # Optional (read with getattr, default None): why the engine may only run behind its API key, even on loopback
    # (SGLang: CORS * is hard-coded, so without a key any web page could drive it). None: a keyless loopback is fine.
    key_required: str | None

    def hardware_block(self, hw: HardwareSpec, explicit: bool) -> str | None:
        """Why this engine cannot run on `hw` at all (None when it can). `explicit`: the stack named the engine."""

    def weights(self, model: ModelFacts) -> Weights:
        """The weights this engine would load for `model` (raises Unsupported)."""

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        """The memory plan; `with_rope` adds the YaRN scaling its context needs past the trained context."""

    def rope_block(self, rope: LongContext) -> str | None:
        """Why this engine cannot apply `rope` (the YaRN scaling a plan needs), None when it can."""

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        """(why this engine cannot serve schema-constrained requests with `backend` or None, what it costs)."""

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
