"""Engine resolution: the hardware x workload decision table, kept as data, and resolve(stack, host) -> Plan.

The table is the seed article's thesis: pick the bottleneck, not the benchmark. Each row names a hardware class,
a workload shape and the engines in order of preference, with the reason a user would read. The first engine in
that order that can actually serve the model (hardware supported, memory plan fits) wins; every other engine gets
its own reason for being rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stackgen import engines
from stackgen.engines.base import LaunchContext, Unsupported
from stackgen.errors import PlanError
from stackgen.hardware import HostFacts
from stackgen.memory import Budget, MemoryPlan, consume, gb, initial_budget, predict_decode_tokens_per_s
from stackgen.plan import Plan, ServicePlan
from stackgen.spec import HardwareSpec, Service, Stack

HW_APPLE, HW_CUDA, HW_AMD_CONSUMER, HW_INTEL, HW_CPU = "apple", "cuda-rocm", "amd-consumer", "intel", "cpu"


@dataclass(frozen=True)
class Row:
    id: str
    hardware: frozenset[str]  # hardware classes this row applies to
    users: str  # "single" | "multi" | "any"
    optimize: frozenset[str]  # latency | throughput | setup
    engines: tuple[str, ...]  # preference order
    reason: str


ALL_OPT = frozenset({"latency", "throughput", "setup"})
ALL_HW = frozenset({HW_APPLE, HW_CUDA, HW_AMD_CONSUMER, HW_INTEL, HW_CPU})

DECISION_TABLE: tuple[Row, ...] = (
    Row("mac-setup", frozenset({HW_APPLE}), "single", frozenset({"setup"}), ("ollama", "mlx", "llama.cpp"),
        "one user on a Mac who wants it running now: Ollama's daemon, registry and OpenAI API remove the setup work"),
    Row("mac-dev-loop", frozenset({HW_APPLE}), "single", frozenset({"latency", "throughput"}), ("mlx", "llama.cpp", "ollama"),
        "Apple silicon dev loop: MLX reads weights straight from unified memory at full bandwidth and holds models "
        "no discrete GPU can"),
    Row("mac-multi-user", frozenset({HW_APPLE}), "multi", ALL_OPT, ("llama.cpp", "mlx", "ollama"),
        "concurrent users on a Mac: llama-server's parallel slots batch decoding on Metal; mlx_lm.server is a dev "
        "server its authors do not recommend for production"),
    Row("gpu-multi-user", frozenset({HW_CUDA}), "multi", ALL_OPT, ("vllm", "llama.cpp", "ollama"),
        "concurrent users on a CUDA/ROCm datacenter-class GPU: vLLM's continuous batching and PagedAttention scale "
        "throughput with concurrency"),
    Row("gpu-setup", frozenset({HW_CUDA, HW_AMD_CONSUMER, HW_INTEL}), "single", frozenset({"setup"}),
        ("ollama", "llama.cpp", "vllm"),
        "one user who wants it running now: Ollama's daemon and registry trade control for setup time"),
    Row("gpu-single-user", frozenset({HW_CUDA}), "single", frozenset({"latency", "throughput"}),
        ("llama.cpp", "ollama", "vllm"),
        "one user on one workstation: llama.cpp gives the most predictable single-stream speed and full control "
        "of every flag"),
    Row("portable", frozenset({HW_AMD_CONSUMER, HW_INTEL, HW_CPU}), "any", ALL_OPT, ("llama.cpp", "ollama", "vllm"),
        "consumer AMD, Intel, CPU-only or odd hardware: llama.cpp's GGUF quantization and portable backends "
        "(Vulkan, ROCm, SYCL, CPU) cover what Python engines ignore"),
    Row("fallback", ALL_HW, "any", ALL_OPT, ("llama.cpp", "ollama", "vllm", "mlx"),
        "llama.cpp runs anywhere and can spill layers to system RAM"),
)

SPILL_REASON = "the model must spill to system RAM: llama.cpp offloads part of the layers and keeps the rest on the CPU"


def hardware_class(hw: HardwareSpec) -> str:
    if hw.is_apple:
        return HW_APPLE
    if not hw.gpus:
        return HW_CPU
    vendors = {g.vendor for g in hw.gpus}
    if "nvidia" in vendors or any(g.vendor == "amd" and g.tier == "datacenter" for g in hw.gpus):
        return HW_CUDA
    if "amd" in vendors:
        return HW_AMD_CONSUMER
    return HW_INTEL


def pick_row(hw_class: str, users: int, optimize: str) -> Row:
    shape = "single" if users == 1 else "multi"
    for row in DECISION_TABLE:
        if hw_class in row.hardware and row.users in (shape, "any") and optimize in row.optimize:
            return row
    return DECISION_TABLE[-1]


# ---------------------------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class Candidate:
    engine: str
    memory: MemoryPlan | None
    block: str  # why it cannot serve ('' when it can)
    note: str = ""


def resolve(stack: Stack, host: HostFacts) -> Plan:
    """Pure: the same stack and host always give the same plan."""
    hw = stack.hardware or host.hardware
    budget = initial_budget(hw)
    used_ports: set[int] = {s.spec.port for s in stack.services if s.spec.port}
    out = []
    for svc in stack.services:
        sp = _resolve_service(stack, svc, hw, budget, used_ports)
        budget = consume(budget, sp.memory)
        used_ports.add(sp.port)
        out.append(sp)
    label = stack.hardware_label if stack.hardware else f"detected: {hw.label()}"
    return Plan(stack.name, str(stack.path), hw, label, tuple(out))


def _resolve_service(stack: Stack, svc: Service, hw: HardwareSpec, budget: Budget, used_ports: set[int]) -> ServicePlan:
    explicit = svc.spec.engine != "auto"
    candidates = {name: _candidate(name, svc, hw, budget, explicit and name == svc.spec.engine) for name in engines.ENGINES}
    row = pick_row(hardware_class(hw), svc.workload.concurrent_users, svc.workload.optimize)
    if explicit:
        chosen = candidates[svc.spec.engine]
        if chosen.block:
            raise PlanError(f"{stack.path}: services.{svc.name}: engine {svc.spec.engine} cannot serve "
                            f"{svc.model.name}: {chosen.block}")
        reasons = [f"engine: {svc.spec.engine} is set in the stack file"]
        rejected = {n: "not chosen: the stack pins the engine" + (f" (and: {c.block})" if c.block else "")
                    for n, c in candidates.items() if n != chosen.engine}
    else:
        order = list(row.engines) + [e for e in engines.ENGINES if e not in row.engines]
        viable = [candidates[e] for e in order if not candidates[e].block]
        if not viable:
            raise PlanError(_nothing_fits(stack, svc, hw, candidates))
        chosen = viable[0]
        reasons = [_why(row, chosen, order, candidates)]
        rejected = {n: c.block or _ranked_below(n, chosen.engine, row, svc) for n, c in candidates.items() if n != chosen.engine}
    return _service_plan(stack, svc, hw, chosen, reasons, rejected, used_ports)


def _candidate(name: str, svc: Service, hw: HardwareSpec, budget: Budget, explicit: bool) -> Candidate:
    engine = engines.get(name)
    block = engine.hardware_block(hw, explicit)
    if block:
        return Candidate(name, None, block)
    try:
        w = engine.weights(svc.model)
    except Unsupported as exc:
        return Candidate(name, None, str(exc))
    mem = engine.plan_memory(svc.model, svc.workload, hw, budget, w)
    if not mem.fits:
        return Candidate(name, mem, mem.shortfall or f"does not fit in {hw.label()}", w.note)
    return Candidate(name, mem, "", w.note)


def _why(row: Row, chosen: Candidate, order: list[str], candidates: dict[str, Candidate]) -> str:
    first = order[0]
    if chosen.engine == first:
        return f"{engines.get(chosen.engine).display}: {row.reason}"
    skipped = [e for e in order[: order.index(chosen.engine)]]
    why_not = "; ".join(f"{engines.get(e).display}: {candidates[e].block}" for e in skipped)
    tail = SPILL_REASON if chosen.engine == "llama.cpp" and _spills(chosen) else f"next in line for this workload ({row.reason})"
    return f"{engines.get(chosen.engine).display}: {tail}. Preferred engines could not serve it ({why_not})"


def _spills(c: Candidate) -> bool:
    return c.memory is not None and c.memory.gpu_layers < c.memory.total_layers and c.memory.gpu_budget_bytes > 0


def _ranked_below(name: str, chosen: str, row: Row, svc: Service) -> str:
    users, optimize = svc.workload.concurrent_users, svc.workload.optimize
    if name == "ollama":
        why = (f"{users} concurrent users: Ollama's daemon picks GPU layers and context itself and serves few parallel "
               "requests per model; a team API outgrows it") if users > 1 else (
               f"Ollama adds a daemon that picks GPU layers and context itself; this workload optimizes {optimize}, "
               "not setup time")
    elif name == "llama.cpp":
        if chosen == "vllm":
            why = (f"{users} concurrent users: llama-server's slots share one batch, but vLLM's paged KV cache and "
                   "scheduler scale further")
        elif chosen == "mlx":
            why = "llama.cpp runs on Metal too, but MLX is the native path through unified memory for a dev loop"
        else:
            why = "llama.cpp needs every flag set by hand; this workload optimizes setup time"
    elif name == "vllm":
        why = ("vLLM's scheduler and Python runtime cost single-request latency and start-up time that one user does "
               "not win back") if users == 1 else row.reason
    else:
        why = "mlx_lm.server is a development server without slots, metrics or API keys"
    return f"ranked below {engines.get(chosen).display} for this workload: {why}"


def _nothing_fits(stack: Stack, svc: Service, hw: HardwareSpec, candidates: dict[str, Candidate]) -> str:
    lines = [f"{stack.path}: services.{svc.name}: no engine can serve {svc.model.name} on {hw.label()}:"]
    for name, c in candidates.items():
        lines.append(f"  - {engines.get(name).display}: {c.block}")
    lines.append("Try a smaller quant (quant: Q4_K_M), a shorter context_tokens, fewer concurrent_users, or more memory.")
    return "\n".join(lines)


def _service_plan(stack: Stack, svc: Service, hw: HardwareSpec, chosen: Candidate, reasons: list[str],
                  rejected: dict[str, str], used_ports: set[int]) -> ServicePlan:
    engine = engines.get(chosen.engine)
    mem = chosen.memory
    assert mem is not None
    port = svc.spec.port or _free_port(engine.default_port, used_ports)
    avg_ctx = min(mem.context_per_request, svc.workload.prompt_tokens + svc.workload.output_tokens // 2)
    speed, bottleneck = predict_decode_tokens_per_s(svc.model, mem, hw, avg_ctx)
    reasons = list(reasons) + [f"memory: {lever}" for lever in mem.levers]
    warnings = [chosen.note] if chosen.note else []
    if any("context reduced" in lever for lever in mem.levers):
        warnings.append("the plan serves a shorter context than the workload asked for")
    if svc.spec.engine in ("vllm", "mlx") and not hw.gpus:
        warnings.append(f"{engine.display} on a CPU-only machine: a test/development path, not a serving setup")
    sp = ServicePlan(
        name=svc.name, engine=chosen.engine, spec=svc.spec, model=svc.model, workload=svc.workload, memory=mem,
        host=stack.serve.host, port=port, threads=hw.cpu.cores, predicted_decode_tokens_per_s=speed,
        bottleneck=bottleneck, reasons=tuple(reasons), rejected=rejected, warnings=tuple(warnings),
        api_key_env=stack.serve.api_key_env, gpus=hw.gpus,
    )
    model_ref = default_model_ref(sp)
    sp = replace(sp, model_ref=model_ref)
    ctx = LaunchContext(binary=svc.spec.binary or engine.binary, model_ref=model_ref, host=sp.host, port=port)
    return replace(sp, command=tuple(engine.argv(sp, ctx)), env=engine.env(sp))


def default_model_ref(sp: ServicePlan) -> str:
    """Where the engine finds the weights when run natively: the local path, else a registry reference."""
    m = sp.model
    if m.path:
        return m.path
    if sp.engine in ("llama.cpp",):
        return f"hf:{m.gguf_repo}" if m.gguf_repo else f"models/{m.name}-{sp.memory.weights_format}.gguf"
    if sp.engine == "ollama":
        return m.ollama or f"models/{m.name}-{sp.memory.weights_format}.gguf"
    if sp.engine == "mlx":
        fmt = sp.memory.weights_format
        if m.mlx_repo and m.mlx_repo.endswith("-4bit") and fmt != "4bit":
            return m.mlx_repo[: -len("4bit")] + fmt  # mlx-community names each quantization by suffix
        return m.mlx_repo or m.hf_repo or m.name
    return m.hf_repo or m.name


def _free_port(start: int, used: set[int]) -> int:
    port = start
    while port in used:
        port += 1
    return port


__all__ = ["DECISION_TABLE", "Row", "resolve", "pick_row", "hardware_class", "gb"]
