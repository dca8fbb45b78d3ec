"""`stackgen up --containers` through a real Docker Engine API: podman's, with the locally built llama-server image."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest

from stackgen.run.readiness import Endpoint, complete
from stackgen.run.state import StateDir



@pytest.mark.parametrize("named", ["absolute", "symlink", "relative-symlink"])
def test_llama_server_container_up_answer_down(tmp_path, podman_socket, llama_image, gguf_path, free_port,
                                               stack_cleanup, monkeypatch, run_stackgen, named):
    """`named`: the stack names the GGUF by its absolute path, or as models/gemma.gguf, a symlink to it (the HF
    cache's layout; the name the stack wrote is kept, c1139f4, and the container must still read the file)."""
    stackgen = run_stackgen
    import docker

    monkeypatch.setenv("DOCKER_HOST", podman_socket)
    port = free_port()
    path = tmp_path / "stack.yaml"
    if named != "absolute":  # a relative link: resolved from the link's folder on the host, not in the container
        (tmp_path / "models").mkdir()
        target = os.path.relpath(gguf_path, tmp_path / "models") if named == "relative-symlink" else gguf_path
        (tmp_path / "models" / "gemma.gguf").symlink_to(target)
        gguf_path = "models/gemma.gguf"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: it-containers
        hardware: detect
        workload: {{concurrent_users: 2, context_tokens: 2048, prompt_tokens: 64, output_tokens: 32}}
        services:
          gemma:
            model: {gguf_path}
            engine: llama.cpp
            image: {llama_image}
            port: {port}
        """), encoding="utf-8")
    stack_cleanup.append(path)
    env = {"DOCKER_HOST": podman_socket}
    t0 = time.monotonic()
    r = stackgen("up", path, "--containers", "--json", timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    print(f"\ncontainer up: {time.monotonic() - t0:.1f}s; {r.stdout}")
    st = StateDir(path).load().services["gemma"]
    assert st.kind == "container" and st.container_id
    client = docker.DockerClient(base_url=podman_socket)
    c = client.containers.get(st.container_id)
    assert c.labels["dev.stackgen.config-hash"] == st.config_hash
    comp = complete(Endpoint("127.0.0.1", port, "llama.cpp", "gemma"), "The capital of France is", max_tokens=8)
    assert comp.completion_tokens == 8 and comp.text.strip()
    print(f"completion: {comp.text!r}")
    r = stackgen("status", path, "--json", env=env)
    assert json.loads(r.stdout)[0]["state"] == "running", r.stdout
    r = stackgen("logs", path, "gemma", env=env)
    assert r.returncode == 0 and r.stdout.strip()
    # unchanged: kept
    r = stackgen("up", path, "--containers", env=env)
    assert "gemma: unchanged" in r.stdout, r.stdout + r.stderr
    r = stackgen("down", path, env=env, timeout=120)
    assert r.returncode == 0 and "stopped gemma" in r.stdout, r.stdout + r.stderr
    names = [x.name for x in client.containers.list(all=True)]
    assert st.container_name not in names
