"""The memory planner: weights, KV cache, compute buffers and runtime overhead per engine, and where each part lives.

Rules follow each engine's own sizing code (see ../shared/reference/engines.md, section "Memory"):
- llama.cpp (and Ollama, which runs llama-server): `-c` is the total over `-np` slots; without a unified cache
  each slot gets pad256(c/np) cells; sliding-window layers keep pad256(min(cells, n_swa + n_ubatch)) cells per slot.
- vLLM: weights + non-KV overhead + KV pages must fit `--gpu-memory-utilization` x GPU memory per rank; KV per
  token is layers x kv_heads/TP x (head_k + head_v) x dtype bytes; sliding-window layers only hold the window.
- MLX: weights + a KV cache grown in 256-token steps, inside the GPU wired limit of unified memory.
When a plan does not fit, it pulls the levers a person would, in order, and records which it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from stackgen.models import GIB, LongContext, ModelFacts
from stackgen.spec import HardwareSpec, WorkloadSpec

MIB = 1024**2

# llama.cpp ggml block sizes: bytes per element of a KV cache type (ggml-common.h, blocks of 32).
KV_BYTES_PER_ELEMENT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                        "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
VLLM_KV_BYTES = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}

LLAMA_FIT_MARGIN = 1024 * MIB  # llama.cpp --fit-target default: free memory left on each device
LLAMA_HOST_OVERHEAD = 80 * MIB  # binary, tokenizer, HTTP threads: measured RSS minus the memory breakdown (~67 MiB)
OLLAMA_MIN_MEMORY = 457 * MIB  # ml/device.go MinimumMemory for CUDA/ROCm (512 MiB on Metal)
HOST_RESERVE_FRACTION = 0.15  # RAM left to the OS and page cache on a machine the user also uses
DEFAULT_UBATCH = 512
DEFAULT_BATCH = 2048
MLX_KV_STEP = 256


@dataclass(frozen=True)
class Pins:
    """Planned knobs a user pinned through `overrides`: the planner plans with these values instead of choosing.

    Built by stackgen.engines.base.pins_from_overrides from each engine's knob table; `said` keeps the override as
    written (for reasons and shortfalls). None: not pinned, the planner chooses."""

    context_total: int | None = None  # llama.cpp -c: all slots together
    context_per_request: int | None = None  # vLLM --max-model-len, Ollama num_ctx
    parallel: int | None = None
    gpu_layers: int | None = None
    kv_cache_type: str | None = None  # K and V ("q8_0", or "q8_0/f16" when K and V differ)
    flash_attn: str | None = None  # on | off | auto
    batch: int | None = None
    ubatch: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None
    data_parallel: int | None = None
    threads: int | None = None
    max_batched_tokens: int | None = None
    said: tuple[tuple[str, str], ...] = ()  # (knob, "--flag value" as the override wrote it)

    def __bool__(self) -> bool:
        return bool(self.said)

    def text(self, *knobs: str) -> str:
        """The overrides that pinned `knobs` (all pinned knobs when none named), e.g. "-ngl 99, -c 8192"."""
        return ", ".join(s for k, s in self.said if not knobs or k in knobs)


NO_PINS = Pins()


def kv_bytes_per_element(kv_type: str) -> float:
    """Bytes per cached element for a llama.cpp or vLLM cache type; "k/v" when K and V differ (their mean: exact
    for models whose K and V heads have the same width)."""
    if "/" in kv_type:
        k, v = kv_type.split("/", 1)
        return (kv_bytes_per_element(k) + kv_bytes_per_element(v)) / 2
    return KV_BYTES_PER_ELEMENT.get(kv_type, VLLM_KV_BYTES.get(kv_type, 2.0))


def pad(n: int, to: int = 256) -> int:
    return ((n + to - 1) // to) * to


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per part and where they live. `fits` is False when no lever makes the service fit."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    gpu_bytes: int
    host_bytes: int
    gpu_layers: int
    total_layers: int
    context_per_request: int
    parallel: int
    kv_cache_type: str
    fits: bool
    gpu_budget_bytes: int
    host_budget_bytes: int
    weights_format: str = ""
    weights_source: str = ""
    tensor_parallel: int = 1
    gpu_memory_utilization: float | None = None
    levers: tuple[str, ...] = field(default=())
    shortfall: str = ""
    # Multi-node (docs/multinode.md): pipeline stages across nodes, and the layers each node holds (head first).
    pipeline_parallel: int = 1
    nodes: int = 1
    node_layers: tuple[int, ...] = ()
    data_parallel: int = 1  # vLLM --data-parallel-size: engine instances in one server (pinned by overrides)
    rope_scaling: LongContext | None = None  # YaRN with the factor this context needs (past the trained context)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes

    @property
    def offload_fraction(self) -> float:
        """Share of the layers that run from system RAM."""
        if self.total_layers == 0:
            return 0.0
        return 1 - self.gpu_layers / self.total_layers


@dataclass(frozen=True)
class Budget:
    """Memory still free for this service after the services planned before it on the same machine."""

    gpu_bytes: int
    host_bytes: int
    unified: bool = False


def initial_budget(hw: HardwareSpec) -> Budget:
    if hw.is_apple:
        apple = next(g for g in hw.gpus if g.vendor == "apple")
        wired = hw.wired_limit_fraction or (0.75 if apple.memory_gib > 36 else 2 / 3)
        total = int(hw.memory_gib * GIB)
        return Budget(int(total * wired), int(total * (1 - HOST_RESERVE_FRACTION)), unified=True)
    gpu = int(sum(g.memory_gib * g.count for g in hw.gpus) * GIB)
    return Budget(gpu, int(hw.memory_gib * GIB * (1 - HOST_RESERVE_FRACTION)))


def consume(budget: Budget, plan: MemoryPlan) -> Budget:
    if budget.unified:
        return replace(budget, gpu_bytes=budget.gpu_bytes - plan.gpu_bytes,
                       host_bytes=budget.host_bytes - plan.gpu_bytes - plan.host_bytes)
    return replace(budget, gpu_bytes=budget.gpu_bytes - plan.gpu_bytes, host_bytes=budget.host_bytes - plan.host_bytes)


def context_for(model: ModelFacts, asked: int) -> tuple[int, str | None]:
    """The context per request a plan starts from, and the lever when it is capped: the workload's, up to the model's
    trained context, or up to where its documented RoPE scaling reaches (then `with_rope` adds the scaling)."""
    native = model.context_length
    if not native or asked <= native:
        return asked, None
    lc = model.long_context
    if lc is None:
        return native, f"context capped at the model's trained {native} tokens (asked {asked})"
    if asked <= lc.max_context:
        return asked, None
    return lc.max_context, (f"context capped at {lc.max_context} tokens, as far as the model's documented YaRN "
                            f"reaches ({lc.original_context} x factor {lc.factor:g}; asked {asked})")


def with_rope(plan: MemoryPlan, model: ModelFacts) -> MemoryPlan:
    """The RoPE scaling a plan's context per request needs: none within the trained context, else the model's
    documented YaRN with the smallest factor that reaches it."""
    lc = model.long_context
    if lc is None or not model.context_length or plan.context_per_request <= model.context_length:
        return plan
    return replace(plan, rope_scaling=lc.scaled_to(plan.context_per_request))


def gb(n: float) -> str:
    """Bytes as GB for people (decimal, like vendors and file listings)."""
    return f"{n / 1e9:.1f} GB"


# ---------------------------------------------------------------------------------------------- llama.cpp


def llamacpp_kv_bytes(model: ModelFacts, ctx_per_slot: int, slots: int, kv_type: str = "f16",
                      ubatch: int = DEFAULT_UBATCH) -> int:
    """KV cache of llama-server with `-c ctx_per_slot*slots -np slots` (non-unified: one stream per slot)."""
    cells = pad(ctx_per_slot)
    bpe = kv_bytes_per_element(kv_type)
    per_cell_layer = model.kv_bytes_per_token_per_layer(bpe)
    full = model.full_attention_layers * cells * per_cell_layer
    swa = 0.0
    if model.swa_layers and model.sliding_window:
        swa_cells = pad(min(cells, model.sliding_window + ubatch))
        swa = model.swa_layers * swa_cells * per_cell_layer
    return int((full + swa) * slots)


def llamacpp_compute_bytes(model: ModelFacts, slots: int, ubatch: int = DEFAULT_UBATCH) -> int:
    """Activations of one micro-batch plus the logits of one output row per slot.

    Calibrated on the Gemma 3 270M breakdown printed by llama-server -lv 4 (compute 23 MiB at -ub 512, -np 8).
    """
    activations = ubatch * 4 * (4 * model.hidden + 2 * model.ffn)
    logits = slots * model.vocab * 4
    return int(activations + logits)


def plan_llamacpp(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str, *, allow_kv_quant: bool = True,
                  gpu_overhead: int = LLAMA_FIT_MARGIN, pins: Pins = NO_PINS) -> MemoryPlan:
    """Place layers and size the KV cache for llama-server; pull levers until it fits or nothing is left.
    A knob in `pins` is planned with the user's value and never used as a lever."""
    levers: list[str] = []
    slots = pins.parallel or wl.concurrent_users
    ctx_pinned = pins.context_total is not None or pins.context_per_request is not None
    if pins.context_total is not None:
        ctx = max(1, pins.context_total // slots)  # llama-server: each of the -np slots gets n_ctx / n_parallel
    elif pins.context_per_request is not None:
        ctx = pins.context_per_request
    else:
        ctx, capped = context_for(model, wl.context_tokens)
        levers += [capped] if capped else []
    has_gpu = bool(hw.gpus)
    fa_off = pins.flash_attn == "off"
    if pins.kv_cache_type:
        kv_types: tuple[str, ...] = (pins.kv_cache_type,)
    else:  # a quantized V cache needs flash attention (llama.cpp refuses it otherwise)
        kv_types = ("f16", "q8_0") if allow_kv_quant and not fa_off else ("f16",)
    ubatch = pins.ubatch or DEFAULT_UBATCH

    def build(ngl: int, kv_type: str, ctx_slot: int) -> MemoryPlan:
        kv = llamacpp_kv_bytes(model, ctx_slot, slots, kv_type, ubatch)
        compute = llamacpp_compute_bytes(model, slots, ubatch)
        if fa_off:  # without flash attention the KQ scores of a micro-batch over the whole cache are materialized
            compute += pad(ctx_slot) * slots * ubatch * model.heads * 4
        layer_bytes = weights / (model.layers + 1)  # +1: the output layer llama.cpp offloads last
        on_gpu = ngl > 0 and has_gpu
        w_gpu = int(weights if ngl >= model.layers and on_gpu else layer_bytes * ngl if on_gpu else 0)
        kv_gpu = int(kv * min(ngl, model.layers) / model.layers) if on_gpu else 0
        n_gpus = max(1, hw.gpu_count)
        overhead_gpu = gpu_overhead * n_gpus if on_gpu else 0
        gpu = w_gpu + kv_gpu + (compute if on_gpu else 0) + overhead_gpu
        host = (weights - w_gpu) + (kv - kv_gpu) + (0 if on_gpu else compute) + LLAMA_HOST_OVERHEAD
        if budget.unified:
            fits = gpu <= budget.gpu_bytes and gpu + host <= budget.host_bytes
        else:
            fits = gpu <= budget.gpu_bytes and host <= budget.host_bytes
        return MemoryPlan(
            weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=compute,
            overhead_bytes=overhead_gpu + LLAMA_HOST_OVERHEAD, gpu_bytes=gpu, host_bytes=host,
            gpu_layers=min(ngl, model.layers) if on_gpu else 0, total_layers=model.layers, context_per_request=ctx_slot,
            parallel=slots, kv_cache_type=kv_type, fits=fits, gpu_budget_bytes=budget.gpu_bytes,
            host_budget_bytes=budget.host_bytes, weights_format=weights_format, weights_source=weights_source,
            levers=tuple(levers),
        )

    if fa_off and pins.kv_cache_type and pins.kv_cache_type.split("/")[-1] != "f16":
        plan = build(model.layers if has_gpu else 0, kv_types[0], ctx)
        return replace(plan, fits=False, shortfall=f"llama.cpp needs flash attention for a quantized V cache "
                                                   f"(pinned by overrides: {pins.text('flash_attn', 'kv_cache_type')})")
    if pins.gpu_layers is not None:  # the split is the user's: no partial-offload search
        ngl = pins.gpu_layers if has_gpu else 0
        for kv_type in kv_types:
            plan = build(ngl, kv_type, ctx)
            if plan.fits:
                return _with_lever(plan, "f16" if pins.kv_cache_type else kv_type, levers, has_gpu)
        worst = build(ngl, kv_types[-1], ctx)
        return replace(worst, fits=False, shortfall=_shortfall(worst, budget, hw, pins))
    full = model.layers if has_gpu else 0
    for kv_type in kv_types:
        plan = build(full, kv_type, ctx)
        if plan.fits:
            return _with_lever(plan, "f16" if pins.kv_cache_type else kv_type, levers, has_gpu)
    if has_gpu:
        best = _best_partial(build, model.layers, kv_types, ctx)
        if best is not None:
            kv_note = [] if best.kv_cache_type == "f16" or pins.kv_cache_type else [
                f"KV cache quantized to {best.kv_cache_type}"]
            return replace(best, levers=tuple(levers + [_offload_lever(best, budget)] + kv_note))
    # Last lever: a smaller context per request (the workload will not get what it asked for).
    for smaller in ([] if ctx_pinned else _smaller_contexts(ctx)):
        for kv_type in kv_types:
            plan = build(full, kv_type, smaller) if not has_gpu else (_best_partial(build, model.layers, (kv_type,), smaller) or build(0, kv_type, smaller))
            if plan.fits:
                lever = f"context reduced from {ctx} to {smaller} tokens per request to fit"
                extra = [] if kv_type == "f16" or pins.kv_cache_type else [f"KV cache quantized to {kv_type}"]
                if has_gpu and plan.gpu_layers < model.layers:
                    extra.append(_offload_lever(plan, budget))
                return replace(plan, levers=tuple(levers + [lever] + extra))
    worst = build(full, kv_types[-1], ctx)
    return replace(worst, fits=False, shortfall=_shortfall(worst, budget, hw, pins))


def _with_lever(plan: MemoryPlan, kv_type: str, levers: list[str], has_gpu: bool) -> MemoryPlan:
    if kv_type != "f16":
        goal = "to keep every layer on the GPU" if has_gpu else "to fit the context in system RAM"
        levers = levers + [f"KV cache quantized to {kv_type} (with flash attention) {goal}"]
    return replace(plan, levers=tuple(levers))


def _offload_lever(plan: MemoryPlan, budget: Budget) -> str:
    """What a partial plan does with the layers, from its numbers (0 layers is not 'partial offload')."""
    if plan.gpu_layers == 0:
        return (f"no layer fits in the {gb(max(0, budget.gpu_bytes))} of GPU memory available (one layer needs "
                f"{gb(plan.weights_bytes / (plan.total_layers + 1))} plus the engine's GPU runtime margin): all "
                f"{plan.total_layers} layers run on the CPU from system RAM")
    return (f"partial offload: {plan.gpu_layers} of {plan.total_layers} layers on GPU, the rest in system RAM "
            "(run on the CPU)")


def _best_partial(build, layers: int, kv_types: tuple[str, ...], ctx: int) -> MemoryPlan | None:
    """Most GPU layers that fit, preferring an f16 cache unless quantizing it buys more layers."""
    best = None
    for kv_type in kv_types:
        lo, hi, found = 0, layers - 1, None
        while lo <= hi:  # gpu use grows with layers; binary search the largest that fits
            mid = (lo + hi) // 2
            p = build(mid, kv_type, ctx)
            if p.gpu_bytes <= p.gpu_budget_bytes:
                found, lo = p, mid + 1
            else:
                hi = mid - 1
        if found is not None and found.fits and (best is None or found.gpu_layers > best.gpu_layers):
            best = found
    return best


def _smaller_contexts(ctx: int) -> list[int]:
    out, c = [], ctx
    while c > 2048:
        c = max(2048, pad(c // 2))
        out.append(c)
    return out


def _shortfall(plan: MemoryPlan, budget: Budget, hw: HardwareSpec, pins: Pins = NO_PINS) -> str:
    need = plan.gpu_bytes + plan.host_bytes
    # Unified memory: the GPU budget is a share of the same pool, so only the pool counts.
    have = budget.host_bytes if budget.unified else budget.gpu_bytes + budget.host_bytes
    if pins and need <= have and plan.gpu_bytes > budget.gpu_bytes:  # the pool holds it, the pinned split does not
        text = (f"needs {gb(plan.gpu_bytes)} of GPU memory for {plan.gpu_layers} layers but {hw.label()} has "
                f"{gb(max(0, budget.gpu_bytes))}")
    else:
        text = (f"needs {gb(need)} ({gb(plan.weights_bytes)} weights + {gb(plan.kv_cache_bytes)} KV cache) "
                f"but {hw.label()} has {gb(max(0, have))} usable: {gb(need - have)} short")
    return text + (f" (pinned by overrides: {pins.text()})" if pins else "")


# ---------------------------------------------------------------------------------------------- vLLM


def vllm_kv_bytes_per_request(model: ModelFacts, ctx: int, kv_dtype: str, tp: int = 1) -> int:
    """KV bytes one request of `ctx` tokens needs on each rank (block size 16, SWA layers hold the window)."""
    bpe = kv_bytes_per_element(kv_dtype)
    kv_heads = max(1, model.kv_heads // tp)
    per_token_layer = kv_heads * (model.head_dim_k + model.head_dim_v) * bpe
    tokens_full = pad(ctx, 16)
    full = model.full_attention_layers * tokens_full * per_token_layer
    swa = 0
    if model.swa_layers and model.sliding_window:
        swa = model.swa_layers * pad(min(ctx, model.sliding_window + 16), 16) * per_token_layer
    return int(full + swa)


def vllm_overhead_bytes(model: ModelFacts, weights_per_rank: int, batched_tokens: int = 8192) -> int:
    """Non-KV memory per rank: CUDA context + NCCL (~0.7 GiB), activation peak at 2048-8192 batched tokens,
    and the CUDA-graph estimate vLLM subtracts since v0.21 (~0.5 GiB). Sized from vLLM startup logs of 8B-70B."""
    activations = batched_tokens * (model.hidden * 4 + model.ffn * 2) * 2
    return int(1.2 * GIB + activations + 0.02 * weights_per_rank)


def plan_vllm(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
              weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    ctx, capped = (pins.context_per_request, None) if pins.context_per_request else context_for(model, wl.context_tokens)
    users = pins.parallel or wl.concurrent_users
    n_gpus = hw.gpu_count
    per_gpu = int(max(g.memory_gib for g in hw.gpus) * GIB) if hw.gpus else 0
    share = budget.gpu_bytes / (per_gpu * n_gpus) if n_gpus and per_gpu else 0.0
    if pins.gpu_memory_utilization is not None:
        util = pins.gpu_memory_utilization  # the user's: anything up to 1.0 (vLLM runs at 0.98)
    else:
        util = round(min(0.90, share - 0.02), 2) if share < 0.92 else 0.90
    pp, dp = pins.pipeline_parallel or 1, pins.data_parallel or 1
    batched = pins.max_batched_tokens or 8192
    levers: list[str] = [capped] if capped else []
    if pins.tensor_parallel is not None:
        candidates = [pins.tensor_parallel]
    else:
        candidates = [tp for tp in (1, 2, 4, 8, 16, 32, 64)
                      if tp * pp * dp <= max(1, n_gpus) and model.heads % tp == 0] or [1]
    kv_dtypes = (pins.kv_cache_type,) if pins.kv_cache_type else ("auto", "fp8")
    best = None
    for tp in candidates:
        for kv_dtype in kv_dtypes:
            p = _vllm_candidate(model, ctx, users, tp, kv_dtype, util, per_gpu, weights, budget, pp, dp, batched)
            p = replace(p, weights_format=weights_format, weights_source=weights_source)
            if best is None:
                best = p
            if p.fits and _vllm_all_users_fit(p, model, ctx, users, tp):
                return _vllm_levers(p, tp, kv_dtype, levers, all_fit=True, pins=pins)
            if p.fits and (not best.fits):
                best = p
    assert best is not None
    if best.fits:  # weights and one full request fit, but not every user at full context at once
        return _vllm_levers(best, best.tensor_parallel, best.kv_cache_type, levers, all_fit=False, pins=pins)
    ranks = best.tensor_parallel * pp * dp
    if pins and ranks > max(1, n_gpus):
        why = f"needs {ranks} GPUs (tensor x pipeline x data parallel) and {hw.label()} has {n_gpus}"
    elif pins and model.heads % best.tensor_parallel:
        why = f"{model.heads} attention heads do not divide over {best.tensor_parallel} tensor-parallel ranks"
    elif pins.gpu_memory_utilization is not None and budget.gpu_bytes < best.gpu_bytes:
        why = (f"--gpu-memory-utilization {util:g} reserves {gb(best.gpu_bytes)} but only "
               f"{gb(max(0, budget.gpu_bytes))} of GPU memory is free for it")
    else:
        need = best.weights_bytes + best.kv_cache_bytes + best.overhead_bytes
        why = (f"needs the {gb(best.weights_bytes)} of weights ({weights_format}) in GPU memory plus KV cache and "
               f"{gb(best.overhead_bytes)} runtime overhead ({gb(need)} in all); {hw.label()} has "
               f"{gb(max(0, budget.gpu_bytes))} of GPU memory")
    return replace(best, shortfall=why + (f" (pinned by overrides: {pins.text()})" if pins else ""))


def _vllm_candidate(model, ctx, users, tp, kv_dtype, util, per_gpu, weights, budget, pp=1, dp=1,
                    batched=8192) -> MemoryPlan:
    ranks = tp * pp  # one engine instance; --data-parallel-size runs dp of them
    per_rank_weights = weights // ranks
    overhead = vllm_overhead_bytes(model, per_rank_weights, batched)
    kv_req = vllm_kv_bytes_per_request(model, ctx, kv_dtype, tp) // pp  # pipeline stages split the layers
    reserve = int(per_gpu * util)
    kv_room = reserve - per_rank_weights - overhead
    heads_ok = model.heads % tp == 0
    fits = heads_ok and kv_room >= kv_req and budget.gpu_bytes >= reserve * ranks * dp
    kv_total_needed = kv_req * users * ranks * dp
    return MemoryPlan(
        weights_bytes=weights * dp, kv_cache_bytes=kv_total_needed, compute_bytes=0,
        overhead_bytes=overhead * ranks * dp, gpu_bytes=reserve * ranks * dp,
        host_bytes=_vllm_host_bytes(ranks * dp), gpu_layers=model.layers, total_layers=model.layers,
        context_per_request=ctx, parallel=users, kv_cache_type=kv_dtype, fits=fits,
        gpu_budget_bytes=budget.gpu_bytes, host_budget_bytes=budget.host_bytes, tensor_parallel=tp,
        gpu_memory_utilization=util, pipeline_parallel=pp, data_parallel=dp,
    )


def _vllm_host_bytes(tp: int) -> int:
    """System RAM of a vLLM server: the API server process (~2.5 GiB with torch and the tokenizer) plus one
    worker process per tensor-parallel rank (~2 GiB each: CUDA context, pinned staging buffers)."""
    return int((2.5 + 2.0 * tp) * GIB)


def _vllm_all_users_fit(p: MemoryPlan, model, ctx, users, tp) -> bool:
    ranks = p.tensor_parallel * p.pipeline_parallel * p.data_parallel
    per_rank_room = p.gpu_bytes // ranks - p.weights_bytes // ranks - p.overhead_bytes // ranks
    return per_rank_room >= vllm_kv_bytes_per_request(model, ctx, p.kv_cache_type, tp) // p.pipeline_parallel * users


def _vllm_levers(p: MemoryPlan, tp: int, kv_dtype: str, levers: list[str], all_fit: bool,
                 pins: Pins = NO_PINS) -> MemoryPlan:
    out = list(levers)
    if tp > 1 and pins.tensor_parallel is None:
        out.append(f"tensor parallel over {tp} GPUs to hold the weights and KV cache")
    if kv_dtype == "fp8" and pins.kv_cache_type is None:
        out.append("KV cache in fp8 to hold every user's context")
    if not all_fit:
        out.append("not every user fits at full context at once: vLLM will queue or preempt the rest")
    return replace(p, levers=tuple(out))


def plan_vllm_cpu(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    """vLLM's CPU backend: KV space is VLLM_CPU_KVCACHE_SPACE GiB of RAM (a test and development path)."""
    ctx = pins.context_per_request or context_for(model, wl.context_tokens)[0]
    users = pins.parallel or wl.concurrent_users
    kv_dtype = pins.kv_cache_type or "auto"
    kv = vllm_kv_bytes_per_request(model, ctx, kv_dtype) * users
    kv_space = max(1, math.ceil(kv / GIB))
    overhead = int(1.5 * GIB)
    host = weights + kv_space * GIB + overhead
    fits = host <= budget.host_bytes
    plan = MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv_space * GIB, compute_bytes=0, overhead_bytes=overhead, gpu_bytes=0,
        host_bytes=host, gpu_layers=0, total_layers=model.layers, context_per_request=ctx,
        parallel=users, kv_cache_type=kv_dtype, fits=fits, gpu_budget_bytes=0,
        host_budget_bytes=budget.host_bytes, weights_format=weights_format, weights_source=weights_source,
    )
    if not fits:
        plan = replace(plan, shortfall=f"needs {gb(host)} of RAM; {hw.label()} has {gb(budget.host_bytes)} usable"
                                       + (f" (pinned by overrides: {pins.text()})" if pins else ""))
    return plan


# ---------------------------------------------------------------------------------------------- multi-node


def plan_vllm_multinode(model: ModelFacts, wl: WorkloadSpec, node: HardwareSpec, n_nodes: int, weights: int,
                        weights_format: str, weights_source: str) -> MemoryPlan:
    """vLLM over identical nodes: tensor parallel over the GPUs of a node (NVLink), pipeline parallel across
    nodes (TP = GPUs per node, PP = nodes; vLLM docs/serving/parallelism_scaling.md). PP is the smallest stage count
    (2..n_nodes) whose per-rank share of weights, overhead and one full request's KV cache fits."""
    ctx = context_for(model, wl.context_tokens)[0]
    users = wl.concurrent_users
    tp = node.gpu_count
    per_gpu = int(max(g.memory_gib for g in node.gpus) * GIB)
    util = 0.90
    budget = initial_budget(node)
    best = None
    for pp in range(2, n_nodes + 1):
        for kv_dtype in ("auto", "fp8"):
            per_rank_weights = weights // (tp * pp)
            overhead = vllm_overhead_bytes(model, per_rank_weights)
            kv_req = vllm_kv_bytes_per_request(model, ctx, kv_dtype, tp) // pp  # each stage holds its layers' KV
            reserve = int(per_gpu * util)
            kv_room = reserve - per_rank_weights - overhead
            fits = kv_room >= kv_req and model.heads % tp == 0
            ranks = tp * pp
            p = MemoryPlan(
                weights_bytes=weights, kv_cache_bytes=kv_req * users * ranks, compute_bytes=0,
                overhead_bytes=overhead * ranks, gpu_bytes=reserve * ranks, host_bytes=_vllm_host_bytes(tp),
                gpu_layers=model.layers, total_layers=model.layers, context_per_request=ctx, parallel=users,
                kv_cache_type=kv_dtype, fits=fits, gpu_budget_bytes=budget.gpu_bytes * pp,
                host_budget_bytes=budget.host_bytes, weights_format=weights_format, weights_source=weights_source,
                tensor_parallel=tp, gpu_memory_utilization=util, pipeline_parallel=pp, nodes=pp,
                node_layers=_even_layers(model.layers, pp),
            )
            if best is None or (p.fits and not best.fits):
                best = p
            if fits:
                all_fit = kv_room >= kv_req * users
                levers = [f"tensor parallel over the {tp} GPUs of each node and pipeline parallel over {pp} nodes "
                          f"({' + '.join(str(n) for n in p.node_layers)} layers) to hold the weights"]
                if kv_dtype == "fp8":
                    levers.append("KV cache in fp8 to hold every user's context")
                if not all_fit:
                    levers.append("not every user fits at full context at once: vLLM will queue or preempt the rest")
                if all_fit or kv_dtype == "fp8":
                    return replace(p, levers=tuple(levers))
    assert best is not None
    return replace(best, fits=False, shortfall=(
        f"needs {gb(weights)} of weights ({weights_format}) plus KV cache; {n_nodes} nodes of {node.label()} hold "
        f"{gb(int(per_gpu * util) * tp * n_nodes)} at --gpu-memory-utilization {util}"))


def _even_layers(layers: int, parts: int) -> tuple[int, ...]:
    base, extra = divmod(layers, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


def node_capacity(node: HardwareSpec) -> int:
    """Bytes of model state (weights + KV + compute) a llama.cpp device set on one node can hold: GPU memory less
    the --fit margin per GPU, or usable RAM on a CPU-only node (or an Apple machine's wired GPU share)."""
    budget = initial_budget(node)
    if node.is_apple or not node.gpus:
        return max(0, (budget.gpu_bytes if node.is_apple else budget.host_bytes) - LLAMA_HOST_OVERHEAD)
    return max(0, budget.gpu_bytes - LLAMA_FIT_MARGIN * node.gpu_count)


def plan_llamacpp_rpc(model: ModelFacts, wl: WorkloadSpec, nodes: tuple[HardwareSpec, ...], weights: int,
                      weights_format: str, weights_source: str) -> MemoryPlan:
    """llama-server on the head plus one ggml-rpc-server per other node: every layer on some device, the layers
    split over nodes in proportion to their memory (what llama.cpp does by free memory; reference 1.6)."""
    ctx, capped = context_for(model, wl.context_tokens)
    slots = wl.concurrent_users
    caps = [node_capacity(n) for n in nodes]
    total_cap = sum(caps)
    compute = llamacpp_compute_bytes(model, slots)
    levers: list[str] = [capped] if capped else []
    tries = [(ctx, "f16"), (ctx, "q8_0")] + [(c, k) for c in _smaller_contexts(ctx) for k in ("f16", "q8_0")]
    plan = None
    for c, kv_type in tries:
        kv = llamacpp_kv_bytes(model, c, slots, kv_type)
        need = weights + kv + compute * len(nodes)
        split = _proportional_layers(model.layers, caps)
        gpu = sum(caps[i] for i, n in enumerate(nodes) if n.gpus and not n.is_apple)
        plan = MemoryPlan(
            weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=compute * len(nodes),
            overhead_bytes=LLAMA_FIT_MARGIN * sum(n.gpu_count for n in nodes if not n.is_apple) + LLAMA_HOST_OVERHEAD,
            gpu_bytes=min(need, gpu), host_bytes=LLAMA_HOST_OVERHEAD + max(0, need - gpu),
            gpu_layers=model.layers, total_layers=model.layers, context_per_request=c, parallel=slots,
            kv_cache_type=kv_type, fits=need <= total_cap, gpu_budget_bytes=gpu, host_budget_bytes=total_cap - gpu,
            weights_format=weights_format, weights_source=weights_source, nodes=len(nodes), node_layers=split,
        )
        if plan.fits:
            out = levers + [f"layers split over {len(nodes)} nodes in proportion to their memory "
                            f"({' + '.join(str(n) for n in split)}): llama-server on the head, ggml-rpc-server "
                            "on the others"]
            if kv_type != "f16":
                out.append(f"KV cache quantized to {kv_type}")
            if c != ctx:
                out.append(f"context reduced from {ctx} to {c} tokens per request to fit")
            return replace(plan, levers=tuple(out))
    assert plan is not None
    need = weights + llamacpp_kv_bytes(model, ctx, slots, "q8_0")
    return replace(plan, fits=False, shortfall=(
        f"needs {gb(need)} (weights + KV cache) but the {len(nodes)} nodes hold {gb(total_cap)}: "
        f"{gb(need - total_cap)} short"))


def _proportional_layers(layers: int, caps: list[int]) -> tuple[int, ...]:
    """Largest-remainder split of `layers` in proportion to `caps` (deterministic: ties go to the earlier node)."""
    total = sum(caps) or 1
    exact = [layers * c / total for c in caps]
    out = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(caps)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: layers - sum(out)]:
        out[i] += 1
    return tuple(out)


# ---------------------------------------------------------------------------------------------- MLX


def mlx_kv_bytes(model: ModelFacts, ctx: int, users: int) -> int:
    """mlx_lm KVCache grows in 256-token steps (bf16); rotating caches hold only the window."""
    per_token_layer = model.kv_bytes_per_token_per_layer(2.0)
    full = model.full_attention_layers * pad(ctx, MLX_KV_STEP) * per_token_layer
    swa = 0.0
    if model.swa_layers and model.sliding_window:
        swa = model.swa_layers * pad(min(ctx, model.sliding_window), MLX_KV_STEP) * per_token_layer
    return int((full + swa) * users)


def plan_mlx(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
             weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    ctx, capped = context_for(model, wl.context_tokens)
    users = pins.parallel or wl.concurrent_users
    kv = mlx_kv_bytes(model, ctx, users)
    overhead = int(0.5 * GIB)
    total = weights + kv + overhead
    levers: list[str] = [capped] if capped else []
    gpu_budget = budget.gpu_bytes
    fits = total <= gpu_budget
    if not fits and budget.unified and total <= budget.host_bytes:
        # Raising iogpu.wired_limit_mb lets the GPU wire more of unified memory (mlx-lm README, "Large Models").
        levers.append(f"raise the GPU wired-memory limit to {math.ceil(total / MIB)} MB (sudo sysctl iogpu.wired_limit_mb=...)")
        fits = True
    plan = MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=0, overhead_bytes=overhead,
        gpu_bytes=total if budget.unified else 0, host_bytes=0 if budget.unified else total,
        gpu_layers=model.layers if budget.unified else 0, total_layers=model.layers, context_per_request=ctx,
        parallel=users, kv_cache_type="bf16", fits=fits if budget.unified else total <= budget.host_bytes,
        gpu_budget_bytes=gpu_budget, host_budget_bytes=budget.host_bytes, weights_format=weights_format,
        weights_source=weights_source, levers=tuple(levers),
    )
    if not plan.fits:
        plan = replace(plan, shortfall=f"needs {gb(total)} of unified memory; {hw.label()} can give the GPU "
                                       f"at most {gb(max(0, budget.host_bytes))}")
    return plan


# ---------------------------------------------------------------------------------------------- speed


def predict_decode_tokens_per_s(model: ModelFacts, plan: MemoryPlan, hw: HardwareSpec, avg_context: int,
                                efficiency: float = 0.7) -> tuple[float, str]:
    """Single-stream decode speed from memory bandwidth: every token reads the active weights and the KV cache.

    Returns (tokens/s, which bandwidth binds). `efficiency` is the share of peak bandwidth engines reach in decode
    (typically 60-80%).
    """
    active = plan.weights_bytes * (model.active_params / model.params) if model.params else plan.weights_bytes
    kv_per_token = _kv_bytes_read(model, plan, avg_context)
    gpu_bw = (min(g.bandwidth_gbs for g in hw.gpus) * 1e9) if hw.gpus else 0.0
    host_bw = hw.memory_bandwidth_gbs * 1e9
    frac_gpu = (plan.gpu_layers / plan.total_layers) if plan.total_layers else 0.0
    if hw.is_apple or not hw.gpus or frac_gpu == 0:
        bw = gpu_bw if hw.is_apple else host_bw
        where = "unified memory bandwidth" if hw.is_apple else "system RAM bandwidth"
        seconds = (active + kv_per_token) / bw
    else:
        tp = max(1, plan.tensor_parallel)
        gpu_part = (active + kv_per_token) * frac_gpu / (gpu_bw * tp)
        host_part = (active + kv_per_token) * (1 - frac_gpu) / host_bw
        seconds = gpu_part + host_part
        if host_part > gpu_part:
            where = f"system RAM bandwidth ({(1 - frac_gpu) * 100:.0f}% of layers run from RAM)"
        else:
            where = "GPU memory bandwidth"
    return round(efficiency / seconds, 1) if seconds > 0 else 0.0, where


def _kv_bytes_read(model: ModelFacts, plan: MemoryPlan, avg_context: int) -> float:
    per_layer = model.kv_bytes_per_token_per_layer(kv_bytes_per_element(plan.kv_cache_type))
    full = model.full_attention_layers * avg_context * per_layer
    swa = model.swa_layers * min(avg_context, model.sliding_window or avg_context) * per_layer
    return full + swa
