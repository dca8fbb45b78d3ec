"""The stack.yaml contract (version 1) as pydantic models, and ``load_stack`` which turns a file into a bound Stack.

The pydantic models describe the file exactly as written (they are also dumped as the JSON Schema editors use).
``load_stack`` then binds names to things: profile names to hardware and workloads, model references to model
facts. Every problem is reported with file:line:col, the dotted field path and what to write instead.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from stackgen import datafile
from stackgen.spec import yaml_nodes as _yaml
from stackgen.errors import ModelRefError, Problem, SpecError

NAME_RE = r"^[a-z0-9][a-z0-9-]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_RE, max_length=63)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]



def engine_names() -> tuple[str, ...]:
    """The engines `engine:` may name: the registry's (stackgen.engines imports this module, so it is asked late)."""
    from stackgen import engines

    return tuple(engines.ENGINES)


def _engine_enum(schema: dict) -> None:
    schema["enum"] = ["auto", *engine_names()]
    schema["type"] = "string"
TARGETS = ("script", "systemd", "compose", "kubernetes", "launchd", "quadlet", "llama-swap")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class _Model(BaseModel):
    # extra="forbid" turns typos into errors with a did-you-mean; strict keeps "8" from silently becoming 8.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# GPUSpec.vendor's values as plans and reasons write them.
VENDOR_NAMES = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel", "apple": "Apple"}

# NVIDIA's compute capability as nvidia-smi's compute_cap prints it (major.minor); the planner compares it as a number.
COMPUTE_CAPABILITY = r"^[0-9]{1,2}\.[0-9]$"


class GPUSpec(_Model):
    vendor: Literal["nvidia", "amd", "intel", "apple"] = Field(description="GPU vendor.")
    name: Text = Field(description="Marketing name, e.g. 'GeForce RTX 4090'.")
    memory_gib: float = Field(gt=0, le=4096, description="Memory per GPU in GiB (Apple: the unified pool).")
    runtime_memory_gib: float | None = Field(
        None, gt=0, le=4096, description="Memory the CUDA/ROCm runtime reports as the device total (torch "
        "mem_get_info, what vLLM's --gpu-memory-utilization multiplies), when it is known; less than memory_gib.")
    bandwidth_gbs: float = Field(gt=0, le=100000, description="Memory bandwidth per GPU in GB/s.")
    bandwidth_share: float | None = Field(
        None, gt=0, le=1, description="The share of bandwidth_gbs the GPU's kernels read in decode, where public "
        "measurements put a chip below its datasheet: Apple's M1 Max and M1 Ultra read 0.86 of it (benchmarks/results/"
        "confirm-m1-candidates.md). Left out: all of it. Decode speed reads bandwidth_gbs x this "
        "(GPUSpec.decode_bandwidth_gbs); memory plans and the compute peak do not depend on it.")
    count: int = Field(1, ge=1, le=64, description="How many of this GPU the machine has.")
    tier: Literal["consumer", "workstation", "datacenter"] = Field("consumer", description="Product tier.")
    memory_type: Literal["hbm", "gddr", "lpddr", "ddr"] | None = Field(
        None, description="The GPU's memory technology, as its datasheet gives it (HBM, GDDR, LPDDR). On an NVIDIA "
        "datacenter GPU it picks llama.cpp's decode line: GDDR ones (T4, A10, A40, L4, L40S) decode as the "
        "GeForce/workstation silicon they share (stackgen.plan.speed.backend_for); left out: the tier's line.")
    compute_capability: str | None = Field(None, pattern=COMPUTE_CAPABILITY,
                                           description="NVIDIA compute capability, major.minor, e.g. '8.9'.")
    arch: str | None = Field(None, description="AMD/Intel architecture, e.g. 'gfx1100'. On AMD it picks a line's share "
                             "of the bandwidth in decode where public points put the chip below it: gfx906 / gfx908 / "
                             "gfx90a (MI50, Radeon VII, MI100, MI210, MI250) read 0.55 of it on llama.cpp's ROCm and Vulkan "
                             "lines (benchmarks/results/confirm-gfx9-candidates.md); `stackgen detect` fills it.")
    interconnect_gbs: float | None = Field(None, gt=0, description="Host<->GPU link, GB/s per direction.")
    unified: bool = Field(False, description="GPU shares system memory (Apple silicon).")

    @property
    def decode_bandwidth_gbs(self) -> float:
        """The bandwidth a decode step reads at: the datasheet's bandwidth_gbs x bandwidth_share (all of it when the
        share is not stated)."""
        return self.bandwidth_gbs * (self.bandwidth_share or 1.0)


class CPUSpec(_Model):
    cores: int = Field(ge=1, le=1024, description="Physical cores.")
    threads: int | None = Field(None, ge=1, le=4096, description="Hardware threads.")
    arch: Literal["x86_64", "arm64", "aarch64"] = Field("x86_64", description="CPU architecture.")


class HardwareSpec(_Model):
    description: str | None = Field(None, max_length=200)
    gpus: tuple[GPUSpec, ...] = Field((), strict=False, description="GPUs; empty for a CPU-only machine.")
    memory_gib: float = Field(gt=0, le=65536, description="System RAM in GiB (Apple: the unified pool).")
    memory_bandwidth_gbs: float = Field(gt=0, le=100000, description="System RAM bandwidth in GB/s.")
    cpu: CPUSpec
    os: Literal["linux", "macos", "windows"] = Field("linux", description="linux unless said; macos where an Apple "
                                                      "GPU is listed and os is left out.")
    wired_limit_fraction: float | None = Field(
        None, gt=0, le=1, description="Apple: share of unified memory macOS lets the GPU wire by default."
    )
    gpu_link: Literal["nvlink", "pcie-p2p", "pcie"] | None = Field(
        None, description="How the GPUs reach each other for tensor parallel's all-reduces: NVLink (or NVSwitch), "
        "PCIe with peer-to-peer access, or PCIe without it (through host memory; GeForce drivers refuse P2P). "
        "None: inferred (stackgen.plan.speed.gpu_link: an interconnect_gbs above PCIe 5.0 x16's is NVLink, else "
        "consumer cards plain PCIe, workstation and datacenter cards PCIe with P2P). `stackgen detect` reads it from "
        "nvidia-smi topo.")

    @model_validator(mode="before")
    @classmethod
    def _apple_runs_macos(cls, data):
        """An Apple GPU with `os:` left out is a Mac: os macos (a stated other os is refused by hardware_problems)."""
        if isinstance(data, dict) and "os" not in data and any(
                (g.get("vendor") if isinstance(g, dict) else getattr(g, "vendor", None)) == "apple"
                for g in data.get("gpus") or ()):
            return {**data, "os": "macos"}
        return data

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)

    @property
    def gpu_memory_gib(self) -> float:
        return sum(g.memory_gib * g.count for g in self.gpus if not g.unified)

    @property
    def nvidia_compute_capabilities(self) -> tuple[float, ...]:
        """The compute capabilities of the machine's NVIDIA GPUs that state one, as numbers (8.9)."""
        return tuple(float(g.compute_capability) for g in self.gpus if g.vendor == "nvidia" and g.compute_capability)

    @property
    def is_apple(self) -> bool:
        return any(g.vendor == "apple" for g in self.gpus)

    def label(self) -> str:
        if not self.gpus:
            return f"CPU-only ({self.cpu.cores} cores, {self.memory_gib:g} GiB RAM)"
        parts = [f"{g.count}x {g.name}" if g.count > 1 else g.name for g in self.gpus]
        return ", ".join(parts)


class WorkloadSpec(_Model):
    description: str | None = Field(None, max_length=200)
    concurrent_users: int = Field(1, ge=1, le=4096, description="Requests in flight at once.")
    context_tokens: int = Field(8192, ge=256, le=10_000_000, description="Context per request (prompt+output).")
    prompt_tokens: int = Field(1024, ge=1, le=10_000_000, description="Typical prompt length.")
    output_tokens: int = Field(256, ge=1, le=1_000_000, description="Typical output length.")
    optimize: Literal["latency", "throughput", "setup"] = Field("latency", description="What matters most.")
    # Service-level targets the capacity plan sizes replicas for (stackgen/plan/capacity.py). Defaults: an interactive chat
    # (first token within 2 s for 95% of requests; 10 tokens/s is faster than people read).
    ttft_p95_ms: int = Field(2000, ge=1, le=3_600_000, description="Target p95 time to first token, milliseconds.")
    tokens_per_s_per_user: float = Field(10.0, gt=0, le=100_000, description="Target decode tokens/s each user sees.")
    think_time_s: float = Field(0.0, ge=0, le=86_400, description=(
        "Mean pause between a user's answer and their next request (0: every user always has one in flight)."))


class WorkloadOverride(_Model):
    """Per-service fields merged over the stack's workload."""

    concurrent_users: int | None = Field(None, ge=1, le=4096)
    context_tokens: int | None = Field(None, ge=256, le=10_000_000)
    prompt_tokens: int | None = Field(None, ge=1, le=10_000_000)
    output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    optimize: Literal["latency", "throughput", "setup"] | None = None
    ttft_p95_ms: int | None = Field(None, ge=1, le=3_600_000)
    tokens_per_s_per_user: float | None = Field(None, gt=0, le=100_000)
    think_time_s: float | None = Field(None, ge=0, le=86_400)


OverrideValue = Union[bool, int, float, str, None]


class StructuredOutputSpec(_Model):
    """Requests to the service carry a JSON schema or grammar that constrains the output."""

    backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] = Field(
        "auto", description="vLLM's structured-outputs backend (--structured-outputs-config); llama.cpp and Ollama "
                            "use their own grammar sampler (auto only); MLX has none.")


class ServiceSpec(_Model):
    model: Text = Field(
        description="Catalog name | path to a .gguf | path to an HF folder | hf:org/repo | ollama:name:tag."
    )
    quant: str | None = Field(None, description="GGUF type (Q4_K_M, Q8_0, F16, ...) or bf16/fp16/fp8/awq/gptq/4bit/8bit.")
    engine: str = Field("auto", json_schema_extra=_engine_enum)
    engine_version: str | None = Field(None, description="Engine version whose flag set the artifacts target.")
    binary: str | None = Field(None, description="Path to the engine binary; default: found on PATH.")
    image: str | None = Field(None, description="Container image for the compose/kubernetes targets.")
    port: int | None = Field(None, ge=1, le=65535, description="Port; unique per stack.")
    workload: WorkloadOverride | None = None
    replicas: int | None = Field(None, ge=1, le=256, description=(
        "Engine instances behind one endpoint; default: the fewest that meet the workload's targets."))
    overrides: dict[str, Union[OverrideValue, list[OverrideValue]]] = Field(
        default_factory=dict, description="Engine-native flags (or Modelfile PARAMETERs) that win over tuned ones."
    )
    system: str | None = Field(None, max_length=65536, description=(
        "Default system message, Ollama only (its Modelfile's SYSTEM); no other engine has one server-side, so it is "
        "refused there (send it as each request's first message)."))
    chat_template: str | None = Field(None, description=(
        "Path to a chat template file inside the stack's folder (never inline). Ollama: the Modelfile's TEMPLATE; "
        "llama.cpp --chat-template-file, vLLM and SGLang --chat-template, shipped by the script, systemd, compose "
        "and kubernetes targets and `up` (the other targets refuse it); MLX refuses it (it takes only the text)."))
    structured_output: StructuredOutputSpec | None = Field(
        None, description="Requests use JSON-schema or grammar-constrained output: picks an engine that supports it, "
                          "renders vLLM's backend, and says what it costs.")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        allowed = ("auto", *engine_names())
        if v not in allowed:
            expected = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return v

    @field_validator("binary")
    @classmethod
    def _binary_path(cls, v: str | None) -> str | None:
        # systemd reads a leading @ - : + ! in ExecStart= as execution flags (+ and ! run with full privileges).
        if v is not None and v[:1] in ("@", "-", ":", "+", "!"):
            raise ValueError(f"a binary cannot start with {v[0]!r} (systemd would read it as an ExecStart= flag; "
                             f"write the plain path, e.g. {v.lstrip('@-:+!') or '/usr/local/bin/llama-server'!r})")
        return v

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        if v.startswith("-"):
            raise ValueError("a model reference cannot start with '-' (it would be read as a flag)")
        # Relative parents are fine in local paths (relative to the stack), never inside registry references.
        if v.startswith(("hf:", "ollama:")) and ".." in v:
            raise ValueError("a registry reference cannot contain '..'")
        return v


class TLSSpec(_Model):
    """TLS served by the engine itself (llama-server built with OpenSSL, vLLM). Paths on the serving host."""

    cert_file: Annotated[str, StringConstraints(pattern=r"^/[^\x00-\x1f]*$", max_length=4096)] = Field(
        description="Absolute path of the PEM certificate (chain) on the serving host.")
    key_file: Annotated[str, StringConstraints(pattern=r"^/[^\x00-\x1f]*$", max_length=4096)] = Field(
        description="Absolute path of the PEM private key on the serving host (readable by the service only).")


DEFAULT_MODEL_DIR = "/var/lib/stackgen/models"


class ServeSpec(_Model):
    host: str = Field("127.0.0.1", description="Bind address. Anything but loopback needs api_key_env.")
    model_dir: str = Field(
        DEFAULT_MODEL_DIR, pattern=r"^/[A-Za-z0-9._/@+-]*$",
        description="Where systemd units read local weights on the host they are installed on (an absolute path); "
                    "weights the stack names relative to its folder are copied there by file name.",
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of the environment variable holding the API key (the value never lands in artifacts).",
    )
    cors_origins: tuple[Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")], ...] = Field(
        (), strict=False,
        description="Web origins allowed to call the API from a browser (e.g. https://chat.example.com). "
                    "Default: pages on localhost only (llama.cpp, MLX, Ollama; none for vLLM). MLX and Ollama keep "
                    "localhost beside the list; llama.cpp takes one origin, which replaces localhost; vLLM allows "
                    "exactly the list; SGLang allows every origin whatever is set (so it needs api_key_env). '*' is "
                    "refused.",
    )

    tls: TLSSpec | None = Field(None, description="Serve HTTPS from the engine (llama.cpp, vLLM): certificate and key "
                                                   "paths. Default: plain HTTP (put a TLS proxy in front).")

    @field_validator("model_dir")
    @classmethod
    def _model_dir(cls, v: str) -> str:
        if ".." in PurePosixPath(v).parts:
            raise ValueError("model_dir cannot contain '..'")
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _no_wildcard(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)) and "*" in v:
            raise ValueError("'*' lets every web page a user visits call the model with their network access; "
                             "list the origins instead, e.g. [https://chat.example.com]")
        return v


class NodeGroupSpec(_Model):
    """One or more identical machines of a multi-node cluster."""

    hardware: Union[str, HardwareSpec] = Field(description="A built-in profile, '<N>x <profile>', or an inline description.")
    count: int = Field(1, ge=1, le=64, description="How many machines of this kind.")
    addresses: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$", max_length=253)], ...] = Field(
        (), strict=False, description="Each machine's address on the cluster network (one per machine); rendered "
                                      "into artifacts, never contacted. Default: node-<i>.")


class ClusterSpec(_Model):
    """Several machines serving one model: the first machine of the first group is the head (it serves the API)."""

    nodes: tuple[NodeGroupSpec, ...] = Field(min_length=1, strict=False, description="Node groups, head first.")


HardwareRef = Union[str, HardwareSpec, ClusterSpec]
WorkloadRef = Union[str, WorkloadSpec]


class StackSpec(_Model):
    """stack.yaml, version 1."""

    version: Literal[1] = Field(description="Format version; always 1.")
    name: Name | None = Field(None, description="Stack name; default: the stack file's folder name.")
    hardware: HardwareRef = Field(
        description="A built-in profile, '<N>x <profile>', 'detect', an inline description, or "
                    "`{nodes: [{hardware, count, addresses}]}` for several machines (docs/multinode.md)."
    )
    workload: WorkloadRef = Field("dev-loop", description="A built-in profile or an inline description.")
    services: dict[Name, ServiceSpec] = Field(min_length=1, description="One or more services.")
    targets: tuple[Literal["script", "systemd", "compose", "kubernetes", "launchd", "quadlet", "llama-swap"], ...] = Field(
        ("script",), strict=False, description="What `stackgen render` writes."
    )
    serve: ServeSpec = Field(default_factory=ServeSpec)


# ---------------------------------------------------------------------------------------------- bound objects


@dataclass(frozen=True)
class Service:
    """One service with every reference resolved: the workload merged, the model's facts read."""

    name: str
    spec: ServiceSpec
    workload: WorkloadSpec
    model: Any  # stackgen.models.facts.ModelFacts (Any here to keep spec free of an import cycle)


@dataclass(frozen=True)
class Node:
    """One machine of a multi-node stack; index 0 is the head."""

    index: int
    hardware: HardwareSpec
    address: str
    label: str


@dataclass(frozen=True)
class Stack:
    path: Path
    name: str
    spec: StackSpec
    hardware: HardwareSpec | None  # None: `hardware: detect`, filled from the host at plan time
    hardware_label: str
    services: tuple[Service, ...]
    profiles_dirs: tuple[Path, ...] = field(default=())
    nodes: tuple[Node, ...] = field(default=())  # empty: one machine (`hardware`); else the head is nodes[0]
    remote: Any = field(default=None, compare=False, repr=False)  # stackgen.models.lock.RemoteModels: what stack.lock holds
    doc: Any = field(default=None, compare=False, repr=False)  # the parsed YAML with positions (yaml_nodes.Document)

    def where(self, loc: tuple) -> str:
        """`file:line:col: field` of the value at `loc` (or its nearest written ancestor), for errors found after
        loading (the plan's refusals name the field the user wrote, as load_stack's problems do)."""
        m = self.doc.mark_for(loc) if self.doc is not None else None
        at = f"{self.path}:{m.line}:{m.col}" if m is not None else f"{self.path}"
        return f"{at}: {_dotted(loc)}"

    @property
    def targets(self) -> tuple[str, ...]:
        return self.spec.targets

    @property
    def serve(self) -> ServeSpec:
        return self.spec.serve


# ---------------------------------------------------------------------------------------------- loading


def load_stack(path: str | Path, remote: Any = None) -> Stack:
    """Read, validate and bind a stack file; raise SpecError listing every problem with its position.

    `remote` (stackgen.models.lock.RemoteModels) resolves model references outside the catalog; by default from the
    stack's lock file (stack.lock beside it), or over the network when there is none."""
    from stackgen.spec.profiles import load_profiles

    path = Path(path)
    display = str(path)
    doc = parse_document(read_stack_text(path), display)
    try:
        spec = validate_document(doc, display)
    except SpecError as exc:  # every problem at once: the names too, as far as they can be read (audit a4 #6)
        raise SpecError(exc.problems + name_problems(doc, display, path, load_profiles(path.parent),
                                                     {p.path for p in exc.problems})) from None
    profiles = load_profiles(path.parent)
    if remote is None:
        from stackgen.models.lock import RemoteModels, lock_path_for

        remote = RemoteModels(lock_path_for(path), stack_display=display)
    return bind(spec, doc, display, path, profiles, remote)


def read_stack_text(path: Path) -> str:
    """A stack file's text, refused (SpecError at 1:1) when it is missing, unreadable, not UTF-8, or larger than
    MAX_STACK_BYTES or MAX_STACK_LINES (datafile's bounded reader)."""
    display = str(path)
    fix = "split it into several stack files"
    try:
        raw = datafile.read_bytes(path, "the stack file", fix, MAX_STACK_BYTES)
        text = raw.decode("utf-8")
        datafile.check_lines(path, text, "the stack file", fix, MAX_STACK_LINES)
    except FileNotFoundError:
        raise SpecError([Problem(display, 1, 1, "", "file not found", "check the path")]) from None
    except OSError as exc:
        raise SpecError([Problem(display, 1, 1, "", f"cannot read: {exc.strerror}", "")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(display, 1, 1, "", f"not UTF-8 text (byte {exc.start})", "save it as UTF-8")]) from None
    except datafile.DataFileError as exc:
        raise SpecError([Problem(display, 1, 1, "", exc.message, exc.fix)]) from None
    return text


def name_problems(doc: _yaml.Document, display: str, path: Path, profiles: Any, reported: set[str]) -> list[Problem]:
    """For a stack with structural errors (which stop `bind`): the names bind would check that can be read from the
    raw document on their own, the hardware and workload profile names and each service's model and quant (not a
    remote reference: nothing is fetched for a stack that is invalid anyway), each unless a structural problem is
    already reported at its field. Without it validate said one error, then three more once it was fixed."""
    from stackgen.models.facts import resolve_model

    problems: list[Problem] = []
    data = doc.data

    def problem(loc: tuple, message: str, hint: str = "") -> None:
        dotted = _dotted(loc)
        if dotted not in reported:
            m = doc.mark_for(loc)
            problems.append(Problem(display, m.line, m.col, dotted, message, hint))

    if isinstance(data.get("hardware"), str):
        _bind_hardware(data["hardware"], profiles, problem)
    if isinstance(data.get("workload"), str):
        _bind_workload(data["workload"], profiles, problem)
    services = data.get("services")
    for name, svc in (services.items() if isinstance(services, dict) else ()):
        if not isinstance(svc, dict) or not isinstance(svc.get("model"), str):
            continue
        model, quant = svc["model"], svc.get("quant")
        if model.startswith(("hf:", "ollama:", "https://", "http://")) or not (quant is None or isinstance(quant, str)):
            continue
        try:
            resolve_model(model, quant, base_dir=path.parent, catalog=profiles.models)
        except ModelRefError as exc:
            problem(("services", name, exc.field), exc.message, exc.hint)
    return problems


# Limits checked before any per-value work, so a hostile stack cannot make validate burn CPU (audit a2 #12: 8,000
# override keys took 4.4 s and 32,000 took 18.6 s on a 2-core host, ~0.55 ms a key for the flag suggestions; 200,000
# keys, 3.3 MB, ran past 2 minutes). Each is far above a real stack: the 10,000-service benchmark stack
# (benchmarks/bench_many_services.py) is 10,003 lines; the largest flag table (SGLang's) has 561 flags, and a
# stack names a few; a 5 MB argument is still refused by its own message (MAX_ARG_BYTES).
MAX_STACK_BYTES = datafile.MAX_BYTES
MAX_STACK_LINES = datafile.MAX_LINES  # parsing is per node: 200,000 one-key lines took 5 s in libyaml's composer alone
MAX_OVERRIDES = 256  # per service
MAX_STACK_OVERRIDES = 4096  # over all services


def _check_override_counts(doc: _yaml.Document, display: str) -> None:
    """Too many `overrides:` keys, refused before each is checked against the engines' flag tables."""
    services = doc.data.get("services") if isinstance(doc.data, dict) else None
    if not isinstance(services, dict):
        return
    total = 0
    for name, svc in services.items():
        overrides = svc.get("overrides") if isinstance(svc, dict) else None
        if not isinstance(overrides, dict):
            continue
        total += len(overrides)
        if len(overrides) > MAX_OVERRIDES:
            m = doc.mark_for(("services", name, "overrides"))
            raise SpecError([Problem(display, m.line, m.col, _dotted(("services", name, "overrides")),
                                     f"{len(overrides):,} keys: more than {MAX_OVERRIDES} overrides for one service",
                                     "keep the flags you mean to change; the planner sets the rest")])
    if total > MAX_STACK_OVERRIDES:
        m = doc.mark_for(("services",))
        raise SpecError([Problem(display, m.line, m.col, "services", f"{total:,} override keys in all: more than "
                                 f"{MAX_STACK_OVERRIDES:,} in one stack", "split it into several stack files")])


def parse_document(text: str, display: str) -> _yaml.Document:
    try:
        doc = _yaml.load_document(text)
    except _yaml.YamlError as exc:
        raise SpecError([Problem(display, exc.mark.line, exc.mark.col, _dotted(exc.path), exc.message)]) from None
    if not isinstance(doc.data, dict):
        hint = "start with `version: 1`"
        raise SpecError([Problem(display, 1, 1, "", "a stack file is a YAML mapping", hint)])
    problems = list(_control_chars(doc.data, (), doc, display))
    if problems:
        raise SpecError(problems)
    _check_override_counts(doc, display)
    return doc


def _control_chars(value: Any, path: _yaml.Path, doc: _yaml.Document, display: str):
    """NUL and newlines in values end up in unit files, argv and Modelfiles: refuse them at the door."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _control_chars(v, path + (k,), doc, display)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _control_chars(v, path + (i,), doc, display)
    elif isinstance(value, str) and re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
        if path and path[-1] == "system":  # a multi-line system prompt is legitimate (rendered as """...""")
            if "\x00" not in value:
                return
        m = doc.mark_for(path)
        yield Problem(display, m.line, m.col, _dotted(path), "control characters (newline, NUL, ...) are not allowed here", "write one line")


def validate_document(doc: _yaml.Document, display: str) -> StackSpec:
    try:
        return StackSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise SpecError(_problems_from_validation(exc, doc, display)) from None


def validate_hardware(doc: _yaml.Document, display: str) -> HardwareSpec:
    """The `hardware` mapping of a recorded host (`stackgen detect --json`, read by --host-facts) as a HardwareSpec;
    SpecError with file:line:col, the field and the fix for every problem, as a stack's inline hardware gets."""
    data = doc.data if isinstance(doc.data, dict) else None
    if data is None or "hardware" not in data:
        raise SpecError([Problem(display, 1, 1, "hardware", "required field is missing: a recorded host is a mapping "
                                 "with a `hardware` entry", "write the file with `stackgen detect --json > FILE`")])
    try:
        hw = HardwareSpec.model_validate(data["hardware"], strict=False)
    except ValidationError as exc:
        raise SpecError(_problems_from_validation(exc, doc, display, prefix=("hardware", "HardwareSpec"))) from None
    problems = []
    for tail, message, hint in hardware_problems(hw):
        m = doc.mark_for(("hardware",) + tail)
        problems.append(Problem(display, m.line, m.col, _dotted(("hardware",) + tail), message, hint))
    if problems:
        raise SpecError(problems)
    return hw


def _problems_from_validation(exc: ValidationError, doc: _yaml.Document, display: str,
                              prefix: tuple = ()) -> list[Problem]:
    """`prefix`: where in the document the validated value sits (its errors' locations are relative to it)."""
    problems: dict[tuple, Problem] = {}
    data = doc.data if isinstance(doc.data, dict) else {}
    errors = [{**e, "loc": prefix + tuple(e["loc"])} for e in exc.errors()]
    errors = [e for e in errors if _from_matching_union_branch(e["loc"], data)]
    locs = [_clean_loc(e["loc"]) for e in errors]
    for err in errors:
        loc = _clean_loc(err["loc"])
        if err["type"] == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # a list whose items failed is "too short after validation": the item's error says it all
        problems.setdefault(loc, _problem_for(err, loc, doc, display))
    return _drop_missing_explained_by_typos(list(problems.values()))


def _from_matching_union_branch(loc: tuple, data: dict) -> bool:
    """`hardware` and `workload` are "profile name or inline mapping": report only the branch the user wrote."""
    if len(loc) < 2 or loc[0] not in ("hardware", "workload"):
        return True
    wrote = data.get(loc[0])
    if isinstance(wrote, dict) and loc[0] == "hardware":
        return loc[1] == ("ClusterSpec" if "nodes" in wrote else "HardwareSpec")
    wrote_mapping = isinstance(wrote, dict)
    if not wrote_mapping:
        return loc[1] == "str"
    return loc[1] != "str"


def _drop_missing_explained_by_typos(problems: list[Problem]) -> list[Problem]:
    """`hardwre:` yields both "unknown key" and "hardware is missing"; the did-you-mean already says it all."""
    suggested = set()
    for p in problems:
        m = re.match(r"did you mean '([^']+)'", p.hint)
        if m:
            parent = p.path.rsplit(".", 1)[0] if "." in p.path else ""
            suggested.add(f"{parent}.{m.group(1)}" if parent else m.group(1))
    return [p for p in problems if not (p.message == "required field is missing" and p.path in suggested)]


def _split(dotted: str) -> tuple:
    return tuple(p for p in dotted.split(".") if p)


def _clean_loc(loc: tuple) -> tuple:
    # pydantic puts union branch names ("str", "HardwareSpec", "function-after[...]") into locations.
    out = []
    for part in loc:
        if isinstance(part, str) and (part in {"str", "HardwareSpec", "ClusterSpec", "WorkloadSpec", "bool", "int", "float", "list[...]"}
                                      or part.startswith(("function-", "constrained-str", "list[", "union["))):
            continue
        out.append(part)
    return tuple(out)


def _problem_for(err: dict, loc: tuple, doc: _yaml.Document, display: str) -> Problem:
    kind = err["type"]
    if "[key]" in loc:  # a mapping key failed validation (service names)
        loc = tuple(p for p in loc if p != "[key]")
        m = doc.mark_for(loc, key=True)
        return Problem(display, m.line, m.col, _dotted(loc), f"invalid name {loc[-1]!r}",
                       "use lowercase letters, digits and '-', starting with a letter or digit")
    mark = doc.mark_for(loc, key=kind == "extra_forbidden")
    path = _dotted(loc)
    if kind == "extra_forbidden":
        parent_model = _model_at(loc[:-1])
        choices = list(parent_model.model_fields) if parent_model else []
        return Problem(display, mark.line, mark.col, path, f"unknown key {loc[-1]!r}", _did_you_mean(str(loc[-1]), choices))
    if kind == "missing":
        parent = doc.mark_for(loc[:-1], key=True) if loc[:-1] else _yaml.Mark(1, 1)
        return Problem(display, parent.line, parent.col, path, "required field is missing", f"add `{loc[-1]}:`")
    if kind in {"string_type", "str_type"}:
        value = err.get("input")
        key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
        if isinstance(value, float):  # the number lost its written form: 1.10 reads as 1.1
            hint = f"quote it as written, e.g. `{key}: \"{value}\"`; unquoted, YAML reads it as a number (1.10 as 1.1)"
        elif isinstance(value, (dict, list, tuple)):
            hint = "write a single value, not a mapping or list"
        else:
            hint = f"quote it: `{key}: \"{_yaml_scalar(value)}\"`"
        return Problem(display, mark.line, mark.col, path, "expected text", hint)
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        value, key = err.get("input"), str(loc[-1]) if loc else "value"
        if isinstance(value, str) and loc == ("version",) and value.strip() == "1":
            return Problem(display, mark.line, mark.col, path, f"expected the number 1, got text {value!r}",
                           "write `version: 1`, without quotes")
        if loc == ("version",):
            return Problem(display, mark.line, mark.col, path, f"invalid value {value!r}",
                           "expected 1: write `version: 1` (the only format version)")
        return Problem(display, mark.line, mark.col, path, f"invalid value {value!r}", f"expected {expected}")
    if kind in _BOUND_TYPES:
        return Problem(display, mark.line, mark.col, path, *_bound_problem(kind, loc, err.get("input"), err.get("ctx", {})))
    if kind == "too_short":
        least, key = err.get("ctx", {}).get("min_length", 1), str(loc[-1]) if loc else "value"
        if loc == ("services",):
            return Problem(display, mark.line, mark.col, path, "no services: a stack serves at least one",
                           "add one under `services:`, e.g. `chat:` with `model: qwen3-8b` indented under it")
        return Problem(display, mark.line, mark.col, path, f"needs at least {least} item{'s' if least != 1 else ''}",
                       f"add {'one' if least == 1 else least} under `{key}:`")
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return Problem(display, mark.line, mark.col, path, f"invalid name {err.get('input')!r}",
                       "use lowercase letters, digits and '-', starting with a letter or digit")
    if kind == "string_pattern_mismatch" and loc[-1] == "compute_capability":
        return Problem(display, mark.line, mark.col, path, f"invalid compute capability {err.get('input')!r}",
                       "write major.minor as `nvidia-smi --query-gpu=compute_cap --format=csv` prints it, quoted: "
                       "`compute_capability: \"8.9\"`")
    typed = _type_problem(kind, loc, err.get("input"), _field_bounds(loc))
    if typed is not None:
        return Problem(display, mark.line, mark.col, path, *typed)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return Problem(display, mark.line, mark.col, path, msg[:1].lower() + msg[1:], "")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


_BOUND_TYPES = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


def _bound_problem(kind: str, loc: tuple, value: Any, ctx: dict) -> tuple[str, str]:
    """(message, hint) for a number outside its field's range: the bound, and a value to write."""
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
    bound = ctx.get(_BOUND_TYPES[kind])
    low, high = _field_bounds(loc)
    most = f", up to {_num(high[1])}" if high and high[0] == "le" else f", below {_num(high[1])}" if high else ""
    if kind == "greater_than_equal":
        return f"must be at least {_num(bound)}, got {_num(value)}", f"write `{key}: {_num(bound)}` or more{most}"
    if kind == "greater_than":
        return (f"must be more than {_num(bound)}, got {_num(value)}",
                f"write `{key}:` a number above {_num(bound)}{most}, e.g. `{key}: {_example(loc, low, high, 16)}`")
    if kind == "less_than_equal":
        return f"must be at most {_num(bound)}, got {_num(value)}", f"write `{key}: {_num(bound)}` or less"
    return f"must be less than {_num(bound)}, got {_num(value)}", f"write `{key}:` a number below {_num(bound)}"


def _field_info(loc: tuple):
    """The pydantic FieldInfo of the field at `loc`, or None."""
    model = _model_at(tuple(loc[:-1])) if loc else None
    return model.model_fields.get(str(loc[-1])) if model is not None else None


def _field_bounds(loc: tuple) -> tuple[tuple[str, Any] | None, tuple[str, Any] | None]:
    """The field's lower and upper bound as ("ge"|"gt", x) and ("le"|"lt", x), from its pydantic constraints."""
    info = _field_info(loc)
    low = high = None
    for meta in info.metadata if info is not None else ():
        for name in ("ge", "gt"):
            if getattr(meta, name, None) is not None:
                low = (name, getattr(meta, name))
        for name in ("le", "lt"):
            if getattr(meta, name, None) is not None:
                high = (name, getattr(meta, name))
    return low, high


def _range_words(low: tuple[str, Any] | None, high: tuple[str, Any] | None) -> str:
    lo = (f"above {_num(low[1])}" if low[0] == "gt" else f"{_num(low[1])}") if low else ""
    hi = (f"below {_num(high[1])}" if high[0] == "lt" else f"{_num(high[1])}") if high else ""
    if lo and hi:
        return f"from {lo} to {hi}" if low[0] == "ge" else f"{lo}, up to {hi}"  # type: ignore[index]
    return f"{lo} or more" if lo else f"up to {hi}" if hi else "any number"


def _in_range(x: float, low: tuple[str, Any] | None, high: tuple[str, Any] | None) -> bool:
    return ((low is None or (x > low[1] if low[0] == "gt" else x >= low[1]))
            and (high is None or (x < high[1] if high[0] == "lt" else x <= high[1])))


def _type_problem(kind: str, loc: tuple, value: Any, bounds: tuple = (None, None)) -> tuple[str, str] | None:
    """(message, hint) for a value of the wrong type: say what was written, what is expected, and the fix."""
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
    got = (f"text {value!r}" if isinstance(value, str) else "a list" if isinstance(value, (list, tuple))
           else "a mapping" if isinstance(value, dict) else f"{_yaml_scalar(value)}")
    low, high = bounds
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        number = None
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            number = int(value)
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        written = _as_number(value)
        if (low or high) and written is not None and not _in_range(written, low, high):
            # 1e30 is no whole number to suggest: say the range the field takes.
            return (f"expected a whole number {_range_words(low, high)}, got {got}",
                    f"write a whole number {_range_words(low, high)}, e.g. `{key}: {_example(loc, low, high, 8)}`")
        if number is not None:
            how = "without quotes" if isinstance(value, str) else "without a decimal point"
            return f"expected a whole number, got {got}", f"write `{key}: {number}`, {how}"
        if written is not None and float(round(written)) == written:  # `8e3` as text: the digits
            return f"expected a whole number, got {got}", f"write `{key}: {round(written)}`, as plain digits"
        example = (round(value) if isinstance(value, float) and not isinstance(value, bool)
                   and _in_range(round(value), low, high) else _example(loc, low, high, 8))
        span = f" {_range_words(low, high)}" if low or high else ""
        return f"expected a whole number, got {got}", f"write a whole number{span}, e.g. `{key}: {example}`"
    if kind in {"float_type", "float_parsing"}:
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*", value):
            return f"expected a number, got {got}", f"write `{key}: {value.strip()}`, without quotes"
        span = f" {_range_words(low, high)}" if low or high else ""
        return f"expected a number, got {got}", f"write a number{span}, e.g. `{key}: {_example(loc, low, high, 16)}`"
    if kind in {"bool_type", "bool_parsing"}:
        return f"expected true or false, got {got}", f"write `{key}: true` or `{key}: false`"
    if kind in {"tuple_type", "list_type", "set_type", "frozen_set_type"}:
        if key == "gpus":
            return (f"expected a list, got {got}",
                    "one `- vendor: nvidia` mapping (name, memory_gib, ...) per GPU under `gpus:`; `stackgen detect` "
                    "prints this machine's")
        if isinstance(value, str):
            items = [i.strip() for i in value.split(",") if i.strip()] or [value]
            return f"expected a list, got {got}", f"write `{key}: [{', '.join(items)}]`"
        return f"expected a list, got {got}", f"write `{key}: [a, b]` or one `- item` per line under `{key}:`"
    if kind in {"dict_type", "model_type", "model_attributes_type", "mapping_type"}:
        if isinstance(value, list):
            return (f"expected a mapping, got {got}",
                    f"write `name: value` lines under `{key}:` instead of `- ` items"
                    + (", e.g. `chat:` with `model:` indented under it" if key == "services" else ""))
        return f"expected a mapping, got {got}", f"indent `name: value` lines under `{key}:`"
    return None


def _as_number(value: Any) -> float | None:
    """A number as written: a float, or text a number reads as (`1e30`); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return number if number is not None and number == number and abs(number) != float("inf") else None


def _example(loc: tuple, low: tuple | None, high: tuple | None, fallback: float) -> str:
    """A value the field takes: its default when it has a number for one, else `fallback` or the nearest bound."""
    info = _field_info(loc)
    default = info.default if info is not None else None
    if isinstance(default, (int, float)) and not isinstance(default, bool) and _in_range(default, low, high):
        return _num(default)
    if _in_range(fallback, low, high):
        return _num(fallback)
    if high is not None and (low is None or fallback > high[1]):
        return _num(high[1] if high[0] == "le" else high[1] / 2)
    return _num(low[1] if low is not None and low[0] == "ge" else (low[1] + 1 if low else fallback))


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `loc` (for did-you-mean on unknown keys)."""
    walk = {
        ("hardware",): HardwareSpec, ("workload",): WorkloadSpec, ("serve",): ServeSpec,
    }
    if loc in walk:
        return walk[loc]
    if len(loc) == 3 and loc[:2] == ("hardware", "nodes"):
        return NodeGroupSpec
    if len(loc) == 4 and loc[:2] == ("hardware", "nodes") and loc[3] == "hardware":
        return HardwareSpec
    if len(loc) == 2 and loc[0] == "services":
        return ServiceSpec
    if len(loc) == 3 and loc[0] == "services" and loc[2] == "workload":
        return WorkloadOverride
    if len(loc) == 3 and loc[0] == "hardware" and loc[1] == "gpus":
        return GPUSpec
    if loc == ("hardware", "cpu"):
        return CPUSpec
    return StackSpec if loc == () else None


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known: " + ", ".join(sorted(choices)) if choices and len(choices) <= 16 else ""


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


# ---------------------------------------------------------------------------------------------- binding

_MULTI_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*([a-z0-9][a-z0-9.-]*)\s*$")


def bind(spec: StackSpec, doc: _yaml.Document, display: str, path: Path, profiles: Any, remote: Any = None) -> Stack:
    """Resolve names to objects: hardware and workload profiles, model facts. Collects every problem first."""
    from stackgen.models.facts import resolve_model

    problems: list[Problem] = []

    def problem(loc: tuple, message: str, hint: str = "") -> None:
        m = doc.mark_for(loc)
        problems.append(Problem(display, m.line, m.col, _dotted(loc), message, hint))

    nodes: tuple[Node, ...] = ()
    if isinstance(spec.hardware, ClusterSpec):
        nodes = _bind_nodes(spec.hardware, profiles, problem)
        hardware = nodes[0].hardware if nodes else None
        label = _cluster_label(nodes)
    else:
        hardware, label = _bind_hardware(spec.hardware, profiles, problem)
    workload = _bind_workload(spec.workload, profiles, problem)
    if workload is not None:
        _check_workload_fits(("workload",), workload, spec.workload, problem)
    services = []
    ports: dict[int, str] = {}
    for name, svc in spec.services.items():
        merged = _merge_workload(workload, svc.workload) if workload else None
        if merged is not None and _sets_lengths(svc.workload):  # else: the stack's workload, checked above
            _check_workload_fits(("services", name, "workload"), merged, svc.workload, problem)
        if svc.port is not None:
            if svc.port in ports:
                problem(("services", name, "port"), f"port {svc.port} is already used by service {ports[svc.port]!r}",
                        "give each service its own port")
            ports[svc.port] = name
            if svc.replicas and svc.replicas > 1 and svc.port + svc.replicas > 65535:
                # separate instances listen on port + 1 .. port + replicas (capacity.with_replicas); past 65535
                # HAProxy refuses the config and no engine can bind
                problem(("services", name, "port"), f"{svc.replicas} replicas listen on port {svc.port + 1} to "
                        f"{svc.port + svc.replicas}, past the last port, 65535",
                        f"set port: {65535 - svc.replicas} or lower")
        try:
            facts = resolve_model(svc.model, svc.quant, base_dir=path.parent, catalog=profiles.models, remote=remote)
        except ModelRefError as exc:
            problem(("services", name, "model") if exc.field == "model" else ("services", name, exc.field),
                    exc.message, exc.hint)
            continue
        _check_lengths(name, svc, problem)
        if svc.chat_template is not None and template_outside(svc.chat_template, path.parent):
            problem(("services", name, "chat_template"),
                    f"{svc.chat_template!r} is outside the stack's folder: its text would be copied into the "
                    "committed artifacts", "copy the template next to stack.yaml and name it relatively, e.g. "
                    "chat_template: templates/chat.tmpl")
        elif svc.chat_template is not None and (unreadable := template_unreadable(svc.chat_template, path.parent)):
            # the engine is handed the file by path (llama.cpp/vLLM/SGLang): without this check a missing file
            # passed validate, render and up's preflight and the engine died blaming a flag (review M2)
            problem(("services", name, "chat_template"), unreadable,
                    "name a UTF-8 template file relative to the stack's folder, e.g. chat_template: templates/chat.tmpl")
        if merged is not None:
            services.append(Service(name, svc, merged, facts))
    _check_serve(spec, problem)
    _check_pinned_engines(spec, services, None if nodes else hardware, problem)
    if problems:
        raise SpecError(problems)
    name = spec.name or _default_name(path)
    return Stack(path=path, name=name, spec=spec, hardware=hardware, hardware_label=label,
                 services=tuple(services), profiles_dirs=tuple(profiles.dirs), nodes=nodes, remote=remote, doc=doc)


def _bind_nodes(cluster: ClusterSpec, profiles: Any, problem) -> tuple[Node, ...]:
    """Expand node groups into machines with addresses; every problem is reported at its own position."""
    nodes: list[Node] = []
    seen: dict[str, tuple] = {}
    ok = True
    for g, group in enumerate(cluster.nodes):
        where = ("hardware", "nodes", g)

        def at(loc_tail: tuple, message: str, hint: str = "", _where=where) -> None:
            problem(_where + loc_tail, message, hint)

        if isinstance(group.hardware, str) and group.hardware.strip() == "detect":
            at(("hardware",), "a node of a cluster cannot be `detect`ed: stackgen only probes the machine it runs on",
               "name a profile or describe the machine inline")
            ok = False
            continue
        hw, label = _bind_hardware(group.hardware, profiles, lambda loc, m, h="": at(tuple(loc), m, h))
        if hw is None:
            ok = False
            continue
        if group.addresses and len(group.addresses) != group.count:
            at(("addresses",), f"{len(group.addresses)} addresses for count {group.count}",
               "give one address per machine, or leave `addresses` out")
            ok = False
            continue
        for i in range(group.count):
            index = len(nodes)
            address = group.addresses[i] if group.addresses else f"node-{index}"
            if address in seen:
                at(("addresses", i) if group.addresses else ("count",),
                   f"address {address!r} is used twice", "give each machine its own address")
                ok = False
            seen[address] = where
            nodes.append(Node(index, hw, address, hw.description or hw.label() if not isinstance(label, str) else label))
    if ok and len(nodes) > 64:
        problem(("hardware", "nodes"), f"{len(nodes)} machines is more than 64", "use at most 64 machines")
        ok = False
    if ok and any(n.hardware.os != nodes[0].hardware.os for n in nodes):
        problem(("hardware", "nodes"), "the machines run different operating systems", "use one OS for all nodes")
        ok = False
    return tuple(nodes) if ok else ()


def _cluster_label(nodes: tuple[Node, ...]) -> str:
    if not nodes:
        return "cluster"
    groups: list[list] = []
    for n in nodes:
        if groups and groups[-1][1] == n.label:
            groups[-1][0] += 1
        else:
            groups.append([1, n.label])
    return " + ".join(f"{c} nodes of {lbl}" if c > 1 else f"1 node of {lbl}" for c, lbl in groups)


def hardware_problems(hw: HardwareSpec) -> list[tuple[tuple, str, str]]:
    """What a machine description contradicts itself in, as (location under the hardware mapping, message, what to
    write instead): an Apple GPU beside another vendor's, an Apple GPU under another OS than macOS, unified GPU
    memory larger than the RAM it is part of. Stack files, profile files and recorded hosts are all checked."""
    out: list[tuple[tuple, str, str]] = []
    apple = [i for i, g in enumerate(hw.gpus) if g.vendor == "apple"]
    if apple:
        for i, g in enumerate(hw.gpus):
            if g.vendor != "apple":
                out.append((("gpus", i, "vendor"), f"an {VENDOR_NAMES[g.vendor]} GPU ({g.name}) in the same machine as "
                            f"an Apple GPU ({hw.gpus[apple[0]].name}): a Mac with Apple silicon takes no other GPU",
                            "describe one machine: drop this GPU or the Apple one; several machines go under "
                            "`hardware: {nodes: [...]}`"))
        if hw.os != "macos":
            # (left out, os is macos: HardwareSpec._apple_runs_macos)
            out.append((("os",), f"an Apple GPU runs only under macOS, but os is {hw.os}", "write `os: macos`"))
    for i, g in enumerate(hw.gpus):
        if g.unified and g.memory_gib * g.count > hw.memory_gib:
            out.append((("gpus", i, "memory_gib"), f"unified GPU memory of {g.memory_gib * g.count:g} GiB is more than "
                        f"the machine's RAM (memory_gib: {hw.memory_gib:g}): unified memory is part of that RAM",
                        f"write `memory_gib: {hw.memory_gib:g}` here, the pool both share, or raise the machine's "
                        f"memory_gib to at least {g.memory_gib * g.count:g}"))
    return out


def _bind_hardware(ref: HardwareRef, profiles: Any, problem) -> tuple[HardwareSpec | None, str]:
    if isinstance(ref, HardwareSpec):
        bad = hardware_problems(ref)
        for tail, message, hint in bad:
            problem(("hardware",) + tail, message, hint)
        return (None if bad else ref), ref.description or ref.label()
    text = ref.strip()
    if text == "detect":
        return None, "detected"
    count = 1
    m = _MULTI_RE.match(text)
    # `2x rtx-4090` multiplies a profile; `7900xtx` is a (misspelt) name, not 7900 of "tx": only a known profile
    # after the multiplier makes it a count.
    if m and text not in profiles.hardware and m.group(2) in profiles.hardware:
        count, text = int(m.group(1)), m.group(2)
        if count < 1 or count > 64:
            problem(("hardware",), f"GPU count {count} is out of range", "use 1 to 64")
            return None, ref
    hw = profiles.hardware.get(text)
    if hw is None:
        problem(("hardware",), f"unknown hardware profile {text!r}",
                _did_you_mean_profile(text, list(profiles.hardware)) or "run `stackgen detect` or describe it inline")
        return None, ref
    if count > 1:
        if not hw.gpus:
            problem(("hardware",), f"{text!r} has no GPUs to multiply", f"write `hardware: {text}`")
            return None, ref
        if hw.is_apple:
            problem(("hardware",), "Apple machines cannot be multiplied", "describe the machines under `nodes` (multi-node)")
            return None, ref
        gpus = tuple(g.model_copy(update={"count": g.count * count}) for g in hw.gpus)
        hw = hw.model_copy(update={"gpus": gpus, "description": f"{count}x {hw.description or text}"})
    return hw, ref


def hardware_by_name(text: str, profiles: Any) -> tuple[HardwareSpec | None, list[tuple[str, str]]]:
    """A `hardware:` text as a stack file reads it (a profile, `<N>x <profile>`; `detect` is None), outside a stack
    file (`stackgen init --hardware`): (the machine, [(message, what to write instead)] when it names none)."""
    said: list[tuple[str, str]] = []
    hw, _ = _bind_hardware(text, profiles, lambda loc, message, hint="": said.append((message, hint)))
    return (None if said else hw), said


def _did_you_mean_profile(text: str, names: list[str]) -> str:
    """Also match spellings without separators: `7900xtx` -> rx-7900-xtx, `RTX4090` -> rtx-4090."""
    close = _did_you_mean(text, names)
    if close.startswith("did you mean"):
        return close
    squash = lambda n: re.sub(r"[^a-z0-9]", "", n.lower())  # noqa: E731
    hits = [n for n in names if squash(text) and (squash(text) == squash(n) or squash(text) in squash(n))]
    if len(hits) == 1:
        return f"did you mean {hits[0]!r}?"
    return _did_you_mean(squash(text), names) if not hits else "did you mean one of: " + ", ".join(sorted(hits)) + "?"


def _bind_workload(ref: WorkloadRef, profiles: Any, problem) -> WorkloadSpec | None:
    if isinstance(ref, WorkloadSpec):
        return ref
    wl = profiles.workloads.get(ref)
    if wl is None:
        problem(("workload",), f"unknown workload profile {ref!r}",
                _did_you_mean(ref, list(profiles.workloads)) or "known: " + ", ".join(sorted(profiles.workloads)))
    return wl


_LENGTHS = ("prompt_tokens", "output_tokens", "context_tokens")


def _sets_lengths(over: WorkloadOverride | None) -> bool:
    return over is not None and any(getattr(over, f) is not None for f in _LENGTHS)


def _check_workload_fits(where: tuple, wl: WorkloadSpec, written: Any, problem) -> None:
    """A request is its prompt plus its output: both must fit the context (profiles/workloads.yaml's invariant), else
    the engine refuses every request as too long. Reported at the length the file at `where` sets (`written`: the
    inline workload or a service's override; a profile name or None: at `where` itself)."""
    need = wl.prompt_tokens + wl.output_tokens
    if need <= wl.context_tokens:
        return
    fields = [f for f in _LENGTHS if isinstance(written, BaseModel) and f in written.model_fields_set]
    loc = where + (fields[0],) if fields else where
    room = wl.context_tokens - wl.output_tokens
    lower = (f", or lower prompt_tokens to at most {room}" if room >= 1
             else f", or lower output_tokens to at most {wl.context_tokens - wl.prompt_tokens}"
             if wl.context_tokens > wl.prompt_tokens else "")
    problem(loc, f"prompt_tokens {wl.prompt_tokens} + output_tokens {wl.output_tokens} = {need} is more than "
            f"context_tokens {wl.context_tokens}: the engine would refuse every request as longer than its context",
            f"raise context_tokens to at least {need}{lower}")


def _merge_workload(base: WorkloadSpec, over: WorkloadOverride | None) -> WorkloadSpec:
    if over is None:
        return base
    updates = {k: v for k, v in over.model_dump().items() if v is not None}
    return base.model_copy(update=updates)


# Flags and daemon variables that the `serve:` block (or a service's `port:`) owns, in every engine's spelling
# (../shared/reference/engines.md): an override must not re-open what serve: closes. Value: the field to use.
SERVE_OWNED: dict[str, str] = {
    **dict.fromkeys(("host", "uds"), "serve.host"),
    "port": "services.{name}.port",
    "OLLAMA_HOST": "serve.host and services.{name}.port",
    **dict.fromkeys(("api-key", "api-key-file", "LLAMA_API_KEY", "VLLM_API_KEY"),
                    "serve.api_key_env (the name of an environment variable holding the key; its value is never written)"),
    **dict.fromkeys(("cors-origins", "cors-credentials", "no-cors-credentials", "allowed-origins", "allowed-credentials",
                     "allowed-methods", "allowed-headers", "OLLAMA_ORIGINS"), "serve.cors_origins"),
    **dict.fromkeys(("ssl-key-file", "ssl-cert-file", "ssl-keyfile", "ssl-certfile", "ssl-ca-certs", "ssl-cert-reqs",
                     "ssl-ciphers", "enable-ssl-refresh"), "serve.tls"),
}


def override_flag(key: str) -> str:
    """The flag an override key sets, as the engine's --help spells it: `host`, `--host` and `--host=x` are `--host`
    (a key that starts with '-' is kept: `-c`, `--ctx-size`)."""
    flag = key.split("=", 1)[0]
    return flag if flag.startswith("-") else f"--{flag}"


def owned_override(key: str) -> str | None:
    """The serve: field that owns an override key (`--host`, `host`, `--host=x`, `OLLAMA_HOST`), else None."""
    name = override_flag(key).lstrip("-")
    return SERVE_OWNED.get(name) or SERVE_OWNED.get(name.lower())


def _check_overrides(spec: StackSpec, problem) -> None:
    for name, svc in spec.services.items():
        for key, value in svc.overrides.items():
            owner = owned_override(key)
            if owner:
                problem(("services", name, "overrides", key), f"{key} is set by the serve: block, not by overrides "
                        "(an override here would bypass its checks: loopback, API key, CORS)",
                        f"use {owner.format(name=name)}")
                continue
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str) and re.match(r"-[A-Za-z-]", v):
                    problem(("services", name, "overrides", key), f"the value {v!r} starts with '-': the engine "
                            "would read it as another flag", "give the flag itself its own key under overrides")
                    break


def _check_override_flags(spec: StackSpec, problem) -> None:
    """An override that no engine the service may run on takes (the named one, or every engine for `auto`): an
    unknown or misspelt flag, a value for a flag that takes none. Refused here, at its line, not by `render` after
    `plan` printed a command carrying it. Which engine an `auto` service gets is the planner's: it rules out the
    engines that cannot take the service's overrides (resolve._candidate)."""
    from stackgen import engines
    from stackgen.engines.flagcheck import close_flags, knows, override_problem, removed

    for name, svc in spec.services.items():
        names = [svc.engine] if svc.engine != "auto" else list(engines.ENGINES)
        for key, value in svc.overrides.items():
            if owned_override(key):
                continue  # _check_overrides says whose it is
            version = {e: svc.engine_version if e == svc.engine else None for e in names}
            why = {e: override_problem(e, version[e], key, value) for e in names}
            if not all(why.values()):
                continue
            knowers = [e for e in names if knows(e, version[e], key)]
            if knowers:  # a known flag with a value it cannot take
                problem(("services", name, "overrides", key), why[knowers[0]], "")
                continue
            older = [e for e in names if removed(e, version[e], key)]
            if older:  # an older build's flag: the table names what replaced it
                problem(("services", name, "overrides", key), why[older[0]], "write the replacement it names")
                continue
            close = sorted({c for e in names for c in close_flags(e, version[e], key)})
            hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                    "remove it, or write the flag as the engine's --help spells it"
                    if any(engines.get(e).flags is not None for e in names) else "remove it")
            if svc.engine != "auto":
                problem(("services", name, "overrides", key), why[svc.engine], hint)
            else:
                problem(("services", name, "overrides", key), f"no engine stackgen runs takes {key} ("
                        + ", ".join(engines.get(e).display for e in names) + ")", hint)


def _check_unsafe_overrides(spec: StackSpec, problem) -> None:
    """An override that gives the engine's clients more than inference (Engine.unsafe_flags: run commands, read or
    serve files, proxy requests): refused, or refused without serve.api_key_env where a key makes it acceptable. Any
    engine the service may run on that knows the flag as unsafe decides (the named one, or every engine for auto)."""
    from stackgen import engines

    for name, svc in spec.services.items():
        names = [svc.engine] if svc.engine != "auto" else list(engines.ENGINES)
        for key in svc.overrides:
            flag = override_flag(key)
            for e in names:
                engine = engines.get(e)
                flag = getattr(engine, "aliases", {}).get(flag, flag)
                if flag not in engine.unsafe_flags:
                    continue
                what, key_ok = engine.unsafe_flags[flag]
                if key_ok and spec.serve.api_key_env:
                    break
                problem(("services", name, "overrides", key),
                        f"{flag} gives every client of {engine.display} {what}"
                        + (", and no API key is set" if key_ok else ""),
                        "set serve.api_key_env so that only key holders reach it, or remove it" if key_ok else
                        "remove it: stackgen serves only the inference API; run the engine by hand for more")
                break


def _check_override_knobs(spec: StackSpec, problem) -> None:
    """A planned knob given twice (`-c` and `--ctx-size`) or with a value the planner cannot read, per engine the
    service may run on (the named one, or every engine for `auto`)."""
    from stackgen import engines
    from stackgen.engines.base import override_problems

    for name, svc in spec.services.items():
        seen = set()
        for engine_name in [svc.engine] if svc.engine != "auto" else list(engines.ENGINES):
            for exc in override_problems(engines.get(engine_name), dict(svc.overrides), f"services.{name}.overrides"):
                if (exc.key, exc.detail) not in seen:
                    seen.add((exc.key, exc.detail))
                    problem(("services", name, "overrides", exc.key), exc.detail, exc.hint)


# Linux refuses (E2BIG) to exec an argument longer than MAX_ARG_STRLEN = 32 pages = 131072 bytes including its NUL
# (include/uapi/linux/binfmts.h). systemd reads a unit line, continuation lines joined, up to LONG_LINE_MAX = 1 MiB
# (src/basic/fileio.h; systemd.syntax(7): "The limit on line length is very large (currently 1 MB)") and refuses
# the unit beyond it. systemd's C-style quoting of ExecStart can write a byte as 4 (\xNN), so one service's argument
# text is kept under 1 MiB / 4.
MAX_ARG_BYTES = 131072 - 1
MAX_SERVICE_ARG_BYTES = 256 * 1024
ARG_FIELDS = ("model", "quant", "engine_version", "binary", "image", "chat_template")


def _check_lengths(name: str, svc: ServiceSpec, problem) -> None:
    """Every value that becomes an argument fits one exec() argument, and a service's together fit a unit line."""
    values = [((f,), getattr(svc, f)) for f in ARG_FIELDS if getattr(svc, f) is not None]
    for key, value in svc.overrides.items():
        values.append((("overrides", key), key))
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                values.append((("overrides", key), str(item)))
    total = 0
    for loc, value in values:
        size = len(value.encode("utf-8"))
        total += size
        if size > MAX_ARG_BYTES:
            problem(("services", name) + loc, f"{size} bytes is longer than one command-line argument can be "
                    f"({MAX_ARG_BYTES} bytes, Linux MAX_ARG_STRLEN)", "put long content in a file and pass its path")
            return
    if total > MAX_SERVICE_ARG_BYTES:
        problem(("services", name), f"the service's arguments add up to {total} bytes, more than a systemd unit line "
                f"holds once quoted ({MAX_SERVICE_ARG_BYTES} bytes)", "put long content in files and pass their paths")


def template_outside(ref: str, stack_dir: Path) -> bool:
    """True when a chat_template reference, links followed, names a file outside the stack's folder."""
    base = Path(os.path.realpath(stack_dir))
    target = Path(os.path.realpath(stack_dir / ref))
    return target != base and base not in target.parents


def template_unreadable(ref: str, stack_dir: Path) -> str | None:
    """Why a chat_template reference cannot be read as a text file (None: it can)."""
    path = stack_dir / ref
    if not path.exists():
        return f"{ref!r} does not exist (looked in {stack_dir})"
    if not path.is_file():
        return f"{ref!r} is not a file"
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return f"{ref!r} is not UTF-8 text: {exc}"
    except OSError as exc:
        return f"cannot read {ref!r}: {exc.strerror or exc}"
    return None


# Environment variables every shell, login or session sets to a value others can read or guess (POSIX's and the
# usual shells', locale, XDG, SSH and toolchain ones): as serve.api_key_env, `HOME` made a "keyed" public server
# whose key was the user's home folder (audit a2 #6).
NOT_SECRET_ENV = frozenset("""
    HOME USER LOGNAME USERNAME HOSTNAME HOST HOSTTYPE OSTYPE MACHTYPE SHELL SHLVL PWD OLDPWD PATH CDPATH MANPATH
    INFOPATH LANG LANGUAGE TERM COLORTERM TERM_PROGRAM TZ TMPDIR TMP TEMP MAIL MAILPATH DISPLAY WAYLAND_DISPLAY
    EDITOR VISUAL PAGER BROWSER UID EUID PPID GROUPS IFS PS1 PS2 PS4 HISTFILE HISTSIZE _ LS_COLORS
    DBUS_SESSION_BUS_ADDRESS LD_LIBRARY_PATH LD_PRELOAD PYTHONPATH PYTHONHOME VIRTUAL_ENV CONDA_PREFIX
    CONDA_DEFAULT_ENV CUDA_VISIBLE_DEVICES HIP_VISIBLE_DEVICES HF_HOME HF_ENDPOINT XDG_RUNTIME_DIR
    """.split())
NOT_SECRET_PREFIXES = ("LC_", "XDG_", "SSH_", "SUDO_", "STACKGEN_SERVICE_ID")


def not_secret_env(name: str) -> bool:
    return name in NOT_SECRET_ENV or name.startswith(NOT_SECRET_PREFIXES)


def _check_pinned_engines(spec: StackSpec, services: list, hardware: "HardwareSpec | None", problem) -> None:
    """What `plan` refuses in a service that names its engine, read from the stack and the hardware it names alone
    (no model facts, no probe): structured output the engine cannot constrain, and separate instances (`replicas:`)
    of an engine that runs one server, or on the unified memory of a named Mac. `hardware` None: detected at plan
    time, or a cluster (planned per node): then only the engine's half. (An engine the named hardware cannot run at
    all, Engine.hardware_block, stays plan's: its refusal carries the plan's hint and per-version wording.)"""
    from stackgen import engines
    from stackgen.plan.capacity import pinned_runs_refusal

    users = {s.name: s.workload.concurrent_users for s in services}
    for name, svc in spec.services.items():
        if svc.engine == "auto":
            continue
        engine = engines.get(svc.engine)
        if hardware is not None and engine.hardware_block(hardware, True, svc.engine_version):
            continue  # plan says why the engine cannot run there at all
        if svc.structured_output is not None:
            why = engine.structured_output(svc.structured_output.backend)[0]
            if why:
                problem(("services", name, "structured_output"), f"engine {svc.engine} cannot take it: {why}")
        if svc.replicas and svc.replicas > 1 and name in users:
            why = pinned_runs_refusal(svc.engine, hardware, svc.replicas, users[name])
            if why:
                problem(("services", name, "replicas"), why)


def _check_serve(spec: StackSpec, problem) -> None:
    _check_overrides(spec, problem)
    _check_override_flags(spec, problem)
    _check_unsafe_overrides(spec, problem)
    _check_override_knobs(spec, problem)
    key_env = spec.serve.api_key_env
    if key_env and not_secret_env(key_env):
        problem(("serve", "api_key_env"), f"{key_env} is a well-known environment variable that every session sets "
                "to a value others can read or guess, not a secret: it would be the API key",
                "name a variable that holds only the key, e.g. api_key_env: STACKGEN_API_KEY")
    host = spec.serve.host
    if host not in LOOPBACK_HOSTS and not spec.serve.api_key_env:
        problem(("serve", "host"), f"binding {host} without an API key exposes the model to the network",
                "set serve.api_key_env to the name of an environment variable holding a key, or bind 127.0.0.1")
    from stackgen import engines  # the engine owns whether it takes a key or serves TLS (imported late: no cycle)

    for name, svc in spec.services.items():
        engine = engines.get(svc.engine) if svc.engine != "auto" else None
        if engine is None:
            continue
        if spec.serve.tls is not None and engine.tls_flags is None:
            problem(("services", name, "engine"), f"{engine.display} cannot serve TLS itself",
                    "drop serve.tls and put a TLS proxy in front, or use engine: llama.cpp or vllm")
        for key, message, hint in service_field_problems(engine, svc, spec.targets):
            problem(("services", name, key), message, hint)
        for target in spec.targets:  # the first target that cannot run it as written (render says the same)
            found = binary_problem(svc.binary, target, engine.binary)
            if found:
                problem(("services", name, "binary"), *found)
                break
        cors = engine.cors_problem(spec.serve.cors_origins)
        if cors:
            problem(("serve", "cors_origins"), f"{engine.display} {cors} (services.{name})",
                    "keep one origin in serve.cors_origins, or put a proxy that matches the Origin header in front")
        need_key = engine.key_required
        if need_key and not spec.serve.api_key_env:
            problem(("services", name, "engine"), f"{engine.display} {need_key}",
                    "set serve.api_key_env to the name of an environment variable holding a key, or pick another "
                    "engine")
        if host not in LOOPBACK_HOSTS and engine.api_key is None:
            problem(("services", name, "engine"), f"{engine.display} has no API key: it must bind loopback",
                    "keep serve.host 127.0.0.1 and put an authenticating proxy in front")
        elif host not in LOOPBACK_HOSTS and engine.api_key.gaps:
            problem(("serve", "host"), f"{engine.display}'s API key leaves {engine.api_key.gaps} (services.{name}): "
                    f"binding {host} would expose it", "keep serve.host 127.0.0.1 and put an authenticating proxy "
                    "in front")


# Targets that ship a service's chat template file to an engine that reads it from a file (Engine.chat_template_flag):
# run.sh and `up` (the stack's own path), systemd (installed under /etc/stackgen), compose (bind-mounted), kubernetes
# (a ConfigMap; single-node services). The others
# refuse it (render.targets.refuse_chat_template) rather than drop it (audit auda F6).
CHAT_TEMPLATE_TARGETS = ("script", "systemd", "compose", "kubernetes")


def chat_template_target_problem(target: str) -> tuple[str, str]:
    return (f"the {target} target does not ship a chat template file to the engine (the "
            f"{', '.join(CHAT_TEMPLATE_TARGETS)} targets and `up` do)",
            f"drop {target} from targets, or drop chat_template")


# Targets whose artifact starts the engine from elsewhere than the stack's folder: (what starts it and with which
# PATH, whether a bare name is looked up on a PATH the user can rely on). A relative `binary:` is found only by run.sh
# and `up`; render refuses it for these (render.targets.installed_binary), validate too (review L2).
BINARY_TARGETS = {
    "systemd": ("a unit runs it on its host, not from the stack's folder, with systemd's own PATH "
                "(/usr/local/bin:/usr/bin:...)", True),
    "llama-swap": ("llama-swap starts it from its own working folder, with its own PATH", True),
    "launchd": ("launchd runs the engine without your shell's PATH or the stack's folder", False),
}


def binary_problem(binary: str | None, target: str, default: str) -> tuple[str, str] | None:
    """(message, fix) when `target` cannot run `binary:` as written (None: it can, or the target runs from the
    stack's folder): a path relative to the stack's folder, or for launchd a bare name. `default`: the engine's
    binary name, for the fix."""
    if binary is None or target not in BINARY_TARGETS:
        return None
    runs, bare_name_ok = BINARY_TARGETS[target]
    if PurePosixPath(binary).is_absolute() or (bare_name_ok and "/" not in binary):
        return None
    what = "a bare name" if "/" not in binary else "a path relative to the stack's folder"
    fix = f"write the absolute path it is installed at there (e.g. the output of `command -v {default}`)"
    if bare_name_ok:
        fix += f", or a bare name ({default}) found on that PATH"
    return f"{binary!r} is {what}, but {runs}", fix


def service_field_problems(engine, svc: ServiceSpec, targets=()) -> list[tuple[str, str, str]]:
    """(field, message, hint) for each of `svc`'s fields that `engine` would drop: a system message only Ollama keeps
    server-side; a chat template the engine takes from no file (MLX), or that a target would not ship (audit auda
    F6: both were accepted for every engine and silently left out of every artifact)."""
    out = []
    if svc.system is not None and not engine.system_prompt:
        out.append(("system", f"{engine.display} has no server-side system message (only Ollama's Modelfile has "
                    "SYSTEM): it would be dropped",
                    "send it as the first message of each request (role: system), or use engine: ollama"))
    if svc.chat_template is not None:
        if engine.chat_template_flag is None and engine.chat_template_refusal:
            out.append(("chat_template", f"{engine.display} {engine.chat_template_refusal}: it would be dropped",
                        "put the template in the model folder (chat_template.jinja or tokenizer_config.json's "
                        "chat_template), or use engine: llama.cpp or vllm"))
        elif engine.chat_template_flag is not None:
            for target in targets:
                if target not in CHAT_TEMPLATE_TARGETS:
                    out.append(("chat_template", *chat_template_target_problem(target)))
    return out


def _default_name(path: Path) -> str:
    folder = path.resolve().parent.name.lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", folder).strip("-")
    return slug or "stack"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of stack.yaml for editors (yaml-language-server)."""
    schema = StackSpec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://stackgen.dev/schema/stack-v1.json"
    schema["title"] = "stackgen stack.yaml (version 1)"
    return schema
