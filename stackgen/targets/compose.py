"""The compose target: one compose/compose.yaml for the whole stack, plus compose/<service>.env files.

Design choices (each one is a reliability property, see reference/reliability.md):
- YAML is built as data and dumped with yaml.safe_dump, so "on"/"no"/"8080" stay strings and nothing a user wrote
  can break the document's structure.
- Ports are published on 127.0.0.1 unless serve.host says otherwise: Docker's iptables rules bypass host firewalls.
- Secrets never land in the file: the API key is passed through from the user's environment by interpolation
  (`LLAMA_API_KEY: ${MY_KEY:?...}`), so compose refuses to start when it is missing instead of serving unprotected.
- Each container gets init, no-new-privileges and no capabilities; read-only root filesystems where the engine
  writes only to its volumes.
- MLX has no container image (it needs Metal, which containers on macOS cannot reach): MLX services are left out
  with a comment; a stack with nothing but MLX services is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import yaml

from stackgen import engines
from stackgen.artifact_paths import local_weights, output_folder, relative_to_folder
from stackgen.engine_files import render_modelfile
from stackgen.engines.base import ContainerImage, LaunchContext
from stackgen.errors import RenderError
from stackgen.plan import Plan, ServicePlan
from stackgen.render import Artifact, RenderContext
from stackgen.targets import refuse_tls, register

COMPOSE_DIR = "compose"
# Radeon architectures ROCm supports (ROCm 6.x compatibility matrix); other consumer AMD cards use Vulkan.
ROCM_CONSUMER_ARCHS = {"gfx1030", "gfx1100", "gfx1101", "gfx1200", "gfx1201"}


@dataclass
class ServiceParts:
    """What one service contributes: its compose entry, env files and named volumes."""

    entry: dict
    files: list[Artifact] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)


@register("compose")
def render_compose(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    refuse_tls(plan, "compose", "a TLS-terminating proxy service in front (Caddy, Traefik, nginx)")
    compose_dir = _compose_dir(plan, ctx)
    services, notes, files, volumes = {}, [], [], set()
    for sp in plan.services:
        engine = engines.get(sp.engine)
        if engine.container is None:
            notes.append(f"service {sp.name!r} ({engine.short}) is not in this file: {engine.no_container}; run it "
                         "with the script target on the Mac itself")
            continue
        parts = service_parts(sp, plan, ctx, compose_dir)
        services[sp.name] = parts.entry
        files += parts.files
        volumes |= parts.volumes
    if not services:
        shorts = sorted({engines.get(sp.engine).short for sp in plan.services})
        raise RenderError(f"{plan.stack_path}: the compose target has nothing to run: {', '.join(shorts)} services "
                          "cannot run in containers (no Metal); remove `compose` from targets or use the script target")
    doc = {"services": services}
    if volumes:
        doc["volumes"] = {name: {} for name in sorted(volumes)}
    text = _header(plan, ctx, notes) + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)
    return [Artifact(f"{COMPOSE_DIR}/compose.yaml", text)] + files


def service_parts(sp: ServicePlan, plan: Plan, ctx: RenderContext, compose_dir: Path | None) -> ServiceParts:
    accel = accelerator(sp)
    model = model_mount(sp, plan.stack_path, compose_dir)
    entry: dict = {"image": image_for(sp, accel), "init": True, "restart": "unless-stopped"}
    entry["command"] = container_command(sp, model.container_ref)
    env = engine_env(sp, model.env)
    env_files = env_file_artifacts(sp, ctx, {k: v for k, v in env.items() if "$" not in v})
    if env_files:
        entry["env_file"] = [PurePosixPath(a.path).name for a in env_files]
    # A value with `$` goes here, escaped: env files are interpolated differently by compose v1 and v2.
    environment = {k: v for k, v in sorted(env.items()) if "$" in v}
    key_env = engine_key_env(sp)
    if key_env:
        environment[key_env] = Interpolated(f"${{{sp.api_key_env}:?set {sp.api_key_env} to the API key}}")
    if environment:
        entry["environment"] = environment
    entry["ports"] = [publish(sp.host, sp.port)]
    entry["volumes"] = model.volumes
    entry.update(hardening(sp))
    entry.update(devices(sp, accel))
    entry["healthcheck"] = healthcheck(sp)
    parts = ServiceParts(entry, env_files, set(model.named))
    if engines.get(sp.engine).model_tag(sp) is not None:
        _add_modelfile(parts, sp, plan, ctx, model.container_ref)
    parts.entry = escape_dollars(parts.entry)
    return parts


def engine_key_env(sp: ServicePlan) -> str | None:
    """The variable a keyed service's engine reads its key from in a container (None: no key, or no key option)."""
    how = engines.get(sp.engine).api_key
    return how.env if sp.api_key_env and how is not None else None


class Interpolated(str):
    """A value stackgen means compose to interpolate (the API key reference); every other `$` is escaped."""


def escape_dollars(value):
    """Compose interpolates `$VAR`/`${VAR}` in every value: a model path `${EVILVAR}` or `$HOME`, or an alias
    `${MY_KEY}` (the key in argv), would be substituted. `$$` is compose's literal `$`."""
    if isinstance(value, Interpolated):
        return str(value)
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: escape_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_dollars(v) for v in value]
    return value


def _add_modelfile(parts: ServiceParts, sp: ServicePlan, plan: Plan, ctx: RenderContext, model_ref: str) -> None:
    """The container's own Modelfile: FROM names the weights where the container sees them."""
    text = render_modelfile(sp, ctx, model_ref, Path(plan.stack_path).parent)
    parts.files.append(Artifact(f"{COMPOSE_DIR}/{sp.name}/Modelfile", text))
    parts.entry["volumes"].append(f"./{sp.name}:/stackgen:ro")


# ---------------------------------------------------------------------------------------------- images


def accelerator(sp: ServicePlan) -> str:
    """cpu | cuda | rocm | vulkan | intel: which image flavour the service needs."""
    gpus = [g for g in sp.gpus if not g.unified]
    uses_gpu = engines.get(sp.engine).uses_gpu(sp)
    if not gpus or not uses_gpu:
        return "cpu"
    g = gpus[0]
    if g.vendor == "nvidia":
        return "cuda"
    if g.vendor == "amd":
        return "rocm" if g.tier == "datacenter" or (g.arch or "") in ROCM_CONSUMER_ARCHS else "vulkan"
    return "intel"


def image_for(sp: ServicePlan, accel: str) -> str:
    if sp.spec.image:
        return sp.spec.image
    engine = engines.get(sp.engine)
    if engine.container is None:
        raise RenderError(f"services.{sp.name}: {engine.no_container}")
    return engine.image(sp, accel, sp.spec.engine_version or engine.container.default_version)


# ---------------------------------------------------------------------------------------------- command


def container_command(sp: ServicePlan, model_ref: str) -> list[str]:
    """The engine's argv inside the container, minus what the image's entrypoint already runs."""
    engine = engines.get(sp.engine)
    inside = replace(sp, host="0.0.0.0")
    ctx = LaunchContext(binary=engine.binary, model_ref=model_ref, host="0.0.0.0", port=sp.port)
    argv = engine.argv(inside, ctx)
    return argv[_container(sp).entrypoint_args:]  # what the image's entrypoint already runs


def publish(host: str, port: int) -> str:
    bind = {"localhost": "127.0.0.1", "::1": "[::1]", "::": "[::]"}.get(host, host)
    return f"{bind}:{port}:{port}"


# ---------------------------------------------------------------------------------------------- model and volumes


@dataclass
class ModelMount:
    container_ref: str
    volumes: list[str]
    named: list[str]
    env: dict[str, str]


def _container(sp: ServicePlan) -> ContainerImage:
    engine = engines.get(sp.engine)
    if engine.container is None:
        raise RenderError(f"services.{sp.name}: {engine.no_container}")
    return engine.container


def model_mount(sp: ServicePlan, stack_path: str, compose_dir: Path | None) -> ModelMount:
    """Local weights are bind-mounted read-only under /models; registry models live in a named cache volume.
    `compose_dir` None (the Docker API of `up --containers`) names the host file absolutely."""
    image = _container(sp)
    env = dict(image.cache_env)
    local = local_weights(sp)
    volumes, named = [], []
    ref = sp.model_ref
    if local is not None:
        ref = f"/models/{PurePosixPath(local).name}"
        volumes.append(f"{_host_path(sp, stack_path, local, compose_dir)}:{ref}:ro")
    if local is None or image.store_copies_local:  # an engine with its own store copies even local weights in
        volumes.append(f"{image.cache_volume}:{image.cache_mount}")
        named.append(image.cache_volume)
    else:
        env = {}
    if image.compile_cache is not None:  # compile artifacts: a warm restart skips the compile
        volumes.append(f"{image.compile_cache[0]}:{image.compile_cache[1]}")
        named.append(image.compile_cache[0])
    return ModelMount(ref, volumes, named, env)


def _host_path(sp: ServicePlan, stack_path: str, local: str, compose_dir: Path | None) -> str:
    """Relative to the compose file's folder (the same bytes in every clone), or absolute for the Docker API."""
    stack_folder = Path(stack_path).parent
    if compose_dir is not None:
        return relative_to_folder(stack_folder, local, compose_dir)
    return str(Path(sp.model.path) if sp.model.path else (stack_folder / local).absolute())


def _compose_dir(plan: Plan, ctx: RenderContext) -> Path:
    return Path(output_folder(plan.stack_path, ctx.out_dir, COMPOSE_DIR))


# ---------------------------------------------------------------------------------------------- env files


def engine_env(sp: ServicePlan, extra: dict[str, str]) -> dict[str, str]:
    env = dict(engines.get(sp.engine).env(replace(sp, host="0.0.0.0")))
    env.update(extra)
    return env


def env_file_artifacts(sp: ServicePlan, ctx: RenderContext, env: dict[str, str]) -> list[Artifact]:
    if not env:
        return []
    lines = []
    for key in sorted(env):
        value = env[key]
        if any(c in value for c in "\n\r\x00"):
            raise RenderError(f"services.{sp.name}: environment value of {key} contains a line break or NUL")
        lines.append(f"{key}={value}")
    text = ctx.header() + "# Non-secret engine settings; secrets come from your shell (see compose.yaml).\n"
    return [Artifact(f"{COMPOSE_DIR}/{sp.name}.env", text + "\n".join(lines) + "\n")]


# ---------------------------------------------------------------------------------------------- hardening, GPUs


def hardening(sp: ServicePlan) -> dict:
    out: dict = {"security_opt": ["no-new-privileges:true"], "cap_drop": ["ALL"]}
    if _container(sp).shared_memory:
        # PyTorch needs shared memory; shm_size keeps the host's IPC namespace out of reach (unlike ipc: host).
        # The root filesystem stays writable: Triton and torch.compile write caches outside the volumes.
        out["shm_size"] = "16gb" if sp.memory.tensor_parallel > 1 else "2gb"
    else:
        out["read_only"] = True
        out["tmpfs"] = ["/tmp"]
    return out


def devices(sp: ServicePlan, accel: str) -> dict:
    if accel == "cuda":
        count = engines.get(sp.engine).gpu_count(sp)
        reservation = {"driver": "nvidia", "count": count, "capabilities": ["gpu"]}
        return {"deploy": {"resources": {"reservations": {"devices": [reservation]}}}}
    if accel in ("rocm", "vulkan"):
        return {"devices": ["/dev/kfd", "/dev/dri"] if accel == "rocm" else ["/dev/dri"],
                "group_add": ["video", "render"]}
    if accel == "intel":
        return {"devices": ["/dev/dri"], "group_add": ["video", "render"]}
    return {}


def healthcheck(sp: ServicePlan) -> dict:
    url = f"http://localhost:{sp.port}{engines.get(sp.engine).readiness.path or '/health'}"
    test = ["CMD"] + [w.format(url=url) for w in _container(sp).healthcheck]  # the image's own check command
    start = sp.startup_budget_s  # the plan's one start-up budget
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 3, "start_period": f"{start}s"}


# ---------------------------------------------------------------------------------------------- header


def _header(plan: Plan, ctx: RenderContext, notes: list[str]) -> str:
    lines = [ctx.header().rstrip("\n"), f"# Stack {plan.stack_name}: `docker compose -f compose/compose.yaml up -d`."]
    keyed = sorted({sp.api_key_env for sp in plan.services if engine_key_env(sp)})
    for var in keyed:
        lines.append(f"# {var}: the API key is read from your shell (or a .env file you keep next to this file) "
                     "at `up` time; its value is never written here.")
    for sp in plan.services:
        engine = engines.get(sp.engine)
        tag = engine.model_tag(sp)
        if tag is not None:
            lines.append(f"# {sp.name}: after `up`, create the tuned model once: docker compose -f compose/compose.yaml "
                         f"exec {sp.name} ollama create {tag} -f /stackgen/Modelfile")
        if any(g.vendor == "apple" for g in sp.gpus) and engine.container is not None:
            lines.append(f"# {sp.name}: containers on macOS cannot use Metal; this service runs on the CPU here.")
    lines += [f"# {n}" for n in notes]
    return "\n".join(lines) + "\n"
