"""The `quadlet` target: one Podman Quadlet `.container` unit per service under quadlet/ (Podman >= 4.9).

Install under /etc/containers/systemd/ (or ~/.config/containers/systemd/ for a user); `systemctl daemon-reload` runs
Podman's generator, which turns each file into `<name>.service`. The container itself is the compose target's
(image, command inside the container, engine env, health check, cache volumes); what differs is how systemd holds it:
- GPUs through CDI (`AddDevice=nvidia.com/gpu=<i>`; `nvidia-ctk cdi generate` writes the spec) or device nodes
  (/dev/kfd, /dev/dri) for AMD and Intel.
- The same hardening intent as the systemd target, in the terms a container has: no new privileges, every
  capability dropped, a read-only root file system with tmpfs where the engine allows it (vLLM's Triton and
  torch.compile caches write outside the volumes), SELinux labels kept (weights are mounted `ro,z`), ports
  published on loopback unless serve.host says otherwise, and the API key as a Podman secret (`Secret=`), never in
  the file. Restart=on-failure (and RestartForceExitStatus=0: an engine that exits 0 by itself has stopped serving)
  with the systemd target's limits.
- Local weights are read from serve.model_dir on the host, as the systemd units read them.
- A model fetched from the Hugging Face Hub at start gets HF_TOKEN by reference: an optional
  `EnvironmentFile=-%E/stackgen/<stack>/hf-token.env` ([Service]) and `PodmanArgs=--env HF_TOKEN`, which copies it
  into the container only when the file set it; never its value.
Every value goes through systemd's quoting (stackgen.render.quoting): Quadlet unquotes Exec=/Environment= and writes
the words into ExecStart=, where systemd expands `%` specifiers and `$` variables, so both are doubled.
Keys are checked in tests/test_quadlet.py against the keys Podman 4.9's generator accepts
(tests/tools/vendor/podman-quadlet, read from pkg/systemd/quadlet/quadlet.go).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import PurePosixPath

from stackgen import engines
from stackgen.render.paths import installed_path, local_weights, weight_files
from stackgen.errors import RenderError
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext
from stackgen.render.quoting import check_value, escape_text, quote_arg, systemd_quote
from stackgen.render.targets import fleet, refuse_multinode, refuse_chat_template, refuse_tls, register
from stackgen.render.container_spec import (HF_TOKEN, accelerator, container_command, engine_env, engine_key_env,
                                            hub_fetched, hub_token_note, image_for, key_value_note)
from stackgen.render.targets.compose import healthcheck, publish
from stackgen.render.targets.systemd import RESTART_SEC, START_LIMIT_BURST, START_LIMIT_INTERVAL

QUADLET_DIR = "quadlet"
PULL_S = 900  # an engine image is several GB: the first start pulls it inside TimeoutStartSec


@register("quadlet")
def quadlet_target(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    fleet.refuse(plan, "quadlet")  # fleet hook: separate instances need a balancer (targets/fleet.py)
    refuse_tls(plan, "quadlet", "a TLS-terminating proxy in front (Caddy, Traefik, nginx)")
    refuse_chat_template(plan, "quadlet")
    refuse_multinode(plan, "quadlet")
    if plan.hardware.os != "linux":
        raise RenderError(f"the quadlet target needs Linux (Podman with systemd); this stack's hardware runs "
                          f"{plan.hardware.os}")
    return [Artifact(f"{QUADLET_DIR}/{unit_name(plan, sp)}.container", container_unit(plan, sp, ctx))
            for sp in plan.services]


def unit_name(plan: Plan, sp: ServicePlan) -> str:
    return f"stackgen-{plan.stack_name}-{sp.name}"


def container_unit(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> str:
    engine = engines.get(sp.engine)
    if engine.container is None or engine.model_tag(sp) is not None:
        runs = " and ".join(e.short for e in engines.ENGINES.values()
                            if e.container is not None and e.model_tag(sp) is None)
        raise RenderError(f"services.{sp.name}: the quadlet target runs {runs}; "
                          + (engine.no_container if engine.container is None else
                             f"{engine.short} needs its `{engine.binary} create` step (use the systemd or compose "
                             "target)"))
    name = unit_name(plan, sp)
    accel = accelerator(sp)
    ref, volumes, env = _weights(plan, sp, ctx)
    container = [("ContainerName", name), ("Image", _image(sp, image_for(sp, accel))),
                 ("Exec", systemd_quote(container_command(sp, ref)))]
    container += [("Environment", quote_arg(f"{k}={v}")) for k, v in sorted(engine_env(sp, env).items())]
    key_env = engine_key_env(sp)
    if key_env:
        container.append(("Secret", f"{_secret(plan)},type=env,target={key_env}"))
    container.append(("PublishPort", publish(sp.host, sp.port)))
    container += [("Volume", v) for v in volumes]
    nodes = devices(sp, accel)
    container += [("AddDevice", d) for d in nodes]
    if hub_fetched(sp):
        # a gated Hub repo needs HF_TOKEN (review M1, the twin of compose/kubernetes/systemd): Quadlet's Environment=
        # takes only NAME=value and EnvironmentFile= fails the start when the file is missing, so the optional
        # [Service] EnvironmentFile=- below sets it for podman and `--env HF_TOKEN` (no value) copies it into the
        # container only when set (podman skips an unset one): a public repo starts without the file
        container.append(("PodmanArgs", f"--env {HF_TOKEN}"))
    if any(d.startswith("/dev/") for d in nodes):
        # /dev/kfd and /dev/dri belong to the video/render groups: rootless, the container opens them only with the
        # user's supplementary groups kept (compose's group_add: [video, render]); quadlet has no GroupAdd= key
        container.append(("PodmanArgs", "--group-add keep-groups"))
    container += _health(sp)
    container += _hardening(sp)
    unit = [("Description", escape_text(f"stackgen {plan.stack_name}/{sp.name}: {engines.get(sp.engine).display} "
                                        f"serving {sp.model.name} (Podman)")),
            ("Wants", "network-online.target"), ("After", "network-online.target"),
            ("StartLimitIntervalSec", f"{START_LIMIT_INTERVAL}s"), ("StartLimitBurst", str(START_LIMIT_BURST))]
    service = [("Restart", "on-failure"), ("RestartForceExitStatus", "0"), ("RestartSec", f"{RESTART_SEC}s"),
               ("TimeoutStartSec", f"{PULL_S + sp.startup_budget_s}s")]
    if hub_fetched(sp):
        service.append(("EnvironmentFile", f"-{HF_TOKEN_FILE.format(stack=plan.stack_name)}"))
    sections = [("Unit", unit), ("Container", container), ("Service", service),
                ("Install", [("WantedBy", "multi-user.target default.target")])]
    return _header(plan, sp, ctx, name) + "\n".join(_section(t, kv) for t, kv in sections)


# %E: /etc for the system manager, ~/.config (XDG_CONFIG_HOME) for a user's (rootless): systemd reads it as the unit's
# owner, so the file stays 0600 either way
HF_TOKEN_FILE = "%E/stackgen/{stack}/hf-token.env"


def _secret(plan: Plan) -> str:
    return f"stackgen-{plan.stack_name}-api-key"


def _weights(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> tuple[str, list[str], dict[str, str]]:
    """Local weights bind-mounted read-only from serve.model_dir (`z`: a shared SELinux label, so the container may
    read them); registry models in a named cache volume per service."""
    image = engines.get(sp.engine).container
    assert image is not None  # container_unit refused the engines without an image
    env = dict(image.cache_env)
    local = local_weights(sp)
    volumes = []
    ref = sp.model_ref
    if local is not None:  # every file: llama.cpp opens a split GGUF's other parts beside the first (paths.py)
        ref = f"/models/{PurePosixPath(installed_path(local, ctx.model_dir)).name}"
        for f in weight_files(local):
            host = installed_path(f, ctx.model_dir)
            volumes.append(f"{_path(host)}:/models/{PurePosixPath(host).name}:ro,z")
        env = {}
    else:
        volumes.append(f"{unit_name(plan, sp)}-{image.cache_volume}:{image.cache_mount}")
    if image.compile_cache is not None:
        volumes.append(f"{unit_name(plan, sp)}-{image.compile_cache[0]}:{image.compile_cache[1]}")
    return ref, volumes, env


_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")  # an OCI reference: registry/name[:tag][@digest]


def _image(sp: ServicePlan, image: str) -> str:
    """Image= goes into the ExecStart= Podman's generator writes, where systemd expands `%` specifiers and `$`
    variables: `image: "x:${SG_KEY} %h"` came out as `Image=x:${SG_KEY} %h` (audit a2 #14). A reference has none
    of those characters, so anything else is refused, as Volume= paths are (compose and kubernetes escape it)."""
    check_value(image, "image")
    if not _IMAGE.match(image):
        bad = sorted({c for c in image if not re.match(r"[A-Za-z0-9._/:@+-]", c)}) or [image[:1]]
        raise RenderError(f"services.{sp.name}.image: {image!r} is not an image reference the quadlet target can "
                          f"write ({' '.join(repr(c) for c in bad)}: systemd expands '%' and '$' and splits on "
                          "spaces in the ExecStart= Podman generates; write a plain reference such as "
                          "registry.example/name:tag)")
    return image


def _path(path: str) -> str:
    check_value(path, "model path")
    if any(c in path for c in ' :"\\%$'):
        raise RenderError(f"serve.model_dir/model path {path!r}: a Volume= path cannot hold spaces, ':', quotes, "
                          "'%' or '$' (Podman splits on ':' and systemd expands '%' and '$'); rename it")
    return path


def devices(sp: ServicePlan, accel: str) -> list[str]:
    """CDI names for NVIDIA (one per planned GPU), device nodes for AMD (ROCm: kfd + dri; Vulkan: dri) and Intel."""
    if accel == "cuda":
        count = engines.get(sp.engine).gpu_count(sp)
        return [f"nvidia.com/gpu={i}" for i in (sp.gpu_ids or range(count))]  # the GPUs the plan placed it on
    if accel == "rocm":
        return ["/dev/kfd", "/dev/dri"]
    if accel in ("vulkan", "intel"):
        return ["/dev/dri"]
    return []


def _health(sp: ServicePlan) -> list[tuple[str, str]]:
    """Podman reads a JSON array in --health-cmd as an exec-form command (pkg/specgenutil makeHealthCheckFromCli);
    the compose test is ["CMD", ...], whose keyword Podman must not see here."""
    hc = healthcheck(replace(sp, host="0.0.0.0"))
    return [("HealthCmd", json.dumps(hc["test"][1:])), ("HealthInterval", hc["interval"]),
            ("HealthTimeout", hc["timeout"]), ("HealthRetries", str(hc["retries"])),
            ("HealthStartPeriod", hc["start_period"])]


def _hardening(sp: ServicePlan) -> list[tuple[str, str]]:
    out = [("RunInit", "true"), ("NoNewPrivileges", "true"), ("DropCapability", "all")]
    if engines.get(sp.engine).container.shared_memory:
        # PyTorch needs shared memory; Triton and torch.compile write caches outside the volumes.
        out.append(("ShmSize", "16g" if sp.memory.tensor_parallel > 1 else "2g"))
    else:
        out += [("ReadOnly", "true"), ("ReadOnlyTmpfs", "true")]
    return out


def _section(title: str, items: list[tuple[str, str]]) -> str:
    return f"[{title}]\n" + "".join(f"{k}={v}\n" for k, v in items)


def _header(plan: Plan, sp: ServicePlan, ctx: RenderContext, name: str) -> str:
    lines = [ctx.header().rstrip("\n"),
             f"# Install: sudo cp {name}.container /etc/containers/systemd/ && sudo systemctl daemon-reload && "
             f"sudo systemctl start {name}.service",
             "# (Podman >= 4.9; as a user: ~/.config/containers/systemd/ and systemctl --user.)"]
    if accelerator(sp) == "cuda":
        lines.append("# GPUs through CDI: generate the spec once with `sudo nvidia-ctk cdi generate --output="
                     "/etc/cdi/nvidia.yaml` (NVIDIA Container Toolkit).")
    local = local_weights(sp)
    if local is not None:
        for f in weight_files(local):
            lines.append(f"# Weights: install {f} (relative to the stack's folder) at "
                         f"{installed_path(f, ctx.model_dir)} (serve.model_dir), world-readable.")
    key_env = engine_key_env(sp)
    if key_env:
        lines.append(f"# API key: create the Podman secret once: printf '%s' \"${sp.api_key_env}\" | "
                     f"sudo podman secret create {_secret(plan)} -")
        lines.append(f"# Podman hands it to the engine as {key_env}; its value never appears in this file.")
        if key_value_note(sp):
            lines.append(f"# {key_value_note(sp)[0].upper()}{key_value_note(sp)[1:]}.")
    if hub_fetched(sp):
        lines.append(f"# {hub_token_note(sp)}: put `{HF_TOKEN}=<token>` in /etc/stackgen/{plan.stack_name}/"
                     f"hf-token.env (as a user: ~/.config/stackgen/{plan.stack_name}/hf-token.env), mode 0600;")
        lines.append("# optional (the unit starts without it). Its value is never written here.")
    return "\n".join(lines) + "\n"
