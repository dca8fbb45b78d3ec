"""Capacity: how many engine instances (replicas) a service needs for its users, and in which layout.

Inputs are the service's plan (engine, memory plan, workload with its targets) and the hardware. Every layout
`instances x GPUs per instance` the machine allows is planned (memory per instance by the engine's own planner) and
predicted (stackgen.plan.simulate: one instance with its share of the users, routed by least connections); the
smallest fleet that meets the workload's targets (p95 time to first token, decode tokens/s per user) wins, and
every other layout gets its reason. When nothing meets the targets, the plan says by how much and what would.

The per-instance speed is one function, `service_curve(sp, hw, ...)`, from the inputs `plan`'s forecast takes
(speed.step_inputs: the backend, bytes, GPU share, bandwidths and peaks, the slowest GPU's on a machine of mixed
GPUs): on a GPU or Apple silicon, the step of stackgen.plan.speed's per-backend model the forecast is built from
(speed.step_parts: fitted bandwidth shares per weight kind, a per-step overhead, the prefill and batched-decode MFUs,
an MoE step's union of experts), so one instance's curve and the forecast agree at the same stream count; on a CPU,
a roofline with constants calibrated on a measurement (benchmarks/results/scale.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from stackgen import engines
from stackgen.engines.base import Unsupported, pins_from_overrides
from stackgen.errors import PlanError
from stackgen.models.facts import GIB
from stackgen.plan.memory import (DEFAULT_BATCH, Budget, MemoryPlan, Pins, gb, gpu_runtime_bytes, unexposed_bytes,
                                  vllm_kv_bytes_per_request)
from stackgen.plan.simulate import NONE, LoadResult, Variability, simulate
from stackgen.plan.speed import StepParts, mean_context, step_inputs
from stackgen.spec.stack import HardwareSpec, WorkloadSpec

GPU_FLOP_PER_BYTE = 150.0  # peak FLOP/s per byte/s of bandwidth for GPUs not in the table below (A100: 156)
# Dense BF16 tensor peak, TFLOP/s, from the vendors' datasheets (no sparsity).
GPU_TFLOPS = {"h200": 989.0, "h100": 989.0, "a100": 312.0, "l40s": 362.0, "l40": 181.0, "l4": 121.0, "a10": 125.0,
              "rtx 4090": 165.0, "rtx 3090": 71.0,
              # GeForce at 512 FP16-tensor FLOP/clk per SM with FP32 accumulate (the 3090's 71 = 82 SMs x 512 x 1.695
              # GHz): the RTX 3080 59.5 (GA102 whitepaper; prefill_speed.yaml's 3080 points), the 3080 Ti 80 SMs x
              # 512 x 1.665 GHz = 68.2 (nvidia.com specs: 10240 CUDA cores, 1.665 GHz boost), the RTX 4080 97.5 (Ada
              # whitepaper, dense). Without them these GPUs fell back to 150 FLOP/B x bandwidth (3080: 114, 4080:
              # 108), which speed.py's codebook i-quant floor (Backend.codebook_flop_per_weight) scales by.
              "rtx 3080": 59.5, "rtx 3080 ti": 68.2, "rtx 4080": 97.5, "mi300x": 1307.0,
              "mi250": 181.0,  # amd.com MI250: 362.1 FP16 TFLOPs per module of two GCDs; rocm-smi lists each GCD as a GPU
              # The GPUs of profiles/hardware.yaml the table lacked (issue 13's prefill check,
              # tests/fixtures/public-logs/prefill_speed.yaml). GeForce: FP16 tensor with FP32 accumulate, dense, as
              # the 4090/3090 entries above (the Ada whitepaper's 4090 figure is 512 FLOP/clk per SM x boost clock).
              "rtx 4060 ti": 44.1,  # 34 SMs x 512 x 2.535 GHz boost (nvidia.com 4060 Ti specs: 34 SMs, 2.54 GHz)
              "rtx 4060": 30.2,  # 24 SMs x 512 x 2.46 GHz boost (nvidia.com 4060 specs)
              "rtx 5090": 209.5,  # RTX Blackwell whitepaper: 209.5 FP16 tensor TFLOPS, FP32 accumulate (419 sparse)
              "7900 xtx": 122.8,  # amd.com RX 7900 XTX specs: Peak Half Precision (FP16) 122.8 TFLOPs (WMMA)
              "arc a770": 137.6,  # Xe-HPG: 32 Xe-cores x 2048 FP16 XMX FLOP/clk x 2.1 GHz (Intel: 275 INT8 TOPS)
              # Apple GPUs run FP16 at the FP32 rate: GPU cores x 128 ALUs x 2 FLOP x clock; Apple publishes no
              # figure for these chips; clocks from hmc-tech.com's spec pages (M4 1470 MHz, M3 Max 1398 MHz, M4 Max
              # 1678 MHz; M2 Ultra 1398 MHz). The M4 Pro (20-core) is assumed at the M4 Max clock so that it does not
              # fall back to the plain M4's figure by substring.
              "apple m4": 3.76, "apple m4 pro": 8.59, "apple m4 max": 17.18, "apple m3 max": 14.32,
              "apple m2 ultra": 27.2}
# CPU: calibrated on this project's CI machine (AMD EPYC, llama-server, Gemma 3 270M Q4_K_M, 1 thread per instance;
# benchmarks/bench_scale.py): FLOP/s one thread reaches in prompt processing.
CPU_FLOPS_PER_THREAD = 60e9
REQUEST_OVERHEAD_S = 0.01  # HTTP, tokenizer and the balancer hop per request
VLLM_STEP_TOKENS = 8192  # --max-num-batched-tokens default for online serving
MAX_LAYOUTS_INSTANCES = 64
SIM_ROUNDS = 3


@dataclass(frozen=True)
class ServiceCurve:
    """What one engine instance does per batching step. `step_s(decoding, prompt_tokens)`: one step that decodes one
    token for each of `decoding` requests and processes `prompt_tokens` prompt tokens.

    Two forms. With `step` set (every planned instance, service_curve): speed.py's step (speed.StepParts, built by
    speed.step_parts, which the plan's forecast is built from too), held whole in `step` (its parts read through the
    curve: `curve.t0_s`, `curve.comm_s`, ...), and `step_s` is its step (StepParts.step: additive on GPUs and Apple
    silicon, ggml's tiles of streams on a CPU). Without (curves built by hand, the simulator's own tests): the
    roofline max(weights + each request's KV read, the step's tokens' compute)."""

    weights_read_s: float  # stream one token's active weights once (the floor of every step)
    kv_read_s_per_seq: float  # KV cache read per decoding request per step, at the workload's average context
    flop_s_per_token: float  # compute per prompt token in a step (CPU roofline: per token)
    max_batch: int  # requests an instance serves at once (llama.cpp -np; vLLM --max-num-seqs within its KV room)
    step_tokens: int  # tokens one step may carry (llama.cpp -b, vLLM --max-num-batched-tokens)
    overhead_s: float = REQUEST_OVERHEAD_S
    # speed.py's model: the backend it runs as ("": a hand-built roofline) and its step (speed.StepParts, the one the
    # plan's forecast is built from); None for a hand-built roofline.
    backend: str = ""
    step: StepParts | None = None

    def __getattr__(self, name: str) -> Any:
        """A part of speed.py's step read through the curve (t0_s, batch_token_s, comm_s, codebook_s, ...): the
        step's own field, so a new part of StepParts needs nothing here; a CPU roofline's is StepParts' default."""
        fields = StepParts.__dataclass_fields__
        if name.startswith("__") or name not in fields:
            raise AttributeError(name)
        step = self.__dict__.get("step")
        return getattr(step, name) if step is not None else fields[name].default

    def step_s(self, decoding: int, prompt_tokens: int) -> float:
        if self.step is not None:
            return self.step.step_s(decoding, prompt_tokens)
        memory = self.weights_read_s + decoding * self.kv_read_s_per_seq
        return max(memory, (decoding + prompt_tokens) * self.flop_s_per_token)

    def to_json(self) -> dict[str, Any]:
        return {"single_stream_tokens_per_s": round(1 / self.step_s(1, 0), 1),
                "prefill_tokens_per_s": round(1 / self.flop_s_per_token, 1), "max_batch": self.max_batch}


def gpu_peak_flops(name: str, bandwidth_gbs: float) -> float:
    low = name.lower()
    for key, tflops in sorted(GPU_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key in low:
            return tflops * 1e12
    return bandwidth_gbs * 1e9 * GPU_FLOP_PER_BYTE


def service_curve(sp, hw: HardwareSpec, *, memory: MemoryPlan | None = None, threads: int | None = None,
                  instances: int = 1) -> ServiceCurve:
    """One instance of the service `sp` (a ServicePlan) on `hw`. `memory`: that instance's memory plan (default
    sp.memory); `threads`: its CPU threads (default sp.threads); `instances`: how many share the machine's RAM
    bandwidth. The step's inputs are speed.step_inputs' (the ones the plan's forecast takes: backend, bytes, GPU
    share, bandwidths, peaks, a partial offload's host link, the llama.cpp build's era, tensor parallel's
    link for its all-reduces). On a GPU or Apple silicon
    the curve is their speed.StepParts (ServiceCurve), on a CPU too (below)."""
    m = engine_core(memory or sp.memory)  # a data-parallel plan: one engine core's share (one copy of the weights)
    model, wl = sp.model, sp.workload
    avg_ctx = mean_context(m, wl)
    n_threads = max(1, threads or sp.threads or hw.cpu.cores)
    si = step_inputs(sp.engine, model, m, hw, avg_context=avg_ctx, threads=n_threads,
                     calibration=getattr(sp, "calibration", None), build=getattr(sp, "engine_build", None),
                     instances=instances)
    if not si.active_params:
        # A model of unknown parameter count: the forecast states no prefill rate; the simulator needs a prompt's
        # cost, and takes a 1B-parameter model's.
        si = replace(si, active_params=1e9)
    # One step model for the forecast and the simulator (speed.StepParts), on a CPU too: the CPU line's fitted share
    # of the RAM bandwidth (or this host's `stackgen calibrate` point) and ggml's tiles of 4 streams, which
    # benchmarks/results/cpu_aggregate.md measured at 1-4 streams (59 / 69 / 61 / 100 tokens/s aggregate against
    # 62 / 62 / 62 / 105). Before, the simulator's CPU curve read the weights at the whole RAM bandwidth and charged
    # each stream its threads' dot products (6.5 GB/s a thread): one user of an 8B Q4_K_M on cpu-server-64gb decoded
    # at 16.4 tokens/s where the forecast said 9.9, and 2 streams at nearly the speed of one each where the tiles
    # (and the measurement) give about half.
    parts = si.parts()
    return ServiceCurve(parts.weights_s, parts.kv_s, parts.prompt_token_s, max_batch=_max_batch(sp, m, avg_ctx),
                        step_tokens=_step_tokens(sp), backend=si.backend, step=parts)


def engine_core(m: MemoryPlan) -> MemoryPlan:
    """One engine core's share of a data-parallel memory plan (vLLM --data-parallel-size D, SGLang --dp-size D): each
    core holds a full copy of the weights and its own KV cache on its own tensor-parallel GPUs, so the plan's bytes
    (D copies) divided by D, and data_parallel 1. One decode step of a core reads one copy at its T GPUs' bandwidth
    (vLLM docs, Data Parallel Deployment, https://docs.vllm.ai/en/latest/serving/data_parallel_deployment/: "each
    DP rank is deployed as a separate 'core engine' process", which "owns a number of per-GPU worker processes equal
    to the configured TP size"; the weights are "replicated across separate instances/GPUs to process independent
    batches of requests"). A plan without data parallel is its own core."""
    dp = max(1, m.data_parallel)
    if dp == 1:
        return m
    return replace(m, weights_bytes=m.weights_bytes // dp, kv_cache_bytes=m.kv_cache_bytes // dp,
                   compute_bytes=m.compute_bytes // dp, overhead_bytes=m.overhead_bytes // dp,
                   gpu_bytes=m.gpu_bytes // dp, host_bytes=m.host_bytes // dp,
                   gpu_budget_bytes=m.gpu_budget_bytes // dp, host_budget_bytes=m.host_budget_bytes // dp,
                   data_parallel=1)


@dataclass(frozen=True)
class Instance:
    """What one engine instance of a planned service runs with, and how many run: the per-instance inputs that the
    plan's forecast (speed.fleet_forecast: sp.speed, forecast_at) and the fleet simulator's curves (fleet_curves,
    service_curve) both take, so that they cannot disagree on what one instance is.

    `memory`: one instance's memory plan (separate llama.cpp instances behind HAProxy: the plan's own, which
    with_replicas made per instance; vLLM data parallel: one engine core's share, engine_core); `hardware`: the
    machine as one instance sees it (its own GPUs; CPU instances split the RAM bandwidth, as service_curve's
    `instances`); `threads`: its CPU threads; `count`: how many instances (or engine cores) share the users."""

    memory: MemoryPlan
    hardware: HardwareSpec
    threads: int
    count: int


def instance_of(sp, hw: HardwareSpec) -> Instance:
    """The per-instance inputs of service `sp` (a resolved ServicePlan) on `hw` (Instance)."""
    cap = sp.capacity
    mem = engine_core(sp.memory)
    count = max(1, sp.memory.data_parallel)
    sub = hw
    if cap is not None and cap.separate:
        count *= cap.replicas
        if cap.layout.gpus_per_instance:
            sub = hw.model_copy(update={"gpus": sp.gpus})
        else:  # CPU instances on one host share its RAM bandwidth (service_curve's `instances`)
            sub = hw.model_copy(update={"memory_bandwidth_gbs": hw.memory_bandwidth_gbs / cap.replicas})
    return Instance(mem, sub, sp.threads, count)


def kv_pool_bytes(engine: str, m: MemoryPlan) -> int | None:
    """The KV pool an engine that pages its KV cache (vLLM) allocates at start -- its GPU reserve less weights and
    runtime overhead, over all its ranks -- or None for the others (their KV cache is what every slot holds:
    MemoryPlan.kv_cache_bytes, which for vLLM is what every user at full context would need)."""
    if not engines.get(engine).paged_batching or m.gpu_bytes <= 0:
        return None
    return max(0, m.gpu_bytes - m.weights_bytes - m.overhead_bytes - m.compute_bytes)


def planned_total_bytes(engine: str, m: MemoryPlan) -> int:
    """The memory a plan's table totals: a paged engine's reserve (weights + its KV pool + overhead: what it holds on
    the GPU), else MemoryPlan.total_bytes."""
    pool = kv_pool_bytes(engine, m)
    if pool is None:
        return m.total_bytes
    return m.weights_bytes + pool + m.compute_bytes + m.overhead_bytes + m.prompt_cache_bytes


def requests_held(engine: str, model, m: MemoryPlan, ctx: int) -> int:
    """Requests of `ctx` tokens one instance holds at once: its slots (llama.cpp -np), or for an engine that pages its
    KV cache (vLLM) the slots its KV pool (kv_pool_bytes), per rank, has room for."""
    pool = kv_pool_bytes(engine, m)
    if pool is None:
        return max(1, m.parallel)
    ranks = max(1, m.tensor_parallel * m.pipeline_parallel * m.data_parallel)
    per_req = vllm_kv_bytes_per_request(model, ctx, m.kv_cache_type, m.tensor_parallel)
    return max(1, min(m.parallel, int(pool / ranks // max(1, per_req))))


def _max_batch(sp, m: MemoryPlan, avg_ctx: int) -> int:
    return requests_held(sp.engine, sp.model, m, avg_ctx)


def _step_tokens(sp) -> int:
    return VLLM_STEP_TOKENS if engines.get(sp.engine).paged_batching else DEFAULT_BATCH


# ---------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    instances: int
    gpus_per_instance: int  # tensor parallel for vLLM; llama.cpp splits layers over them
    threads: int  # CPU threads per instance

    def label(self) -> str:
        if self.gpus_per_instance:
            return f"{self.instances} x TP{self.gpus_per_instance}"
        return f"{self.instances} x {self.threads} thread{'s' if self.threads != 1 else ''}"

    @property
    def gpus(self) -> int:
        return self.instances * self.gpus_per_instance


@dataclass(frozen=True)
class Capacity:
    """The replica layout of one service and what it predicts at the workload's concurrency."""

    layout: Layout
    memory: MemoryPlan  # one instance's memory plan
    prediction: LoadResult
    meets: bool
    pinned: bool  # services.<name>.replicas set it
    rejected: dict[str, str]
    advice: tuple[str, ...]
    curve: ServiceCurve
    ports: tuple[int, ...] = ()  # one per instance when separate instances sit behind a balancer
    recommended: str = ""  # a separate-instance layout that would meet the targets (not applied unless pinned)

    @property
    def separate(self) -> bool:
        """Separate engine processes behind a load balancer (llama.cpp; vLLM runs data parallel in one server)."""
        return self.replicas > 1 and bool(self.ports)

    @property
    def replicas(self) -> int:
        return self.layout.instances

    def to_json(self) -> dict[str, Any]:
        p = self.prediction
        return {"layout": self.layout.label(), "replicas": self.replicas, "meets_targets": self.meets,
                "pinned": self.pinned, "users_per_replica": math.ceil(p.users / self.replicas),
                "ports": list(self.ports),
                "predicted": {"ttft_p50_s": round(p.ttft_p50_s, 3), "ttft_p95_s": round(p.ttft_p95_s, 3),
                              "tokens_per_s_per_user": round(p.tokens_per_s_per_user, 1),
                              "throughput_tokens_per_s": round(p.throughput_tokens_per_s * self.replicas, 1),
                              "utilization": round(p.utilization, 2)},
                "service_curve": self.curve.to_json(),
                "rejected_layouts": dict(sorted(self.rejected.items())), "advice": list(self.advice),
                "recommended": self.recommended}


@dataclass(frozen=True)
class _Option:
    layout: Layout
    memory: MemoryPlan | None
    block: str
    prediction: LoadResult | None = None
    curve: ServiceCurve | None = None


def layouts(sp, hw: HardwareSpec, pinned: int | None = None) -> list[Layout]:
    """Every instances x GPUs-per-instance split the machine allows for this engine (pinned: that many instances)."""
    gpus = sum(g.count for g in hw.gpus if not g.unified)
    engine = engines.get(sp.engine)
    if not engine.multi_instance or hw.is_apple or sp.topology is not None:
        return [Layout(1, max(1, sp.memory.tensor_parallel) if gpus else 0, sp.threads)]
    if not gpus or sp.memory.gpu_layers == 0:
        counts = [pinned] if pinned else [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= max(1, hw.cpu.cores)]
        return [Layout(n, 0, max(1, sp.threads // n)) for n in counts]
    out = []
    for per in (1, 2, 4, 8, 16, 32, 64):
        if per > gpus or (engine.tensor_parallel and sp.model.heads % per):
            continue
        for n in range(1, min(gpus // per, MAX_LAYOUTS_INSTANCES) + 1):
            if pinned is None or n == pinned:
                out.append(Layout(n, per, max(1, sp.threads // n)))
    return out


def plan_capacity(sp, hw: HardwareSpec, budget: Budget, pinned: int | None = None) -> Capacity:
    """The replica layout for service `sp` (a ServicePlan as resolve made it, one instance) on `hw` with `budget`."""
    wl: WorkloadSpec = sp.workload
    if pinned is not None and pinned > 1:
        _check_pinned_runs(sp, hw, pinned)
    base_layout = Layout(1, max(1, sp.memory.tensor_parallel) if _uses_gpus(sp, hw) else 0, sp.threads)
    base = _predict(sp, hw, _Option(base_layout, sp.memory, ""))
    options = [base] if pinned in (None, 1) else []
    for lay in layouts(sp, hw, pinned):
        if lay == base_layout and options:
            continue
        options.append(_predict(sp, hw, _plan_instance(sp, hw, budget, lay)))
    if pinned is not None and pinned > 1 and not any(not o.block for o in options):
        gpus = sum(g.count for g in hw.gpus if not g.unified)
        if not options and gpus and _uses_gpus(sp, hw) and engines.get(sp.engine).multi_instance:
            why = (f"each instance takes a GPU of its own and {hw.label()} has {gpus} (set replicas: {gpus} or "
                   "fewer, or add GPUs; concurrent users share one instance's slots)")
            pinned_opts = [_Option(Layout(pinned, 1, 1), None, why)]
        else:
            pinned_opts = options or [_Option(Layout(pinned, 0, 1), None, "no layout of the engine allows it")]
        raise_for = "; ".join(f"{o.layout.label()}: {o.block}" for o in pinned_opts)
        raise PlanError(f"services.{sp.name}.replicas: {pinned} instances of {sp.engine} do not fit {hw.label()} "
                        f"({raise_for})")
    viable = [o for o in options if not o.block]
    meeting = [o for o in viable if _meets(o.prediction, wl)]
    if pinned is not None:
        chosen = min(viable, key=lambda o: (not _meets(o.prediction, wl), o.layout.gpus, o.prediction.ttft_p95_s))
    elif base in meeting or not viable:
        chosen = base
    elif meeting:
        chosen = min(meeting, key=lambda o: (o.layout.gpus, o.prediction.ttft_p95_s, -o.layout.instances))
    else:
        chosen = min(viable, key=lambda o: (o.prediction.ttft_p95_s, -o.prediction.tokens_per_s_per_user))
    recommended = ""
    if pinned is None and chosen is not base and not _data_parallel(sp, chosen.layout):
        # Separate servers behind a balancer change what the targets render: only when the stack asks for them.
        recommended = (f"{chosen.layout.label()} would meet the targets ({_said(chosen.prediction)}) where one "
                       f"instance does not ({_shortfall(base.prediction, wl)}): set services.{sp.name}.replicas: "
                       f"{chosen.layout.instances} to run separate instances behind a least-connections balancer")
        chosen = base
    rejected = {o.layout.label(): _why_not(o, chosen, wl, pinned) for o in options if o is not chosen}
    meets = _meets(chosen.prediction, wl)
    advice = () if meets else _advice(sp, hw, chosen, wl)
    return Capacity(chosen.layout, chosen.memory, chosen.prediction, meets, pinned is not None, rejected, advice,
                    chosen.curve, recommended=recommended)


def _check_pinned_runs(sp, hw: HardwareSpec, pinned: int) -> None:
    """A pinned replica count the engine or machine cannot run is refused: layouts() offers such an engine one
    instance only, and the plan used to take it with the text "pinned by services.replicas" (Ollama with replicas: 2
    on 2 RTX 4090s: one server, 22 of 32 layers on the GPUs, one GPU idle, and no balancer)."""
    why = pinned_runs_refusal(sp.engine, hw, pinned, sp.workload.concurrent_users)
    if why:
        raise PlanError(f"services.{sp.name}.replicas: {why}")


def pinned_runs_refusal(engine_name: str, hw: HardwareSpec | None, pinned: int, users: int) -> str | None:
    """Why `pinned` (> 1) separate instances of the engine cannot run on `hw`, or None; `hw` None (a stack that
    detects its hardware, checked by validate): the engine's half only. Both plan and validate say it."""
    engine = engines.get(engine_name)
    if engine.multi_instance and (hw is None or not hw.is_apple):
        return None
    can = ", ".join(e.display for e in engines.ENGINES.values() if e.multi_instance)
    why = (f"{engine.display} runs one server per service" if not engine.multi_instance else
           f"separate instances are planned on discrete GPUs or a CPU, and {hw.label()} shares one unified memory")
    return (f"{pinned} instances are pinned and {why} (remove `replicas:` to run one instance for "
            + ("its one user" if users == 1 else f"all {users} users")
            + (f", or pick an engine that runs separate instances behind a balancer: {can})"
               if not engine.multi_instance else ")"))


def _data_parallel(sp, lay: Layout) -> bool:
    """vLLM on GPUs runs several instances as one server (--data-parallel-size); others run separate servers."""
    return engines.get(sp.engine).tensor_parallel and lay.gpus_per_instance > 0


def _said(p: LoadResult) -> str:
    return f"p95 TTFT {p.ttft_p95_s:.2f} s, {p.tokens_per_s_per_user:.1f} tokens/s per user"


def _uses_gpus(sp, hw: HardwareSpec) -> bool:
    return bool([g for g in hw.gpus if not g.unified]) and sp.memory.gpu_layers > 0 and not hw.is_apple


def instance_gpu(hw: HardwareSpec):
    """The GPU an instance is planned on: the smallest of the machine's (its size and bandwidth bound a vLLM rank or
    a replica pinned to it; on one kind of GPU, that kind)."""
    return min((g for g in hw.gpus if not g.unified), key=lambda g: (g.memory_gib, g.bandwidth_gbs))


def _plan_instance(sp, hw: HardwareSpec, budget: Budget, lay: Layout) -> _Option:
    """One instance's memory plan for this layout: its share of the users on its share of the machine."""
    engine = engines.get(sp.engine)
    users = math.ceil(sp.workload.concurrent_users / lay.instances)
    wl = sp.workload.model_copy(update={"concurrent_users": users})
    if lay.gpus_per_instance:
        # GPUs of mixed sizes (an RTX 4090 beside an RTX 3060): every instance is planned as on the smallest, the
        # one that bounds it (a vLLM rank, a llama.cpp replica pinned to it); the first listed sized them all and the
        # average budget of the two was given to each, which the 3060's instance could not hold
        g = instance_gpu(hw)
        sub = hw.model_copy(update={"gpus": (g.model_copy(update={"count": lay.gpus_per_instance}),)})
        share = Budget(int(min(budget.gpu_bytes / max(1, hw.gpu_count) * lay.gpus_per_instance,
                               g.memory_gib * 2**30 * lay.gpus_per_instance)),
                       budget.host_bytes // lay.instances)
        if lay.gpus > hw.gpu_count:
            return _Option(lay, None, f"needs {lay.gpus} GPUs and {hw.label()} has {hw.gpu_count}")
    else:
        sub, share = hw, Budget(0, budget.host_bytes // lay.instances)
    pins = Pins(tensor_parallel=lay.gpus_per_instance, said=_layout_said(lay), source=LAYOUT_SOURCE) \
        if engine.tensor_parallel and lay.gpus_per_instance else Pins()
    try:
        w = engine.weights(sp.model)
    except Unsupported as exc:
        return _Option(lay, None, str(exc))
    mem = engine.plan_memory(sp.model, wl, sub, share, w, pins)
    if not mem.fits:
        return _Option(lay, mem, f"one instance does not fit its share ({mem.shortfall or 'out of memory'})")
    if engine.partial_offload and mem.gpu_layers < mem.total_layers and lay.gpus_per_instance:
        return _Option(lay, mem, f"each instance would keep only {mem.gpu_layers} of {mem.total_layers} layers on "
                                 f"its {lay.gpus_per_instance} GPU(s)")
    return _Option(lay, mem, "")


LAYOUT_SOURCE = "the replica layout"  # who pins a layout's tensor parallel, as refusals say it (Pins.source)


def _layout_said(lay: Layout) -> tuple[tuple[str, str], ...]:
    return (("tensor_parallel", f"{lay.label()}, tensor parallel {lay.gpus_per_instance} per instance"),)


def _predict(sp, hw: HardwareSpec, o: _Option) -> _Option:
    if o.block or o.memory is None:
        return o
    curve = service_curve(sp, hw, memory=o.memory, threads=o.layout.threads, instances=o.layout.instances
                          if not o.layout.gpus_per_instance else 1)
    wl = sp.workload
    r = _simulate_instance(curve, o.memory, math.ceil(wl.concurrent_users / o.layout.instances), wl, SIM_ROUNDS)
    return replace(o, prediction=replace(r, users=wl.concurrent_users, instances=o.layout.instances), curve=curve)


def _simulate_instance(curve: ServiceCurve, m: MemoryPlan, users: int, wl: WorkloadSpec, rounds: int) -> LoadResult:
    """One instance of a layout with `users` users: its engine cores, each on `curve` (one core's, service_curve),
    the users balanced over them by least connections. A memory plan with data parallel D (a vLLM
    --data-parallel-size pinned in overrides, not a capacity layout) is one server of D cores, as the forecast
    (speed.fleet_forecast over instance_of's count) and `stackgen simulate` (fleet_curves) take it; one core
    stepping every user (as before) made its base prediction a D-times-loaded core's (4 x H100, TP 2, DP 2, 64
    users: 110 tokens/s per user against the simulator's 170)."""
    return simulate([curve] * max(1, m.data_parallel), users=users, prompt_tokens=wl.prompt_tokens,
                    output_tokens=wl.output_tokens, think_time_s=wl.think_time_s, rounds=rounds)


def _meets(p: LoadResult | None, wl: WorkloadSpec) -> bool:
    return p is not None and p.ttft_p95_s * 1000 <= wl.ttft_p95_ms and p.tokens_per_s_per_user >= \
        wl.tokens_per_s_per_user


def _shortfall(p: LoadResult, wl: WorkloadSpec) -> str:
    out = []
    if p.ttft_p95_s * 1000 > wl.ttft_p95_ms:
        out.append(f"p95 TTFT {p.ttft_p95_s:.2f} s > target {wl.ttft_p95_ms / 1000:g} s "
                   f"({p.ttft_p95_s * 1000 / wl.ttft_p95_ms:.1f}x)")
    if p.tokens_per_s_per_user < wl.tokens_per_s_per_user:
        out.append(f"{p.tokens_per_s_per_user:.1f} tokens/s per user < target {wl.tokens_per_s_per_user:g}")
    return "; ".join(out)


def _why_not(o: _Option, chosen: _Option, wl: WorkloadSpec, pinned: int | None) -> str:
    if o.block:
        return o.block
    p = o.prediction
    said = f"p95 TTFT {p.ttft_p95_s:.2f} s, {p.tokens_per_s_per_user:.1f} tokens/s per user"
    if pinned is not None:
        return f"not the pinned replica count ({said})"
    if not _meets(p, wl):
        return f"misses the targets: {_shortfall(p, wl)}"
    if o.layout.gpus > chosen.layout.gpus:
        return f"meets the targets ({said}) but uses {o.layout.gpus} GPUs; {chosen.layout.label()} needs fewer"
    return f"meets the targets ({said}); {chosen.layout.label()} predicts a lower p95 TTFT"


def _advice(sp, hw: HardwareSpec, chosen: _Option, wl: WorkloadSpec) -> tuple[str, ...]:
    """How far the best layout misses, and what would meet the targets: more instances of the same hardware (found
    by simulating them), a shorter context or fewer users per instance."""
    p = chosen.prediction
    out = [f"the best layout on {hw.label()} ({chosen.layout.label()}) misses the targets: {_shortfall(p, wl)}"]
    curve = chosen.curve
    per_instance_gpus = chosen.layout.gpus_per_instance
    need = None
    for n in (2, 4, 8, 16, 32, 64, 128, 256):
        total = chosen.layout.instances * n
        r = _simulate_instance(curve, chosen.memory, math.ceil(wl.concurrent_users / total), wl, 2)
        if _meets(r, wl):
            need = total
            break
    if need is not None and per_instance_gpus:
        g = instance_gpu(hw)
        out.append(f"{need} instances of {chosen.layout.label().split(' x ')[1]} would meet them: "
                   f"{need * per_instance_gpus} x {g.name} ({need * per_instance_gpus - hw.gpu_count} more GPUs, "
                   "across nodes behind a load balancer)")
    elif need is not None:
        out.append(f"{need} instances would meet them ({need - chosen.layout.instances} more machines like this "
                   "one behind a load balancer)")
    else:
        out.append("no number of instances like these meets them (a single request is already too slow): use "
                   "faster GPUs or a smaller model")
    if wl.prompt_tokens > 512 and p.ttft_p95_s * 1000 > wl.ttft_p95_ms:
        out.append(f"shorter prompts cut prefill: TTFT grows with prompt_tokens ({wl.prompt_tokens} now)")
    if sp.memory.weights_format.lower() in ("bf16", "fp16", "f16", "f32") and p.tokens_per_s_per_user < \
            wl.tokens_per_s_per_user:
        out.append(f"a smaller quant than {sp.memory.weights_format} reads fewer bytes per token "
                   f"({gb(sp.memory.weights_bytes)} of weights now)")
    return tuple(out)


# ---------------------------------------------------------------------------------------------- the resolve hook


def with_replicas(sp, hw: HardwareSpec, budget: Budget, used_ports: set[int]):
    """The ServicePlan with its capacity attached; when the layout has several instances, the plan becomes one
    instance's (llama.cpp: separate servers on their own ports and GPUs behind a balancer) or vLLM data parallel
    (--data-parallel-size: one server, its own load balancing across engine cores). `used_ports` gains the
    instances' ports."""
    cap = plan_capacity(sp, hw, budget, sp.spec.replicas)
    if cap.replicas == 1 and cap.memory is sp.memory:
        warnings = sp.warnings + ((f"replicas: {cap.recommended}",) if cap.recommended else ())
        return replace(sp, capacity=cap, warnings=warnings)
    engine = engines.get(sp.engine)
    lay = cap.layout
    gpus = sp.gpus
    old_levers = sp.memory.levers
    if cap.replicas > 1 and _data_parallel(sp, lay):
        pins = Pins(tensor_parallel=lay.gpus_per_instance, data_parallel=lay.instances, said=_layout_said(lay),
                    source=LAYOUT_SOURCE)
        mem = engine.plan_memory(sp.model, sp.workload, hw, budget, engine.weights(sp.model), pins)
        new_levers = mem.levers
        mem = replace(mem, levers=mem.levers + (f"data parallel: {lay.label()} ({lay.instances} engine cores in one "
                                                "vLLM server, which balances requests across them)",))
        sp = replace(sp, memory=mem, capacity=cap)
    else:
        if lay.gpus_per_instance and not (lay.instances == 1 and lay.gpus_per_instance == hw.gpu_count):
            gpus = (instance_gpu(hw).model_copy(update={"count": lay.gpus_per_instance}),)
        ports = []
        port = sp.port + 1
        for _ in range(cap.replicas if cap.replicas > 1 else 0):
            while port in used_ports:
                port += 1
            if port > 65535:  # load_stack refuses a written port too close to the end; this one was chosen
                raise PlanError(f"services.{sp.name}.port: instance ports from {sp.port + 1} run past 65535 (set "
                                f"services.{sp.name}.port: to a port at most {65535 - cap.replicas})")
            ports.append(port)
            used_ports.add(port)
            port += 1
        cap = replace(cap, ports=tuple(ports))
        levers = (f"{lay.label()}: {cap.replicas} {engine.display} instances behind a least-connections load "
                  "balancer, each with its share of the users",) if cap.replicas > 1 else ()
        new_levers = cap.memory.levers
        sp = replace(sp, memory=replace(cap.memory, levers=cap.memory.levers + levers), capacity=cap,
                     threads=lay.threads, gpus=gpus)
    # the "memory:" reasons resolve wrote were the one-instance plan's levers: the layout's own replace them
    sp = replace(sp, reasons=_relevered(sp.reasons, old_levers, new_levers))
    reason = f"replicas: {lay.label()}: " + _reason_text(cap, sp.workload)
    host, port = command_endpoint(sp)
    cmd = engines.command(engine, sp, binary=sp.spec.binary or engine.binary, model_ref=sp.model_ref, host=host,
                          port=port)
    return replace(sp, command=cmd.argv, env=cmd.env, reasons=sp.reasons + (reason,))


def _relevered(reasons: tuple[str, ...], old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    """`reasons` with the "memory: <lever>" lines of the plan before the layout (`old`) replaced, in place, by those of
    the layout's memory plan (`new`). They stayed: 4 replicas of fleet-llamacpp-4090 said --cache-ram 8192 where
    every instance runs --cache-ram 6923, and a 1 x TP8 vLLM plan said "tensor parallel over 4 GPUs"."""
    stale = {f"memory: {lever}" for lever in old}
    fresh = [f"memory: {lever}" for lever in new]
    out: list[str] = []
    placed = False
    for r in reasons:
        if r in stale:
            if not placed:
                out += fresh
                placed = True
            continue
        out.append(r)
    return tuple(out if placed else out + fresh)


INSTANCE_HOST = "127.0.0.1"  # separate instances listen on loopback: the balancer at the service's host:port is the endpoint


def command_endpoint(sp) -> tuple[str, int]:
    """The host and port of the command a plan shows (ServicePlan.command): the service's own, or for separate
    instances behind a balancer the first instance's, as its run-1.sh starts it. A fleet's plan showed the
    balancer's 0.0.0.0:8080, a command no process runs (its instances run on 127.0.0.1:8081..8084)."""
    cap = sp.capacity
    if cap is not None and cap.separate:
        return INSTANCE_HOST, cap.ports[0]
    return sp.host, sp.port


def _reason_text(cap: Capacity, wl: WorkloadSpec) -> str:
    p = cap.prediction
    said = (f"predicted at {wl.concurrent_users} users: p95 TTFT {p.ttft_p95_s:.2f} s, "
            f"{p.tokens_per_s_per_user:.1f} tokens/s per user")
    if cap.pinned:
        return f"pinned by services.replicas; {said}"
    if cap.meets:
        return f"the fewest GPUs that meet the targets (p95 TTFT <= {wl.ttft_p95_ms / 1000:g} s, >= " \
               f"{wl.tokens_per_s_per_user:g} tokens/s per user); {said}"
    return f"no layout meets the targets; the best one: {said}"


def gpu_sizes(hw: HardwareSpec) -> list[int]:
    """Each discrete GPU's memory in bytes, in the order the hardware lists them: the host indices `gpu_ids` name
    (nvidia-smi's order for a detected machine). Apple's unified memory is one pool: none."""
    return [int(g.memory_gib * GIB) for g in _devices(hw)]


def place_gpus(sp, hw: HardwareSpec, free: list[int]) -> tuple[tuple[int, ...], list[int]]:
    """The GPUs service `sp` (resolved, its layout chosen) runs on, given what the services before it left on each
    GPU (`free`, bytes per GPU index), and what each GPU has left after it: (gpu_ids, free after).

    Every process of the service (each separate instance, or the one server) takes `Engine.gpu_count` GPUs, the ones
    with the most memory still free that hold its share (its GPU bytes, and what a utilization share leaves to
    nobody, memory.unexposed_bytes, spread evenly over them: vLLM reserves the same fraction of each GPU, engines.md
    3.3; a llama.cpp replica is planned on each GPU alike). Before, every service counted from GPU 0 (Capacity's
    sets were range(i*n, (i+1)*n)) and only the machine's total was budgeted: two services of 4 llama.cpp replicas
    on 8 RTX 4090s both ran on GPUs 0-3, 14.68 + 14.68 GB on each 24 GiB GPU, GPUs 4-7 idle; two single-GPU vLLM
    services both on GPU 0 at 0.90 + 0.87 of it. One process over every GPU is not pinned: llama.cpp splits its
    layers by each GPU's memory (-ts, Engine.layer_split_by_memory) and vLLM reserves the same share of each, so
    each GPU must hold its share; others (Ollama) place layers by what each GPU has free. Raises PlanError (its
    message; resolve adds the position) when the GPUs left cannot hold it."""
    engine = engines.get(sp.engine)
    total = len(free)
    if not total or sp.topology is not None or sp.memory.gpu_bytes <= 0 or not engine.uses_gpu(sp):
        return (), free
    cap = sp.capacity
    n = cap.replicas if cap is not None and cap.separate else 1
    m = sp.memory  # on one node, pipeline parallel stages are GPUs too (TP x PP x DP ranks, one GPU each)
    k = max(1, engine.gpu_count(sp), m.tensor_parallel * m.pipeline_parallel * m.data_parallel if n == 1 else 1)
    need = sp.memory.gpu_bytes + unexposed_bytes(sp.memory, hw)
    free = list(free)
    if n == 1 and k >= total:
        fixed = engine.layer_split_by_memory or m.gpu_memory_utilization is not None
        if engine.layer_split_by_memory and total > 1:
            sizes = gpu_sizes(hw)
            shares = [-(-need * size // sum(sizes)) for size in sizes]
        elif m.gpu_memory_utilization is not None:  # the same share of every GPU (engines.md 3.3), of its own size
            unexposed = -(-unexposed_bytes(m, hw) // total)
            shares = [int(gpu_runtime_bytes(g) * m.gpu_memory_utilization) + unexposed for g in _devices(hw)]
        else:
            left = max(1, sum(f for f in free if f > 0))
            shares = [need * max(0, f) // left for f in free]
        short = [i for i in range(total) if shares[i] > free[i]]
        if short and fixed:
            raise PlanError(_no_room(sp, hw, free, shares[short[0]], 1, total, short))
        return (), [f - s for f, s in zip(free, shares)]
    per_gpu = -(-need // k)
    # A share the user pinned (vLLM's --gpu-memory-utilization override) takes that share of the GPU it lands on,
    # more on a GPU larger than the smallest it was planned on; a share stackgen chose is scaled to keep its bytes
    # (util_on_pinned).
    extra = [0] * total
    if m.gpu_memory_utilization is not None:
        planned = int(_smallest_runtime(hw) * m.gpu_memory_utilization)
        extra = [max(0, _reserve_on(sp, hw, g) - planned) for g in _devices(hw)]
    ids: list[int] = []
    for _ in range(n):
        room = sorted((i for i in range(total) if free[i] >= per_gpu + extra[i]),
                      key=lambda i: (-(free[i] - extra[i]), i))
        if len(room) < k:
            raise PlanError(_no_room(sp, hw, free, per_gpu + min(extra), n, k, []))
        for i in sorted(room[:k]):
            free[i] -= per_gpu + extra[i]
            ids.append(i)
    return tuple(ids), free


def _devices(hw: HardwareSpec) -> list:
    """Each discrete GPU, in the order the hardware lists them: the host indices `gpu_ids` name. Apple's unified
    memory is one pool: none."""
    if hw.is_apple:
        return []
    return [g for g in hw.gpus if not g.unified for _ in range(g.count)]


def _smallest_runtime(hw: HardwareSpec) -> int:
    """The GPU memory CUDA reports on the smallest GPU, the one vLLM's share is planned on (memory.plan_vllm)."""
    return gpu_runtime_bytes(min(hw.gpus, key=lambda g: g.memory_gib))


def _scaled_util(util: float, planned: int, runtime: int) -> float:
    """The share of a GPU of `runtime` bytes that reserves at least `planned` bytes (vLLM takes 2 decimals):
    rounded up, so the KV pool the plan sized on the smallest GPU is all there (rounded down, one 26,800-token request
    of Llama 3.1 8B fp8 was planned into a pool 45 MB short of it, which vLLM refuses at start)."""
    return min(util, math.ceil(planned / runtime * 100 - 1e-9) / 100)


def _reserve_on(sp, hw: HardwareSpec, gpu) -> int:
    """What a share-reserving service (vLLM) takes of `gpu` once pinned to it: its pinned share of that GPU, or the
    planned bytes at the share scaled for it."""
    util = sp.memory.gpu_memory_utilization
    runtime = gpu_runtime_bytes(gpu)
    if _util_pinned(sp):
        return int(runtime * util)
    return int(runtime * _scaled_util(util, int(_smallest_runtime(hw) * util), runtime))


def _util_pinned(sp) -> bool:
    """Whether the user pinned the GPU share by an override (theirs, never rescaled)."""
    return pins_from_overrides(engines.get(sp.engine), dict(sp.spec.overrides), sp.name).gpu_memory_utilization \
        is not None


def util_on_pinned(sp, hw: HardwareSpec, ids: tuple[int, ...]) -> MemoryPlan:
    """The memory plan of a service that reserves a share of each GPU (vLLM's --gpu-memory-utilization), once placed
    on `ids`. It was planned on the smallest GPU of the machine (memory.plan_vllm: every rank takes the same share),
    but placement may pin it to a larger one, where the same share reserves more: on an RTX 3060 + RTX 4090, two
    small vLLM services were both pinned to the 4090 at 0.90 each (placed as 10.4 GiB apiece, reserving 21.2 GiB
    apiece: the second could not start). A share stackgen chose is scaled so the reserve holds what was planned
    (_scaled_util, rounded up; place_gpus placed that); the planned share stays in unpinned_utilization for a target
    that cannot pin the GPU. A share the user pinned by an override is kept, and the plan counts what it takes there
    (place_gpus placed it so)."""
    m = sp.memory
    util = m.gpu_memory_utilization
    if util is None or not ids or not hw.gpus:
        return m
    devices, planned = _devices(hw), _smallest_runtime(hw)
    if all(gpu_runtime_bytes(devices[i]) <= planned for i in ids):
        return m
    ranks = max(1, m.gpu_bytes // max(1, int(planned * util)))  # per instance: tensor x pipeline x data parallel
    if not _util_pinned(sp):
        pinned = min(gpu_runtime_bytes(devices[i]) for i in set(ids))
        scaled = _scaled_util(util, int(planned * util), pinned)
        return replace(m, gpu_memory_utilization=scaled, unpinned_utilization=util,
                       gpu_bytes=int(pinned * scaled) * ranks)
    real = sum(int(gpu_runtime_bytes(devices[i]) * util) for i in ids)
    return replace(m, gpu_bytes=real * ranks // len(ids))


def _no_room(sp, hw: HardwareSpec, free: list[int], per_gpu: int, n: int, k: int, short: list[int]) -> str:
    what = (f"{n} instances of {k} GPU{'s' if k != 1 else ''} each" if n > 1 else
            f"{k} GPU{'s' if k != 1 else ''}")
    how = f" (its layers split by GPU size: GPU {short[0]} is short)" if short else ""
    left = ", ".join(f"GPU {i} {gb(max(0, f))}" for i, f in enumerate(free))
    fix = "list it first under services:, or give the services before it fewer GPUs or less memory"
    if n > 1:
        fix += ", or set fewer replicas"
    return (f"needs {what} with {gb(per_gpu)} free on each{how}; the services before it left {left} free on "
            f"{hw.label()} ({fix})")


def fleet_memory(sp) -> MemoryPlan:
    """What all of a service's instances hold together (for the budget the next services get)."""
    cap = sp.capacity
    if cap is None or not cap.separate:
        return sp.memory
    n = cap.replicas
    return replace(sp.memory, gpu_bytes=sp.memory.gpu_bytes * n, host_bytes=sp.memory.host_bytes * n)


def fleet_curves(sp, hw: HardwareSpec) -> list[ServiceCurve]:
    """One curve per planned engine instance of the service (its capacity layout; one instance without one)."""
    inst = instance_of(sp, hw)
    return [service_curve(sp, inst.hardware, memory=inst.memory, threads=inst.threads)] * inst.count


SIM_VARIED_REQUESTS = 400  # simulated requests per level when requests vary: enough for a steady p95


def simulate_service(sp, hw: HardwareSpec, users: list[int], seed: int = 0,
                     variability: Variability = NONE) -> list[LoadResult]:
    """`stackgen simulate`: the planned fleet of `sp` at each number of concurrent users (with `variability`,
    enough rounds for a p95 over a few hundred requests)."""
    curves = fleet_curves(sp, hw)
    wl = sp.workload

    def rounds(n: int) -> int:
        return max(SIM_ROUNDS, math.ceil(SIM_VARIED_REQUESTS / n)) if variability.any else SIM_ROUNDS

    return [simulate(curves, users=n, prompt_tokens=wl.prompt_tokens, output_tokens=wl.output_tokens,
                     think_time_s=wl.think_time_s, rounds=rounds(n), seed=seed, variability=variability)
            for n in users]
