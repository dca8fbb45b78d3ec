"""The memory planner: weights, KV cache, compute buffers and runtime overhead per engine, and where each part lives.

Rules follow each engine's own sizing code (see ../shared/reference/engines.md, section "Memory"):
- llama.cpp (and Ollama, which runs llama-server): `-c` is the total over `-np` slots; without a unified cache
  each slot gets pad256(c/np) cells; sliding-window layers keep pad256(min(cells, n_swa + n_ubatch)) cells per slot.
- vLLM: weights + non-KV overhead + KV pages must fit `--gpu-memory-utilization` x GPU memory per rank; KV per
  token is layers x kv_heads/TP x (head_k + head_v) x dtype bytes; sliding-window layers only hold the window.
- MLX: weights + a KV cache grown in 256-token steps, inside the GPU wired limit of unified memory.
When a plan does not fit, it pulls the levers a person would, in order, and records which it used.

Caches that grow with traffic (llama-server's prompt cache and context checkpoints, mlx_lm.server's prompt cache)
are bounded from the host headroom the plan leaves and counted as their own line (`PromptCache`); vLLM's prefix
cache lives inside its fixed KV pool and Ollama's runner is a llama-server that inherits the same bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from stackgen.models import GIB, ModelFacts
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

LLAMA_CACHE_RAM_DEFAULT = 8192 * MIB  # llama-server --cache-ram default (common.h cache_ram_mib)
LLAMA_CTX_CHECKPOINTS = 4  # per slot; llama-server's default is 32 (each a copy of the slot's sliding-window cache)
MLX_PROMPT_CACHE_ENTRIES = 10  # mlx_lm.server --prompt-cache-size default
CACHE_HEADROOM_SHARE = 0.5  # the growing caches may take at most this share of the RAM the plan leaves free
CACHE_CONVERSATIONS_PER_SLOT = 2  # finished conversations per slot the prompt cache is sized to keep


def pad(n: int, to: int = 256) -> int:
    return ((n + to - 1) // to) * to


@dataclass(frozen=True)
class PromptCache:
    """The most memory an engine's caches that grow with traffic may hold, and the engine settings that bound it.

    `bytes` is the plan line (counted in host_bytes; in gpu_bytes for MLX on unified memory). `limit_bytes` is the
    engine's own cap (llama-server --cache-ram, mlx_lm.server --prompt-cache-bytes; 0 = off). `entries`: mlx_lm.server
    --prompt-cache-size. `checkpoints`: llama-server --ctx-checkpoints per slot (None: the model makes none, the flag
    is left out). `note`: what it buys and what it costs, for the reasons."""

    bytes: int = 0
    limit_bytes: int = 0
    entries: int = 0
    checkpoints: int | None = None
    note: str = ""


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
    prompt_cache: PromptCache = field(default=PromptCache())

    @property
    def prompt_cache_bytes(self) -> int:
        return self.prompt_cache.bytes

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes
                + self.prompt_cache.bytes)

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


def gb(n: float) -> str:
    """Bytes as GB for people (decimal, like vendors and file listings)."""
    return f"{n / 1e9:.1f} GB"


# ---------------------------------------------------------------------------------------------- growing caches


@dataclass(frozen=True)
class CacheSettings:
    """How a llama-server takes its cache bounds: flags (`--cache-ram 512`) or, under Ollama, the environment its
    runner inherits (`LLAMA_ARG_CACHE_RAM=512`)."""

    cache_ram: str = "--cache-ram"
    checkpoints: str = "--ctx-checkpoints"
    sep: str = " "

    def show(self, name: str, value: int) -> str:
        return f"{name}{self.sep}{value}"


LLAMA_CACHE_FLAGS = CacheSettings()


def host_headroom(plan: MemoryPlan, budget: Budget) -> int:
    """RAM the plan leaves free in its budget (unified memory: the pool less what the GPU and host parts use)."""
    used = plan.gpu_bytes + plan.host_bytes if budget.unified else plan.host_bytes
    return max(0, budget.host_bytes - used)


def llamacpp_checkpoint_bytes(model: ModelFacts, ctx_per_slot: int, kv_type: str = "f16",
                              ubatch: int = DEFAULT_UBATCH) -> int:
    """One context checkpoint of one slot: llama-server copies the sliding-window part of the slot's cache
    (LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY), at most pad256(min(cells, n_swa + n_ubatch)) cells per SWA layer, because
    those layers cannot be rolled back. Models without sliding-window layers make none."""
    if not (model.swa_layers and model.sliding_window):
        return 0
    cells = pad(min(pad(ctx_per_slot), model.sliding_window + ubatch))
    return int(model.swa_layers * cells * model.kv_bytes_per_token_per_layer(KV_BYTES_PER_ELEMENT[kv_type]))


def bound_llamacpp_cache(plan: MemoryPlan, model: ModelFacts, budget: Budget,
                         how: CacheSettings = LLAMA_CACHE_FLAGS) -> MemoryPlan:
    """Bound llama-server's host-RAM prompt cache (--cache-ram, default 8 GiB: it grows with every distinct prompt)
    and its per-slot context checkpoints (default 32 per slot) from the RAM the plan leaves free, and count both."""
    if not plan.fits:
        return plan
    room = int(host_headroom(plan, budget) * CACHE_HEADROOM_SHARE)
    ckpt = llamacpp_checkpoint_bytes(model, plan.context_per_request, plan.kv_cache_type)
    checkpoints: int | None = None
    ckpt_total = 0
    if ckpt:  # the most of 4, 2, 1 per slot that takes at most half the room; 0 turns them off
        fitting = [n for n in (LLAMA_CTX_CHECKPOINTS, 2, 1) if plan.parallel * n * ckpt <= room // 2]
        checkpoints = fitting[0] if fitting else 0
        ckpt_total = plan.parallel * checkpoints * ckpt
    want = min(LLAMA_CACHE_RAM_DEFAULT, CACHE_CONVERSATIONS_PER_SLOT * plan.kv_cache_bytes)
    limit = max(0, min(want, room - ckpt_total)) // MIB * MIB
    note = _llamacpp_cache_note(limit, room, how)
    if checkpoints is not None:
        note += _checkpoint_note(checkpoints, ckpt, plan.parallel, how)
    cache = PromptCache(bytes=limit + ckpt_total, limit_bytes=limit, checkpoints=checkpoints, note=note)
    return replace(plan, host_bytes=plan.host_bytes + cache.bytes, prompt_cache=cache, levers=plan.levers + (note,))


def _llamacpp_cache_note(limit: int, room: int, how: CacheSettings) -> str:
    if limit == 0:
        return (f"prompt cache off ({how.show(how.cache_ram, 0)}): the plan leaves {gb(2 * room)} of RAM free, too "
                "little to keep finished prompts; every request pays its full prefill")
    return (f"prompt cache bounded to {limit // MIB} MiB of system RAM ({how.show(how.cache_ram, limit // MIB)}; "
            f"llama-server's default is 8192 and grows with every distinct prompt): it buys prompt reuse, a returning "
            f"conversation or a repeated prefix skips its prefill; it costs up to {limit // MIB} MiB, counted in the "
            f"plan, sized for {CACHE_CONVERSATIONS_PER_SLOT} finished conversations per slot and at most half the RAM "
            "the plan leaves free; older prompts are evicted and prefilled again")


def _checkpoint_note(n: int, each: int, slots: int, how: CacheSettings) -> str:
    if n == 0:
        return (f"; context checkpoints off ({how.show(how.checkpoints, 0)}): no RAM left for copies of the "
                "sliding-window cache, so a follow-up request re-processes its whole prompt")
    return (f"; plus {n} context checkpoints per slot ({how.show(how.checkpoints, n)}; default 32), copies of the "
            f"sliding-window cache of up to {each / MIB:.1f} MiB each ({n * each * slots / MIB:.0f} MiB for {slots} "
            "slots): they let a conversation continue without re-processing its prompt")


# ---------------------------------------------------------------------------------------------- llama.cpp


def llamacpp_kv_bytes(model: ModelFacts, ctx_per_slot: int, slots: int, kv_type: str = "f16",
                      ubatch: int = DEFAULT_UBATCH) -> int:
    """KV cache of llama-server with `-c ctx_per_slot*slots -np slots` (non-unified: one stream per slot)."""
    cells = pad(ctx_per_slot)
    bpe = KV_BYTES_PER_ELEMENT[kv_type]
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
                  gpu_overhead: int = LLAMA_FIT_MARGIN, cache: CacheSettings = LLAMA_CACHE_FLAGS) -> MemoryPlan:
    """Place layers and size the KV cache for llama-server, then bound its growing caches from what is left."""
    plan = _fit_llamacpp(model, wl, hw, budget, weights, weights_format, weights_source,
                         allow_kv_quant=allow_kv_quant, gpu_overhead=gpu_overhead)
    return bound_llamacpp_cache(plan, model, budget, cache)


def _fit_llamacpp(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str, *, allow_kv_quant: bool,
                  gpu_overhead: int) -> MemoryPlan:
    """Place layers and size the KV cache for llama-server; pull levers until it fits or nothing is left."""
    ctx = min(wl.context_tokens, model.context_length) if model.context_length else wl.context_tokens
    levers: list[str] = []
    if ctx < wl.context_tokens:
        levers.append(f"context capped at the model's trained {ctx} tokens (asked {wl.context_tokens})")
    slots = wl.concurrent_users
    has_gpu = bool(hw.gpus)
    kv_types = ("f16", "q8_0") if allow_kv_quant else ("f16",)

    def build(ngl: int, kv_type: str, ctx_slot: int) -> MemoryPlan:
        kv = llamacpp_kv_bytes(model, ctx_slot, slots, kv_type)
        compute = llamacpp_compute_bytes(model, slots)
        layer_bytes = weights / (model.layers + 1)  # +1: the output layer llama.cpp offloads last
        on_gpu = ngl > 0 and has_gpu
        w_gpu = int(weights if ngl >= model.layers and on_gpu else layer_bytes * ngl if on_gpu else 0)
        kv_gpu = int(kv * ngl / model.layers) if on_gpu else 0
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
            gpu_layers=ngl if on_gpu else 0, total_layers=model.layers, context_per_request=ctx_slot,
            parallel=slots, kv_cache_type=kv_type, fits=fits, gpu_budget_bytes=budget.gpu_bytes,
            host_budget_bytes=budget.host_bytes, weights_format=weights_format, weights_source=weights_source,
            levers=tuple(levers),
        )

    full = model.layers if has_gpu else 0
    for kv_type in kv_types:
        plan = build(full, kv_type, ctx)
        if plan.fits:
            return _with_lever(plan, kv_type, levers)
    if has_gpu:
        best = _best_partial(build, model.layers, kv_types, ctx)
        if best is not None:
            kv_note = [] if best.kv_cache_type == "f16" else [f"KV cache quantized to {best.kv_cache_type}"]
            lever = f"partial offload: {best.gpu_layers} of {model.layers} layers on GPU, the rest in system RAM"
            return replace(best, levers=tuple(levers + [lever] + kv_note))
    # Last lever: a smaller context per request (the workload will not get what it asked for).
    for smaller in _smaller_contexts(ctx):
        for kv_type in kv_types:
            plan = build(full, kv_type, smaller) if not has_gpu else (_best_partial(build, model.layers, (kv_type,), smaller) or build(0, kv_type, smaller))
            if plan.fits:
                lever = f"context reduced from {ctx} to {smaller} tokens per request to fit"
                extra = [] if kv_type == "f16" else [f"KV cache quantized to {kv_type}"]
                if has_gpu and plan.gpu_layers < model.layers:
                    extra.append(f"partial offload: {plan.gpu_layers} of {model.layers} layers on GPU")
                return replace(plan, levers=tuple(levers + [lever] + extra))
    worst = build(full, kv_types[-1], ctx)
    return replace(worst, fits=False, shortfall=_shortfall(worst, budget, hw))


def _with_lever(plan: MemoryPlan, kv_type: str, levers: list[str]) -> MemoryPlan:
    if kv_type != "f16":
        levers = levers + [f"KV cache quantized to {kv_type} (with flash attention) to keep every layer on the GPU"]
    return replace(plan, levers=tuple(levers))


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


def _shortfall(plan: MemoryPlan, budget: Budget, hw: HardwareSpec) -> str:
    need = plan.gpu_bytes + plan.host_bytes
    # Unified memory: the GPU budget is a share of the same pool, so only the pool counts.
    have = budget.host_bytes if budget.unified else budget.gpu_bytes + budget.host_bytes
    return (f"needs {gb(need)} ({gb(plan.weights_bytes)} weights + {gb(plan.kv_cache_bytes)} KV cache) "
            f"but {hw.label()} has {gb(max(0, have))} usable: {gb(need - have)} short")


# ---------------------------------------------------------------------------------------------- vLLM


def vllm_kv_bytes_per_request(model: ModelFacts, ctx: int, kv_dtype: str, tp: int = 1) -> int:
    """KV bytes one request of `ctx` tokens needs on each rank (block size 16, SWA layers hold the window)."""
    bpe = VLLM_KV_BYTES[kv_dtype]
    kv_heads = max(1, model.kv_heads // tp)
    per_token_layer = kv_heads * (model.head_dim_k + model.head_dim_v) * bpe
    tokens_full = pad(ctx, 16)
    full = model.full_attention_layers * tokens_full * per_token_layer
    swa = 0
    if model.swa_layers and model.sliding_window:
        swa = model.swa_layers * pad(min(ctx, model.sliding_window + 16), 16) * per_token_layer
    return int(full + swa)


def vllm_overhead_bytes(model: ModelFacts, weights_per_rank: int) -> int:
    """Non-KV memory per rank: CUDA context + NCCL (~0.7 GiB), activation peak at 2048-8192 batched tokens,
    and the CUDA-graph estimate vLLM subtracts since v0.21 (~0.5 GiB). Sized from vLLM startup logs of 8B-70B."""
    activations = 8192 * (model.hidden * 4 + model.ffn * 2) * 2
    return int(1.2 * GIB + activations + 0.02 * weights_per_rank)


def plan_vllm(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
              weights_format: str, weights_source: str) -> MemoryPlan:
    ctx = min(wl.context_tokens, model.context_length) if model.context_length else wl.context_tokens
    users = wl.concurrent_users
    n_gpus = hw.gpu_count
    per_gpu = int(max(g.memory_gib for g in hw.gpus) * GIB) if hw.gpus else 0
    share = budget.gpu_bytes / (per_gpu * n_gpus) if n_gpus and per_gpu else 0.0
    util = round(min(0.90, share - 0.02), 2) if share < 0.92 else 0.90
    levers: list[str] = []
    candidates = [tp for tp in (1, 2, 4, 8, 16, 32, 64) if tp <= max(1, n_gpus) and model.heads % tp == 0]
    best = None
    for tp in candidates:
        for kv_dtype in ("auto", "fp8"):
            p = _vllm_candidate(model, ctx, users, tp, kv_dtype, util, per_gpu, weights, budget)
            p = replace(p, weights_format=weights_format, weights_source=weights_source)
            if best is None:
                best = p
            if p.fits and _vllm_all_users_fit(p, model, ctx, users, tp):
                return _vllm_levers(p, tp, kv_dtype, levers, all_fit=True)
            if p.fits and (not best.fits):
                best = p
    assert best is not None
    if best.fits:  # weights and one full request fit, but not every user at full context at once
        return _vllm_levers(best, best.tensor_parallel, best.kv_cache_type, levers, all_fit=False)
    need = best.weights_bytes + best.kv_cache_bytes + best.overhead_bytes
    return replace(best, shortfall=(
        f"needs the {gb(best.weights_bytes)} of weights ({weights_format}) in GPU memory plus KV cache and "
        f"{gb(best.overhead_bytes)} runtime overhead ({gb(need)} in all); {hw.label()} has "
        f"{gb(max(0, budget.gpu_bytes))} of GPU memory"))


def _vllm_candidate(model, ctx, users, tp, kv_dtype, util, per_gpu, weights, budget) -> MemoryPlan:
    per_rank_weights = weights // tp
    overhead = vllm_overhead_bytes(model, per_rank_weights)
    kv_req = vllm_kv_bytes_per_request(model, ctx, kv_dtype, tp)
    reserve = int(per_gpu * util)
    kv_room = reserve - per_rank_weights - overhead
    fits = kv_room >= kv_req and budget.gpu_bytes >= reserve * tp
    kv_total_needed = kv_req * users * tp
    return MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv_total_needed, compute_bytes=0, overhead_bytes=overhead * tp,
        gpu_bytes=reserve * tp, host_bytes=_vllm_host_bytes(tp), gpu_layers=model.layers, total_layers=model.layers,
        context_per_request=ctx, parallel=users, kv_cache_type=kv_dtype, fits=fits,
        gpu_budget_bytes=budget.gpu_bytes, host_budget_bytes=budget.host_bytes, tensor_parallel=tp,
        gpu_memory_utilization=util,
    )


def _vllm_host_bytes(tp: int) -> int:
    """System RAM of a vLLM server: the API server process (~2.5 GiB with torch and the tokenizer) plus one
    worker process per tensor-parallel rank (~2 GiB each: CUDA context, pinned staging buffers)."""
    return int((2.5 + 2.0 * tp) * GIB)


def _vllm_all_users_fit(p: MemoryPlan, model, ctx, users, tp) -> bool:
    per_rank_room = p.gpu_bytes // p.tensor_parallel - p.weights_bytes // p.tensor_parallel - p.overhead_bytes // p.tensor_parallel
    return per_rank_room >= vllm_kv_bytes_per_request(model, ctx, p.kv_cache_type, tp) * users


def _vllm_levers(p: MemoryPlan, tp: int, kv_dtype: str, levers: list[str], all_fit: bool) -> MemoryPlan:
    out = list(levers)
    if tp > 1:
        out.append(f"tensor parallel over {tp} GPUs to hold the weights and KV cache")
    if kv_dtype == "fp8":
        out.append("KV cache in fp8 to hold every user's context")
    if not all_fit:
        out.append("not every user fits at full context at once: vLLM will queue or preempt the rest")
    return with_vllm_prefix_note(replace(p, levers=tuple(out)), "--gpu-memory-utilization")


def with_vllm_prefix_note(plan: MemoryPlan, pool: str) -> MemoryPlan:
    """vLLM's prefix cache needs no bound of its own: cached blocks are the KV pool's free blocks, allocated once at
    start and reused; host RAM grows only with KV offloading (--kv-offloading-size) or weight offloading
    (--cpu-offload-gb), and stackgen sets neither (vLLM 0.33 removed --swap-space)."""
    note = (f"prompt cache: vLLM's prefix caching reuses shared prefixes inside the KV pool it allocates once at "
            f"start ({pool}), so it buys prompt reuse at no extra memory; KV offloading to RAM "
            "(--kv-offloading-size) and weight offloading (--cpu-offload-gb) stay off, so RAM does not grow with "
            "traffic")
    return replace(plan, prompt_cache=PromptCache(note=note), levers=plan.levers + (note,))


def plan_vllm_cpu(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str) -> MemoryPlan:
    """vLLM's CPU backend: KV space is VLLM_CPU_KVCACHE_SPACE GiB of RAM (a test and development path)."""
    ctx = min(wl.context_tokens, model.context_length) if model.context_length else wl.context_tokens
    kv = vllm_kv_bytes_per_request(model, ctx, "auto") * wl.concurrent_users
    kv_space = max(1, math.ceil(kv / GIB))
    overhead = int(1.5 * GIB)
    host = weights + kv_space * GIB + overhead
    fits = host <= budget.host_bytes
    plan = MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv_space * GIB, compute_bytes=0, overhead_bytes=overhead, gpu_bytes=0,
        host_bytes=host, gpu_layers=0, total_layers=model.layers, context_per_request=ctx,
        parallel=wl.concurrent_users, kv_cache_type="auto", fits=fits, gpu_budget_bytes=0,
        host_budget_bytes=budget.host_bytes, weights_format=weights_format, weights_source=weights_source,
    )
    if not fits:
        return replace(plan, shortfall=f"needs {gb(host)} of RAM; {hw.label()} has {gb(budget.host_bytes)} usable")
    return with_vllm_prefix_note(plan, f"VLLM_CPU_KVCACHE_SPACE={kv_space} GiB of RAM")


# ---------------------------------------------------------------------------------------------- multi-node


def plan_vllm_multinode(model: ModelFacts, wl: WorkloadSpec, node: HardwareSpec, n_nodes: int, weights: int,
                        weights_format: str, weights_source: str) -> MemoryPlan:
    """vLLM over identical nodes: tensor parallel over the GPUs of a node (NVLink), pipeline parallel across
    nodes (TP = GPUs per node, PP = nodes; vLLM docs/serving/parallelism_scaling.md). PP is the smallest stage count
    (2..n_nodes) whose per-rank share of weights, overhead and one full request's KV cache fits."""
    ctx = min(wl.context_tokens, model.context_length) if model.context_length else wl.context_tokens
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
                    return with_vllm_prefix_note(replace(p, levers=tuple(levers)), "--gpu-memory-utilization")
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
    ctx = min(wl.context_tokens, model.context_length) if model.context_length else wl.context_tokens
    slots = wl.concurrent_users
    caps = [node_capacity(n) for n in nodes]
    total_cap = sum(caps)
    compute = llamacpp_compute_bytes(model, slots)
    levers: list[str] = []
    if ctx < wl.context_tokens:
        levers.append(f"context capped at the model's trained {ctx} tokens (asked {wl.context_tokens})")
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
            # The prompt cache and checkpoints live in the head's RAM, where llama-server runs.
            return bound_llamacpp_cache(replace(plan, levers=tuple(out)), model, initial_budget(nodes[0]))
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
             weights_format: str, weights_source: str) -> MemoryPlan:
    ctx = min(wl.context_tokens, model.context_length) if model.context_length else wl.context_tokens
    kv = mlx_kv_bytes(model, ctx, wl.concurrent_users)
    overhead = int(0.5 * GIB)
    total = weights + kv + overhead
    gpu_budget = budget.gpu_bytes
    fits = total <= gpu_budget
    # Raising iogpu.wired_limit_mb lets the GPU wire more of unified memory (mlx-lm README, "Large Models").
    wired = not fits and budget.unified and total <= budget.host_bytes
    fits = fits or wired
    plan = MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=0, overhead_bytes=overhead,
        gpu_bytes=total if budget.unified else 0, host_bytes=0 if budget.unified else total,
        gpu_layers=model.layers if budget.unified else 0, total_layers=model.layers, context_per_request=ctx,
        parallel=wl.concurrent_users, kv_cache_type="bf16", fits=fits if budget.unified else total <= budget.host_bytes,
        gpu_budget_bytes=gpu_budget, host_budget_bytes=budget.host_bytes, weights_format=weights_format,
        weights_source=weights_source,
    )
    if not plan.fits:
        return replace(plan, shortfall=f"needs {gb(total)} of unified memory; {hw.label()} can give the GPU "
                                       f"at most {gb(max(0, budget.host_bytes))}")
    plan = bound_mlx_cache(plan, budget)
    if wired:  # the limit covers the prompt cache too: its entries are Metal buffers like the rest
        lever = (f"raise the GPU wired-memory limit to {math.ceil(plan.total_bytes / MIB)} MB "
                 "(sudo sysctl iogpu.wired_limit_mb=...)")
        plan = replace(plan, levers=(lever,) + plan.levers)
    return plan


def bound_mlx_cache(plan: MemoryPlan, budget: Budget) -> MemoryPlan:
    """Bound mlx_lm.server's prompt cache (an LRU of finished requests' KV caches: 10 entries, no byte cap by
    default). --prompt-cache-bytes trims it only when a new request is inserted, so the entry count is the strict
    bound: entries x one full request's KV cache, and the byte cap is set to the same figure."""
    room = int(host_headroom(plan, budget) * CACHE_HEADROOM_SHARE)
    per_request = plan.kv_cache_bytes // max(1, plan.parallel)
    want = min(room, CACHE_CONVERSATIONS_PER_SLOT * plan.kv_cache_bytes)
    entries = min(MLX_PROMPT_CACHE_ENTRIES, want // per_request) if per_request else 0
    limit = entries * per_request
    if entries == 0:
        note = (f"prompt cache off (--prompt-cache-size 0): the plan leaves {gb(2 * room)} of memory free, too little "
                "to keep one finished request's KV cache; every request pays its full prefill")
    else:
        note = (f"prompt cache bounded to {entries} finished requests of at most {per_request / MIB:.0f} MiB each "
                f"(--prompt-cache-size {entries} --prompt-cache-bytes {limit}; mlx_lm.server keeps 10 with no byte "
                f"cap by default): it buys prompt reuse, a returning conversation or a repeated prefix skips its "
                f"prefill; it costs up to {limit / MIB:.0f} MiB, counted in the plan, at most half the memory the "
                "plan leaves free; older entries are evicted and prefilled again")
    cache = PromptCache(bytes=limit, limit_bytes=limit, entries=entries, note=note)
    if budget.unified:  # MLX arrays live in unified memory, on the GPU's side of the plan
        return replace(plan, gpu_bytes=plan.gpu_bytes + limit, prompt_cache=cache, levers=plan.levers + (note,))
    return replace(plan, host_bytes=plan.host_bytes + limit, prompt_cache=cache, levers=plan.levers + (note,))


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
    bpe = KV_BYTES_PER_ELEMENT.get(plan.kv_cache_type, VLLM_KV_BYTES.get(plan.kv_cache_type, 2.0))
    per_layer = model.kv_bytes_per_token_per_layer(bpe)
    full = model.full_attention_layers * avg_context * per_layer
    swa = model.swa_layers * min(avg_context, model.sliding_window or avg_context) * per_layer
    return full + swa
