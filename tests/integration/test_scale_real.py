"""Two real llama-server instances of Gemma 3 270M behind the rendered HAProxy config on 127.0.0.1: completions go
through the balancer, both instances serve, and the balancer keeps serving when one instance dies."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from stackgen.bench import one_request
from tools.fleet import Fleet, plan_for

from conftest import missing

STACK = """version: 1
name: scale-real
hardware: detect
workload: {{concurrent_users: 4, context_tokens: 512, prompt_tokens: 32, output_tokens: 8}}
services:
  chat:
    model: {gguf}
    engine: llama.cpp
    binary: {binary}
    port: {port}
    replicas: 2
"""


@pytest.fixture()
def haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        missing("haproxy", "apt-get install haproxy (.ci/run does)")
    return path


def test_two_instances_behind_the_balancer(tmp_path, llama_server, gguf_path, haproxy, free_port):
    port = free_port()
    stack = tmp_path / "stack.yaml"
    stack.write_text(STACK.format(gguf=gguf_path, binary=llama_server, port=port))
    sp = plan_for(stack).services[0]
    assert sp.capacity.separate and len(sp.capacity.ports) == 2
    with Fleet(sp, tmp_path, haproxy=haproxy) as fleet:
        fleet.wait_ready(180)
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            one_request("127.0.0.1", port, "chat", f"Say something about number {i}.", 8, timeout=120)))
            for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.error for r in results if not r.ok] == []
        assert all(r.tokens >= 1 for r in results)
        served = [(tmp_path / f"instance-{i}.log").read_text(errors="replace").count("prompt eval time")
                  for i in (1, 2)]
        assert all(n >= 1 for n in served), f"least connections should use both instances: {served}"
        # One instance dies: health checks (inter 2s, fall 3) take it out; the balancer keeps answering.
        os.killpg(fleet.procs[0].pid, 15)
        fleet.procs[0].wait(15)
        time.sleep(8)
        for i in range(3):
            r = one_request("127.0.0.1", port, "chat", f"Again {i}.", 4, timeout=120)
            assert r.ok, r.error
