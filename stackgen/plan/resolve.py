"""Engine resolution: the hardware x workload decision table, kept as data, and resolve(stack, host) -> Plan.

The table is the seed article's thesis: pick the bottleneck, not the benchmark. Each row names a hardware class,
a workload shape and the engines in order of preference, with the reason a user would read. The first engine in
that order that can actually serve the model (hardware supported, memory plan fits) wins; every other engine gets
its own reason for being rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stackgen import engines
from stackgen.engines.base import Unsupported, Weights, pins_from_overrides
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.models.facts import ModelFacts
from stackgen.plan.memory import (NO_PINS, Budget, MemoryPlan, Pins, consume, gb, initial_budget,
                                  predict_decode_tokens_per_s, unexposed_bytes, with_rope)
from stackgen.plan.capacity import (command_endpoint, fleet_memory, gpu_sizes, place_gpus, requests_held,
                                    util_on_pinned, with_replicas)
from stackgen.plan.speed import decode_share_note, mean_context, vendor_unchecked_note
from stackgen.plan.plan import NodeRole, Plan, ServicePlan, Topology
from stackgen.spec.stack import (LOOPBACK_HOSTS, VENDOR_NAMES, HardwareSpec, Node, Service, Stack,
                                 service_field_problems)

# NVIDIA GPUs below compute capability 5.0 (Kepler: K80, K40) are below CUDA 12's and llama.cpp's default build's
# lowest architecture (ggml/src/ggml-cuda/CMakeLists.txt: "50 == Maxwell, lowest CUDA 12 standard"): the decode lines
# in speed.py are not fitted on them, and the one public point (discussion 15013's K80) decodes at 0.37 of the line.
OLD_CUDA_CC = 5.0
OLD_CUDA_WARNING = ("compute capability {cc} is below 5.0, the lowest CUDA 12 and llama.cpp's default build target: "
                    "it needs a CUDA 11 build for its architecture, and the decode forecast is not checked on such GPUs "
                    "(a Tesla K80 decoded at 0.37 of what it would predict)")

HW_APPLE, HW_CUDA, HW_AMD_CONSUMER, HW_INTEL, HW_CPU = "apple", "cuda-rocm", "amd-consumer", "intel", "cpu"


@dataclass(frozen=True)
class Row:
    id: str
    hardware: frozenset[str]  # hardware classes this row applies to
    users: str  # "single" | "multi" | "any"
    optimize: frozenset[str]  # latency | throughput | setup
    engines: tuple[str, ...]  # preference order
    reason: str  # a template: {gpu} {users} {backend} are filled from the facts (Row.text)
    min_prompt_ratio: float = 0.0  # the row needs prompt-heavy traffic: prompt_tokens >= this x output_tokens

    def text(self, hw: HardwareSpec, users: int) -> str:
        """The reason for this machine and workload: every fact in it comes from the hardware and the workload."""
        return self.reason.format(gpu=gpu_words(hw), users=users_words(users), backend=backend_words(hw))


ALL_OPT = frozenset({"latency", "throughput", "setup"})
ALL_HW = frozenset({HW_APPLE, HW_CUDA, HW_AMD_CONSUMER, HW_INTEL, HW_CPU})

# The seed article's matrix: Ollama solves setup friction (a single-user dev loop where setup time outweighs inference
# time, on any machine, CPU-only included), vLLM solves KV-cache scheduling for concurrent users on CUDA GPUs (consumer
# or datacenter), llama.cpp solves portability and deterministic single-stream control, MLX unified-memory bandwidth.
DECISION_TABLE: tuple[Row, ...] = (
    Row("mac-setup", frozenset({HW_APPLE}), "single", frozenset({"setup"}), ("ollama", "mlx", "llama.cpp"),
        "{users} on {gpu} who wants it running now: Ollama's daemon, registry and OpenAI API remove the setup work"),
    Row("mac-dev-loop", frozenset({HW_APPLE}), "single", frozenset({"latency", "throughput"}), ("mlx", "llama.cpp", "ollama"),
        "{users} iterating on {gpu}: MLX reads weights straight from unified memory at full bandwidth and holds "
        "models no discrete GPU can"),
    Row("mac-multi-user", frozenset({HW_APPLE}), "multi", ALL_OPT, ("llama.cpp", "mlx", "ollama"),
        "{users} on {gpu}: llama-server's parallel slots batch decoding on Metal; mlx_lm.server is a dev "
        "server its authors do not recommend for production"),
    # Long shared prompts (agents, RAG, multi-turn chat: prompt >= 8 x output) for many users on CUDA GPUs: SGLang's
    # RadixAttention keeps every request's prefix in a radix tree over the KV pool and its longest-prefix-match
    # scheduler runs the requests that reuse the most cache first (Zheng et al., "SGLang: Efficient Execution of
    # Structured Language Model Programs", NeurIPS 2024, sec. 3: up to 6.4x throughput on prefix-sharing workloads).
    # vLLM's automatic prefix caching reuses prefixes too, but schedules first-come-first-served, so it is next.
    Row("gpu-prefix-heavy", frozenset({HW_CUDA}), "multi", frozenset({"latency", "throughput"}),
        ("sglang", "vllm", "llama.cpp", "ollama"),
        "{users} sending long shared prompts on {gpu}: SGLang's RadixAttention reuses every cached prefix and its "
        "scheduler runs the requests that share the most cache first", min_prompt_ratio=8.0),
    Row("gpu-multi-user", frozenset({HW_CUDA}), "multi", ALL_OPT, ("vllm", "llama.cpp", "ollama"),
        "{users} on {gpu}: vLLM's continuous batching and PagedAttention scale throughput with concurrency"),
    Row("setup", frozenset({HW_CUDA, HW_AMD_CONSUMER, HW_INTEL, HW_CPU}), "single", frozenset({"setup"}),
        ("ollama", "llama.cpp", "vllm"),
        "{users} on {gpu} who wants it running now: Ollama's daemon and registry trade control for setup time"),
    Row("gpu-single-user", frozenset({HW_CUDA}), "single", frozenset({"latency", "throughput"}),
        ("llama.cpp", "ollama", "vllm"),
        "{users} on {gpu}: llama.cpp gives the most predictable single-stream speed and full control of every flag"),
    Row("portable", frozenset({HW_AMD_CONSUMER, HW_INTEL, HW_CPU}), "any", ALL_OPT, ("llama.cpp", "ollama", "vllm"),
        "{users} on {gpu}: llama.cpp's GGUF quantization and its {backend} cover hardware Python engines ignore"),
    Row("fallback", ALL_HW, "any", ALL_OPT, ("llama.cpp", "ollama", "vllm", "mlx"),
        "{users} on {gpu}: llama.cpp runs on any hardware ({backend})"),
)

def gpu_words(hw: HardwareSpec) -> str:
    """The machine's accelerators in words, from the facts: tier, vendor, name and count of each GPU."""
    if hw.is_apple:
        apple = next(g for g in hw.gpus if g.vendor == "apple")
        return f"{apple.name} (Apple silicon, unified memory)"
    if not hw.gpus:
        return f"a CPU-only machine ({hw.cpu.cores} cores)"
    parts = []
    for g in hw.gpus:
        kind = f"{g.tier} {VENDOR_NAMES[g.vendor]} GPU"  # GPUSpec.vendor is one of VENDOR_NAMES' keys
        parts.append(f"{g.count} {kind}s ({g.name})" if g.count > 1 else f"a {kind} ({g.name})")
    return " + ".join(parts)


def users_words(users: int) -> str:
    return "one user" if users == 1 else f"{users} concurrent users"


def backend_words(hw: HardwareSpec) -> str:
    if hw.is_apple:
        return "Metal backend"
    vendors = {g.vendor for g in hw.gpus}
    if not vendors:
        return "CPU backend"
    names = {"nvidia": "CUDA", "amd": "ROCm/Vulkan", "intel": "SYCL/Vulkan"}
    return "/".join(names[v] for v in sorted(vendors)) + " backends"  # apple returned above


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


def pick_row(hw_class: str, users: int, optimize: str, prompt_ratio: float = 0.0) -> Row:
    """The first row for this machine class and workload; `prompt_ratio`: prompt_tokens / output_tokens."""
    shape = "single" if users == 1 else "multi"
    for row in DECISION_TABLE:
        if (hw_class in row.hardware and row.users in (shape, "any") and optimize in row.optimize
                and prompt_ratio >= row.min_prompt_ratio):
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
    model: ModelFacts | None = None  # the model facts planned when not the service's own (like_precision's quant)
    reason: str = ""  # why those facts (a plan reason)
    fixed: bool = False  # ruled out by the stack's serve: block or a field it would drop: no memory lever lifts it


def _ruled_out(c: Candidate, why: str) -> Candidate:
    """The candidate ruled out by `why` ("" : not), which no quant, context or user count changes (review L8: such
    engines were offered in "Each of these fits" hints)."""
    return replace(c, block=c.block or why, fixed=True) if why else c


def engine_build(stack: Stack, svc: Service, host: HostFacts, name: str) -> int | None:
    """The build of engine `name` a service's plan is for (Engine.plans_by_build: llama.cpp's logits rule,
    memory.llamacpp_logit_rows): on a detected host (`hardware: detect`) the build of the binary found there
    (HostFacts.engine_builds; 0 there: found, build unknown); else the stack's engine_version; else the default flag
    table's build. None: unknown."""
    engine = engines.get(name)
    if stack.hardware is None and name in host.engine_builds:
        return host.engine_builds[name] or None
    return engine.build_of_version(svc.spec.engine_version)


def _builds(stack: Stack, svc: Service, host: HostFacts) -> dict[str, int | None]:
    return {n: engine_build(stack, svc, host, n) for n, e in engines.ENGINES.items() if e.plans_by_build}


def resolve(stack: Stack, host: HostFacts) -> Plan:
    """Pure: the same stack and host always give the same plan."""
    hw = stack.hardware or host.hardware
    budget = initial_budget(hw)
    free = gpu_sizes(hw)  # per GPU, what the services placed so far left (capacity.place_gpus)
    used_ports: set[int] = {s.spec.port for s in stack.services if s.spec.port}
    out: list[ServicePlan] = []
    for svc in stack.services:
        before = [p for p in out if p.topology is None]
        try:
            sp = _resolve_service(stack, svc, hw, budget, used_ports, before, _builds(stack, svc, host),
                                  host.calibration if stack.hardware is None else None)
        except PlanError as exc:
            if exc.plan_json is None:
                label = stack.hardware_label if stack.hardware else f"detected: {hw.label()}"
                exc.plan_json = Plan(stack.name, str(stack.path), hw, label, tuple(out)).to_json()
                exc.plan_json["services"].append(_unfit_json(svc, hw, budget, _builds(stack, svc, host)))
            raise
        if sp.topology is None:
            try:
                sp = _layout_speed(with_replicas(sp, hw, budget, used_ports), hw)
            except PlanError as exc:  # the capacity plan names the field: add where the stack file writes it
                raise PlanError(_positioned(stack, str(exc)) + _head_only(stack, svc.spec.replicas)) from None
            if sp.capacity is not None and sp.capacity.separate and _head_only(stack, sp.replicas):
                sp = replace(sp, warnings=sp.warnings + (_head_only(stack, sp.replicas).strip(" ;"),))
            try:
                ids, free = place_gpus(sp, hw, free)
            except PlanError as exc:
                field = ("services", svc.name, "replicas") if sp.capacity and sp.capacity.separate else \
                    ("services", svc.name)
                raise PlanError(f"{stack.where(field)}: {exc}") from None
            if ids:
                sp = _with_command(replace(sp, gpu_ids=ids, memory=util_on_pinned(sp, hw, ids)))
            budget = consume(budget, fleet_memory(sp), unexposed_bytes(sp.memory, hw))
        used_ports.add(sp.port)
        out.append(sp)
    # services sharing the machine get their share of its CPU threads: their speed again with those
    out = [_layout_speed(s, hw) if s.threads != o.threads else s for s, o in zip(_share_machine(out, hw), out)]
    label = stack.hardware_label if stack.hardware else f"detected: {hw.label()}"
    return Plan(stack.name, str(stack.path), hw, label, tuple(out))


def _head_only(stack: Stack, replicas: int | None) -> str:
    """What a multi-node stack's replicas are told: separate instances run on the machine planned as one, the head
    node; the others stay idle (4 replicas on the first of 2 nodes of 4 RTX 4090s, 16 users each, no word about the
    second; 8 replicas were refused with "add GPUs" that the stack already listed). "" on one machine."""
    if len(stack.nodes) < 2 or not replicas or replicas < 2:
        return ""
    head, rest = stack.nodes[0], stack.nodes[1:]
    return (f"; separate instances (replicas) run on one machine, the head node {head.address} ({head.label}): the "
            f"{len(rest)} other node{'s' if len(rest) != 1 else ''} of hardware.nodes "
            f"({', '.join(n.address for n in rest)}) serve{'s' if len(rest) == 1 else ''} no replica; to use them, render one stack per node (each "
            "with its own `hardware:`) behind a balancer of your own")


def _positioned(stack: Stack, message: str) -> str:
    """`services.<name>.<field>: ...` as `file:line:col: services.<name>.<field>: ...` (Stack.where)."""
    field, sep, rest = message.partition(": ")
    if not sep or not field.startswith("services.") or " " in field:
        return message
    return f"{stack.where(tuple(field.split('.')))}: {rest}"


def _layout_speed(sp: ServicePlan, hw: HardwareSpec) -> ServicePlan:
    """The service's speed for the layout it runs (capacity.with_replicas: separate instances or vLLM data parallel)
    with its threads: the forecast (speed.fleet_forecast, what forecast_at gives at other user counts) and the
    single-stream bandwidth roofline, both from one instance's inputs (capacity.instance_of, what the fleet
    simulator's curves take). The one place sp.speed is set: a forecast made before the layout (as _service_plan's
    was) read one server of the unsplit plan (tests/golden/fleet-vllm-dp-h100: 153 tokens/s for one stream on one
    GPU, where each of the 3 engine cores runs at 306 on its 2), and forecast_at then read the data-parallel plan's
    3 copies of the weights per token (102.8)."""
    if sp.topology is not None:
        return sp
    from stackgen.plan.capacity import instance_of
    from stackgen.plan.speed import decode_gpu, fleet_forecast

    inst, wl = instance_of(sp, hw), sp.workload
    avg_ctx = mean_context(inst.memory, wl)
    roofline, bottleneck = predict_decode_tokens_per_s(sp.model, inst.memory, inst.hardware, avg_ctx,
                                                       gpu_read_gbs=decode_gpu(sp.engine, inst.hardware).read_gbs)
    return replace(sp, speed=fleet_forecast(sp, hw, wl.concurrent_users), predicted_decode_tokens_per_s=roofline,
                   bottleneck=bottleneck)


def _unfit_json(svc: Service, hw: HardwareSpec, budget: Budget, builds: dict[str, int | None] | None = None) -> dict:
    """A service no engine fits, for `plan --json`: each engine's memory numbers and why it is out."""
    cands = {name: _candidate(name, svc, hw, budget, svc.spec.engine == name, [], builds) for name in engines.ENGINES}
    out: dict = {}
    for name, c in sorted(cands.items()):
        entry: dict = {"fits": c.memory is not None and c.memory.fits and not c.block, "block": c.block}
        if c.memory is not None:
            m = c.memory
            entry.update(shortfall=m.shortfall, memory={
                "weights_bytes": m.weights_bytes, "kv_cache_bytes": m.kv_cache_bytes,
                "compute_bytes": m.compute_bytes, "overhead_bytes": m.overhead_bytes, "total_bytes": m.total_bytes,
                "gpu_bytes": m.gpu_bytes, "host_bytes": m.host_bytes, "gpu_budget_bytes": m.gpu_budget_bytes,
                "host_budget_bytes": m.host_budget_bytes, "kv_cache_type": m.kv_cache_type})
        out[name] = entry
    return {"name": svc.name, "engine": None if svc.spec.engine == "auto" else svc.spec.engine, "fits": False,
            "model": {"name": svc.model.name, "source": svc.model.source}, "candidates": out}


def _resolve_service(stack: Stack, svc: Service, hw: HardwareSpec, budget: Budget, used_ports: set[int],
                     before: list[ServicePlan] = (),
                     builds: dict[str, int | None] | None = None, calibration=None) -> ServicePlan:
    explicit = svc.spec.engine != "auto"
    candidates = {name: _candidate(name, svc, hw, budget, explicit and name == svc.spec.engine, before, builds)
                  for name in engines.ENGINES}
    candidates = {name: _ruled_out(c, _serve_block(stack, name) or _field_block(svc, name))
                  for name, c in candidates.items()}
    wl = svc.workload
    row = pick_row(hardware_class(hw), wl.concurrent_users, wl.optimize, wl.prompt_tokens / wl.output_tokens)
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
            hint = _try_hint(svc, hw, budget, {chosen.engine: chosen}) if chosen.memory is not None else ""
            raise PlanError(f"{stack.path}: services.{svc.name}: engine {svc.spec.engine} cannot serve "
                            f"{svc.model.name}: {chosen.block}" + (f"\n{hint}" if hint else ""))
        reasons = [f"engine: {svc.spec.engine} is set in the stack file"]
        rejected = {n: "not chosen: the stack pins the engine" + (f" (and: {c.block})" if c.block else "")
                    for n, c in candidates.items() if n != chosen.engine}
    else:
        order = list(row.engines) + [e for e in engines.ENGINES if e not in row.engines]
        viable = [candidates[e] for e in order if not candidates[e].block]
        if not viable:
            raise PlanError(_nothing_fits(stack, svc, hw, candidates, budget))
        chosen = viable[0]
        reasons = [_why(row, chosen, order, candidates, hw, svc)]
        rejected = {n: c.block or _ranked_below(n, chosen.engine, row, svc, hw)
                    for n, c in candidates.items() if n != chosen.engine}
    return _service_plan(stack, svc, hw, chosen, reasons, rejected, used_ports, calibration=calibration)


def _serve_block(stack: Stack, name: str) -> str:
    """Why the serve: block rules this engine out: no API key on a non-loopback bind, or no TLS when asked."""
    engine = engines.get(name)
    if stack.serve.host not in LOOPBACK_HOSTS and engine.api_key is None:
        return (f"has no API key option, and serve.host {stack.serve.host} is not loopback "
                "(keep serve.host 127.0.0.1 and put an authenticating proxy in front)")
    if stack.serve.host not in LOOPBACK_HOSTS and engine.api_key.gaps:
        return (f"its API key leaves {engine.api_key.gaps}, and serve.host {stack.serve.host} is not loopback "
                "(keep serve.host 127.0.0.1 and put an authenticating proxy in front)")
    if stack.serve.tls is not None and engine.tls_flags is None:
        return "cannot serve TLS itself (serve.tls is set; drop it and put a TLS proxy in front)"
    cors = engine.cors_problem(stack.serve.cors_origins)
    if cors:
        return f"{cors} (serve.cors_origins lists {len(stack.serve.cors_origins)})"
    need_key = engine.key_required
    if need_key and not stack.serve.api_key_env:
        return need_key
    return ""


def _field_block(svc: Service, name: str) -> str:
    """Why the service's own fields rule this engine out: a system message or chat template it would drop (validate
    refuses them for a named engine: spec.stack.service_field_problems)."""
    found = service_field_problems(engines.get(name), svc.spec)
    return "" if not found else f"{found[0][1]} (services.{svc.name}.{found[0][0]}: {found[0][2]})"


def _candidate(name: str, svc: Service, hw: HardwareSpec, budget: Budget, explicit: bool,
               before: list[ServicePlan] = (),
               builds: dict[str, int | None] | None = None) -> Candidate:
    engine = engines.get(name)
    block = engine.hardware_block(hw, explicit, svc.spec.engine_version if explicit else None)
    if block:
        return Candidate(name, None, block)
    try:
        w = engine.weights(svc.model)
    except Unsupported as exc:
        return Candidate(name, None, str(exc))
    so = svc.spec.structured_output
    so_block = engine.structured_output(so.backend)[0] if so is not None else None
    if so_block:
        return Candidate(name, None, so_block)
    if svc.spec.engine == "auto":  # overrides are engine flags: an engine that cannot take one cannot serve it so
        from stackgen.engines.flagcheck import override_problem

        for key, value in sorted(svc.spec.overrides.items()):
            why = override_problem(name, None, key, value)
            if why:
                return Candidate(name, None, f"cannot take services.{svc.name}.overrides {key} ({why})")
    # A service that names its engine writes that engine's flags under overrides: the other engines, planned only
    # to say why they were not chosen, are planned without them (two engines may spell a flag alike with other
    # values: vLLM and SGLang --kv-cache-dtype).
    pinned_elsewhere = svc.spec.engine not in ("auto", name)
    pins = NO_PINS if pinned_elsewhere else pins_from_overrides(engine, dict(svc.spec.overrides),
                                                                f"services.{svc.name}.overrides")
    if engine.plans_by_build:  # e.g. llama.cpp's logits rule follows the build the host has
        pins = replace(pins, engine_build=(builds or {}).get(name, engine.default_build))
    model, w, mem, precision = _at_like_precision(name, svc, hw, budget, w, pins)
    bare = replace(NO_PINS, engine_build=pins.engine_build)
    unpinned = engine.plan_memory(model, svc.workload, hw, budget, w, bare) if pins else None
    rope_block = engine.rope_block(mem.rope_scaling) if mem.rope_scaling is not None else None
    if rope_block:
        # a blocked candidate keeps its memory plan (the hint and plan --json read it), not what only a chosen one
        # needs (the weights note, the pins and the unpinned plan)
        return Candidate(name, mem, f"{rope_block} ({mem.context_per_request} tokens per request are past "
                         f"{svc.model.name}'s trained {svc.model.context_length})")
    if not mem.fits:  # its pins stay: the hint's levers are planned with them (_fitting_engine)
        return Candidate(name, mem, (mem.shortfall or f"does not fit in {hw.label()}") + _held_by(before, hw),
                         pins=pins)
    return Candidate(name, mem, "", w.note, pins, unpinned, model if model is not svc.model else None, precision)


def _at_like_precision(name: str, svc: Service, hw: HardwareSpec, budget: Budget, w: Weights, pins: Pins
                       ) -> tuple[ModelFacts, Weights, MemoryPlan, str]:
    """The engine's plan of the service's model, or of a like_precision checkpoint of it that holds more requests at
    full context than the engine's default weights: (model facts, weights, memory plan, the reason; "" for none)."""
    engine = engines.get(name)
    mem = engine.plan_memory(svc.model, svc.workload, hw, budget, w, pins)
    held0 = held = requests_held(name, svc.model, mem, mem.context_per_request) if mem.fits else 0
    best = (svc.model, w, mem, "")
    for q in like_precision(svc.model, w.format) if held < mem.parallel else ():
        m4 = svc.model.with_quant(q)
        try:
            w4 = engine.weights(m4)
        except Unsupported:
            continue
        mem4 = engine.plan_memory(m4, svc.workload, hw, budget, w4, pins)
        held4 = requests_held(name, m4, mem4, mem4.context_per_request) if mem4.fits else 0
        if held4 > held:
            why = (f"no quant named: {engine.display} serves the 4-bit {q} checkpoint {m4.hf_repo_for(q)} "
                   f"({gb(w4.bytes)}), the precision of llama.cpp's default Q4_K_M, as its {w.format} weights "
                   + (f"({gb(w.bytes)}) leave room for {held0} of {mem.parallel} requests at full context"
                      if mem.fits else f"({gb(w.bytes)}) do not fit") + f" (`quant: {w.format}` keeps them)")
            best, held = (m4, w4, mem4, why), held4
    return best


def like_precision(model: ModelFacts, fmt: str) -> list[str]:
    """With no quant named, llama.cpp and Ollama plan a 4-bit GGUF (Q4_K_M, gguf_for's default) while vLLM and SGLang
    plan the 16-bit checkpoint (hf_for's): a 70B on one H100 then looked like llama.cpp's at 4-bit against vLLM's at
    bf16, which cannot load. The catalog's pre-quantized 4-bit checkpoints (hf_variants awq, gptq) a 16-bit plan may
    take instead, so that engines are compared at like precision; _candidate takes one only when it holds more
    requests at full context than the 16-bit weights."""
    from stackgen.models.facts import HF_BYTES_PER_PARAM

    if model.source != "catalog" or model.quant is not None or HF_BYTES_PER_PARAM.get(fmt, 0) < 2:
        return []
    return [q for q in ("awq", "gptq") if q in model.hf_variants]


def _pin_reasons(c: Candidate, threads: int, default_threads: int) -> list[str]:
    """One reason per pinned knob: what the override set, and what stackgen would have chosen if that differs."""
    out = []
    for knob, said in c.pins.said:
        mine = _knob_text(c.memory, knob, threads)
        chose = _knob_text(c.unpinned, knob, default_threads)  # None without an unpinned plan
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
        "cache_ram_mib": f"--cache-ram {m.prompt_cache.limit_bytes // 2**20}",
        "ctx_checkpoints": (f"--ctx-checkpoints {m.prompt_cache.checkpoints}"
                            if m.prompt_cache.checkpoints is not None else None),
    }.get(knob)




def _held_by(before: list[ServicePlan], hw: HardwareSpec) -> str:
    """Why the memory left is less than the machine has: the services planned before this one hold it."""
    if not before:
        return ""
    names = ", ".join(p.name for p in before)
    gpu = sum(p.memory.gpu_bytes for p in before)
    host = sum(p.memory.host_bytes for p in before)
    held = (f"{gb(gpu)} of GPU memory and {gb(host)} of system RAM" if hw.gpus and not hw.is_apple
            else f"{gb(gpu + host)} of {'unified memory' if hw.is_apple else 'system RAM'}")
    return f" (the services planned before it on this machine, {names}, hold {held})"


def _why(row: Row, chosen: Candidate, order: list[str], candidates: dict[str, Candidate], hw: HardwareSpec,
         svc: Service) -> str:
    first = order[0]
    text = row.text(hw, svc.workload.concurrent_users)
    if chosen.engine == first:
        return f"{engines.get(chosen.engine).display}: {text}"
    skipped = [e for e in order[: order.index(chosen.engine)]]
    why_not = "; ".join(f"{engines.get(e).display}: {candidates[e].block}" for e in skipped)
    if engines.get(chosen.engine).partial_offload and _spills(chosen):
        m = chosen.memory
        tail = (f"the model must spill to system RAM: llama.cpp keeps {m.gpu_layers} of {m.total_layers} layers on "
                f"the GPU and runs the other {m.total_layers - m.gpu_layers} on the CPU")
    else:
        tail = f"next in line for this workload ({text})"
    return f"{engines.get(chosen.engine).display}: {tail}. Preferred engines could not serve it ({why_not})"


def _spills(c: Candidate) -> bool:
    return c.memory is not None and c.memory.gpu_layers < c.memory.total_layers and c.memory.gpu_budget_bytes > 0


def _ranked_below(name: str, chosen: str, row: Row, svc: Service, hw: HardwareSpec) -> str:
    """Why an engine that could serve the model lost: built from the workload's users and optimize goal."""
    users, optimize = svc.workload.concurrent_users, svc.workload.optimize
    setup = optimize == "setup"
    picks = "GPU layers" if hw.gpus else "threads"
    if name == "ollama":
        if users > 1:
            why = (f"{users} concurrent users: Ollama's daemon picks {picks} and context itself and serves few "
                   "parallel requests per model; a team API outgrows it"
                   + ("; its easier setup does not outweigh that" if setup else ""))
        elif not setup:
            why = (f"Ollama adds a daemon that picks {picks} and context itself; its strength is setup time, and "
                   f"this workload optimizes {optimize}")
        else:
            why = row.text(hw, users)
    elif name == "llama.cpp":
        if chosen in ("vllm", "sglang"):
            why = (f"{users} concurrent users: llama-server's slots share one batch, but {engines.get(chosen).display}'s "
                   "paged KV cache and scheduler scale further")
        elif chosen == "mlx":
            why = "llama.cpp runs on Metal too, but MLX is the native path through unified memory for a dev loop"
        elif setup:
            why = "llama.cpp needs every flag set by hand; this workload optimizes setup"
        else:
            why = row.text(hw, users)
    elif name == "vllm":
        if setup:
            why = "vLLM is a large Python install with the slowest start-up; this workload optimizes setup"
        elif users == 1:
            why = ("vLLM's scheduler and Python runtime cost single-request latency and start-up time that one user "
                   "does not win back")
        elif chosen == "sglang":
            why = (f"vLLM's prefix caching reuses shared prompts too, but it schedules first-come-first-served; with "
                   f"{users} concurrent users sending prompts {svc.workload.prompt_tokens // svc.workload.output_tokens}"
                   "x longer than the answers, SGLang's cache-aware scheduling keeps more of them in cache")
        else:
            why = row.text(hw, users)
    elif name == "sglang":
        if setup:
            why = "SGLang is a large Python install (CUDA kernels, FlashInfer) that compiles CUDA graphs at start; " \
                  "this workload optimizes setup"
        elif users == 1:
            why = ("SGLang's batching scheduler and Python runtime cost one user start-up time and latency that a "
                   "single stream does not win back")
        else:
            why = (f"SGLang pays off when many users share long prompts (prompt at least 8x the answer); this workload "
                   f"sends {svc.workload.prompt_tokens} prompt tokens for {svc.workload.output_tokens} output tokens")
    else:
        why = "mlx_lm.server is a development server without slots, metrics or API keys"
    return f"ranked below {engines.get(chosen).display} for this workload: {why}"


# Quant ladders, largest first: a smaller quant is one further down the ladder of its own family.
GGUF_LADDER = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
HF_LADDER = ("fp32", "bf16", "fp16", "fp8", "awq")
MLX_LADDER = ("bf16", "fp16", "8bit", "6bit", "4bit", "3bit")


def smaller_quants(fmt: str) -> list[str]:
    """The quants below `fmt` on its ladder, largest first; [] at the bottom (or for an unknown format)."""
    from stackgen.models.facts import GGUF_BPW, HF_BYTES_PER_PARAM, MLX_BYTES_PER_PARAM

    for ladder, bits in ((GGUF_LADDER, GGUF_BPW), (HF_LADDER, HF_BYTES_PER_PARAM), (MLX_LADDER, MLX_BYTES_PER_PARAM)):
        if fmt in bits and (fmt in ladder or fmt in GGUF_BPW):
            return [q for q in ladder if bits[q] < bits[fmt]]
    return []


def _fitting_engine(svc: Service, hw: HardwareSpec, budget: Budget, candidates: dict[str, Candidate], *,
                    model=None, workload=None, quant: str | None = None) -> tuple[str, int, str] | None:
    """(engine, weights bytes, what its plan cuts: _cut) of the first engine the hardware allows that fits with the
    change and can apply the RoPE scaling it needs, else None."""
    for name, c in candidates.items():
        if c.memory is None or c.fixed:
            continue  # the hardware, the model's format or the stack's fields rule the engine out, not its size
        engine = engines.get(name)
        m = model or svc.model
        try:
            w = engine.weights(m)
        except Unsupported:
            continue
        if quant is not None and w.format != quant:
            continue
        # with the service's pinned knobs (an override of --gpu-memory-utilization 0.5 holds for every lever)
        mem = engine.plan_memory(m, workload or svc.workload, hw, budget, w, c.pins)
        # fitting is not enough: an engine that cannot apply the YaRN the plan needs still cannot serve it
        if mem.fits and not (mem.rope_scaling is not None and engine.rope_block(mem.rope_scaling)):
            return name, w.bytes, _cut(mem, workload or svc.workload)
    return None


def _cut(mem: MemoryPlan, wl) -> str:
    """What a lever's plan gives up that the lever does not say: a context cut to fit (`concurrent_users: 2` fitted
    8 users' 32k stack at 2 x 2048 tokens, and the hint did not say so)."""
    if mem.context_per_request < wl.context_tokens and any("context reduced" in lv for lv in mem.levers):
        return f" at {mem.context_per_request} tokens per request, not {wl.context_tokens}"
    return ""


def _try_hint(svc: Service, hw: HardwareSpec, budget: Budget, candidates: dict[str, Candidate]) -> str:
    """What to change, from the facts: each lever is planned, not guessed. The largest quant below the one planned
    (on its own ladder), a shorter context, fewer users; only the levers that make it fit are offered."""
    from stackgen.plan.memory import gb as _gb

    wl = svc.workload
    offers: list[str] = []
    tried: list[str] = []
    quant_fits: list[tuple[int, str, str, int]] = []
    for name, c in candidates.items():
        if c.memory is None or c.fixed:
            continue
        for q in smaller_quants(c.memory.weights_format):
            tried.append(q)
            hit = _fitting_engine(svc, hw, budget, {name: c}, model=svc.model.with_quant(q), quant=q)
            if hit:
                quant_fits.append((hit[1], q, name, c.memory.weights_bytes, hit[2]))
                break
    if quant_fits:
        size, q, name, now, cut = max(quant_fits, key=lambda f: f[0])  # the largest that fits keeps the most quality
        where = f"{engines.get(name).display} fits it{cut}: {_gb(size)} of weights instead of {_gb(now)}"
        if svc.model.source in ("gguf", "hf") and svc.model.path:
            offers.append(f"a {q} file of this model ({where}; `quant:` cannot change a file's own quant)")
        else:
            offers.append(f"`quant: {q}` ({where})")
    ctx, ctx_tried = wl.context_tokens, 0
    while ctx > 2048 and not any("context_tokens" in o for o in offers):
        ctx = max(2048, ctx // 2)
        if wl.prompt_tokens + wl.output_tokens > ctx:
            break
        ctx_tried = ctx
        hit = _fitting_engine(svc, hw, budget, candidates, workload=wl.model_copy(update={"context_tokens": ctx}))
        if hit:
            offers.append(f"`context_tokens: {ctx}` ({engines.get(hit[0]).display} fits it{hit[2]})")
    users = wl.concurrent_users
    while users > 1 and not any("concurrent_users" in o for o in offers):
        users //= 2
        hit = _fitting_engine(svc, hw, budget, candidates, workload=wl.model_copy(update={"concurrent_users": users}))
        if hit:
            offers.append(f"`concurrent_users: {users}` ({engines.get(hit[0]).display} fits it{hit[2]})")
    if offers:
        return "Each of these fits: " + "; ".join(offers) + ". Or a smaller model, or more memory."
    together = _combined_lever(svc, hw, budget, candidates)
    if together:
        return f"No one change fits; together these do: {together}. Or a smaller model, or more memory."
    levers = ([f"a smaller quant (tried {', '.join(dict.fromkeys(tried))})"] if tried else []) + (
        [f"a shorter context (tried down to {ctx_tried} tokens)"] if ctx_tried else []) + (
        ["fewer concurrent users (tried down to 1)"] if wl.concurrent_users > 1 else [])
    if not levers:
        return "Pick a smaller model or a machine with more memory."
    return f"None of these makes it fit: {'; '.join(levers)}. Pick a smaller model or a machine with more memory."


def _halvings(value: int, floor: int) -> list[int]:
    """`value`, then halved down to `floor` (the hint's steps for users and context)."""
    out = [value]
    while out[-1] > floor:
        out.append(max(floor, out[-1] // 2))
    return out


def _combined_lever(svc: Service, hw: HardwareSpec, budget: Budget, candidates: dict[str, Candidate]) -> str:
    """When no lever alone fits (_try_hint), the least the workload must give up with two or three together, each
    planned: the most users first (the workload's reason to exist), then the largest quant (quality), then the
    longest context, on the same steps _try_hint takes (quants on the planned one's ladder, users and context
    halved, a context no shorter than 2048 tokens nor than one request). '' when nothing fits even so."""
    from stackgen.plan.memory import gb as _gb

    wl = svc.workload
    floor = max(2048, wl.prompt_tokens + wl.output_tokens)
    quants: list[tuple[str | None, str, Candidate]] = []  # (quant, engine, candidate); None: as planned
    for name, c in candidates.items():
        if c.memory is None:
            continue
        quants.append((None, name, c))
        quants += [(q, name, c) for q in smaller_quants(c.memory.weights_format)]
    for users in _halvings(wl.concurrent_users, 1):
        # the largest weights first: a quant's plan keeps the most quality (as _try_hint's quant offer)
        for q, name, c in sorted(quants, key=lambda t: t[0] is not None):
            for ctx in _halvings(wl.context_tokens, floor) if wl.context_tokens >= floor else [wl.context_tokens]:
                changes = (q is not None) + (users != wl.concurrent_users) + (ctx != wl.context_tokens)
                if changes < 2:
                    continue
                new_wl = wl.model_copy(update={"concurrent_users": users, "context_tokens": ctx})
                hit = _fitting_engine(svc, hw, budget, {name: c}, workload=new_wl,
                                      model=svc.model.with_quant(q) if q else None, quant=q)
                if not hit:
                    continue
                parts = []
                if q is not None:
                    parts.append(f"a {q} file of this model" if svc.model.source in ("gguf", "hf") and svc.model.path
                                 else f"`quant: {q}`")
                if ctx != wl.context_tokens:
                    parts.append(f"`context_tokens: {ctx}`")
                if users != wl.concurrent_users:
                    parts.append(f"`concurrent_users: {users}`")
                return (", ".join(parts[:-1]) + f" and {parts[-1]} ({engines.get(hit[0]).display} fits it{hit[2]}: "
                        f"{_gb(hit[1])} of weights)")
    return ""


def _nothing_fits(stack: Stack, svc: Service, hw: HardwareSpec, candidates: dict[str, Candidate],
                  budget: Budget) -> str:
    lines = [f"{stack.path}: services.{svc.name}: no engine can serve {svc.model.name} on {hw.label()}:"]
    for name, c in candidates.items():
        lines.append(f"  - {engines.get(name).display}: {c.block}")
    lines.append(_try_hint(svc, hw, budget, candidates))
    return "\n".join(lines)


def _service_plan(stack: Stack, svc: Service, hw: HardwareSpec, chosen: Candidate, reasons: list[str],
                  rejected: dict[str, str], used_ports: set[int], topology: Topology | None = None,
                  calibration=None) -> ServicePlan:
    """`calibration`: the detected host's measured engine point (host.calibration.EnginePoint), for CPU plans."""
    engine = engines.get(chosen.engine)
    mem = chosen.memory
    assert mem is not None
    port = svc.spec.port or _free_port(engine.default_port, used_ports)
    # a multi-node service's roofline is its nodes'; a single-machine one's is _layout_speed's, of the layout it runs
    # (one instance's inputs), set once with_replicas has chosen it: not computed here to be replaced there
    speed, bottleneck = 0.0, ""
    if topology is not None:
        nodes = stack.nodes[: len(topology.nodes)]
        speed, bottleneck = _multinode_speed(svc, mem, nodes, hw, mean_context(mem, svc.workload))
    threads = chosen.pins.threads or hw.cpu.cores
    # llama.cpp's build (Pins.engine_build), or another engine's version on the speed fit's build axis (vLLM's era)
    build = chosen.pins.engine_build if engine.plans_by_build else engine.speed_build(svc.spec.engine_version)
    reasons = list(reasons) + ([f"weights: {chosen.reason}"] if chosen.reason else [])
    reasons += _pin_reasons(chosen, threads, hw.cpu.cores) + [f"memory: {lever}" for lever in mem.levers]
    reasons += _knob_reasons(svc, engine, mem)
    share = decode_share_note(chosen.engine, hw)  # a GPU that public points put below its datasheet bandwidth
    unchecked = vendor_unchecked_note(chosen.engine, hw)  # a GPU vendor the engine's line has no public point on
    reasons += [note for note in (share, unchecked) if note]
    warnings = [chosen.note] if chosen.note else []
    if mem.context_per_request < svc.workload.context_tokens:  # reduced to fit, capped, or pinned by overrides
        pinned = [said for knob, said in chosen.pins.said if knob in ("context_total", "context_per_request", "parallel")]
        why = f" (pinned by overrides: {', '.join(pinned)})" if pinned else ""
        warnings.append(f"the plan serves a shorter context than the workload asked for: {mem.context_per_request} "
                        f"tokens per request{why}, not {svc.workload.context_tokens}; a longer request is refused")
    if stack.serve.api_key_env and engine.api_key is None:
        warnings.append(f"{engine.display} has no API key option: serve.api_key_env is not enforced for this service, "
                        "which is why it stays on loopback")
    old_cc = [cc for cc in hw.nvidia_compute_capabilities if cc < OLD_CUDA_CC]
    if old_cc and engine.speed_backend is None:  # ggml's CUDA kernels (llama.cpp, Ollama)
        warnings.append(OLD_CUDA_WARNING.format(cc=f"{old_cc[0]:.1f}"))  # major.minor, as written
    if svc.spec.engine != "auto" and not hw.gpus and engine.hardware_block(hw, False) is not None:
        warnings.append(f"{engine.display} on a CPU-only machine: a test/development path, not a serving setup")
    sp = ServicePlan(
        name=svc.name, engine=chosen.engine, spec=svc.spec, model=chosen.model or svc.model, workload=svc.workload,
        memory=mem,
        host=stack.serve.host, port=port, threads=threads, predicted_decode_tokens_per_s=speed,
        bottleneck=bottleneck, reasons=tuple(reasons), rejected=rejected, warnings=tuple(warnings),
        api_key_env=stack.serve.api_key_env, cors_origins=stack.serve.cors_origins, gpus=hw.gpus, topology=topology,
        tls=stack.serve.tls,
        # speed (and a single-machine service's roofline and bottleneck): set by _layout_speed once the replica
        # layout is chosen (speed None for a multi-node service)
        calibration=calibration, engine_build=build,
    )
    return _with_command(replace(sp, model_ref=default_model_ref(sp)))


def _knob_reasons(svc: Service, engine, mem: MemoryPlan) -> list[str]:
    """What the seed's remaining knobs do for this service: RoPE scaling past the trained context, structured output."""
    out = []
    r = mem.rope_scaling
    if r is not None:
        how = ("applied by the engine from the model file" if r.in_file and not engine.rope_flag
               else "set on the command line")
        out.append(f"context: {mem.context_per_request} tokens per request is past {svc.model.name}'s trained "
                   f"{svc.model.context_length}: YaRN RoPE scaling, factor {r.factor:g} over {r.original_context} "
                   f"original positions ({r.source}; {how}), KV cache planned at {mem.context_per_request}; static "
                   "YaRN can lower quality on short texts, so it is on only because the workload asks for more")
    if svc.spec.structured_output is not None:
        out.append("structured output: " + engine.structured_output(svc.spec.structured_output.backend)[1])
    return out


def _with_command(sp: ServicePlan) -> ServicePlan:
    engine = engines.get(sp.engine)
    host, port = command_endpoint(sp)  # a fleet's: its first instance's
    cmd = engines.command(engine, sp, binary=sp.spec.binary or engine.binary, model_ref=sp.model_ref, host=host,
                          port=port)
    return replace(sp, command=cmd.argv, env=cmd.env)


# ---------------------------------------------------------------------------------------------- sharing one machine


def _gpu_resident(sp: ServicePlan) -> bool:
    m = sp.memory
    return m.gpu_budget_bytes > 0 and m.gpu_layers >= m.total_layers


def _layers_words(sp: ServicePlan) -> str:
    m = sp.memory
    if m.gpu_budget_bytes <= 0 and not sp.gpus:
        return "on the CPU"
    if m.gpu_layers >= m.total_layers:
        return "every layer on the GPU"
    if m.gpu_layers == 0:
        return f"all {m.total_layers} layers on the CPU"
    return f"{m.gpu_layers} of {m.total_layers} layers on the GPU, {m.total_layers - m.gpu_layers} on the CPU"


def split_threads(plans: list[ServicePlan], cores: int) -> list[int]:
    """CPU threads per service sharing one machine's cores: a service with every layer on the GPU needs one (sampling,
    tokenizer, HTTP); the services that compute layers on the CPU split the rest evenly (earlier ones get the
    remainder). When every service is on the GPU, they split the cores evenly."""
    n = len(plans)
    if n == 1:
        return [max(1, cores)]
    cpu = [i for i, sp in enumerate(plans) if not _gpu_resident(sp)]
    out = [1] * n
    if not cpu:
        cpu = list(range(n))
        left = cores
    else:
        left = cores - (n - len(cpu))
    share, extra = divmod(max(left, len(cpu)), len(cpu))
    for k, i in enumerate(cpu):
        out[i] = max(1, share + (1 if k < extra else 0))
    return out


def _held_gpu(sp: ServicePlan, hw: HardwareSpec) -> int:
    """The GPU memory a service takes from the ones after it, as resolve's budget counts it: all its instances
    (fleet_memory: 2 replicas hold twice one's) and what a utilization share leaves to nobody (unexposed_bytes)."""
    return fleet_memory(sp).gpu_bytes + unexposed_bytes(sp.memory, hw)


def _share_machine(plans: list[ServicePlan], hw: HardwareSpec) -> list[ServicePlan]:
    """Several services on one machine: say who got which memory (they are planned in file order, each getting what
    the ones before it left), and divide the CPU cores among them instead of giving each all of them."""
    if len(plans) < 2:
        return plans
    local = [sp for sp in plans if sp.topology is None]
    budget = initial_budget(hw)
    out = {sp.name: sp for sp in plans}
    if len(local) > 1:
        if hw.gpus:
            pool = "unified memory the GPU may use" if hw.is_apple else "GPU memory"
            shares = "; ".join(f"{sp.name} {gb(_held_gpu(sp, hw))} ({_layers_words(sp)})" for sp in local)
            line = (f"{len(local)} services share the {gb(budget.gpu_bytes)} of {pool}, filled in file order: "
                    f"{shares}")
        else:
            shares = "; ".join(f"{sp.name} {gb(sp.memory.host_bytes)}" for sp in local)
            line = (f"{len(local)} services share the {gb(budget.host_bytes)} of system RAM left to services, "
                    f"in file order: {shares}")
        used = 0
        for sp in local:
            first = sp is local[0]
            mine = (f"{line}; {sp.name} came first" if first else
                    f"{line}; {sp.name} got the {gb(max(0, budget.gpu_bytes - used))} left"
                    if hw.gpus else f"{line}")
            warnings = list(sp.warnings)
            m = sp.memory
            if hw.gpus and not hw.is_apple and m.gpu_layers < m.total_layers and not first:
                before = ", ".join(p.name for p in local[: local.index(sp)])
                warnings.append(f"{sp.name} gets {_layers_words(sp)}: the services planned before it ({before}) hold "
                                f"{gb(used)} of the {gb(budget.gpu_bytes)} GPU memory; list {sp.name} first under "
                                "services: (or shrink the others) to give it the GPU")
            out[sp.name] = replace(sp, reasons=sp.reasons + (f"memory: {mine}",), warnings=tuple(warnings))
            used += _held_gpu(sp, hw)
    sharing = [out[sp.name] for sp in plans]
    threads = split_threads(sharing, hw.cpu.cores)
    said = "; ".join(f"{sp.name} {t} thread{'s' if t != 1 else ''} ({_layers_words(sp)})"
                     for sp, t in zip(sharing, threads))
    oversubscribed = ("; more services than cores: each gets one thread and they contend"
                      if len(sharing) > hw.cpu.cores else "")
    rule = ("services with every layer on the GPU need one thread, the others split the rest"
            if any(not _gpu_resident(sp) for sp in sharing) else "every layer of each is on the GPU: an even split")
    line = f"CPU threads: {len(sharing)} services share {hw.cpu.cores} cores: {said}; {rule}{oversubscribed}"
    result = []
    for sp, t in zip(sharing, threads):
        pinned = pins_from_overrides(engines.get(sp.engine), dict(sp.spec.overrides), sp.name).threads
        if pinned:  # the user's -t / num_thread stands; the split is what stackgen would have given
            mine = f"{line}; {sp.name} keeps its pinned {pinned} threads (overrides)"
            result.append(_with_command(replace(sp, threads=pinned, reasons=sp.reasons + (mine,))))
            continue
        if sp.capacity is not None and sp.capacity.separate:  # separate instances split the service's share
            t = max(1, t // sp.capacity.replicas)
            mine = f"{line}; {sp.name}'s {sp.capacity.replicas} instances {t} each"
            result.append(_with_command(replace(sp, threads=t, reasons=sp.reasons + (mine,))))
            continue
        result.append(_with_command(replace(sp, threads=t, reasons=sp.reasons + (line,))))
    return result


# ---------------------------------------------------------------------------------------------- multi-node


@dataclass(frozen=True)
class MultinodeRow:
    """The multi-node decision (docs/multinode.md), a second decision table: which engines split one model over
    machines, in order of preference, and what every node must be for each."""

    engine: str
    hardware: str | None = None  # the hardware class every node must be (None: any)
    hardware_why: str = ""  # the refusal when a node is not of that class
    identical_nodes: bool = False  # every node must carry the same GPUs
    identical_why: str = ""
    below_first: str = ""  # why it ranks below the first row's engine when both could split the model


MULTINODE_TABLE = (
    MultinodeRow("vllm", HW_CUDA, "needs CUDA/ROCm datacenter GPUs on every node", True,
                 "pipeline parallel with TP = GPUs per node needs identical GPUs on every node"),
    MultinodeRow("llama.cpp", below_first="llama.cpp RPC could split it too, but vLLM batches concurrent users and "
                 "keeps tensor parallel on NVLink inside each node"),
)
MULTINODE_ENGINES = tuple(r.engine for r in MULTINODE_TABLE)


def _multinode(stack: Stack, svc: Service, head: HardwareSpec, single: dict[str, Candidate],
               used_ports: set[int]) -> ServicePlan:
    """The model does not fit one node: the first engine of MULTINODE_TABLE whose every node qualifies and whose
    split fits (vLLM TP-in-node x PP-across-nodes with Ray on identical CUDA nodes, else llama.cpp with
    ggml-rpc-server workers, layers in proportion to memory). docs/multinode.md."""
    nodes = stack.nodes
    pinned = svc.spec.engine if svc.spec.engine != "auto" else None
    one = f"one node ({head.label()})"
    why_not_one = "; ".join(f"{engines.get(e).display}: {c.block or 'only by spilling layers to system RAM'}"
                            for e, c in single.items() if e in MULTINODE_ENGINES)
    tried: dict[str, str] = {}
    if pinned and pinned not in MULTINODE_ENGINES:  # the refusal below must say why, not list nothing
        block = single[pinned].block
        tried[pinned] = (f"cannot split one model over several machines (only {_only()} can)"
                         + (f"; on one node: {block}" if block else ""))
    for row in MULTINODE_TABLE:
        name = row.engine
        if pinned and name != pinned:
            continue
        block = _multinode_block(row, nodes)
        engine = engines.get(name)
        if not block:
            try:
                w = engine.weights(svc.model)
            except Unsupported as exc:
                block = str(exc)
        if block:
            tried[name] = block
            continue
        mem = engine.plan_multinode(svc.model, svc.workload, head, tuple(n.hardware for n in nodes), w)
        mem = with_rope(mem, svc.model)
        rope_block = engine.rope_block(mem.rope_scaling) if mem.rope_scaling is not None else None
        if rope_block or not mem.fits:
            tried[name] = rope_block or mem.shortfall
            continue
        used = nodes[: mem.nodes]
        topo = _topology(engine, svc, used, mem)
        before = "".join(f" ({engines.get(n).display} across nodes: {b})" for n, b in tried.items())
        why = (f"multi-node: {svc.model.name} does not fit {one} ({why_not_one}); "
               + engine.multinode_reason(mem, len(used)) + before)
        reasons = [why] + [f"network: {n}" for n in topo.network]
        rejected = {n: tried.get(n) or _multinode_rejected(n, pinned) for n in engines.ENGINES if n != name}
        cand = Candidate(name, mem, "", w.note)
        sp = _service_plan(stack, svc, head, cand, reasons, rejected, used_ports, topo)
        return sp
    lines = [f"{stack.path}: services.{svc.name}: {svc.model.name} does not fit {one}, nor split over the "
             f"{len(nodes)} nodes:"] + [f"  - {engines.get(n).display}: {b}" for n, b in tried.items()]
    raise PlanError("\n".join(lines))


def _multinode_rejected(name: str, pinned: str | None) -> str:
    if pinned:
        return "not chosen: the stack pins the engine"
    row = next((r for r in MULTINODE_TABLE if r.engine == name), None)
    if row is not None and row.below_first:
        return row.below_first
    return f"cannot split one model over several machines (only {_only()} can)"


def _only() -> str:
    names = [engines.get(r.engine).multinode_name for r in MULTINODE_TABLE]
    return " and ".join(names)


def _multinode_block(row: MultinodeRow, nodes: tuple[Node, ...]) -> str:
    first = nodes[0].hardware
    if row.hardware is not None and (hardware_class(first) != row.hardware or not first.gpus):
        return row.hardware_why
    shape = lambda h: tuple((g.vendor, g.name, g.memory_gib, g.count) for g in h.gpus)  # noqa: E731
    if row.identical_nodes and any(shape(n.hardware) != shape(first) for n in nodes):
        return row.identical_why
    if row.hardware is None:
        return ""
    return engines.get(row.engine).hardware_block(first, False) or ""


def _topology(engine, svc: Service, nodes: tuple[Node, ...], mem: MemoryPlan) -> Topology:
    roles = tuple(NodeRole(n.index, n.address, "head" if i == 0 else "worker", mem.node_layers[i], n.label,
                           n.hardware.gpu_count, tuple(sorted({g.vendor for g in n.hardware.gpus if not g.unified})))
                  for i, n in enumerate(nodes))
    return Topology(engine.multinode, roles, engine.multinode_network(svc.model, svc.workload, roles, mem))


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
    if sp.model.path:
        return sp.model.path
    return engines.get(sp.engine).model_ref(sp)


def _free_port(start: int, used: set[int]) -> int:
    port = start
    while port in used:
        port += 1
    return port


__all__ = ["DECISION_TABLE", "Row", "resolve", "pick_row", "hardware_class", "gb"]
