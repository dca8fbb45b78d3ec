"""Separate engine instances of one service behind a load balancer (`capacity.Capacity.separate`), per target.

The capacity plan (stackgen/plan/capacity.py) makes one instance's ServicePlan (its share of the users, its GPUs) and
gives every instance its own port (`capacity.ports`); the service's own host:port is the balancer's. Each target
renders the instances with its own one-instance code (nothing here knows an engine by name) and adds the balancer:

- script: `<svc>/run-<i>.sh` + `<svc>/<svc>-<i>.env` per instance (its port, its GPUs), `<svc>/haproxy.cfg`,
  `<svc>/balancer.sh`, and `<svc>/run.sh` that starts them all.
- systemd: one template unit `stackgen-<stack>-<svc>@.service`; instance N reads its port and GPUs from
  `/etc/stackgen/<stack>/<svc>@N.env` (rendered as `systemd/<svc>@N.env`); `stackgen-<stack>-<svc>.service` is
  the HAProxy balancer, which wants every instance.
- compose: services `<svc>-1` .. `<svc>-N` (NVIDIA device requests pinned by device_ids), and `<svc>`: HAProxy
  publishing the service's port, least connections, health checks on /health.
- kubernetes: see stackgen/render/targets/kubernetes.py (`replicas`, HorizontalPodAutoscaler), which calls
  `autoscaler()` here.

launchd, quadlet and llama-swap run one process per service: `refuse()` names the field and the fix.
vLLM on one node never gets here: the capacity plan runs its replicas as one server (--data-parallel-size).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stackgen import engines
from stackgen.engines.base import visible_devices as _visible_devices
from stackgen.render.balancer import haproxy_config
from stackgen.errors import RenderError
from stackgen.plan.capacity import INSTANCE_HOST
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext
from stackgen.spec.stack import LOOPBACK_HOSTS

LOOPBACK = INSTANCE_HOST  # instances listen here on one machine: the balancer is the service's endpoint
PORT_VAR = "STACKGEN_PORT"  # systemd: the instance's port, from its EnvironmentFile
HAPROXY = "/usr/sbin/haproxy"  # Debian/Ubuntu/Fedora package path
HAPROXY_IMAGE = "haproxy:2.8"  # the LTS branch (supported to 2028), official image
HAPROXY_CONTAINER_CFG = "/usr/local/etc/haproxy/haproxy.cfg"  # where the official image reads its config
DOCKER_DNS = "127.0.0.11:53"  # compose networks' embedded DNS server


@dataclass(frozen=True)
class Instance:
    index: int  # 1-based
    port: int
    gpu_ids: tuple[int, ...]  # host GPU indices; () on the CPU
    plan: ServicePlan  # the service's plan as this instance runs it (its port, loopback, its GPU env)


def separate(sp: ServicePlan) -> bool:
    return sp.capacity is not None and sp.capacity.separate


def instances(sp: ServicePlan) -> list[Instance]:
    cap = sp.capacity
    sets = sp.gpu_sets() if _uses_gpus(sp) else []
    out = []
    for i, port in enumerate(cap.ports):
        ids = tuple(sets[i]) if sets else ()
        env = dict(sp.env)
        env.update(visible_devices(sp, ids))
        out.append(Instance(i + 1, port, ids, replace(sp, host=LOOPBACK, port=port, env=env, gpu_ids=ids)))
    return out


def _uses_gpus(sp: ServicePlan) -> bool:
    return sp.memory.gpu_bytes > 0 and any(not g.unified for g in sp.gpus)


def visible_devices(sp: ServicePlan, ids: tuple[int, ...]) -> dict[str, str]:
    """The variables that pin a native process to its GPU set (host indices): engines.base.visible_devices; none
    for an instance without GPUs."""
    return _visible_devices(sp, ids) if ids else {}


def refuse(plan: Plan, target: str) -> None:
    """Targets that run one process per service cannot express separate instances behind a balancer."""
    for sp in plan.services:
        if separate(sp):
            raise RenderError(
                f"services.{sp.name}.replicas: {sp.replicas} separate {engines.get(sp.engine).display} instances "
                f"behind a load balancer are planned, and the {target} target runs one process per service; remove "
                f"`replicas:` (one instance), or drop {target} from targets and render the fleet with script, "
                "systemd, compose or kubernetes")


def _what(sp: ServicePlan) -> str:
    cap = sp.capacity
    return (f"{sp.replicas} {engines.get(sp.engine).display} instances ({cap.layout.label()}) behind HAProxy "
            f"(least connections, health checks on /health) at {sp.host}:{sp.port}")


# ---------------------------------------------------------------------------------------------- script


def script(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> list[Artifact]:
    from stackgen.render.targets.script import env_file, launcher

    out = []
    insts = instances(sp)
    for inst in insts:
        env_name = f"{sp.name}-{inst.index}.env"
        out.append(Artifact(f"{sp.name}/run-{inst.index}.sh", launcher(plan, inst.plan, ctx, env_name=env_name),
                            mode=0o755))
        out.append(Artifact(f"{sp.name}/{env_name}", env_file(inst.plan, ctx)))
    out.append(Artifact(f"{sp.name}/haproxy.cfg", haproxy_config(sp, header=ctx.header().rstrip("\n"))))
    out.append(Artifact(f"{sp.name}/balancer.sh", _balancer_sh(sp, ctx), mode=0o755))
    out.append(Artifact(f"{sp.name}/run.sh", _fleet_sh(sp, ctx, insts), mode=0o755))
    return out


def _balancer_sh(sp: ServicePlan, ctx: RenderContext) -> str:
    return (
        "#!/bin/sh\n" + ctx.header()
        + f"# The endpoint of {sp.name}: HAProxy on {sp.host}:{sp.port}, least connections over the instances in "
          "haproxy.cfg\n# (run-1.sh ...); an instance joins once its /health answers 200. Ctrl-C stops it.\n"
        + "set -eu\n\nhere=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd)\n"
        + "haproxy=$(command -v haproxy || true)\n"
        + "[ -n \"$haproxy\" ] || haproxy=" + HAPROXY + "\n"
        + "[ -x \"$haproxy\" ] || { echo \"balancer.sh: haproxy not found (apt-get install haproxy)\" >&2; exit 127; }\n"
        + "\"$haproxy\" -c -q -f \"$here\"/haproxy.cfg\n"
        + "exec \"$haproxy\" -db -f \"$here\"/haproxy.cfg\n")


def _fleet_sh(sp: ServicePlan, ctx: RenderContext, insts: list[Instance]) -> str:
    lines = ["#!/bin/sh\n", ctx.header(),
             f"# Starts {sp.name}: {_what(sp)}.\n",
             "# Each instance alone: run-N.sh; the balancer alone: balancer.sh. Ctrl-C (or SIGTERM) stops them all.\n",
             "set -eu\n\nhere=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd)\npids=\n",
             "stop() { trap - EXIT INT TERM; [ -z \"$pids\" ] || kill $pids 2>/dev/null || true; wait; }\n",
             "trap stop EXIT\ntrap 'exit 130' INT\ntrap 'exit 143' TERM\n\n"]
    for inst in insts:
        where = f"GPU {','.join(map(str, inst.gpu_ids))}" if inst.gpu_ids else "CPU"
        lines.append(f"\"$here\"/run-{inst.index}.sh & pids=\"$pids $!\"  # {LOOPBACK}:{inst.port}, {where}\n")
    lines.append("\"$here\"/balancer.sh & pids=\"$pids $!\"\n")
    lines.append("# Runs until one of them exits (its status is this script's).\nwhile :; do\n"
                 "    for pid in $pids; do\n        if ! kill -0 \"$pid\" 2>/dev/null; then\n"
                 "            wait \"$pid\" && exit 0 || exit $?\n        fi\n    done\n    sleep 1\ndone\n")
    return "".join(lines)


# ---------------------------------------------------------------------------------------------- systemd


def systemd(plan: Plan, sp: ServicePlan, ctx: RenderContext, binary: str | None) -> list[Artifact]:
    from stackgen.render.quoting import Expand, escape_text, systemd_quote
    from stackgen.render.targets import systemd as sd

    engine = engines.get(sp.engine)
    base = sd.unit_name(plan, sp).removesuffix(".service")
    template = f"{base}@.service"
    folder = f"/etc/stackgen/{plan.stack_name}"
    # One unit for every instance: %i (the instance number) names its env file and its state/cache folders.
    mark = "STACKGENINSTANCEMARK"
    where = sd._where(plan, sp, ctx.model_dir)
    where = replace(where, name=f"{base}-{mark}")
    sentinel = 65431  # the argv's port, replaced by ${STACKGEN_PORT} from the instance's env file
    cmd = engines.command(engine, replace(sp, host=LOOPBACK), binary=binary or sp.spec.binary or engine.binary,
                          model_ref=where.model_ref, host=LOOPBACK, port=sentinel, key_file=sd.CREDENTIAL,
                          chat_template=sd.chat_template_path(plan, sp))
    argv = []
    for a in cmd.argv:
        if a == str(sentinel):
            a = Expand("${" + PORT_VAR + "}")
        elif str(sentinel) in a:
            raise RenderError(f"services.{sp.name}: cannot place the instance port in {a!r}")
        argv.append(sd.CREDENTIAL if a == sd.CREDENTIAL else a)
    if sum(1 for a in argv if a == "${" + PORT_VAR + "}") != 1:
        raise RenderError(f"services.{sp.name}: the engine's command does not name its port once")
    key = sd._key_mode(sp, cmd)
    argv, tls = sd.tls_key_credential(sp, argv)
    values = sd._common(plan, replace(sp, host=LOOPBACK), ctx, where)
    env_files = [f"{folder}/{sp.name}@%i.env", *sd.hf_token_env_files(plan, sp)]
    if key == "env_file":
        env_files.append(f"{folder}/{sp.name}.env")
    values.update(
        description=escape_text(f"stackgen {plan.stack_name}/{sp.name}: {engine.display} serving {sp.model.name}, "
                                "instance ") + "%i",
        exec_start=systemd_quote(argv),
        # each instance's GPUs come from its own env file, not the whole fleet's set
        environment=sd._environment(replace(sp, env={k: v for k, v in sp.env.items()
                                                      if k not in visible_devices(sp, sp.gpu_ids)}), where),
        credential=f"api-key:{folder}/api-key" if key == "credential" else None, tls_credentials=tls,
        env_file=None, env_files=env_files,
        comments=[f"Instance %i of {sp.name} ({_what(sp)}); start them all with {base}.service.",
                  f"Its port and GPUs: {folder}/{sp.name}@%i.env (install systemd/{sp.name}@N.env there, mode "
                  "0644)."] + values["comments"] + sd._key_comments(plan, sp, key, cmd.key_env)
                 + sd.tls_comments(sp) + sd.chat_template_comments(plan, sp) + sd.hf_token_comments(plan, sp),
        requires=[], part_of=[f"{base}.service"],
    )
    unit = sd.unit_text(values).replace(mark, "%i")
    out = [Artifact(f"systemd/{template}", unit)]
    insts = instances(sp)
    for inst in insts:
        env = {PORT_VAR: str(inst.port), **visible_devices(sp, inst.gpu_ids)}
        text = ctx.header() + f"# {folder}/{sp.name}@{inst.index}.env: instance {inst.index} of {sp.name}.\n"
        text += "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
        out.append(Artifact(f"systemd/{sp.name}@{inst.index}.env", text))
    cfg = f"{folder}/{sp.name}-haproxy.cfg"
    out.append(Artifact(f"systemd/{sp.name}-haproxy.cfg", haproxy_config(sp, header=ctx.header().rstrip("\n"))))
    out.append(Artifact(f"systemd/{base}.service", _balancer_unit(plan, sp, ctx, binary, insts, cfg)))
    return out


def _balancer_unit(plan: Plan, sp: ServicePlan, ctx: RenderContext, binary: str | None, insts: list[Instance],
                   cfg: str) -> str:
    from stackgen.render.quoting import escape_text, quote_value, systemd_quote
    from stackgen.render.targets import systemd as sd

    base = sd.unit_name(plan, sp).removesuffix(".service")
    where = sd._Where(base, "", None)
    values = sd._common(plan, sp, ctx, where)
    members = [f"{base}@{i.index}.service" for i in insts]
    values.update(
        description=escape_text(f"stackgen {plan.stack_name}/{sp.name}: HAProxy in front of {len(insts)} instances"),
        comments=[f"The endpoint of {sp.name}: {_what(sp)}.",
                  f"Install {cfg} (systemd/{sp.name}-haproxy.cfg), {base}@.service and the instances' env files;",
                  f"then `systemctl start {base}` starts every instance too; stopping it stops them."],
        exec_start=systemd_quote([binary or HAPROXY, "-db", "-f", cfg]),
        environment=[], env_file=None, env_files=[], credential=None, after=members, wants=members,
        state_dir=None, cache_dir=None, read_only_paths=[quote_value(cfg, "config path")], bind_read_only_paths=[],
        protect_home="yes", memory_deny_write_execute=True, gpu_devices=(), timeout_start="30s",
        ip_localhost_only=sp.host in LOOPBACK_HOSTS, ip_reason=f"the service binds {sp.host}",
    )
    return sd.unit_text(values)


# ---------------------------------------------------------------------------------------------- compose


def compose(plan: Plan, sp: ServicePlan, ctx: RenderContext, compose_dir) -> tuple[dict, list[Artifact], set[str]]:
    """(compose services, files, named volumes) of the fleet."""
    from stackgen.render.targets.compose import COMPOSE_DIR, escape_dollars, publish, service_parts

    services, files, volumes = {}, [], set()
    insts = instances(sp)
    taken = {o.name for o in plan.services if o is not sp} & {f"{sp.name}-{i.index}" for i in insts}
    if taken:
        raise RenderError(f"services.{sp.name}.replicas: the compose target names its instances {sp.name}-1 .. "
                          f"{sp.name}-{len(insts)}, and the stack already has a service {sorted(taken)[0]!r}; rename "
                          "one of them")
    for inst in insts:
        # Inside its container an instance sees only its own GPUs (device_ids): no CUDA_VISIBLE_DEVICES there.
        parts = service_parts(replace(inst.plan, env=dict(sp.env)), plan, ctx, compose_dir)
        entry = parts.entry
        entry.pop("ports", None)  # reached by the balancer over the compose network only
        _pin_devices(sp, entry, inst)
        services[f"{sp.name}-{inst.index}"] = entry
        files += [a for a in parts.files if a.path not in {f.path for f in files}]
        volumes |= parts.volumes
    addresses = [f"{sp.name}-{i.index}:{i.port}" for i in insts]
    cfg = haproxy_config(sp, header=ctx.header().rstrip("\n"), addresses=addresses, bind_host="0.0.0.0",
                         resolver=DOCKER_DNS)
    files.append(Artifact(f"{COMPOSE_DIR}/{sp.name}/haproxy.cfg", cfg))
    services[sp.name] = escape_dollars({
        "image": HAPROXY_IMAGE, "init": True, "restart": "unless-stopped",
        "depends_on": {f"{sp.name}-{i.index}": {"condition": "service_started"} for i in insts},
        "ports": [publish(sp.host, sp.port)],
        "volumes": [f"./{sp.name}/haproxy.cfg:{HAPROXY_CONTAINER_CFG}:ro"],
        "read_only": True, "security_opt": ["no-new-privileges:true"], "cap_drop": ["ALL"],
    })
    return services, files, volumes


def _pin_devices(sp: ServicePlan, entry: dict, inst: Instance) -> None:
    """NVIDIA device requests name the instance's GPUs (device_ids; compose allows count or device_ids). Device
    files (AMD, Intel) cannot be split by GPU: the runtime's visible-devices variable pins those."""
    if not inst.gpu_ids:
        return
    for dev in entry.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []):
        dev.pop("count", None)
        dev["device_ids"] = [str(i) for i in inst.gpu_ids]
    if "deploy" not in entry:
        env = visible_devices(sp, inst.gpu_ids)
        if env:
            entry.setdefault("environment", {}).update(env)


# ---------------------------------------------------------------------------------------------- kubernetes


HPA_MAX_FACTOR = 2  # the autoscaler may grow a fleet to twice the planned size when requests queue
HPA_TARGET_WAITING = "1"  # average requests waiting per pod before another pod is added


def pods(sp: ServicePlan) -> int:
    """Pods of the Deployment: one per separate instance (one when vLLM serves its replicas data parallel)."""
    return sp.replicas if separate(sp) else 1


def autoscaler(sp: ServicePlan, name: str, labels: dict) -> dict | None:
    """A HorizontalPodAutoscaler on the engine's queue gauge (a Pods metric through the custom metrics API, e.g.
    prometheus-adapter), from the planned pods up to twice as many; None when the engine exports no queue gauge."""
    metric = getattr(engines.get(sp.engine), "queue_metric", None)
    if metric is None:
        return None
    low = pods(sp)
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": low, "maxReplicas": low * HPA_MAX_FACTOR,
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": metric},
                         "target": {"type": "AverageValue", "averageValue": HPA_TARGET_WAITING}}}],
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}}


def scrape_annotations(sp: ServicePlan, container_port: int) -> dict[str, str]:
    """The conventional Prometheus scrape annotations, so the queue gauge reaches the metrics API."""
    if getattr(engines.get(sp.engine), "queue_metric", None) is None:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(container_port), "prometheus.io/path": "/metrics"}


def kubernetes_header(sp: ServicePlan) -> list[str]:
    metric = getattr(engines.get(sp.engine), "queue_metric", None)
    lines = []
    if separate(sp):
        lines.append(f"# {sp.replicas} pods ({sp.capacity.layout.label()}), each one planned instance; the Service "
                     "spreads connections over the ready ones (kube-proxy picks at random, not by least connections).")
    else:
        lines.append(f"# One pod runs the planned {sp.capacity.layout.label()} as one data-parallel server (the engine "
                     "balances requests over its engine cores); the autoscaler adds whole pods.")
    if separate(sp) or metric:
        lines.append("# The weights PVC is ReadWriteMany so pods on several nodes share it (needs an RWX storage "
                     "class: NFS, CephFS, ...).")
    if metric:
        lines.append(f"# The HorizontalPodAutoscaler reads {metric} per pod through the custom metrics API (e.g. "
                     "prometheus-adapter scraping the pods' /metrics); without it the Deployment stays at its "
                     "planned replicas.")
    return lines
