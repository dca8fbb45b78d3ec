"""`stackgen up` on a real mlx_lm.server (Linux CPU build) serving the tiny Llama checkpoint."""

from __future__ import annotations

import json
import textwrap
import time

from stackgen.run.readiness import Endpoint, complete
from stackgen.run.state import StateDir



def test_mlx_up_complete_down(tmp_path, mlx_server, tiny_llama, hf_hub_cache, free_port, stack_cleanup, wait_gone, run_stackgen):
    stackgen = run_stackgen
    port = free_port()
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: it-mlx
        hardware: detect
        workload: {{concurrent_users: 2, context_tokens: 512, prompt_tokens: 32, output_tokens: 16}}
        services:
          tiny:
            model: {tiny_llama}
            engine: mlx
            binary: {mlx_server}
            port: {port}
        """), encoding="utf-8")
    stack_cleanup.append(path)
    t0 = time.monotonic()
    r = stackgen("up", path, "--verify", "--json", timeout=300, env={"HF_HUB_CACHE": str(hf_hub_cache)})
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    res = json.loads(r.stdout)
    print(f"\nMLX up --verify: {time.monotonic() - t0:.1f}s; {res}")
    assert res["verify"][0]["ok"] == 2
    st = StateDir(path).load().services["tiny"]
    c = complete(Endpoint("127.0.0.1", port, "mlx", ""), "Hello", max_tokens=5)
    assert c.text is not None and c.seconds > 0
    r = stackgen("status", path, "--json")
    assert json.loads(r.stdout)[0]["state"] == "running", r.stdout
    r = stackgen("down", path)
    assert r.returncode == 0, r.stderr
    assert wait_gone(st.pid, 10)
