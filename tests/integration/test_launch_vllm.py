"""`stackgen up` on a real vLLM (CPU build) serving the tiny Llama checkpoint."""

from __future__ import annotations

import json
import time
import textwrap

from stackgen.run.readiness import Endpoint, complete
from stackgen.run.state import StateDir



def test_vllm_up_complete_down(tmp_path, vllm_bin, tiny_llama, free_port, stack_cleanup, wait_gone, run_stackgen):
    stackgen = run_stackgen
    port = free_port()
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: it-vllm
        hardware: detect
        workload: {{concurrent_users: 2, context_tokens: 512, prompt_tokens: 32, output_tokens: 16}}
        services:
          tiny:
            model: {tiny_llama}
            engine: vllm
            binary: {vllm_bin}
            port: {port}
            overrides: {{enforce-eager: true}}
        """), encoding="utf-8")
    stack_cleanup.append(path)
    t0 = time.monotonic()
    r = stackgen("up", path, "--verify", "--json", timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    res = json.loads(r.stdout)
    print(f"\nvLLM up --verify: {time.monotonic() - t0:.1f}s; {res}")
    assert res["services"][0]["action"] == "started"
    assert res["verify"][0]["ok"] == 2
    st = StateDir(path).load().services["tiny"]
    c = complete(Endpoint("127.0.0.1", port, "vllm", "tiny"), "Hello", max_tokens=5)
    assert c.completion_tokens == 5
    r = stackgen("status", path, "--json")
    assert json.loads(r.stdout)[0]["state"] == "running", r.stdout
    r = stackgen("down", path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert wait_gone(st.pid, 10)
