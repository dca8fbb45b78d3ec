"""SGLang: RadixAttention prefix cache and a cache-aware scheduler for many concurrent users on CUDA GPUs.

Everything here is read from the source of the pinned release, sglang 0.5.23 (the PyPI wheel; paths below are
inside its `sglang/` package, lines as in that wheel). The real argument parser of that release runs in CI
(`.ci/provision.sh` step `sglang`, tests/tools/sglang_parse.py, tests/integration/test_sglang_real.py).

Memory (srt/arg_groups/memory_hook.py, `handle_gpu_memory_settings`, from line 47):
- `--mem-fraction-static` is (weights + KV pool) / GPU memory; the rest, (1 - f), is the reserve for activations
  and CUDA graphs. SGLang's own default: reserved_mem (MB) = 512 + max(chunked_prefill_size, 2048) x 1.5
  + tp x pp / 8 x 1024 + decode graph max_bs x 2 + 8 x (number of prefill graph sizes), at least 10 GiB on a
  GPU over 60 GiB (lines 294-319); f = (gpu_mem - reserved) / gpu_mem (line 324).
- chunked_prefill_size and the decode CUDA-graph max_bs by GPU memory (lines 89-179): < 20 GiB 2048/8, < 35 GiB
  4096/48 (160 at TP >= 4), < 60 GiB 4096/32 (160), < 160 GiB 8192/256 (512), else 16384/512; max_bs is capped at
  --max-running-requests (lines 181-187).
- The KV pool (srt/mem_cache/kv_cache_configurator.py `_profile_available_bytes`, lines 2990-3060) is the GPU
  memory free after the weights load minus (1 - f) x the memory that was free before they loaded; per token it
  costs kv_heads / tp x (head_dim + v_head_dim) x layers x dtype bytes
  (srt/model_executor/pool_configurator.py `_compute_cell_size`, lines 340 and 491-499).
stackgen plans the same arithmetic, renders every value it sized (context, running requests, chunked prefill,
mem fraction) so the engine does not decide again, and counts the pool SGLang allocates at start.

HTTP (srt/entrypoints/http_server.py): `/health` answers 200 once the server is up (lines 721-760; a real one-token
generation only with SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION), `/v1/models` lists --served-model-name (line 1993).
The API key middleware (srt/utils/auth.py `decide_request_auth`, lines 74-110) lets /health and /metrics through.
CORS is `allow_origins=["*"]` with credentials, hard-coded (http_server.py lines 500-506) with no flag: stackgen
serves SGLang only behind its API key (see SGLang.key_required).
"""

from __future__ import annotations

import math
from dataclasses import replace

from stackgen.engines._formats import quantize_on_load, safetensors_weights
from stackgen.engines.base import (ApiKey, ContainerImage, Engine, FlagSource, Knob, LaunchContext, Readiness,
                                   Weights, server_gpu_refusal, _choice, _fraction, _int, apply_overrides,
                                   chat_template_args, tls_args)
from stackgen.errors import RenderError
from stackgen.plan.memory import (MIB, NO_PINS, VLLM_NON_TORCH_GIB, Budget, MemoryPlan, Pins, PromptCache,
                             context_for, gb, gpu_runtime_bytes, vllm_kv_bytes_per_request, with_rope)
from stackgen.models.facts import GIB, LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec

VERSION = "0.5.23"  # the release the flag table (profiles/engines/sglang.yaml) and the rules here are read from

# `--kv-cache-dtype` choices stackgen can size (srt/arg_groups/fields/model.py line 197; bytes per element).
KV_DTYPES = ("auto", "bf16", "bfloat16", "fp8_e4m3", "fp8_e5m2")
SGLANG_KV = _choice(*KV_DTYPES)

ALIASES = {"--tensor-parallel-size": "--tp-size", "--data-parallel-size": "--dp-size"}

KNOBS = (
    Knob("context_per_request", ("--context-length",), _int),
    Knob("parallel", ("--max-running-requests",), _int),
    Knob("gpu_memory_utilization", ("--mem-fraction-static",), _fraction),
    Knob("tensor_parallel", ("--tp-size", "--tensor-parallel-size"), _int),
    Knob("data_parallel", ("--dp-size", "--data-parallel-size"), _int),
    Knob("kv_cache_type", ("--kv-cache-dtype",), SGLANG_KV),
    Knob("max_batched_tokens", ("--chunked-prefill-size",), _int),
)

# SGLang has no API-key variable and no key-file flag: `--api-key VALUE` is the only way in (fields/serving.py
# line 160), which would put the key in argv (visible in ps), and the server logs its resolved arguments, key
# included, at start (srt/entrypoints/engine.py line 311: only watermark secrets are redacted). So stackgen starts
# it through this launcher: it takes the key from SGLANG_API_KEY (a stackgen name, not SGLang's), removes it from
# the environment the engine's worker processes inherit, puts it into sys.argv inside the process (the kernel's
# /proc/PID/cmdline keeps the argv it was started with, without the key), masks it in everything the process writes
# to stdout/stderr, and runs sglang.launch_server exactly as `python -m sglang.launch_server` does.
KEY_ENV = "SGLANG_API_KEY"
LAUNCHER = (  # one line: an argv element with no newline quotes the same way in run.sh, systemd, compose and pods
    f'import os, runpy, sys; k = os.environ.pop("{KEY_ENV}", ""); '
    'M = type("Masked", (), {"__init__": lambda s, f: setattr(s, "f", f), '
    '"write": lambda s, t: s.f.write(t.replace(k, "<api-key>")), "__getattr__": lambda s, n: getattr(s.f, n)}); '
    'k and (sys.argv.__setitem__(slice(1, 1), ["--api-key", k]), '
    'setattr(sys, "stdout", M(sys.stdout)), setattr(sys, "stderr", M(sys.stderr))); '
    'runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)'
)

# grammar backends (srt/arg_groups/choices.py line 131): xgrammar is the default when none is named.
GRAMMAR = {"auto": None, "xgrammar": "xgrammar", "outlines": "outlines", "guidance": "llguidance"}
SGLANG_STRUCTURED = ("SGLang compiles each distinct schema or grammar into a token mask with the {backend} backend "
                     "(--grammar-backend) and overlaps the compilation with decoding of other requests; "
                     "unconstrained requests do not pay (measure it: stackgen bench --json-schema FILE)")

# Host RAM: the tokenizer manager (HTTP, tokenizer) and detokenizer processes, plus one scheduler process per GPU
# rank (CUDA context, pinned staging buffers). An estimate of the same shape as vLLM's (memory._vllm_host_bytes).
HOST_BASE_GIB, HOST_PER_RANK_GIB = 3.0, 2.0


def default_batching(gpu_mem_mib: float, tp: int) -> tuple[int, int]:
    """(chunked_prefill_size, decode CUDA-graph max_bs) SGLang picks for a GPU of `gpu_mem_mib` MiB at `tp`
    (memory_hook.py lines 89-179)."""
    big_tp = tp >= 4
    if gpu_mem_mib < 20 * 1024:
        return 2048, 8
    if gpu_mem_mib < 35 * 1024:
        return 4096, 160 if big_tp else 48
    if gpu_mem_mib < 60 * 1024:
        return 4096, 160 if big_tp else 32
    if gpu_mem_mib < 160 * 1024:
        return 8192, 512 if big_tp else 256
    return 16384, 512


def prefill_graph_sizes(max_bs: int) -> int:
    """How many prefill CUDA graphs SGLang captures up to `max_bs` tokens (cuda_graph_hook.py lines 480-497;
    breakable prefill graphs are on by default on CUDA: model_executor/cuda_graph_config.py line 119)."""
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32)) + list(range(576, 1025, 64))
             + list(range(1280, 4097, 256)) + list(range(4608, max_bs + 1, 512)))
    return sum(1 for s in sizes if s <= max_bs)


def reserved_mib(gpu_mem_mib: float, chunked: int, max_running: int, tp: int) -> float:
    """The activation + CUDA-graph reserve SGLang keeps outside --mem-fraction-static (memory_hook.py 294-319)."""
    _, max_bs = default_batching(gpu_mem_mib, tp)
    max_bs = min(max_bs, max_running)
    reserve = 512 + max(chunked, 2048) * 1.5 + tp / 8 * 1024 + max_bs * 2 + prefill_graph_sizes(chunked) * 8
    if gpu_mem_mib > 60 * 1024:
        reserve = max(reserve, 10 * 1024)
    return reserve


def cuda_context_bytes(tier: str, tp: int) -> int:
    """Memory the CUDA context, cuBLAS and (with TP) NCCL take before SGLang measures what is free: the same CUDA
    runtime facts stackgen uses for vLLM (memory.VLLM_NON_TORCH_GIB; NCCL buffers with TP)."""
    return int((VLLM_NON_TORCH_GIB.get(tier, 0.35) + (1.0 if tp > 1 else 0.0)) * GIB)


def plan_sglang(model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, weights: int,
                weights_format: str, weights_source: str, pins: Pins = NO_PINS) -> MemoryPlan:
    ctx, capped = (pins.context_per_request, None) if pins.context_per_request else context_for(model, wl.context_tokens)
    users = pins.parallel or wl.concurrent_users
    n_gpus = hw.gpu_count
    gpu = min(hw.gpus, key=lambda g: g.memory_gib)  # the smallest bounds every rank (memory.plan_vllm)
    per_gpu = gpu_runtime_bytes(gpu)  # what CUDA reports as the device total; SGLang reads the same
    nominal = int(gpu.memory_gib * GIB)
    share = min(1.0, budget.gpu_bytes / (nominal * n_gpus)) if n_gpus else 0.0
    dp = pins.data_parallel or 1
    levers: list[str] = [capped] if capped else []
    if pins.tensor_parallel is not None:
        candidates = [pins.tensor_parallel]
    else:
        candidates = [tp for tp in (1, 2, 4, 8, 16) if tp * dp <= n_gpus and model.heads % tp == 0] or [1]
    kv_dtypes = (pins.kv_cache_type,) if pins.kv_cache_type else ("auto", "fp8_e4m3")
    best: MemoryPlan | None = None
    for tp in candidates:
        for kv in kv_dtypes:
            p = _candidate(model, ctx, users, tp, dp, kv, per_gpu, share, weights, budget, gpu.tier, pins, n_gpus)
            p = replace(p, weights_format=weights_format, weights_source=weights_source)
            if best is None:
                best = p
            if p.fits and _all_users_fit(p, model, ctx, users):
                return _with_levers(p, model, ctx, users, levers, True, pins)
            if p.fits and not best.fits:
                best = p
    assert best is not None
    if best.fits:
        return _with_levers(best, model, ctx, users, levers, False, pins)
    tp = best.tensor_parallel
    if tp * dp > n_gpus:
        why = f"needs {tp * dp} GPUs (tensor x data parallel) and {hw.label()} has {n_gpus}"
    elif model.heads % tp:
        why = f"{model.heads} attention heads do not divide over {tp} tensor-parallel ranks"
    else:
        why = (f"needs the {gb(best.weights_bytes)} of weights ({weights_format}) in GPU memory plus a KV pool for "
               f"one {ctx}-token request and {gb(best.overhead_bytes)} of activation/CUDA-graph reserve; "
               f"{hw.label()} has {gb(max(0, budget.gpu_bytes))} of GPU memory")
    return replace(best, shortfall=why + pins.pinned_by())


def _candidate(model: ModelFacts, ctx: int, users: int, tp: int, dp: int, kv: str, per_gpu: int, share: float,
               weights: int, budget: Budget, tier: str, pins: Pins, n_gpus: int) -> MemoryPlan:
    ranks = tp * dp
    gpu_mem_mib = per_gpu / MIB
    chunked = pins.max_batched_tokens or default_batching(gpu_mem_mib, tp)[0]
    cuda_ctx = cuda_context_bytes(tier, tp)
    # what SGLang sees free before the weights load: the device less the CUDA context, less what services planned
    # before this one on the same GPUs hold
    pre = int(per_gpu * share) - cuda_ctx
    reserve = int(reserved_mib(gpu_mem_mib, chunked, users, tp) * MIB)
    if pins.gpu_memory_utilization is not None:
        frac = pins.gpu_memory_utilization
    else:
        frac = math.floor((pre - reserve) / pre * 1000) / 1000 if pre > 0 else 0.0
    per_rank_weights = weights // tp
    pool = int(pre * frac) - per_rank_weights  # KV pool per rank (kv_cache_configurator.py 3007-3038)
    kv_req = vllm_kv_bytes_per_request(model, ctx, kv, tp)
    fits = model.heads % tp == 0 and ranks <= n_gpus and frac > 0 and pool >= kv_req
    return MemoryPlan(
        weights_bytes=weights * dp, kv_cache_bytes=max(0, pool) * ranks, compute_bytes=0,
        overhead_bytes=(reserve + cuda_ctx) * ranks, gpu_bytes=int(per_gpu * share) * ranks,
        host_bytes=int((HOST_BASE_GIB + HOST_PER_RANK_GIB * ranks) * GIB), gpu_layers=model.layers,
        total_layers=model.layers, context_per_request=ctx, parallel=users, kv_cache_type=kv, fits=fits,
        gpu_budget_bytes=budget.gpu_bytes, host_budget_bytes=budget.host_bytes, tensor_parallel=tp,
        gpu_memory_utilization=round(frac, 3), data_parallel=dp,
    )


def chunked_prefill(plan) -> int:
    """The --chunked-prefill-size the plan sized its reserve with: SGLang's default for the GPU (an override of the
    flag replaces it in argv, and the planner planned with that value)."""
    gpu = max(plan.gpus, key=lambda g: g.memory_gib)
    return default_batching(gpu_runtime_bytes(gpu) / MIB, plan.memory.tensor_parallel)[0]


def _all_users_fit(p: MemoryPlan, model: ModelFacts, ctx: int, users: int) -> bool:
    per_rank_pool = p.kv_cache_bytes // (p.tensor_parallel * p.data_parallel)
    return per_rank_pool >= vllm_kv_bytes_per_request(model, ctx, p.kv_cache_type, p.tensor_parallel) * users


def pool_tokens(p: MemoryPlan, model: ModelFacts) -> int:
    """Tokens the KV pool of one SGLang instance holds (its max_total_num_tokens)."""
    per_token = vllm_kv_bytes_per_request(model, 16, p.kv_cache_type, p.tensor_parallel) / 16
    return int(p.kv_cache_bytes // (p.tensor_parallel * p.data_parallel) / per_token) if per_token else 0


def _with_levers(p: MemoryPlan, model: ModelFacts, ctx: int, users: int, levers: list[str], all_fit: bool,
                 pins: Pins) -> MemoryPlan:
    out = list(levers)
    if p.tensor_parallel > 1 and pins.tensor_parallel is None:
        out.append(f"tensor parallel over {p.tensor_parallel} GPUs to hold the weights and KV cache")
    if p.kv_cache_type.startswith("fp8") and pins.kv_cache_type is None:
        out.append(f"KV cache in {p.kv_cache_type} to hold every user's context")
    if not all_fit:
        out.append(f"not every user fits at full context at once: the KV pool holds {pool_tokens(p, model)} tokens; "
                   "SGLang queues the rest (and evicts cached prefixes first)")
    note = (f"prompt cache: RadixAttention keeps finished requests' prefixes in the KV pool SGLang allocates once at "
            f"start (--mem-fraction-static {p.gpu_memory_utilization:.3f}: {pool_tokens(p, model)} tokens per "
            "instance) and evicts them LRU when live requests need the room, so prefix reuse costs no extra memory "
            "and RAM does not grow with traffic (hierarchical caching to RAM, --enable-hierarchical-cache, stays off)")
    return replace(p, levers=tuple(out) + (note,), prompt_cache=PromptCache(note=note))


class SGLang(Engine):
    name = "sglang"
    # --enable-custom-logit-processor: clients send serialized (dill) logit processors the server unpickles and runs
    # (SGLang's server arguments: "disabled by default for security"); --tool-server: gpt-oss's built-in tools.
    unsafe_flags = {"--enable-custom-logit-processor": ("running code it sends (unpickled by the server)", False),
                    "--tool-server": ("built-in tools (code execution, browsing)", False)}
    display = "SGLang"
    short = "SGLang"
    # Its own decode line (speed.BACKENDS["sglang"]): fitted on half of SGLang's 16 public single-stream rows (the
    # Qwen3 docs' SGLang 0.4.6.post1 run on one H20, 0.6B-32B, BF16/FP8/AWQ; decode_speed.yaml), checked on the other
    # half; before, SGLang plans decoded on vLLM's line, which those rows showed x1.5-x7.2 too fast. Prefill and
    # batched decode are vLLM's figures (no SGLang point fits them); PREFILL_CHECK["sglang"] states its 2 TTFTs.
    speed_backend = "sglang"
    default_port = 30000  # fields/serving.py line 66
    # The interpreter of the environment sglang is installed in: `python3 -c LAUNCHER` runs sglang.launch_server
    # (set `binary:` to that environment's python, e.g. .venv/bin/python, when python3 on PATH is another one).
    binary = "python3"
    install_hint = "pip install sglang into a Python environment (docs.sglang.ai) and point binary: at its python"
    api_key = ApiKey(env=KEY_ENV)  # read by LAUNCHER, never in argv
    tls_flags = ("--ssl-certfile", "--ssl-keyfile")  # fields/serving.py: uvicorn's TLS
    chat_template_flag = "--chat-template"  # "The buliltin chat template name or the path of the chat template file"
    knobs = KNOBS
    aliases = ALIASES
    flags = FlagSource("sglang.yaml", leading_positionals=2, help_args=("-m", "sglang.launch_server", "--help"))
    # /health answers 503 while the server starts (ServerStatus.Starting) and 200 once it serves (http_server.py
    # 721-760); the served model is then listed in /v1/models (line 1993)
    readiness = Readiness("/health", "/health 200 and the model in /v1/models", loading=(503, 404), listed_model=True)
    startup_extra_s = 120.0  # CUDA graph capture (decode up to max_bs, breakable prefill graphs) and warm-up
    parallel_setting = "--max-running-requests"
    container = ContainerImage(
        entrypoint_args=0,  # lmsysorg/sglang has no entrypoint for the server: the command is the whole argv
        cache_volume="hf-cache", cache_mount="/root/.cache/huggingface",  # sglang's docker/compose.yaml mounts it
        shared_memory=True, default_version=VERSION,
        healthcheck=("python3", "-c", "import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"),
        pod_env=(("HF_HOME", "{models}/huggingface"),))
    jit = True  # Triton kernels and torch.compile
    multi_instance = True
    tensor_parallel = True
    # SGLang answers every origin (CORS * with credentials, hard-coded): without a key any web page the user opens
    # could drive the model on loopback. The key is what keeps them out.
    key_required = ("answers cross-origin requests from any web page (CORS * with credentials is hard-coded in "
                    "sglang/srt/entrypoints/http_server.py, no flag turns it off), so stackgen serves it only behind "
                    "its API key")

    def hardware_block(self, hw: HardwareSpec, explicit: bool, version: str | None = None) -> str | None:
        if hw.is_apple:
            return "its Apple (MLX) backend is experimental; on Apple silicon MLX and llama.cpp serve natively"
        if not hw.gpus:
            return ("needs a CUDA GPU (its CPU backend targets Xeon servers with AMX and is not a supported serving "
                    "setup); this machine has none")
        return server_gpu_refusal(
            hw, intel="has no backend for Intel Arc GPUs (llama.cpp's SYCL/Vulkan serve them)",
            amd="its ROCm builds target AMD Instinct (MI300-class) GPUs; consumer Radeon cards are llama.cpp's",
            min_cc=7.5, cc="needs NVIDIA compute capability 7.5 (Turing) or newer for its FlashInfer/Triton kernels",
            amd_archs=("gfx942", "gfx950"))  # its ROCm images: MI300X / MI325X (gfx942), MI355X (gfx950)

    def weights(self, model: ModelFacts) -> Weights:
        return safetensors_weights(model, "SGLang", "its GGUF loading is limited to a few architectures")

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        # with_rope like every engine: a context past the trained one needs YaRN, which rope_block refuses for SGLang
        # (before, SGLang was planned and launched past the trained context with no RoPE scaling at all)
        return with_rope(plan_sglang(model, wl, hw, budget, w.bytes, w.format, w.source, pins), model)

    def rope_block(self, rope: LongContext) -> str | None:
        return ("stackgen does not render SGLang's RoPE override (--json-model-override-args) yet: it is not checked "
                "against SGLang's model config loader")

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        if backend not in GRAMMAR:
            return (f"has no {backend} grammar backend (--grammar-backend: xgrammar, outlines, llguidance)", "")
        return None, SGLANG_STRUCTURED.format(backend=GRAMMAR[backend] or "xgrammar (its default)")

    def argv(self, plan, ctx: LaunchContext) -> list[str]:
        m = plan.memory
        args = [ctx.binary, "-c", LAUNCHER, "--model-path", ctx.model_ref, "--host", ctx.host,
                "--port", str(ctx.port), "--served-model-name", plan.name,
                "--context-length", str(m.context_per_request), "--max-running-requests", str(m.parallel),
                "--mem-fraction-static", f"{m.gpu_memory_utilization:.3f}",
                "--chunked-prefill-size", str(chunked_prefill(plan))]
        if m.tensor_parallel > 1:
            args += ["--tp-size", str(m.tensor_parallel)]
        if m.data_parallel > 1:
            args += ["--dp-size", str(m.data_parallel)]
        if m.kv_cache_type != "auto":
            args += ["--kv-cache-dtype", m.kv_cache_type]
        if quantize_on_load(plan.model, m.weights_format):
            args += ["--quantization", "fp8"]  # dynamic fp8 from a bf16 checkpoint
        so = getattr(plan.spec, "structured_output", None)
        if so is not None and GRAMMAR.get(so.backend):
            args += ["--grammar-backend", GRAMMAR[so.backend]]
        # Longest-prefix-match first: the waiting request that shares the most cached prefix runs next, which is
        # what RadixAttention pays off on (managers/schedule_policy.py; it falls back to FCFS past 128 waiting).
        args += ["--schedule-policy", "lpm", "--enable-metrics"]
        args += tls_args(self, plan)
        args += chat_template_args(self, ctx)
        return apply_overrides(args, dict(plan.spec.overrides), ALIASES)

    def env(self, plan) -> dict[str, str]:
        return {"HF_HUB_OFFLINE": "1"} if plan.model.path else {}

    def schema_fields(self, schema: dict) -> dict | None:
        # OpenAI's response_format (srt/entrypoints/openai/protocol.py ResponseFormat: type json_schema)
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}}

    def host_env(self, plan, state: str, cache: str, fetched: bool) -> dict[str, str]:
        # HF downloads, Triton and torch compile caches, FlashInfer JIT kernels under HOME
        return {"HOME": state, "HF_HOME": f"{cache}/huggingface", "TRITON_CACHE_DIR": f"{cache}/triton"}

    def image(self, plan, accel: str, version: str | None) -> str:
        # The project's images (docs.sglang.ai, docker/compose.yaml): lmsysorg/sglang:v<release>-cu129 for CUDA,
        # -rocm700-mi30x for AMD Instinct.
        if accel == "cuda":
            return f"lmsysorg/sglang:v{version}-cu129"
        if accel == "rocm":
            return f"lmsysorg/sglang:v{version}-rocm700-mi30x"
        raise RenderError(f"services.{plan.name}: SGLang has no official {accel} image; set `image:` or use the "
                          "script target")

    def uses_gpu(self, plan) -> bool:
        return True

    def gpu_count(self, plan) -> int:
        return plan.memory.tensor_parallel * plan.memory.data_parallel
