"""Engine resolution: the hardware x workload decision table, kept as data, and resolve(stack, host) -> Plan.

The table is the seed article's thesis: pick the bottleneck, not the benchmark. Each row names a hardware class,
a workload shape and the engines in order of preference, with the reason a user would read. The first engine in
that order that can actually serve the model (hardware supported, memory plan fits) wins; every other engine gets
its own reason for being rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stackgen import engines
from stackgen.engines.base import Unsupported, pins_from_overrides
from stackgen.errors import PlanError
from stackgen.hardware import HostFacts
from stackgen.memory import (NO_PINS, Budget, MemoryPlan, Pins, consume, gb, initial_budget, plan_llamacpp_rpc, plan_vllm_multinode,
                             predict_decode_tokens_per_s)
from stackgen.plan import RAY_PORT, NodeRole, Plan, ServicePlan, Topology
from stackgen.spec import LOOPBACK_HOSTS, HardwareSpec, Node, Service, Stack

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
    pins: Pins = NO_PINS  # planned knobs the service's overrides pin for this engine
    unpinned: MemoryPlan | None = None  # the plan stackgen would have made without them (for the reasons)


def resolve(stack: Stack, host: HostFacts) -> Plan:
    """Pure: the same stack and host always give the same plan."""
    hw = stack.hardware or host.hardware
    budget = initial_budget(hw)
    used_ports: set[int] = {s.spec.port for s in stack.services if s.spec.port}
    out = []
    for svc in stack.services:
        sp = _resolve_service(stack, svc, hw, budget, used_ports)
        if sp.topology is None:
            budget = consume(budget, sp.memory)
        used_ports.add(sp.port)
        out.append(sp)
    label = stack.hardware_label if stack.hardware else f"detected: {hw.label()}"
    return Plan(stack.name, str(stack.path), hw, label, tuple(out))


def _resolve_service(stack: Stack, svc: Service, hw: HardwareSpec, budget: Budget, used_ports: set[int]) -> ServicePlan:
    explicit = svc.spec.engine != "auto"
    candidates = {name: _candidate(name, svc, hw, budget, explicit and name == svc.spec.engine) for name in engines.ENGINES}
    candidates = {name: replace(c, block=_serve_block(stack, name)) if not c.block and _serve_block(stack, name) else c
                  for name, c in candidates.items()}
    row = pick_row(hardware_class(hw), svc.workload.concurrent_users, svc.workload.optimize)
    if len(stack.nodes) > 1:
        if explicit:
            one_node = not candidates[svc.spec.engine].block and not _spills(candidates[svc.spec.engine])
        else:
            order = list(row.engines) + [e for e in engines.ENGINES if e not in row.engines]
            one_node = any(not candidates[e].block and not _spills(candidates[e]) for e in order)
        if not one_node:
            return _multinode(stack, svc, hw, candidates, used_ports)
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


def _serve_block(stack: Stack, name: str) -> str:
    """Why the serve: block rules this engine out: no API key on a non-loopback bind, or no TLS when asked."""
    engine = engines.get(name)
    if stack.serve.host not in LOOPBACK_HOSTS and engine.api_key is None:
        return (f"has no API key option, and serve.host {stack.serve.host} is not loopback "
                "(keep serve.host 127.0.0.1 and put an authenticating proxy in front)")
    if stack.serve.tls is not None and engine.tls_flags is None:
        return "cannot serve TLS itself (serve.tls is set; drop it and put a TLS proxy in front)"
    return ""


def _candidate(name: str, svc: Service, hw: HardwareSpec, budget: Budget, explicit: bool) -> Candidate:
    engine = engines.get(name)
    block = engine.hardware_block(hw, explicit)
    if block:
        return Candidate(name, None, block)
    try:
        w = engine.weights(svc.model)
    except Unsupported as exc:
        return Candidate(name, None, str(exc))
    pins = pins_from_overrides(engine, dict(svc.spec.overrides), f"services.{svc.name}.overrides")
    mem = engine.plan_memory(svc.model, svc.workload, hw, budget, w, pins)
    unpinned = engine.plan_memory(svc.model, svc.workload, hw, budget, w) if pins else None
    if not mem.fits:
        return Candidate(name, mem, mem.shortfall or f"does not fit in {hw.label()}", w.note, pins, unpinned)
    return Candidate(name, mem, "", w.note, pins, unpinned)


def _pin_reasons(c: Candidate, threads: int, default_threads: int) -> list[str]:
    """One reason per pinned knob: what the override set, and what stackgen would have chosen if that differs."""
    out = []
    for knob, said in c.pins.said:
        mine = _knob_text(c.memory, knob, threads)
        chose = _knob_text(c.unpinned, knob, default_threads) if c.unpinned is not None else None
        tail = f" (stackgen would have chosen {chose})" if chose is not None and chose != mine else ""
        out.append(f"pinned by overrides: {said}{tail}")
    return out


def _knob_text(m: MemoryPlan | None, knob: str, threads: int) -> str | None:
    if m is None:
        return None
    return {
        "context_total": f"{m.context_per_request * m.parallel} tokens of context ({m.parallel} x "
                         f"{m.context_per_request})",
        "context_per_request": f"{m.context_per_request} tokens per request",
        "parallel": f"{m.parallel} parallel requests",
        "gpu_layers": f"{m.gpu_layers} of {m.total_layers} layers on GPU",
        "kv_cache_type": f"a {m.kv_cache_type} KV cache",
        "gpu_memory_utilization": (f"--gpu-memory-utilization {m.gpu_memory_utilization:.2f}"
                                   if m.gpu_memory_utilization is not None else None),
        "tensor_parallel": f"tensor parallel {m.tensor_parallel}",
        "threads": f"{threads} threads",
    }.get(knob)


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
                  rejected: dict[str, str], used_ports: set[int], topology: Topology | None = None) -> ServicePlan:
    engine = engines.get(chosen.engine)
    mem = chosen.memory
    assert mem is not None
    port = svc.spec.port or _free_port(engine.default_port, used_ports)
    avg_ctx = min(mem.context_per_request, svc.workload.prompt_tokens + svc.workload.output_tokens // 2)
    if topology is not None:
        speed, bottleneck = _multinode_speed(svc, mem, stack.nodes[: len(topology.nodes)], hw, avg_ctx)
    else:
        speed, bottleneck = predict_decode_tokens_per_s(svc.model, mem, hw, avg_ctx)
    threads = chosen.pins.threads or hw.cpu.cores
    reasons = list(reasons) + _pin_reasons(chosen, threads, hw.cpu.cores) + [f"memory: {lever}" for lever in mem.levers]
    warnings = [chosen.note] if chosen.note else []
    if any("context reduced" in lever for lever in mem.levers):
        warnings.append("the plan serves a shorter context than the workload asked for")
    if stack.serve.api_key_env and engine.api_key is None:
        warnings.append(f"{engine.display} has no API key option: serve.api_key_env is not enforced for this service, "
                        "which is why it stays on loopback")
    if svc.spec.engine in ("vllm", "mlx") and not hw.gpus:
        warnings.append(f"{engine.display} on a CPU-only machine: a test/development path, not a serving setup")
    sp = ServicePlan(
        name=svc.name, engine=chosen.engine, spec=svc.spec, model=svc.model, workload=svc.workload, memory=mem,
        host=stack.serve.host, port=port, threads=threads, predicted_decode_tokens_per_s=speed,
        bottleneck=bottleneck, reasons=tuple(reasons), rejected=rejected, warnings=tuple(warnings),
        api_key_env=stack.serve.api_key_env, cors_origins=stack.serve.cors_origins, gpus=hw.gpus, topology=topology,
        tls=stack.serve.tls,
    )
    model_ref = default_model_ref(sp)
    sp = replace(sp, model_ref=model_ref)
    cmd = engines.command(engine, sp, binary=svc.spec.binary or engine.binary, model_ref=model_ref, host=sp.host,
                          port=port)
    return replace(sp, command=cmd.argv, env=cmd.env)


# ---------------------------------------------------------------------------------------------- multi-node


def _multinode(stack: Stack, svc: Service, head: HardwareSpec, single: dict[str, Candidate],
               used_ports: set[int]) -> ServicePlan:
    """The model does not fit one node: vLLM TP-in-node x PP-across-nodes with Ray when every node has the same CUDA
    GPUs, else llama.cpp with ggml-rpc-server workers (layers in proportion to memory). docs/multinode.md."""
    nodes = stack.nodes
    pinned = svc.spec.engine if svc.spec.engine != "auto" else None
    one = f"one node ({head.label()})"
    why_not_one = "; ".join(f"{engines.get(e).display}: {c.block or 'only by spilling layers to system RAM'}"
                            for e, c in single.items() if e in ("vllm", "llama.cpp"))
    tried: dict[str, str] = {}
    for name in ("vllm", "llama.cpp"):
        if pinned and name != pinned:
            continue
        block = _multinode_block(name, nodes)
        engine = engines.get(name)
        if not block:
            try:
                w = engine.weights(svc.model)
            except Unsupported as exc:
                block = str(exc)
        if block:
            tried[name] = block
            continue
        if name == "vllm":
            mem = plan_vllm_multinode(svc.model, svc.workload, head, len(nodes), w.bytes, w.format, w.source)
        else:
            mem = plan_llamacpp_rpc(svc.model, svc.workload, tuple(n.hardware for n in nodes), w.bytes, w.format,
                                    w.source)
        if not mem.fits:
            tried[name] = mem.shortfall
            continue
        used = nodes[: mem.nodes]
        topo = _topology(name, svc, used, mem)
        if name == "vllm":
            why = (f"multi-node: {svc.model.name} does not fit {one} ({why_not_one}); vLLM splits it with tensor "
                   f"parallel {mem.tensor_parallel} inside each node (GPUs on NVLink) and pipeline parallel "
                   f"{mem.pipeline_parallel} across nodes, Ray as the distributed executor; every node has the "
                   f"same {mem.tensor_parallel} CUDA GPUs")
        else:
            vllm_no = f" (vLLM across nodes: {tried['vllm']})" if "vllm" in tried else ""
            why = (f"multi-node: {svc.model.name} does not fit {one} ({why_not_one}); llama.cpp RPC: llama-server on "
                   f"the head uses its own devices plus a ggml-rpc-server on each of the {len(used) - 1} other "
                   f"node(s), layers in proportion to memory{vllm_no}")
        reasons = [why] + [f"network: {n}" for n in topo.network]
        rejected = {n: tried.get(n) or _multinode_rejected(n, name, pinned) for n in engines.ENGINES if n != name}
        cand = Candidate(name, mem, "", w.note)
        sp = _service_plan(stack, svc, head, cand, reasons, rejected, used_ports, topo)
        return sp
    lines = [f"{stack.path}: services.{svc.name}: {svc.model.name} does not fit {one}, nor split over the "
             f"{len(nodes)} nodes:"] + [f"  - {engines.get(n).display}: {b}" for n, b in tried.items()]
    raise PlanError("\n".join(lines))


def _multinode_rejected(name: str, chosen: str, pinned: str | None) -> str:
    if pinned:
        return "not chosen: the stack pins the engine"
    if name == "llama.cpp":
        return ("llama.cpp RPC could split it too, but vLLM batches concurrent users and keeps tensor parallel on "
                "NVLink inside each node")
    return "cannot split one model over several machines (only vLLM and llama.cpp RPC can)"


def _multinode_block(name: str, nodes: tuple[Node, ...]) -> str:
    if name == "llama.cpp":
        return ""
    first = nodes[0].hardware
    if hardware_class(first) != HW_CUDA or not first.gpus:
        return "needs CUDA/ROCm datacenter GPUs on every node"
    shape = lambda h: tuple((g.vendor, g.name, g.memory_gib, g.count) for g in h.gpus)  # noqa: E731
    if any(shape(n.hardware) != shape(first) for n in nodes):
        return "pipeline parallel with TP = GPUs per node needs identical GPUs on every node"
    return engines.get("vllm").hardware_block(first, False) or ""


def _topology(name: str, svc: Service, nodes: tuple[Node, ...], mem: MemoryPlan) -> Topology:
    roles = tuple(NodeRole(n.index, n.address, "head" if i == 0 else "worker", mem.node_layers[i], n.label,
                           n.hardware.gpu_count, tuple(sorted({g.vendor for g in n.hardware.gpus if not g.unified})))
                  for i, n in enumerate(nodes))
    h, users, prompt = svc.model.hidden, svc.workload.concurrent_users, svc.workload.prompt_tokens
    hops = len(nodes) - 1
    if name == "vllm":
        step = h * 2 * users
        net = (
            f"pipeline parallel sends activations between {hops + 1} stages: hidden_size {h} x 2 bytes (bf16) = "
            f"{h * 2 // 1024} KiB per sequence per decode step across each of {hops} node boundar"
            f"{'y' if hops == 1 else 'ies'} ({step / 1024:.0f} KiB per step at {users} users); a {prompt}-token "
            f"prompt sends {prompt * h * 2 / 1e6:.0f} MB per boundary during prefill",
            "tensor parallel stays inside each node: its all-reduce after every layer needs NVLink-class bandwidth, "
            "never run it across Ethernet",
            "recommended between nodes: 25 GbE or faster, InfiniBand/RoCE for NCCL (NCCL_IB_HCA) when prefill "
            f"traffic matters; nodes reach the Ray head at {nodes[0].address}:{RAY_PORT}",
        )
    else:
        shares = [int(mem.weights_bytes * l / max(1, mem.total_layers)) for l in mem.node_layers]
        net = (
            "at start the head sends each worker its share of the weights over the network ("
            + ", ".join(f"{r.address}: {gb(s)}" for r, s in zip(roles[1:], shares[1:]))
            + "); ggml-rpc-server -c caches them on the worker for the next start",
            f"every token ships activations across each of {hops} node boundar{'y' if hops == 1 else 'ies'}: "
            f"hidden_size {h} x 4 bytes (f32) = {h * 4 // 1024} KiB per sequence, one network round trip per boundary "
            "per token, so latency costs more than bandwidth",
            "recommended: 10 GbE at least, 25 GbE or RDMA (negotiated automatically) for prompt-heavy loads; RPC is "
            "unauthenticated: keep ports 50052 on a private network",
        )
    return Topology("vllm-ray" if name == "vllm" else "llama-rpc", roles, net)


def _multinode_speed(svc: Service, mem: MemoryPlan, nodes: tuple[Node, ...], head: HardwareSpec,
                     avg_ctx: int) -> tuple[float, str]:
    if mem.pipeline_parallel > 1:
        speed, where = predict_decode_tokens_per_s(svc.model, mem, head, avg_ctx)
        return speed, f"{where} of each pipeline stage in turn (plus a network hop per node boundary)"
    one_node = replace(mem, gpu_layers=mem.total_layers)
    seconds = 0.0
    for n, layers in zip(nodes, mem.node_layers):
        frac = layers / max(1, mem.total_layers)
        s, _ = predict_decode_tokens_per_s(svc.model, one_node, n.hardware, avg_ctx, efficiency=1.0)
        seconds += frac / s if s else 0.0
    speed = round(0.7 / seconds, 1) if seconds else 0.0
    return speed, "memory bandwidth of each node in turn (plus a network round trip per node boundary)"


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
