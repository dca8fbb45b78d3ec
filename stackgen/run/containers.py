"""`up --containers`: services as containers through the Docker Engine API (the `docker` SDK; DOCKER_HOST honoured,
so podman's Docker API works too).

The container is what the compose target describes (same image, command, model mount, published port, hardening),
created through the API instead of a compose file. Each container is labelled with the stack file and a hash of its
spec: `up` keeps a running container whose hash is unchanged and replaces one whose spec changed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackgen import engines
from stackgen.errors import LaunchError
from stackgen.plan.plan import ServicePlan
from stackgen.run.state import ServiceState, StateDir, config_hash

LABEL = "dev.stackgen"
API_TIMEOUT_S = 60


def client():
    """A Docker API client from the environment (DOCKER_HOST, DOCKER_TLS_VERIFY, ...)."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise LaunchError("the `docker` Python package is missing: pip install docker") from None
    try:
        c = docker.from_env(timeout=API_TIMEOUT_S)
        c.ping()
        return c
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise LaunchError(f"cannot reach a Docker Engine API at {where}: {_short(exc)}. Start Docker, or podman's "
                          f"API (`podman system service --time=0 unix:///PATH/podman.sock`) and set "
                          f"DOCKER_HOST=unix:///PATH/podman.sock") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:300]


@dataclass
class ContainerSpec:
    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    ports: dict[str, tuple[str, int]]
    volumes: dict[str, dict[str, str]]
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def hash(self) -> str:
        return config_hash(self.command, self.environment, {
            "kind": "container", "image": self.image, "ports": {k: list(v) for k, v in self.ports.items()},
            "volumes": self.volumes, "options": {k: repr(v) for k, v in sorted(self.options.items())}})


def container_name(stack: str, service: str) -> str:
    return f"stackgen-{stack}-{service}"


def container_spec(sp: ServicePlan, stack_name: str, stack_file: Path) -> ContainerSpec:
    """The Docker API call for one service, from the neutral container spec the compose target writes too."""
    from stackgen.render.container_spec import CAP_DROP, SECURITY_OPT, container_for
    from stackgen.errors import RenderError

    engine = engines.get(sp.engine)
    if engine.container is None:
        raise LaunchError(f"service {sp.name}: {engine.short} cannot run in a container ({engine.no_container}); "
                          "run `up` without --containers")
    try:
        c = container_for(sp, str(stack_file), None)
    except RenderError as exc:
        raise LaunchError(str(exc)) from None
    env = dict(c.env)
    if c.key_env:
        key = os.environ.get(sp.api_key_env or "")
        if not key:
            raise LaunchError(f"service {sp.name}: serve.api_key_env names {sp.api_key_env}, which is not set")
        from stackgen.run.native import key_value_problem

        why = key_value_problem(sp, key, by_env=True)
        if why:  # up's preflight (check_keys) said so already, in these words; never hand the engine a key it splits
            raise LaunchError(why)
        env[c.key_env] = key
    from stackgen.render.container_spec import HF_TOKEN, hub_fetched

    if hub_fetched(sp) and os.environ.get(HF_TOKEN):  # a gated Hub repo, as run.sh (which inherits it) and compose
        env[HF_TOKEN] = os.environ[HF_TOKEN]
    volumes: dict[str, dict[str, str]] = {}
    for v in c.mount.volumes:
        src, _, rest = v.partition(":")
        bind, _, mode = rest.partition(":")
        if not src.startswith("/"):  # a named volume: one per stack
            src = f"stackgen-{stack_name}-{src}"
        volumes[src] = {"bind": bind, "mode": mode or "rw"}
    bind_host = {"localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0"}.get(sp.host, sp.host)
    options: dict[str, Any] = {"security_opt": list(SECURITY_OPT), "cap_drop": list(CAP_DROP)}
    if c.read_only:
        options["read_only"] = True
        options["tmpfs"] = {"/tmp": ""}
    if c.shm_size:
        options["shm_size"] = c.shm_size
    options.update(_devices(c.accel, c.gpus, c.gpu_ids))
    labels = {f"{LABEL}.stack-file": str(stack_file), f"{LABEL}.stack": stack_name, f"{LABEL}.service": sp.name}
    spec = ContainerSpec(container_name(stack_name, sp.name), c.image, list(c.command), env,
                         {f"{sp.port}/tcp": (bind_host, sp.port)}, volumes, labels, options)
    spec.labels[f"{LABEL}.config-hash"] = spec.hash()
    return spec


def _devices(accel: str, gpus: int, gpu_ids: tuple[int, ...] = ()) -> dict[str, Any]:
    if accel == "cuda":
        import docker

        if gpu_ids:  # the GPUs the plan placed the service on (capacity.place_gpus)
            return {"device_requests": [docker.types.DeviceRequest(device_ids=[str(i) for i in gpu_ids],
                                                                   capabilities=[["gpu"]])]}
        return {"device_requests": [docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]}
    if accel in ("rocm", "vulkan"):
        devs = ["/dev/kfd", "/dev/dri"] if accel == "rocm" else ["/dev/dri"]
        return {"devices": [f"{d}:{d}" for d in devs], "group_add": ["video", "render"]}
    return {}


class ContainerRunner:
    kind = "container"

    def __init__(self, stack_dir: Path, stack_name: str = "", stack_file: Path | None = None):
        self.stack_dir = stack_dir
        self.stack_name = stack_name
        self.stack_file = stack_file
        self._client = None
        self._specs: dict[str, ContainerSpec] = {}
        self._foreign: dict[str, str] = {}  # service -> why the recorded container is not its own

    @property
    def client(self):
        if self._client is None:
            self._client = client()
        return self._client

    def bind(self, stack_name: str, stack_file: Path) -> "ContainerRunner":
        self.stack_name, self.stack_file = stack_name, stack_file
        return self

    def spec(self, sp: ServicePlan) -> ContainerSpec:
        if sp.name not in self._specs:
            assert self.stack_file is not None
            self._specs[sp.name] = container_spec(sp, self.stack_name, self.stack_file)
        return self._specs[sp.name]

    def desired_hash(self, sp: ServicePlan) -> str:
        spec = self.spec(sp)
        self._ensure_image(spec.image, sp.name)
        return spec.labels[f"{LABEL}.config-hash"]

    def _ensure_image(self, image: str, service: str) -> None:
        from docker.errors import DockerException, ImageNotFound

        try:
            self.client.images.get(image)
            return
        except ImageNotFound:
            pass
        except DockerException as exc:
            raise LaunchError(f"service {service}: cannot inspect image {image}: {_short(exc)}") from None
        try:
            self.client.images.pull(image)
        except DockerException as exc:
            raise LaunchError(f"service {service}: image {image} is not present and could not be pulled "
                              f"({_short(exc)}); pull or build it first, or set `image:` in the stack") from None

    def start(self, sp: ServicePlan, sd: StateDir, budget_s: float) -> tuple[ServiceState, object]:
        from docker.errors import DockerException

        spec = self.spec(sp)
        self._remove_named(spec.name, sp)
        try:
            c = self.client.containers.run(spec.image, spec.command, name=spec.name, detach=True,
                                           environment=spec.environment, ports=spec.ports, volumes=spec.volumes,
                                           labels=spec.labels, **spec.options)
        except DockerException as exc:
            self._remove_named(spec.name)
            raise LaunchError(f"service {sp.name}: the container engine refused to start {spec.image}: "
                              f"{_short(exc)}") from None
        st = ServiceState(name=sp.name, engine=sp.engine, kind=self.kind, host=sp.host, port=sp.port,
                          config_hash=spec.labels[f"{LABEL}.config-hash"], started_at=time.time(),
                          model_name=engines.get(sp.engine).served_model(sp), container_id=c.id, container_name=spec.name,
                          argv=[spec.image, *spec.command], budget_s=budget_s)
        return st, c

    def _remove_named(self, name: str, sp: ServicePlan | None = None) -> None:
        """Remove the container named `name` before creating it again: only one this stack file started (its
        `dev.stackgen.stack-file` label). Another stack's container of the same name (two stack files of one folder
        without `name:`, or two folders with the same name) is refused, never removed."""
        from docker.errors import DockerException, NotFound

        try:
            c = self.client.containers.get(name)
            owner = (getattr(c, "labels", None) or {}).get(f"{LABEL}.stack-file")
            if self.stack_file is not None and owner != str(self.stack_file):
                whose = (f"stack file {owner}" if owner else "no stackgen stack (it has no dev.stackgen.stack-file "
                         "label)")
                fix = (f"`stackgen down {owner}` stops it" if owner and os.path.exists(owner)
                       else f"`docker rm -f {name}` removes it if it is no longer wanted")
                raise LaunchError(f"{self.stack_file}: service {sp.name if sp else name}: container {name} belongs to "
                                  f"{whose}; stackgen does not replace another stack's container. Give this stack a "
                                  f"name of its own (`name:` at the top of {self.stack_file.name}; containers are "
                                  f"named stackgen-<name>-<service>), or {fix}")
            c.remove(force=True)
        except NotFound:
            pass
        except DockerException as exc:
            raise LaunchError(f"cannot remove the old container {name}: {_short(exc)}") from None

    def _get(self, st: ServiceState):
        from docker.errors import DockerException, NotFound

        try:
            c = self.client.containers.get(st.container_id or st.container_name)
        except NotFound:
            return None
        except DockerException as exc:
            raise LaunchError(f"service {st.name}: cannot inspect its container: {_short(exc)}") from None
        labels = getattr(c, "labels", None) or {}
        if self.stack_file is not None and (labels.get(f"{LABEL}.stack-file") != str(self.stack_file)
                                            or labels.get(f"{LABEL}.service") != st.name):
            # a container id from a hand-edited state file (or a reused name): never stop or remove it
            self._foreign[st.name] = (f"container {getattr(c, 'name', st.container_id)} is not the one stackgen "
                                      f"started for service {st.name} (its labels name another stack file or "
                                      f"service)")
            return None
        return c

    def exited(self, st: ServiceState, handle: object | None) -> int | str | None:
        c = self._get(st)
        if c is None:
            return "container removed"
        if c.status in ("exited", "dead", "removing", "stopped"):
            code = (c.attrs.get("State") or {}).get("ExitCode")
            if (c.attrs.get("State") or {}).get("OOMKilled"):
                return "OOM-killed (137)"
            return code if isinstance(code, int) else c.status
        return None

    def is_alive(self, st: ServiceState) -> bool:
        try:
            c = self._get(st)
        except LaunchError:
            return False
        return c is not None and c.status == "running"

    def log_tail(self, st: ServiceState, lines: int) -> list[str]:
        if lines <= 0:  # [-0:] below would be every line
            return []
        try:
            c = self._get(st)
            if c is None:
                return []
            text = c.logs(tail=lines).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - logs are best effort in error paths
            return []
        return [ln.rstrip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()][-lines:]

    def logs_since(self, st: ServiceState, since: float) -> list[str]:
        try:
            c = self._get(st)
            if c is None:
                return []
            text = c.logs(since=int(since)).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001
            return []
        return [ln.rstrip() for ln in text.split("\n") if ln.strip()]

    def stop(self, st: ServiceState, grace_s: float) -> str:
        from docker.errors import DockerException, NotFound

        c = self._get(st)  # an unreachable API raises: the state entry stays for a later `down`
        if c is None:
            return self._foreign.pop(st.name, "")
        try:
            if c.status == "running":
                c.stop(timeout=max(1, int(grace_s)))
            c.remove(force=True)
        except NotFound:
            return ""
        except DockerException as exc:
            raise LaunchError(f"service {st.name}: cannot stop container {c.name}: {_short(exc)}") from None
        return ""

    def owned_pids(self, st: ServiceState) -> set[int]:
        try:
            c = self._get(st)
        except LaunchError:
            return set()
        if c is None:
            return set()
        state = c.attrs.get("State") or {}
        return {p for p in (state.get("Pid"), state.get("ConmonPid")) if isinstance(p, int) and p > 0}

    def rss(self, st: ServiceState) -> int | None:
        try:
            c = self._get(st)
            if c is None or c.status != "running":
                return None
            stats = c.stats(stream=False)
            return int((stats.get("memory_stats") or {}).get("usage") or 0) or None
        except Exception:  # noqa: BLE001 - stats are optional (some engines do not report them)
            return None

    def where(self, st: ServiceState) -> str:
        return f"container {st.container_name or (st.container_id or '')[:12]}"


def remove_labelled(stack_file: str, grace_s: float) -> list[str]:
    """Stop and remove every container labelled for `stack_file` (strays `down` finds beyond the state file)."""
    from docker.errors import DockerException

    c = client()
    out = []
    try:
        found = c.containers.list(all=True, filters={"label": f"{LABEL}.stack-file={stack_file}"})
    except DockerException as exc:
        raise LaunchError(f"cannot list containers: {_short(exc)}") from None
    for ct in found:
        try:
            if ct.status == "running":
                ct.stop(timeout=max(1, int(grace_s)))
            ct.remove(force=True)
            out.append(f"container {ct.name}")
        except DockerException:
            continue
    return out
