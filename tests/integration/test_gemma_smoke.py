"""Smoke test on a real model in both Python engines: Gemma 3 270M (converted to safetensors) served by vLLM
(CPU) and MLX (CPU) through `stackgen up`, answering a greedy completion with the text transformers gives."""

from __future__ import annotations

import json
import textwrap

import pytest

from stackgen.run.readiness import Endpoint, complete

EXPECTED = "the capital of the country of France"  # transformers, vLLM, MLX and llama.cpp all agree (greedy)


@pytest.mark.parametrize("engine", ["vllm", "mlx"])
def test_gemma_answers_through_stackgen_up(engine, request, tmp_path, gemma_hf, hf_hub_cache, free_port,
                                           stack_cleanup, run_stackgen):
    binary = request.getfixturevalue("vllm_bin" if engine == "vllm" else "mlx_server")
    port = free_port()
    overrides = "{enforce-eager: true}" if engine == "vllm" else "{}"
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: it-gemma-{engine}
        hardware: detect
        workload: {{concurrent_users: 1, context_tokens: 512, prompt_tokens: 16, output_tokens: 16}}
        services:
          gemma:
            model: {gemma_hf}
            engine: {engine}
            binary: {binary}
            port: {port}
            overrides: {overrides}
        """), encoding="utf-8")
    stack_cleanup.append(path)
    r = run_stackgen("up", path, "--json", timeout=400, env={"HF_HUB_CACHE": str(hf_hub_cache)})
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert json.loads(r.stdout)["services"][0]["action"] == "started"
    model = "gemma" if engine == "vllm" else ""  # mlx_lm.server serves its --model when a request names none
    c = complete(Endpoint("127.0.0.1", port, engine, model), "The capital of France is", max_tokens=10)
    assert EXPECTED in c.text, c.text
    r = run_stackgen("down", path, timeout=120)
    assert r.returncode == 0, r.stderr
