"""mlx-lm's mlx_lm.server: Apple silicon unified memory, a dev loop rather than a serving stack."""

from __future__ import annotations

from stackgen.engines._formats import mlx_for
from stackgen.engines.base import (Engine, FlagSource, Knob, LaunchContext, Readiness, Unsupported, Weights, _int,
                                   apply_overrides)
from stackgen.plan.memory import NO_PINS, Budget, MemoryPlan, Pins, plan_mlx, with_rope
from stackgen.models.facts import LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec


LOCAL_ORIGINS = ("http://localhost", "http://127.0.0.1")


class Mlx(Engine):
    name = "mlx"
    display = "MLX (mlx_lm.server)"
    short = "MLX"
    speed_backend = "mlx"
    queue_metric = None  # no /metrics
    default_port = 8080
    binary = "mlx_lm.server"
    install_hint = "pip install mlx-lm (Linux CPU build: pip install 'mlx[cpu]' mlx-lm)"
    api_key = None  # mlx_lm.server has no API key option: loopback only
    tls_flags = None
    # mlx_lm/server.py: `tokenizer_config["chat_template"] = cli_args.chat_template`: the template's text itself, not
    # a file (a path would be used as the template).
    chat_template_refusal = ("takes the chat template's text itself on its command line (--chat-template), not a file")
    knobs = (Knob("parallel", ("--decode-concurrency",), _int),)
    flags = FlagSource("mlx.yaml")
    # mlx_lm.server answers HTTP before any model is loaded: a 1-token completion is the probe
    readiness = Readiness(None, "a 1-token completion", completion=True)
    parallel_setting = "the number of concurrent requests mlx_lm.server batches"
    no_container = "MLX needs Metal, which no container can reach"
    jit = True
    launchd = True
    rope_flag = False  # mlx_lm builds YaRN from config.json rope_scaling only

    def hardware_block(self, hw: HardwareSpec, explicit: bool, version: str | None = None) -> str | None:
        if hw.is_apple:
            return None
        if explicit and not hw.gpus:
            return None  # mlx's Linux CPU build: allowed when asked for by name (tests, development)
        return f"needs Apple silicon (this machine has {hw.label()})"

    def weights(self, model: ModelFacts) -> Weights:
        if model.source == "gguf":
            raise Unsupported("loads MLX or HF safetensors folders, not GGUF files")
        if model.source == "ollama":
            raise Unsupported("the model comes from Ollama's registry; MLX needs an MLX or HF folder")
        fmt, note = mlx_for(model.quant, default="bf16" if model.source == "hf" else "4bit")
        size, source = model.mlx_bytes(fmt)
        return Weights(fmt, size, source, note)

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        return with_rope(plan_mlx(model, wl, hw, budget, w.bytes, w.format, w.source, pins), model)

    def rope_block(self, rope: LongContext) -> str | None:
        if rope.in_file:
            return None  # mlx_lm builds YaRN from config.json rope_scaling (mlx_lm/models/rope_utils.py initialize_rope)
        return ("mlx_lm.server has no RoPE-scaling option: it applies YaRN only from the model folder's config.json "
                f"(add rope_scaling {{type: yarn, factor: {rope.factor:g}, original_max_position_embeddings: "
                f"{rope.original_context}}} there, as the model card says, or ask for at most {rope.original_context} "
                "tokens)")

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        # mlx_lm 0.32.2 server.py reads no response_format, grammar or schema field: requests are not constrained.
        return ("mlx_lm.server has no JSON-schema or grammar constraint (it ignores response_format); use "
                "llama.cpp or vLLM for structured output"), ""

    def argv(self, plan, ctx: LaunchContext) -> list[str]:
        args = [ctx.binary, "--model", ctx.model_ref, "--host", ctx.host, "--port", str(ctx.port),
                # the cap of a request that names no max_tokens: its planned context (mlx_lm's default is 512; the
                # workload's typical output_tokens would cut half the answers short)
                "--max-tokens", str(plan.memory.context_per_request)]
        if plan.memory.parallel > 1:
            args += ["--decode-concurrency", str(plan.memory.parallel)]
        cache = plan.memory.prompt_cache
        if cache.note:  # the bound the memory plan counted (memory.bound_mlx_cache)
            args += ["--prompt-cache-size", str(cache.entries), "--prompt-cache-bytes", str(cache.limit_bytes)]
        # mlx_lm.server answers every origin ('*') unless given a list; it matches the Origin header exactly. The
        # localhost origins stay allowed beside serve.cors_origins (the schema's "none beyond localhost").
        args += ["--allowed-origins", ",".join(dict.fromkeys((*LOCAL_ORIGINS, *plan.cors_origins)))]
        return apply_overrides(args, dict(plan.spec.overrides))

    def env(self, plan) -> dict[str, str]:
        return {"HF_HUB_OFFLINE": "1"} if plan.model.path else {}

    def model_ref(self, plan) -> str:
        m, fmt = plan.model, plan.memory.weights_format
        if m.mlx_repo and m.mlx_repo.endswith("-4bit") and fmt != "4bit":
            return m.mlx_repo[: -len("4bit")] + fmt  # mlx-community names each quantization by suffix
        return m.mlx_repo or m.hf_repo or m.name

    def served_model(self, plan) -> str:
        return ""  # mlx_lm.server serves the --model it was started with when a request names none

    def host_env(self, plan, state: str, cache: str, fetched: bool) -> dict[str, str]:
        return {"HOME": state, "HF_HOME": f"{cache}/huggingface"}

    def extra_files(self, plan, ctx, stack_dir) -> list:
        from stackgen.render.engine_files import mlx_files

        return mlx_files(plan, ctx)
