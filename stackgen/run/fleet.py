"""`stackgen up` for a service planned as separate engine instances behind a load balancer (capacity.separate).

`up` runs the processes the script target's deploy/<svc>/run.sh starts, each as a service of its own in the state
file (so `down`, `status` and `logs` see every one of them):

- `<svc>-1` .. `<svc>-N`: the instances, each with run-N.sh's command (stackgen.render.targets.fleet.instances: its
  port on 127.0.0.1, its GPUs), the engine serving under the service's own name;
- `<svc>`: HAProxy with the haproxy.cfg the targets render (stackgen.render.balancer), at the service's host:port,
  written to `.stackgen/stacks/<stack file>/fleet/<svc>-haproxy.cfg` and checked with `haproxy -c` first.

`up` waits until each instance's model answers, then until a completion through the balancer answers; a failure of
any of them stops everything this `up` started and names the one that failed. `down <svc>`, `status <svc>` and
`logs <svc>` take the service's name for all of its processes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from stackgen import engines
from stackgen.errors import LaunchError
from stackgen.plan.plan import ServicePlan
from stackgen.render.balancer import haproxy_config
from stackgen.render.targets.fleet import HAPROXY, instances, separate
from stackgen.run.state import write_new

INSTANCE = "instance"
BALANCER = "balancer"
BALANCER_EXTRA_S = 30.0  # after its instances answer: HAProxy marks them up after `rise 2` checks `inter 2s`
# HAProxy starts with the instances and marks a still-loading one down (fall 3 x inter 2s); once it answers, HAProxy
# needs rise 2 checks 2 s apart to send it traffic again. The balancer counts as ready only that long after its last
# instance answered, so `up --verify` and the first users reach every instance, not only the one that loaded first.
BALANCER_SETTLE_S = 2 * 2.0 + 2.0  # rise x inter, plus one interval for the check already in flight
CHECK_TIMEOUT_S = 30.0


def expand(services: list[ServicePlan]) -> list[ServicePlan]:
    """Each service as the processes `up` runs: itself, or its instances then its balancer."""
    names = {sp.name for sp in services}
    out: list[ServicePlan] = []
    for sp in services:
        if not separate(sp):
            out.append(sp)
            continue
        insts = instances(sp)
        taken = sorted(names & {f"{sp.name}-{i.index}" for i in insts})
        if taken:
            raise LaunchError(f"services.{sp.name}.replicas: `stackgen up` names its instances {sp.name}-1 .. "
                              f"{sp.name}-{len(insts)}, and the stack already has a service {taken[0]!r}; rename one "
                              "of them")
        for inst in insts:
            out.append(replace(inst.plan, name=f"{sp.name}-{inst.index}", unit_of=sp.name, unit_role=INSTANCE))
        out.append(replace(sp, unit_of=sp.name, unit_role=BALANCER))
    return out


def service_of(sp: ServicePlan) -> str:
    """The stack service a process belongs to."""
    return sp.unit_of or sp.name


def members(units: list[ServicePlan], balancer: ServicePlan) -> list[str]:
    """The names of the instances behind `balancer`."""
    return [u.name for u in units if u.unit_role == INSTANCE and u.unit_of == balancer.unit_of]


def served(sp: ServicePlan) -> ServicePlan:
    """The plan as the engine sees it: an instance serves under its service's name (--alias, as run-N.sh has it)."""
    return replace(sp, name=sp.unit_of) if sp.unit_role == INSTANCE else sp


def haproxy_binary() -> str:
    """HAProxy by the rule balancer.sh follows: on PATH, else the distribution's path."""
    found = shutil.which("haproxy")
    if found:
        return found
    if os.access(HAPROXY, os.X_OK):
        return HAPROXY
    raise LaunchError("HAProxy not found (on PATH or at " + HAPROXY + "): it balances the instances of a service "
                      "with replicas; install it (apt-get install haproxy, dnf install haproxy, brew install haproxy)")


def config_path(folder: Path, sp: ServicePlan) -> Path:
    """In the stack file's own state folder (StateDir.dir): two stack files of one folder may both have `chat`."""
    return config_file(folder, sp.name)


def config_file(folder: Path, service: str) -> Path:
    """The balancer config of `service` in the state folder `folder` (what `down` removes with the balancer)."""
    return folder / "fleet" / f"{service}-haproxy.cfg"


def drop_config(folder: Path, service: str) -> None:
    """Remove the balancer config of `service` (its balancer stopped: `down`, or an `up` that makes the fleet one
    engine again) and the fleet folder once no other fleet's config is left in it."""
    cfg = config_file(folder, service)
    cfg.unlink(missing_ok=True)
    try:
        cfg.parent.rmdir()
    except OSError:
        pass


def config_text(sp: ServicePlan) -> str:
    return haproxy_config(sp, header=f"# Generated by stackgen up: the balancer of {sp.name} (its instances: "
                                     f"{', '.join(f'{sp.name}-{i + 1}' for i in range(sp.replicas))})")


def balancer_command(sp: ServicePlan, root: Path) -> engines.Command:
    """HAProxy in the foreground (-db) on the rendered config; the config's digest is part of the environment's
    description so a changed config means a restart (NativeRunner.desired_hash hashes argv and env)."""
    digest = hashlib.sha256(config_text(sp).encode()).hexdigest()[:16]
    return engines.Command((haproxy_binary(), "-db", "-f", str(config_path(root, sp))),
                           {"STACKGEN_BALANCER_CONFIG": digest})


def write_config(sp: ServicePlan, root: Path, binary: str) -> Path:
    """Write the balancer's config and check it with `haproxy -c` (LaunchError naming the service when refused)."""
    path = config_path(root, sp)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_new(path, config_text(sp))  # never through a planted `<svc>-haproxy.tmp` symlink (audit a2 #8)
    try:
        r = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True, text=True,
                           timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"service {sp.name}: cannot check the balancer's config with {binary}: {exc}") from None
    if r.returncode != 0:
        raise LaunchError(f"service {sp.name}: {binary} -c refused {path} (exit {r.returncode}): "
                          f"{(r.stderr or r.stdout).strip()[-600:]}")
    return path
