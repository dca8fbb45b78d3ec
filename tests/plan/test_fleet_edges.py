"""Fleet (separate instances) edges found by audit a3: instance ports past 65535 (#7), a pinned replica count an
engine cannot run (#4), the plan's command of a fleet (#6), reasons that contradict the rendered flags (#8), a negative
shortfall (#9), the wording of the replica-layout refusals (#10), replicas of a multi-node stack (#5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackgen.cli import load_and_plan
from stackgen.errors import PlanError, SpecError
from stackgen.plan.report import plan_text
from stackgen.render.artifact import RenderContext, render_plan
from tools.stacks import plan_for

FLEET = Path(__file__).parent.parent / "golden" / "fleet-llamacpp-4090" / "stack.yaml"


def flag(argv, name: str) -> str:
    return argv[list(argv).index(name) + 1]

PORTS = """
version: 1
name: p
hardware: 4x rtx-4090
workload: {{concurrent_users: 16, context_tokens: 4096, prompt_tokens: 500, output_tokens: 100}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: 3, port: {port}}}
"""


def test_instance_ports_past_65535_are_refused_at_the_port_with_the_fix(tmp_path):
    with pytest.raises(SpecError) as exc:
        plan_for(tmp_path, PORTS.format(port=65534))  # instances on 65535, 65536, 65537: HAProxy refused the config
    text = str(exc.value)
    assert f"{tmp_path / 'stack.yaml'}:7:" in text and "services.chat.port:" in text
    assert "65537, past the last port, 65535" in text and "(set port: 65532 or lower)" in text
    sp = plan_for(tmp_path, PORTS.format(port=65532)).services[0]
    assert sp.capacity.ports == (65533, 65534, 65535)


OLLAMA_REPLICAS = """
version: 1
name: olrep
hardware: 2x rtx-4090
workload: {concurrent_users: 16, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}
services:
  chat:
    model: llama-3.1-8b-instruct
    engine: ollama
    replicas: 2
"""


def test_a_pinned_replica_count_the_engine_cannot_run_is_refused_not_dropped(tmp_path):
    # was: exit 0 with one Ollama server, "replicas: 1 x TP1: pinned by services.replicas", one GPU idle; refused by
    # validate since (it needs only the stack), with the capacity plan's words (capacity.pinned_runs_refusal)
    with pytest.raises(SpecError) as exc:
        plan_for(tmp_path, OLLAMA_REPLICAS)
    text = str(exc.value)
    assert text.startswith(f"{tmp_path / 'stack.yaml'}:10:15: services.chat.replicas: 2 instances are pinned and "
                           "Ollama runs one server per service (remove `replicas:`")
    assert "runs separate instances behind a balancer: llama.cpp" in text
    sp = plan_for(tmp_path, OLLAMA_REPLICAS.replace("    replicas: 2\n", "")).services[0]
    assert sp.replicas == 1


def test_a_fleets_plan_command_is_its_first_instance_as_run_1_sh_starts_it(tmp_path):
    # was: --host 0.0.0.0 --port 8080, the balancer's endpoint, in the plan and plan --json; no process runs that
    plan = load_and_plan(FLEET, None)[1]
    sp = plan.services[0]
    argv = list(sp.command)
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", str(sp.capacity.ports[0]))
    assert plan.to_json()["services"][0]["command"] == argv
    run1 = next(a.content for a in render_plan(plan, RenderContext("stack.yaml"), ["script"])
                if a.path == "chat/run-1.sh")
    assert f"--port {sp.capacity.ports[0]}" in run1 and "--host 127.0.0.1" in run1
    text = plan_text(plan)
    assert f"the balancer on {sp.host}:{sp.port})" in text and "instance 1 of 4" in text


TP_BY_CAPACITY = """
version: 1
name: v
hardware: 8x h100-80gb
workload: {concurrent_users: 512, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300, optimize: throughput}
services:
  chat: {model: llama-3.1-70b-instruct, quant: bf16}
"""


def test_the_reasons_of_a_layout_say_the_flags_it_renders(tmp_path):
    # 4 replicas: the reason said --cache-ram 8192 where every instance runs --cache-ram 6923
    sp = load_and_plan(FLEET, None)[1].services[0]
    cache = flag(sp.command, "--cache-ram")
    said = [r for r in sp.reasons if "--cache-ram" in r]
    assert said and all(f"--cache-ram {cache};" in r for r in said)
    # capacity chose 1 x TP8: the reason said "tensor parallel over 4 GPUs"
    sp = plan_for(tmp_path, TP_BY_CAPACITY).services[0]
    tp = flag(sp.command, "--tensor-parallel-size")
    assert sp.memory.tensor_parallel == int(tp)
    assert not [r for r in sp.reasons if "tensor parallel over" in r and f"over {tp} GPUs" not in r]


def test_a_rejection_names_the_side_that_is_short_never_a_negative_shortfall(tmp_path):
    # Ollama for 512 users of a 70B on 8x H100: the total fits the GPUs + RAM, but its plan keeps every layer in RAM;
    # the rejection said "897.8 GB usable: -26.0 GB short"
    sp = plan_for(tmp_path, TP_BY_CAPACITY).services[0]
    why = sp.rejected["ollama"]
    assert "-" not in why.split("short")[0].rsplit(":", 1)[-1]
    assert "in system RAM (0 of 80 layers on the GPU)" in why and "of RAM usable: 658.2 GB short" in why


LAYOUT_REFUSALS = """
version: 1
name: s
hardware: {hw}
workload: {{concurrent_users: {users}, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300, optimize: throughput}}
services:
  chat: {{model: llama-3.1-70b-instruct, engine: {engine}, quant: {quant}, replicas: {n}}}
"""


def test_replica_layout_refusals_say_who_pinned_what_and_what_the_memory_is(tmp_path):
    # a stack without overrides: "(pinned by overrides: layout)"
    with pytest.raises(PlanError) as exc:
        plan_for(tmp_path, LAYOUT_REFUSALS.format(hw="4x h100-80gb", users=64, engine="vllm", quant="bf16", n=2))
    text = str(exc.value)
    assert "overrides" not in text
    assert "(pinned by the replica layout: 2 x TP1, tensor parallel 1 per instance)" in text
    # "GeForce RTX 4090 has 45.2 GB usable": its 25.8 GB and a third of the RAM, said as the GPU's
    with pytest.raises(PlanError) as exc:
        plan_for(tmp_path, LAYOUT_REFUSALS.format(hw="8x rtx-4090", users=30, engine="llama.cpp", quant="Q4_K_M", n=3))
    assert "GeForce RTX 4090 has 45.2 GB usable (25.8 GB of GPU memory + 19.5 GB of system RAM): 12.9 GB short" \
        in str(exc.value)


NODES_REPLICAS = """
version: 1
name: mnrep
hardware:
  nodes:
    - {{hardware: 4x rtx-4090, count: 2, addresses: [10.0.0.1, 10.0.0.2]}}
workload: {{concurrent_users: 64, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: {n}}}
"""


def test_replicas_of_a_multi_node_stack_say_the_other_nodes_serve_none(tmp_path):
    # 4 replicas all went on the head node with no word; 8 were refused with "add GPUs" the stack listed
    sp = plan_for(tmp_path, NODES_REPLICAS.format(n=4)).services[0]
    assert sp.replicas == 4
    (w,) = [w for w in sp.warnings if "head node" in w]
    assert "the head node 10.0.0.1 (4x rtx-4090)" in w and "(10.0.0.2) serves no replica" in w
    with pytest.raises(PlanError) as exc:
        plan_for(tmp_path, NODES_REPLICAS.format(n=8))
    assert "(10.0.0.2) serves no replica; to use them, render one stack per node" in str(exc.value)
