"""The compose target: one compose/compose.yaml for the whole stack, plus compose/<service>.env files.

Design choices (each one is a reliability property, see reference/reliability.md):
- YAML is built as data and dumped with yaml.safe_dump, so "on"/"no"/"8080" stay strings and nothing a user wrote
  can break the document's structure.
- Ports are published on 127.0.0.1 unless serve.host says otherwise: Docker's iptables rules bypass host firewalls.
- Secrets never land in the file: the API key is passed through from the user's environment by interpolation
  (`LLAMA_API_KEY: ${MY_KEY:?...}`), so compose refuses to start when it is missing instead of serving unprotected.
- Each container gets init, no-new-privileges and no capabilities; read-only root filesystems where the engine
  writes only to its volumes.
- The file names its Compose project (`name: stackgen-<stack>`): without it Compose names the project after the
  folder, `compose`, for every stack, so `up` of one stack would recreate another's same-named containers and share
  its volumes and network. Stack names are already `[a-z0-9][a-z0-9-]*` (spec NAME_RE; the default one is the
  folder's name slugged to that), a subset of Compose's `[a-z0-9][a-z0-9_-]*`, so the prefix keeps it valid.
  Compose v1 (docker-compose 1.x, end of life) rejects `name:`; the header says so.
- MLX has no container image (it needs Metal, which containers on macOS cannot reach): MLX services are left out
  with a comment; a stack with nothing but MLX services is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from stackgen import engines
from stackgen.render.paths import output_folder
from stackgen.render.container_spec import (CAP_DROP, SECURITY_OPT, Container, ModelMount, _container,  # noqa: F401
                                            HF_TOKEN, accelerator, container_command, container_for, engine_env,
                                            engine_key_env, hub_fetched, hub_token_note, image_for, key_value_note,
                                            model_mount)
from stackgen.render.engine_files import render_modelfile
from stackgen.errors import RenderError
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext
from stackgen.render.targets import fleet, refuse_multinode, refuse_tls, register

COMPOSE_DIR = "compose"
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # compose-spec's pattern for a project name


@dataclass
class ServiceParts:
    """What one service contributes: its compose entry, env files and named volumes."""

    entry: dict
    files: list[Artifact] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)


@register("compose")
def render_compose(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    refuse_tls(plan, "compose", "a TLS-terminating proxy service in front (Caddy, Traefik, nginx)")
    refuse_multinode(plan, "compose")
    compose_dir = _compose_dir(plan, ctx)
    services, notes, files, volumes = {}, [], [], set()
    for sp in plan.services:
        engine = engines.get(sp.engine)
        if engine.container is None:
            notes.append(f"service {sp.name!r} ({engine.short}) is not in this file: {engine.no_container}; run it "
                         "with the script target on the Mac itself")
            continue
        if fleet.separate(sp):  # fleet hook: N engine services + an HAProxy service (targets/fleet.py)
            more, fleet_files, fleet_volumes = fleet.compose(plan, sp, ctx, compose_dir)
            services.update(more)
            files += fleet_files
            volumes |= fleet_volumes
            continue
        parts = service_parts(sp, plan, ctx, compose_dir)
        services[sp.name] = parts.entry
        files += parts.files
        volumes |= parts.volumes
    if not services:
        shorts = sorted({engines.get(sp.engine).short for sp in plan.services})
        raise RenderError(f"{plan.stack_path}: the compose target has nothing to run: {', '.join(shorts)} services "
                          "cannot run in containers (no Metal); remove `compose` from targets or use the script target")
    doc = {"name": project_name(plan), "services": services}
    if volumes:
        doc["volumes"] = {name: {} for name in sorted(volumes)}
    text = _header(plan, ctx, notes) + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)
    return [Artifact(f"{COMPOSE_DIR}/compose.yaml", text)] + files


def project_name(plan: Plan) -> str:
    """The Compose project: `stackgen-<stack name>`, like the systemd units and `up --containers`' containers."""
    name = f"stackgen-{plan.stack_name}"
    if not PROJECT_RE.match(name):  # cannot happen for a loaded stack (spec NAME_RE); never write an invalid project
        raise RenderError(f"{plan.stack_path}: stack name {plan.stack_name!r} cannot name a Compose project: use "
                          "lowercase letters, digits and '-' in `name:`")
    return name


def service_parts(sp: ServicePlan, plan: Plan, ctx: RenderContext, compose_dir: Path | None) -> ServiceParts:
    c = container_for(sp, plan.stack_path, compose_dir)
    model = c.mount
    entry: dict = {"image": c.image, "init": True, "restart": "unless-stopped"}
    entry["command"] = list(c.command)
    env = dict(c.env)
    env_files = env_file_artifacts(sp, ctx, {k: v for k, v in env.items() if "$" not in v})
    if env_files:
        entry["env_file"] = [PurePosixPath(a.path).name for a in env_files]
    # A value with `$` goes here, escaped: env files are interpolated differently by compose v1 and v2.
    environment = {k: v for k, v in sorted(env.items()) if "$" in v}
    if c.key_env:
        environment[c.key_env] = Interpolated(f"${{{sp.api_key_env}:?set {sp.api_key_env} to the API key}}")
    if hub_fetched(sp):  # a gated Hub repo needs the token; empty when unset (Hub clients then send none)
        environment[HF_TOKEN] = Interpolated(f"${{{HF_TOKEN}:-}}")
    if environment:
        entry["environment"] = environment
    entry["ports"] = [publish(sp.host, sp.port)]
    entry["volumes"] = model.volumes
    entry.update(hardening(c))
    entry.update(devices(c))
    entry["healthcheck"] = healthcheck(sp)
    parts = ServiceParts(entry, env_files, set(model.named))
    if engines.get(sp.engine).model_tag(sp) is not None:
        _add_modelfile(parts, sp, plan, ctx, model.container_ref)
    parts.entry = escape_dollars(parts.entry)
    return parts


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


def publish(host: str, port: int) -> str:
    bind = {"localhost": "127.0.0.1", "::1": "[::1]", "::": "[::]"}.get(host, host)
    return f"{bind}:{port}:{port}"


# ---------------------------------------------------------------------------------------------- model and volumes


def _compose_dir(plan: Plan, ctx: RenderContext) -> Path:
    return Path(output_folder(plan.stack_path, ctx.out_dir, COMPOSE_DIR))


# ---------------------------------------------------------------------------------------------- env files


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


def hardening(c: Container) -> dict:
    out: dict = {"security_opt": list(SECURITY_OPT), "cap_drop": list(CAP_DROP)}
    if c.shm_size:
        # PyTorch needs shared memory; shm_size keeps the host's IPC namespace out of reach (unlike ipc: host).
        # The root filesystem stays writable: Triton and torch.compile write caches outside the volumes.
        out["shm_size"] = c.shm_size
    if c.read_only:
        out["read_only"] = True
        out["tmpfs"] = ["/tmp"]
    return out


def devices(c: Container) -> dict:
    accel = c.accel
    if accel == "cuda":
        # the GPUs the plan placed the service on (a second service on the same machine does not start on GPU 0)
        reservation = {"driver": "nvidia", "count": c.gpus, "capabilities": ["gpu"]}
        if c.gpu_ids:  # compose takes count or device_ids
            del reservation["count"]
            reservation["device_ids"] = [str(i) for i in c.gpu_ids]
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
    lines = [ctx.header().rstrip("\n"), f"# Stack {plan.stack_name}: `docker compose -f compose/compose.yaml up -d`.",
             f"# Compose project {project_name(plan)} (`name:` below): stacks do not replace each other's containers,",
             "# volumes or network. Needs Compose v2 (`docker compose`); docker-compose 1.x rejects `name:`.",
             "# Upgrading a deployment rendered without `name:` (project `compose`): `docker compose -p compose down` "
             "first."]
    keyed = sorted({sp.api_key_env for sp in plan.services if engine_key_env(sp)})
    for var in keyed:
        lines.append(f"# {var}: the API key is read from your shell (or a .env file you keep next to this file) "
                     "at `up` time; its value is never written here.")
    for sp in plan.services:
        engine = engines.get(sp.engine)
        if key_value_note(sp):
            lines.append(f"# {sp.name}: {key_value_note(sp)} ({sp.api_key_env}).")
        if hub_fetched(sp):
            lines.append(f"# {hub_token_note(sp)}: passed through from your shell (or .env) when set, never "
                         "written here.")
        tag = engine.model_tag(sp)
        if tag is not None:
            lines.append(f"# {sp.name}: after `up`, create the tuned model once: docker compose -f compose/compose.yaml "
                         f"exec {sp.name} ollama create {tag} -f /stackgen/Modelfile")
        if any(g.vendor == "apple" for g in sp.gpus) and engine.container is not None:
            lines.append(f"# {sp.name}: containers on macOS cannot use Metal; this service runs on the CPU here.")
    lines += [f"# {n}" for n in notes]
    return "\n".join(lines) + "\n"
