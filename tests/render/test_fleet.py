"""Separate engine instances behind a balancer (capacity.separate), rendered by every target that can express them
(stackgen/render/targets/fleet.py), each checked by the validator its one-instance tests use: `sh -n` and `haproxy -c`
(script), `systemd-analyze verify` + `security` (systemd), the compose-spec schema and `docker-compose config`
(compose), kubernetes-validate (kubernetes); launchd, quadlet and llama-swap refuse with the field and the fix.
vLLM on one node serves its replicas as one data-parallel server: its GPUs are reserved for every engine core."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stackgen.cli import load_and_plan
from stackgen.errors import RenderError
from stackgen.render.artifact import RenderContext, render_plan, write_tree
from stackgen.render.targets.systemd import render_units
from tools.stacks import plan_for
from tools.which import need
from tools.compose_v1 import compose_v1

GOLDEN = Path(__file__).parent.parent / "golden"
LLAMA = GOLDEN / "fleet-llamacpp-4090"
VLLM_DP = GOLDEN / "fleet-vllm-dp-h100"
CANARY = "canary-fleet-key-77"

CPU_FLEET = """
version: 1
name: cpufleet
hardware: cpu-server-64gb
workload: {{concurrent_users: 4, context_tokens: 1024, prompt_tokens: 128, output_tokens: 64}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: 2}}
targets: [{targets}]
"""


def golden_plan(case: Path):
    return load_and_plan(case / "stack.yaml", None)[1]


def render(plan, target: str) -> dict:
    return {a.path: a for a in render_plan(plan, RenderContext("stack.yaml"), [target])}




def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


# ---------------------------------------------------------------------------------------------- script


def test_script_renders_one_launcher_per_instance_on_its_port_and_gpu():
    plan = golden_plan(LLAMA)
    sp = plan.services[0]
    arts = render(plan, "script")
    assert sp.capacity.separate and sp.replicas == 4
    ports, gpus = [], []
    for i in range(1, 5):
        run = arts[f"chat/run-{i}.sh"]
        assert run.mode & 0o111 and f'. "$here"/chat-{i}.env' in run.content
        env = env_lines(arts[f"chat/chat-{i}.env"].content)
        gpus.append(env["CUDA_VISIBLE_DEVICES"])
        port = run.content.split("--port ")[1].split()[0]
        assert "--host 127.0.0.1" in run.content  # instances stay on loopback; the balancer is the endpoint
        ports.append(int(port))
    assert gpus == ["0", "1", "2", "3"]
    assert ports == list(sp.capacity.ports) and sp.port not in ports
    cfg = arts["chat/haproxy.cfg"].content
    assert f"bind 0.0.0.0:{sp.port}" in cfg and "balance leastconn" in cfg
    assert [f"127.0.0.1:{p}" in cfg for p in ports] == [True] * 4
    fleet_sh = arts["chat/run.sh"].content
    assert all(f'"$here"/run-{i}.sh &' in fleet_sh for i in range(1, 5)) and '"$here"/balancer.sh &' in fleet_sh
    assert "chat/chat.env" not in arts  # no one-instance launcher beside the fleet's


def test_rendered_scripts_parse_and_the_balancer_config_is_valid(tmp_path):
    plan = golden_plan(LLAMA)
    write_tree(tmp_path / "deploy", render_plan(plan, RenderContext("stack.yaml"), ["script"]))
    for script in sorted((tmp_path / "deploy" / "chat").glob("*.sh")):
        r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script.name}: {r.stderr}"
    haproxy = need("haproxy")
    cfg = tmp_path / "deploy" / "chat" / "haproxy.cfg"
    r = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------- systemd


def test_systemd_template_unit_takes_port_and_gpus_from_the_instance_env_file():
    plan = golden_plan(LLAMA)
    sp = plan.services[0]
    arts = {a.path: a for a in render_units(plan, RenderContext("stack.yaml"))}
    unit = arts["systemd/stackgen-fleet-chat@.service"].content
    assert '"--port" "${STACKGEN_PORT}"' in unit
    assert "EnvironmentFile=/etc/stackgen/fleet/chat@%i.env" in unit
    assert "PartOf=stackgen-fleet-chat.service" in unit and "CacheDirectory=stackgen-fleet-chat-%i" in unit
    for i, port in enumerate(sp.capacity.ports, 1):
        env = env_lines(arts[f"systemd/chat@{i}.env"].content)
        assert env == {"STACKGEN_PORT": str(port), "CUDA_VISIBLE_DEVICES": str(i - 1),
                       "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    balancer = arts["systemd/stackgen-fleet-chat.service"].content
    members = " ".join(f"stackgen-fleet-chat@{i}.service" for i in range(1, 5))
    assert f"Wants=network-online.target {members}" in balancer
    assert '"-f" "/etc/stackgen/fleet/chat-haproxy.cfg"' in balancer


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_fleet_units_verify_and_stay_hardened(tmp_path):
    stub = tmp_path / "engine"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    plan = golden_plan(LLAMA)
    for art in render_units(plan, RenderContext("stack.yaml"), binary=str(stub)):
        (tmp_path / Path(art.path).name).write_text(art.content)
    template = tmp_path / "stackgen-fleet-chat@.service"
    (tmp_path / "stackgen-fleet-chat@2.service").write_text(template.read_text())
    for name in ("stackgen-fleet-chat@2.service", "stackgen-fleet-chat.service"):
        r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (0, ""), f"{name}: {r.stderr}"
        s = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(tmp_path / name)],
                           capture_output=True, text=True)
        assert s.returncode == 0, s.stdout[-1500:]
    # The check can fail: a unit naming a directive systemd does not know is reported.
    bad = tmp_path / "stackgen-fleet-chat@3.service"
    bad.write_text(template.read_text().replace("[Service]\n", "[Service]\nNoSuchDirective=1\n"))
    r = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True)
    assert "NoSuchDirective" in r.stderr


# ---------------------------------------------------------------------------------------------- compose


def test_compose_pins_each_instance_to_its_gpu_and_publishes_only_the_balancer():
    plan = golden_plan(LLAMA)
    sp = plan.services[0]
    arts = render(plan, "compose")
    doc = yaml.safe_load(arts["compose/compose.yaml"].content)
    services = doc["services"]
    assert sorted(services) == ["chat", "chat-1", "chat-2", "chat-3", "chat-4"]
    for i in range(1, 5):
        s = services[f"chat-{i}"]
        (dev,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert dev["device_ids"] == [str(i - 1)] and "count" not in dev
        assert "ports" not in s
        assert s["command"][s["command"].index("--port") + 1] == str(sp.capacity.ports[i - 1])
        assert s["environment"]["LLAMA_API_KEY"].startswith("${FLEET_API_KEY:?")
    lb = services["chat"]
    assert lb["ports"] == [f"0.0.0.0:{sp.port}:{sp.port}"] and lb["image"].startswith("haproxy:")
    assert set(lb["depends_on"]) == {f"chat-{i}" for i in range(1, 5)}
    cfg = arts["compose/chat/haproxy.cfg"].content
    assert "balance leastconn" in cfg and "option httpchk GET /health" in cfg
    assert all(f"chat-{i}:{p} check" in cfg for i, p in enumerate(sp.capacity.ports, 1))


def test_compose_fleet_passes_the_compose_validators_and_haproxy(tmp_path):
    plan = golden_plan(LLAMA)
    write_tree(tmp_path / "deploy", render_plan(plan, RenderContext("stack.yaml"), ["compose"]))
    path = tmp_path / "deploy" / "compose" / "compose.yaml"
    schema = need("check-jsonschema")
    r = subprocess.run([schema, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = compose_v1(path, "config", "-q", env={**os.environ, "FLEET_API_KEY": CANARY})
    assert r.returncode == 0, r.stdout + r.stderr
    haproxy = need("haproxy")
    r = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "deploy" / "compose" / "chat" / "haproxy.cfg")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------- kubernetes


def test_kubernetes_fleet_is_a_deployment_of_instances_with_an_autoscaler():
    kv = pytest.importorskip("kubernetes_validate")
    from stackgen.render.targets.kubernetes import KUBERNETES_VERSION

    plan = golden_plan(LLAMA)
    docs = list(yaml.safe_load_all(render(plan, "kubernetes")["kubernetes/chat.yaml"].content))
    for d in docs:
        kv.validate(d, KUBERNETES_VERSION, strict=True)
    by_kind = {d["kind"]: d for d in docs}
    deploy = by_kind["Deployment"]["spec"]
    assert deploy["replicas"] == 4 and deploy["strategy"]["type"] == "RollingUpdate"
    (c,) = deploy["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and "readinessProbe" in c and "--metrics" in c["args"]
    assert by_kind["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (4, 8)
    assert hpa["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "llamacpp:requests_deferred"


# ---------------------------------------------------------------------------------------------- vLLM data parallel


def test_vllm_data_parallel_reserves_gpus_for_every_engine_core():
    plan = golden_plan(VLLM_DP)
    sp = plan.services[0]
    assert not sp.capacity.separate and sp.memory.data_parallel == 3 and sp.memory.tensor_parallel == 2
    compose = yaml.safe_load(render(plan, "compose")["compose/compose.yaml"].content)
    (dev,) = compose["services"]["chat"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["device_ids"] == ["0", "1", "2", "3", "4", "5"]  # 6 GPUs: the 3 cores x TP 2 the plan placed
    docs = list(yaml.safe_load_all(render(plan, "kubernetes")["kubernetes/chat.yaml"].content))
    by_kind = {d["kind"]: d for d in docs}
    (c,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 6
    assert by_kind["Deployment"]["spec"]["replicas"] == 1
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting" and hpa["minReplicas"] == 1
    assert "--data-parallel-size" in render(plan, "script")["chat/run.sh"].content


def test_one_instance_gets_no_autoscaler(tmp_path):
    plan = plan_for(tmp_path, CPU_FLEET.format(targets="kubernetes").replace(", replicas: 2", ""))
    kinds = [d["kind"] for d in yaml.safe_load_all(render(plan, "kubernetes")["kubernetes/chat.yaml"].content)]
    assert "HorizontalPodAutoscaler" not in kinds


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("target", ["quadlet", "llama-swap"])
def test_one_process_targets_refuse_separate_instances(tmp_path, target):
    plan = plan_for(tmp_path, CPU_FLEET.format(targets=target))
    with pytest.raises(RenderError, match=r"services\.chat\.replicas: 2 separate .* remove `replicas:`"):
        render_plan(plan, RenderContext("stack.yaml"), [target])


def test_launchd_refuses_separate_instances(tmp_path):
    from stackgen.render.targets.launchd import launchd_target

    plan = plan_for(tmp_path, CPU_FLEET.format(targets="launchd"))
    with pytest.raises(RenderError, match=r"services\.chat\.replicas: .*the launchd target runs one process"):
        launchd_target(plan, RenderContext("stack.yaml"))


def test_cli_render_names_the_field_and_exits_1(tmp_path):
    from typer.testing import CliRunner

    from stackgen.cli import app

    (tmp_path / "stack.yaml").write_text(CPU_FLEET.format(targets="script, quadlet"))
    res = CliRunner().invoke(app, ["render", str(tmp_path / "stack.yaml")])
    assert res.exit_code == 1 and "services.chat.replicas" in res.output and "Traceback" not in res.output


def test_up_in_containers_refuses_a_fleet_before_starting_anything(tmp_path):
    # Natively `up` runs the fleet (tests/run/test_up_fleet.py); one container per service cannot.
    from stackgen.errors import LaunchError
    from stackgen.run.results import UpOptions
    from stackgen.run.up import up

    plan = plan_for(tmp_path, CPU_FLEET.format(targets="script"))
    with pytest.raises(LaunchError, match=r"services\.chat\.replicas: 2 separate .*--containers.*compose"):
        up(plan, UpOptions(containers=True))


def test_compose_refuses_an_instance_name_another_service_has(tmp_path):
    text = CPU_FLEET.format(targets="compose").replace(
        "services:\n", "services:\n  chat-2: {model: qwen2.5-0.5b-instruct, engine: llama.cpp, port: 9000}\n")
    plan = plan_for(tmp_path, text)
    with pytest.raises(RenderError, match=r"services\.chat\.replicas: .*already has a service 'chat-2'"):
        render_plan(plan, RenderContext("stack.yaml"), ["compose"])
