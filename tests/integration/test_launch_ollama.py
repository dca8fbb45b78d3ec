"""Ollama's launcher path: only where an `ollama` binary is on PATH (none can be installed on this machine kind)."""

from __future__ import annotations

import shutil
import textwrap

import pytest



@pytest.mark.skipif(shutil.which("ollama") is None, reason="no `ollama` on PATH (not installable here: "
                    "not on PyPI/npm/Debian; see reference/real-engines.md)")
def test_ollama_up_down(tmp_path, gguf_path, free_port, stack_cleanup, run_stackgen):
    stackgen = run_stackgen
    port = free_port()
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: it-ollama
        hardware: detect
        workload: {{concurrent_users: 1, context_tokens: 2048, prompt_tokens: 64, output_tokens: 32}}
        services:
          gemma:
            model: {gguf_path}
            engine: ollama
            port: {port}
        """), encoding="utf-8")
    stack_cleanup.append(path)
    r = stackgen("up", path, "--verify", timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    r = stackgen("down", path)
    assert r.returncode == 0
