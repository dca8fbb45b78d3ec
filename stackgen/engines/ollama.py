"""Ollama: the daemon, its registry and Modelfiles. llama-server underneath, so memory follows llama.cpp's rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath

from stackgen.engines import ollama_estimate
from stackgen.engines._formats import gguf_for
from stackgen.engines.base import (DEVICE_VARS, LLAMA_KV, ContainerImage, Engine, Knob, LaunchContext, Readiness,
                                   Unsupported, Weights, _count, _flash, _int, _layers)
from stackgen.errors import RenderError
from stackgen.plan.memory import (MIB, NO_PINS, OLLAMA_MIN_MEMORY, Budget, CacheSettings, MemoryPlan, Pins, plan_llamacpp,
                             with_rope)
from stackgen.models.facts import GIB, LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec

# Keys a Modelfile PARAMETER accepts (api/types.go Options + Runner).
PARAMETERS = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict", "num_keep", "seed",
    "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "temperature", "repeat_penalty",
    "presence_penalty", "frequency_penalty", "stop",
}
# Daemon environment variables stackgen may set (envconfig/config.go).
ENV_VARS = {
    "OLLAMA_HOST", "OLLAMA_ORIGINS", "OLLAMA_MODELS", "OLLAMA_KEEP_ALIVE", "OLLAMA_LOAD_TIMEOUT",
    "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE", "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_FLASH_ATTENTION", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_GPU_OVERHEAD", "OLLAMA_SCHED_SPREAD", "OLLAMA_DEBUG",
    "OLLAMA_NOPRUNE", "OLLAMA_NO_CLOUD",
    # Read by the llama-server runner, which inherits the daemon's environment (llm/llama_server.go: cmd.Env =
    # os.Environ()); Ollama passes no --cache-ram of its own, so without it the runner's 8 GiB default applies.
    "LLAMA_ARG_CACHE_RAM", "LLAMA_ARG_CTX_CHECKPOINTS",
}

# The runner's cache bounds go through its environment, not flags.
RUNNER_CACHE = CacheSettings(cache_ram="LLAMA_ARG_CACHE_RAM", checkpoints="LLAMA_ARG_CTX_CHECKPOINTS", sep="=")


REMOVED_ENV = {"OLLAMA_INTEL_GPU", "OLLAMA_MULTIUSER_CACHE", "OLLAMA_NEW_ENGINE", "OLLAMA_TMPDIR",
               "OLLAMA_RUNNERS_DIR"}  # engines.md 2.2: gone from envconfig; old configs still set them


class Ollama(Engine):
    name = "ollama"
    display = "Ollama"
    short = "Ollama"
    layers_in_ram = True
    queue_metric = None  # no Prometheus endpoint
    default_port = 11434
    binary = "ollama"
    install_hint = "install Ollama from https://ollama.com/download"
    api_key = None  # Ollama has no API key for its own HTTP API: loopback only
    tls_flags = None
    system_prompt = True  # the Modelfile's SYSTEM
    hub_downloads = False  # models come from Ollama's registry
    chat_template_refusal = ""  # takes it: the Modelfile's TEMPLATE (render.engine_files)
    flags = None  # no flags: its daemon environment and Modelfile PARAMETERs are checked (check_settings)
    # the daemon answers before any model is loaded: /api/version (then a 1-token completion of the tuned model) is the probe
    readiness = Readiness("/api/version", "a 1-token completion", loading=None, completion=True)
    startup_extra_s = 30.0  # the daemon, then `ollama create` of the tuned model
    parallel_setting = "OLLAMA_NUM_PARALLEL"
    container = ContainerImage(
        entrypoint_args=1,  # the image's entrypoint is /bin/ollama
        cache_volume="ollama", cache_mount="/root/.ollama", store_copies_local=True,
        healthcheck=("ollama", "list"),  # the Ollama image has no curl; its client talks to the daemon
        pod_env=(("OLLAMA_MODELS", "{models}/ollama"),))
    rope_flag = False  # its runners read the GGUF's rope.scaling.* keys
    swaps_models = "swaps models itself (OLLAMA_MAX_LOADED_MODELS)"
    # Modelfile PARAMETERs and daemon variables the planner sizes (num_ctx and OLLAMA_CONTEXT_LENGTH are one knob).
    knobs = (
        Knob("context_per_request", ("num_ctx", "OLLAMA_CONTEXT_LENGTH"), _int),
        Knob("parallel", ("OLLAMA_NUM_PARALLEL",), _int),
        Knob("gpu_layers", ("num_gpu",), _layers),
        Knob("threads", ("num_thread",), _int),
        Knob("ubatch", ("num_batch",), _int),
        Knob("kv_cache_type", ("OLLAMA_KV_CACHE_TYPE",), LLAMA_KV),
        Knob("flash_attn", ("OLLAMA_FLASH_ATTENTION",), _flash),
        Knob("cache_ram_mib", ("LLAMA_ARG_CACHE_RAM",), _count),
        Knob("ctx_checkpoints", ("LLAMA_ARG_CTX_CHECKPOINTS",), _count),
    )

    def hardware_block(self, hw: HardwareSpec, explicit: bool, version: str | None = None) -> str | None:
        return None

    def weights(self, model: ModelFacts) -> Weights:
        if model.source == "hf":
            raise Unsupported("Ollama imports safetensors only for a few architectures; this HF folder is better "
                              "served by vLLM or converted to GGUF")
        if model.url and not model.ollama:
            raise Unsupported("pulls from its registry or hf.co only; a .gguf URL must be downloaded and named by path")
        split = _split_parts(model)
        if split:
            raise Unsupported(split)
        quant, note = gguf_for(model.quant, measured=model.gguf_sizes)
        if model.source == "catalog" and not model.ollama and not model.path:
            note = (note + "; " if note else "") + "no Ollama registry tag is known for this model: FROM needs a .gguf path"
        size, source = model.gguf_bytes(quant)
        return Weights(quant, size, source, note)

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        plan = with_rope(plan_llamacpp(model, wl, hw, budget, w.bytes, w.format, w.source,
                                       gpu_overhead=OLLAMA_MIN_MEMORY + 512 * 1024**2, pins=pins, cache=RUNNER_CACHE),
                         model)
        if not plan.fits:
            return plan
        plan = self._as_ollama_places_it(plan, model, wl, hw, budget, w, pins)
        if not plan.fits:
            return plan
        note = (f"loaded models: OLLAMA_MAX_LOADED_MODELS=1 and OLLAMA_KEEP_ALIVE=-1 keep exactly the planned model "
                f"resident with OLLAMA_NUM_PARALLEL={plan.parallel} slots; the daemon's defaults (3 models per GPU, "
                "unloaded after 5 minutes) would let a second model's weights and KV cache in beside it, which the "
                "plan does not count, and make the first request after idle wait for a reload")
        return replace(plan, levers=plan.levers + (note,))

    def _as_ollama_places_it(self, plan: MemoryPlan, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec,
                             budget: Budget, w: Weights, pins: Pins) -> MemoryPlan:
        """Check the layer split against Ollama's own estimate (engines/ollama_estimate.py, v0.12.10): its graph
        reserve and per-GPU minimum are larger than llama.cpp's, and a num_gpu past what it would place is loaded
        anyway and fails to allocate. When Ollama would place fewer layers, plan that many (num_gpu follows)."""
        gpus = ollama_gpus(hw, budget)
        if not gpus or plan.gpu_layers == 0 or pins.gpu_layers is not None:
            return plan
        est = ollama_estimate.estimate(ollama_model(model, w.bytes), gpus, num_ctx=plan.context_per_request,
                                       parallel=plan.parallel, num_batch=pins.ubatch or 512,
                                       kv_type=plan.kv_cache_type)
        planned = plan.gpu_layers + (1 if plan.gpu_layers >= model.layers else 0)  # + the output layer
        if est.layers >= planned:
            return plan
        layers = min(est.layers, model.layers)
        fewer = with_rope(plan_llamacpp(model, wl, hw, budget, w.bytes, w.format, w.source,
                                        gpu_overhead=OLLAMA_MIN_MEMORY + 512 * 1024**2,
                                        pins=replace(pins, gpu_layers=layers, kv_cache_type=plan.kv_cache_type),
                                        cache=RUNNER_CACHE), model)
        why = (f"Ollama's own estimate (llm/memory.go estimateGPULayers, v0.12.10) places {est.layers} of "
               f"{est.model_layers} layers: it reserves a {est.graph / GIB:.2f} GiB compute graph and "
               f"{ollama_estimate.MINIMUM_MEMORY[gpus[0].library] // MIB} MiB per GPU, so the plan offloads "
               f"{fewer.gpu_layers} (num_gpu) instead of {plan.gpu_layers}")
        kept = tuple(lever for lever in plan.levers if lever.startswith("KV cache quantized"))
        return replace(fewer, levers=fewer.levers + kept + (why,))

    def rope_block(self, rope: LongContext) -> str | None:
        if rope.in_file:
            return None  # its runners read the GGUF's rope.scaling.* keys
        return ("Ollama has no RoPE-scaling PARAMETER (api/types.go Options): it applies YaRN only from a GGUF's "
                f"rope.scaling keys, and this model has none; ask for at most {rope.original_context} tokens or use "
                "llama.cpp")

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        if backend != "auto":
            return (f"structured_output.backend {backend} is a vLLM setting; Ollama constrains output with "
                    "llama.cpp's grammar sampler (leave backend: auto)"), ""
        return None, ("Ollama constrains each request that carries `format` (\"json\" or a JSON schema) on /api/chat, "
                      "or `response_format` on /v1/chat/completions: nothing to render; the schema becomes a grammar "
                      "checked against each sampled token (measure it: stackgen bench --json-schema FILE)")

    def argv(self, plan, ctx: LaunchContext) -> list[str]:
        return [ctx.binary, "serve"]

    def env(self, plan) -> dict[str, str]:
        m = plan.memory
        env = {
            "OLLAMA_HOST": f"{plan.host}:{plan.port}",
            "OLLAMA_NUM_PARALLEL": str(m.parallel),
            "OLLAMA_MAX_LOADED_MODELS": "1",
            "OLLAMA_CONTEXT_LENGTH": str(m.context_per_request),
            "OLLAMA_KEEP_ALIVE": "-1",  # a served model stays loaded; unloading is what makes the first user wait
            # on, as the memory plan counts it (plan_llamacpp: flash attention unless an override pins it off): off,
            # llama.cpp materializes the attention scores, n_ctx x n_batch x n_head x 4 B (5 GiB for 10 x 8k slots),
            # which the plan did not count for f16 KV caches. Ollama turns it off itself where a GPU cannot run it.
            "OLLAMA_FLASH_ATTENTION": "1",
            "OLLAMA_KV_CACHE_TYPE": m.kv_cache_type,
            "OLLAMA_NO_CLOUD": "1",
            **runner_cache_env(m),
            # Ollama always allows localhost origins; anything else only when the stack lists it (never '*').
            **({"OLLAMA_ORIGINS": ",".join(plan.cors_origins)} if plan.cors_origins else {}),
        }
        env.update({k: str(v) for k, v in plan.spec.overrides.items() if k in ENV_VARS})
        return env

    def modelfile_parameters(self, plan) -> list[tuple[str, str]]:
        """PARAMETERs pinned from the plan: num_ctx and num_gpu above all (the daemon's guesses are the OOM trap)."""
        m = plan.memory
        params = {
            "num_ctx": str(m.context_per_request),
            "num_gpu": str(m.gpu_layers if m.gpu_layers < m.total_layers else m.total_layers + 1),
            "num_thread": str(plan.threads),
            # a request that names no max_tokens may answer up to its context (Ollama's default -1 never stops, the
            # workload's typical output_tokens would cut half the answers short)
            "num_predict": str(m.context_per_request),
        }
        for k, v in plan.spec.overrides.items():
            if k in PARAMETERS:
                params[k] = str(v).lower() if isinstance(v, bool) else str(v)
        return sorted(params.items())

    def model_tag(self, plan) -> str:
        return f"stackgen-{plan.name}"

    def setup_steps(self, plan, binary: str, folder, stack_file) -> list[list[str]]:
        """Pull a registry model, then `ollama create stackgen-<service>` from the Modelfile `render` writes too
        (engine_files.render_modelfile: one builder), with FROM naming the weights as this host sees them."""
        from pathlib import Path

        from stackgen.render.paths import local_weights
        from stackgen.render.engine_files import render_modelfile
        from stackgen.render.artifact import RenderContext
        from stackgen.run.state import write_new

        stack_dir = Path(stack_file).parent
        local = local_weights(plan)
        if local is not None:
            ref = str(Path(plan.model.path) if plan.model.path else (Path(stack_dir) / local).absolute())
        else:
            ref = plan.model_ref[len("ollama:"):] if plan.model_ref.startswith("ollama:") else plan.model_ref
        steps = [] if local is not None else [[binary, "pull", ref]]
        modelfile = Path(folder) / f"{plan.name}.Modelfile"
        ctx = RenderContext(stack_display=Path(stack_file).name)
        write_new(modelfile, render_modelfile(plan, ctx, ref, stack_dir))  # not through a planted symlink
        return steps + [[binary, "create", self.model_tag(plan), "-f", str(modelfile)]]

    def model_ref(self, plan) -> str:
        return plan.model.ollama or f"models/{plan.model.name}-{plan.memory.weights_format}.gguf"

    def served_model(self, plan) -> str:
        return self.model_tag(plan)

    def fetch_dir(self, state: str, cache: str) -> str:
        return f"{state}/models"

    def host_env(self, plan, state: str, cache: str, fetched: bool) -> dict[str, str]:
        return {"HOME": state, "OLLAMA_MODELS": self.fetch_dir(state, cache)}

    def extra_files(self, plan, ctx, stack_dir) -> list:
        from stackgen.render.engine_files import ollama_files

        return ollama_files(plan, ctx, stack_dir)

    def image(self, plan, accel: str, version: str | None) -> str:
        suffix = "rocm" if accel == "rocm" else ""
        tag = "-".join(p for p in (version, suffix) if p) or "latest"
        return f"ollama/ollama:{tag}"

    def check_settings(self, plan) -> None:
        """Ollama has no flags: the daemon variables stackgen passes and every override (a variable or a Modelfile
        PARAMETER) must be one current releases read."""
        for key in sorted(plan.env.keys() - DEVICE_VARS):  # the GPU runtime's pins and order are not Ollama's
            if key in REMOVED_ENV or key not in ENV_VARS:
                raise RenderError(f"services.{plan.name}: Ollama has no environment variable {key}")
        for key, value in sorted(plan.spec.overrides.items()):
            why = self.setting_problem(key, value)
            if why:
                raise RenderError(f"services.{plan.name}.overrides: {why}")

    def knows_setting(self, key: str) -> bool:
        return key in ENV_VARS or key in PARAMETERS

    def setting_problem(self, key: str, value) -> str | None:
        from stackgen.engines.ollama_modelfile import check_parameter

        if key in REMOVED_ENV:
            return f"Ollama removed {key}; current releases ignore it"
        if key not in ENV_VARS and key not in PARAMETERS:
            return (f"Ollama has no setting {key} (overrides take the daemon's OLLAMA_* variables stackgen passes "
                    "or Modelfile PARAMETERs)")
        if key in PARAMETERS:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            try:
                check_parameter(key, text)
            except RenderError as exc:
                return str(exc)
        return None


def _split_parts(model: ModelFacts) -> str:
    """Why a split GGUF (x-00001-of-0000N.gguf, named by its first part) cannot be imported; "" when it is not one.
    `ollama create` uploads only the file FROM names (parser/parser.go fileDigestMap: a file path is that one file);
    since v0.30.0 the server then refuses the part ("split GGUF ... has 1 shards, expected N", server/create.go
    mergeSplitGGUFLayers), and before (v0.12.10) it stores part 1 alone as a blob named by its digest, which
    llama.cpp's loader cannot open the other parts from ("invalid split file name", llama-model-loader.cpp)."""
    from stackgen.models import gguf

    name = PurePosixPath(model.path or "").name
    parts = gguf.split_part_names(name) if model.source == "gguf" else None
    if not parts or len(parts) < 2:
        return ""
    merged = name[:gguf.SPLIT_NAME.search(name).start()] + ".gguf"
    return (f"cannot import a split GGUF ({name} is the first of {len(parts)} parts): `ollama create` uploads only "
            f"the file FROM names, and Ollama refuses it or fails to load it; merge the parts into one file "
            f"(`llama-gguf-split --merge {name} {merged}`, in their folder) and name {merged}, or use llama.cpp")


def ollama_gpus(hw: HardwareSpec, budget: Budget) -> list[ollama_estimate.GPU]:
    """The GPUs as Ollama's estimate sees them: the budget left for this service, split evenly."""
    n = sum(g.count for g in hw.gpus)
    if not n or budget.gpu_bytes <= 0:
        return []
    library = {"nvidia": "cuda", "amd": "rocm", "apple": "metal"}.get(hw.gpus[0].vendor)
    if library is None:
        return []
    return [ollama_estimate.GPU(budget.gpu_bytes // n, library)] * n


def ollama_model(model: ModelFacts, weights: int) -> ollama_estimate.OllamaModel:
    """The estimate's view of a model; weights spread over layers + 1 (the output layer), as the plan does."""
    per_layer = weights // (model.layers + 1)
    return ollama_estimate.OllamaModel(
        architecture=model.architecture, block_count=model.layers, embedding=model.hidden, heads=model.heads,
        kv_heads=model.kv_heads, head_k=model.head_dim_k, head_v=model.head_dim_v, vocab=model.vocab,
        layer_bytes=per_layer, output_bytes=per_layer, sliding_window=model.sliding_window or 0,
        kv_heads_per_layer=model.kv_heads_per_layer, recurrent_state_bytes=model.recurrent_state_bytes)


def runner_cache_env(m: MemoryPlan) -> dict[str, str]:
    """The prompt cache and checkpoint bounds the plan counted, for the llama-server runner."""
    cache = m.prompt_cache
    if not cache.note:
        return {}
    env = {"LLAMA_ARG_CACHE_RAM": str(cache.limit_bytes // MIB)}
    if cache.checkpoints is not None:
        env["LLAMA_ARG_CTX_CHECKPOINTS"] = str(cache.checkpoints)
    return env
