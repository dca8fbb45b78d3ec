"""What a service's container is, whoever runs it: `up --containers` (stackgen.run.containers, the Docker Engine API)
and the compose, quadlet and kubernetes targets. Built from the plan and the engine's facts (Engine.container), so
the running code does not depend on a render target.

`Container` is the neutral spec: image, command, environment, where the key goes, model mount, hardening and GPUs.
Each consumer writes it in its own format (a compose entry, a Docker API call, a quadlet unit, a pod).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from stackgen import engines
from stackgen.models.remote import hub_resolve_url
from stackgen.render.paths import local_weights, relative_to_folder, weight_files
from stackgen.engines.base import ContainerImage, LaunchContext, device_order
from stackgen.errors import RenderError
from stackgen.plan.plan import ServicePlan

# Radeon architectures ROCm supports (ROCm 6.x compatibility matrix); other consumer AMD cards use Vulkan.
ROCM_CONSUMER_ARCHS = {"gfx1030", "gfx1100", "gfx1101", "gfx1200", "gfx1201"}


SECURITY_OPT = ("no-new-privileges:true",)  # every container: no privilege escalation, no capabilities
CAP_DROP = ("ALL",)


@dataclass(frozen=True)
class Container:
    """One service as a container, in no tool's format."""

    image: str
    accel: str  # cpu | cuda | rocm | vulkan | intel
    command: tuple[str, ...]  # the engine's argv minus what the image's entrypoint runs
    env: dict[str, str]  # the engine's environment and its cache variables (never a secret)
    key_env: str | None  # the variable the engine reads the API key from (its value: serve.api_key_env at start)
    host: str
    port: int
    mount: "ModelMount"
    read_only: bool  # a read-only root filesystem with a tmpfs /tmp
    shm_size: str | None  # shared memory for PyTorch engines (their root stays writable for compile caches)
    gpus: int  # GPUs reserved (cuda)
    gpu_ids: tuple[int, ...] = ()  # which host GPUs (the plan's gpu_ids, capacity.place_gpus); () = any `gpus`


def container_for(sp: ServicePlan, stack_path: str, compose_dir: Path | None) -> Container:
    """The container of one service. `compose_dir` None names local weights absolutely (the Docker API)."""
    accel = accelerator(sp)
    image = image_for(sp, accel)
    mount = model_mount(sp, stack_path, compose_dir)
    facts = _container(sp)
    return Container(
        image=image, accel=accel, command=tuple(container_command(sp, mount.container_ref, mount.template_ref)),
        env=engine_env(sp, mount.env), key_env=engine_key_env(sp), host=sp.host, port=sp.port, mount=mount,
        read_only=not facts.shared_memory,
        shm_size=("16gb" if sp.memory.tensor_parallel > 1 else "2gb") if facts.shared_memory else None,
        gpus=engines.get(sp.engine).gpu_count(sp), gpu_ids=tuple(sp.gpu_ids))


def engine_key_env(sp: ServicePlan) -> str | None:
    """The variable a keyed service's engine reads its key from in a container (None: no key, or no key option)."""
    how = engines.get(sp.engine).api_key
    return how.env if sp.api_key_env and how is not None else None


HF_TOKEN = "HF_TOKEN"  # the Hub token variable every Hub client reads (huggingface_hub, llama-server -hf)


def hub_fetched(sp: ServicePlan) -> bool:
    """The service's engine downloads its model from the Hugging Face Hub when it starts (a gated repo needs
    HF_TOKEN there: compose, kubernetes and systemd pass it through, never its value; audit auda F8)."""
    return (engines.get(sp.engine).hub_downloads and local_weights(sp) is None
            and (not sp.model_ref.startswith(("http://", "https://")) or hub_resolve_url(sp.model_ref)))


def hub_token_note(sp: ServicePlan) -> str:
    return (f"{sp.name} fetches {sp.model_ref.removeprefix('hf:')} from the Hugging Face Hub at start: a gated repo "
            f"needs {HF_TOKEN}")


def key_value_note(sp: ServicePlan) -> str:
    """What the key's value must avoid once the engine reads it from its variable at container start ("": nothing):
    llama-server splits LLAMA_API_KEY on commas."""
    how = engines.get(sp.engine).api_key
    return how.env_note() if sp.api_key_env and how is not None else ""


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


def container_command(sp: ServicePlan, model_ref: str, chat_template: str | None = None) -> list[str]:
    """The engine's argv inside the container, minus what the image's entrypoint already runs; `chat_template`: the
    service's chat template file where it is mounted (model_mount)."""
    engine = engines.get(sp.engine)
    inside = replace(sp, host="0.0.0.0")
    ctx = LaunchContext(binary=engine.binary, model_ref=model_ref, host="0.0.0.0", port=sp.port,
                        chat_template=chat_template if engine.chat_template_flag else None)
    argv = engine.argv(inside, ctx)
    return argv[_container(sp).entrypoint_args:]  # what the image's entrypoint already runs


@dataclass
class ModelMount:
    container_ref: str
    volumes: list[str]
    named: list[str]
    env: dict[str, str]
    template_ref: str | None = None  # the chat template file inside the container (None: none)


TEMPLATE_MOUNT = "/stackgen-template"  # where a service's chat template file is mounted read-only (compose, quadlet's
# twin `up --containers`, kubernetes' ConfigMap)


def chat_template_file(sp: ServicePlan) -> str | None:
    """The chat template file the service's artifacts ship to its engine (services.<name>.chat_template, relative to
    the stack's folder), None when there is none or its engine reads none from a file (Engine.chat_template_flag).
    The one predicate every target asks (review L9: it was re-derived in six places)."""
    return sp.spec.chat_template if sp.spec.chat_template and engines.get(sp.engine).chat_template_flag else None


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
    if local is not None:  # every file: llama.cpp opens a split GGUF's other parts beside the first (paths.py)
        ref = f"/models/{PurePosixPath(local).name}"
        volumes += [f"{_host_path(sp, stack_path, f, compose_dir)}:/models/{PurePosixPath(f).name}:ro"
                    for f in weight_files(local)]
    if local is None or image.store_copies_local:  # an engine with its own store copies even local weights in
        volumes.append(f"{image.cache_volume}:{image.cache_mount}")
        named.append(image.cache_volume)
    else:
        env = {}
    if image.compile_cache is not None:  # compile artifacts: a warm restart skips the compile
        volumes.append(f"{image.compile_cache[0]}:{image.compile_cache[1]}")
        named.append(image.compile_cache[0])
    template = chat_template_file(sp)
    template_ref = None
    if template:  # the file the stack names, read-only, as the weights are
        template_ref = f"{TEMPLATE_MOUNT}/{PurePosixPath(template).name}"
        stack_folder = Path(stack_path).parent
        host = (relative_to_folder(stack_folder, template, compose_dir) if compose_dir is not None
                else str(Path(os.path.abspath(stack_folder / template))))
        volumes.append(f"{host}:{template_ref}:ro")
    return ModelMount(ref, volumes, named, env, template_ref)


def _host_path(sp: ServicePlan, stack_path: str, local: str, compose_dir: Path | None) -> str:
    """Relative to the compose file's folder (the same bytes in every clone), or absolute for the Docker API."""
    stack_folder = Path(stack_path).parent
    if compose_dir is not None:
        return relative_to_folder(stack_folder, local, compose_dir)
    if sp.model.path:  # a split GGUF's other parts lie beside the file the model was read from
        path, name = Path(sp.model.path), PurePosixPath(local).name
        return str(path if not name or name == path.name else path.with_name(name))
    return str((stack_folder / local).absolute())


def engine_env(sp: ServicePlan, extra: dict[str, str]) -> dict[str, str]:
    """The engine's environment in its container, with the GPU runtime's device order where it sees several GPUs
    (the runtime numbers the GPUs it is given again, by its own order: llama.cpp's -ts follows the host's)."""
    env = dict(engines.get(sp.engine).env(replace(sp, host="0.0.0.0")))
    env.update(device_order(sp))
    env.update(extra)
    return env
