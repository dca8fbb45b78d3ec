"""What resolve() carries from the stack file into the Plan and each ServicePlan besides the memory plan: the stack's
name and path, the hardware label (the profile's name, or "detected: " and the host's label), the serve: block's
api_key_env and tls, the speed forecast of a one-machine service, the port in the command; and the same stack
name, path and label in the `plan --json` of a stack that is refused."""

from __future__ import annotations

import pytest

from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.plan import resolve
from stackgen.plan.memory import predict_decode_tokens_per_s
from stackgen.plan.speed import service_forecast
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
HW = load_profiles().hardware


def test_the_plan_names_the_stack_its_file_and_the_profile(write_stack):
    path = write_stack("version: 1\nname: team\nhardware: rtx-4090\nworkload: dev-loop\nservices:\n"
                       "  s: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n")
    p = resolve.resolve(load_stack(path), HOST)
    assert (p.stack_name, p.stack_path, p.hardware_label) == ("team", str(path), "rtx-4090")
    assert p.to_json()["stack"] == "team" and p.to_json()["file"] == str(path)
    assert p.to_json()["hardware"]["label"] == "rtx-4090"


def test_a_stack_without_hardware_is_planned_for_the_detected_host(write_stack, cpu_host):
    """hardware: detect: the host's facts are planned and the label says they were detected, with the host's
    own label (conftest's cpu_host: 2 cores, 24 GiB)."""
    path = write_stack("version: 1\nhardware: detect\nworkload: dev-loop\nservices:\n"
                       "  s: {model: qwen2.5-0.5b-instruct}\n")
    p = resolve.resolve(load_stack(path), cpu_host)
    assert p.hardware_label == "detected: CPU-only (2 cores, 24 GiB RAM)"
    assert p.hardware == cpu_host.hardware and p.stack_path == str(path)


def test_the_json_of_a_refused_stack_names_the_stack_its_file_and_the_label(write_stack, cpu_host):
    """A 70B on the detected 24 GiB CPU host fits no engine: the PlanError carries the plan --json with the stack's
    name, file and the detected label, the service before it and the unfit one with each engine's candidate."""
    path = write_stack("version: 1\nname: big\nhardware: detect\nworkload: dev-loop\nservices:\n"
                       "  small: {model: qwen2.5-0.5b-instruct}\n  huge: {model: llama-3.1-70b-instruct}\n")
    with pytest.raises(PlanError) as exc:
        resolve.resolve(load_stack(path), cpu_host)
    j = exc.value.plan_json
    assert (j["stack"], j["file"], j["hardware"]["label"]) == ("big", str(path), "detected: CPU-only (2 cores, 24 GiB RAM)")
    assert [s["name"] for s in j["services"]] == ["small", "huge"]
    assert j["services"][1]["fits"] is False and j["services"][1]["engine"] is None
    named = write_stack("version: 1\nname: big\nhardware: rtx-4060\nworkload: dev-loop\nservices:\n"
                        "  huge: {model: llama-3.1-70b-instruct}\n", name="named.yaml")
    with pytest.raises(PlanError) as exc:
        resolve.resolve(load_stack(named), cpu_host)
    j = exc.value.plan_json
    assert (j["stack"], j["file"], j["hardware"]["label"]) == ("big", str(named), "rtx-4060")
    assert j["hardware"]["gpus"][0]["name"] == "GeForce RTX 4060"  # the profile's hardware, not the host's


def test_serve_settings_speed_and_port_reach_the_service_plan(write_stack):
    """serve: api_key_env and tls are the ServicePlan's (the render targets read them from there); the speed
    forecast is speed.service_forecast of the engine, model and memory plan with the workload's users and prompt and
    the average context min(context, prompt + output // 2) = min(8192, 3000 + 500) = 3500; the decode speed is
    memory.predict_decode_tokens_per_s at the same 3500; the command listens on the plan's port (llama.cpp's 8080)."""
    path = write_stack("version: 1\nhardware: rtx-4090\n"
                       "workload: {concurrent_users: 1, context_tokens: 8192, prompt_tokens: 3000, output_tokens: 1000}\n"
                       "serve: {api_key_env: MY_KEY, tls: {cert_file: /etc/c.pem, key_file: /etc/k.pem}}\n"
                       "services:\n  s: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n")
    sp = resolve.resolve(load_stack(path), HOST).services[0]
    assert sp.api_key_env == "MY_KEY"
    assert (sp.tls.cert_file, sp.tls.key_file) == ("/etc/c.pem", "/etc/k.pem")
    hw = HW["rtx-4090"]
    assert sp.speed == service_forecast("llama.cpp", sp.model, sp.memory, hw, users=1, prompt_tokens=3000,
                                        avg_context=3500, threads=16, output_tokens=1000)
    # where queueing starts: one slot, each request its prompt's prefill plus 1000 tokens at the one-stream rate
    fc = sp.speed
    assert fc.slots == 1
    assert 1 / fc.queue_requests_per_s == pytest.approx((fc.ttft_s - 1 / fc.single_stream_tokens_per_s)
                                             + 1000 / fc.aggregate_tokens_per_s, rel=0.01)
    assert sp.speed is not None and sp.speed.per_user_tokens_per_s > 0
    assert (sp.predicted_decode_tokens_per_s, sp.bottleneck) == predict_decode_tokens_per_s(sp.model, sp.memory, hw,
                                                                                            3500)
    assert sp.port == 8080 and sp.command[sp.command.index("--port") + 1] == "8080"
    assert sp.command[sp.command.index("--ssl-cert-file") + 1] == "/etc/c.pem"


def test_no_serve_settings_leave_none(write_stack):
    sp = resolve.resolve(load_stack(write_stack("version: 1\nhardware: rtx-4090\nworkload: dev-loop\nservices:\n"
                                                "  s: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n")),
                         HOST).services[0]
    assert sp.api_key_env is None and sp.tls is None
