"""Separate GPU instances of a service split the machine's CPU threads, as CPU-only fleets do (audit a3 #3: each of
4 RTX 4090 replicas kept all 16 cores, `-t 16` and a kubernetes cpu request of 16 each: 64 CPUs asked on a 16-core
node, so 2 of the 4 pods stayed Pending)."""

from __future__ import annotations

from pathlib import Path

import yaml

from stackgen.cli import load_and_plan
from stackgen.render.artifact import RenderContext, render_plan
from tools.stacks import plan_for

from plan.test_gpu_placement import TWO_FLEETS

FLEET = Path(__file__).parent.parent / "golden" / "fleet-llamacpp-4090" / "stack.yaml"


def flag(argv, name: str) -> str:
    return argv[list(argv).index(name) + 1]


def test_each_gpu_replica_gets_its_share_of_the_cores_in_the_command_and_the_pod_request():
    plan = load_and_plan(FLEET, None)[1]
    sp = plan.services[0]
    cores = plan.hardware.cpu.cores
    assert sp.replicas == 4 and sp.threads == cores // 4
    assert int(flag(sp.command, "-t")) * sp.replicas <= cores
    docs = list(yaml.safe_load_all(render_plan(plan, RenderContext("stack.yaml"), ["kubernetes"])[0].content))
    (c,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert int(c["resources"]["requests"]["cpu"]) * sp.replicas <= cores


def test_two_fleets_sharing_a_machine_split_each_service_share_over_its_instances(tmp_path):
    plan = plan_for(tmp_path, TWO_FLEETS)
    cores = plan.hardware.cpu.cores
    assert sum(sp.threads * sp.replicas for sp in plan.services) <= cores
    assert all(int(flag(sp.command, "-t")) == sp.threads >= 1 for sp in plan.services)
