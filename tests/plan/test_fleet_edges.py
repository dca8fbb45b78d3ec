"""Fleet (separate instances) edges found by audit a3: instance ports past 65535 (#7), a pinned replica count an
engine cannot run (#4), the plan's command of a fleet (#6), reasons that contradict the rendered flags (#8)."""

from __future__ import annotations

import pytest

from stackgen.errors import SpecError
from tools.stacks import plan_for

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
