"""stackgen.run.bench against a real llama-server (-np 4) with the Gemma 3 270M GGUF on 127.0.0.1.

Uses the shared engine fixtures of tests/integration/conftest.py (skip with the reason when an engine is missing,
FAIL when the `CI` variable is set).
"""

from __future__ import annotations


import pytest

from stackgen.run import bench

@pytest.fixture
def llama_np4(llama_server, gguf_path, free_port, serve_process):
    port = free_port()
    argv = [llama_server, "-m", gguf_path, "--alias", "gemma", "--host", "127.0.0.1", "--port", str(port),
            "-np", "4", "-c", "4096", "-t", "2"]
    proc = serve_process(argv, f"http://127.0.0.1:{port}/health", "llama.log")
    return port, proc.pid


def test_bench_real_llama_server(llama_np4):
    port, pid = llama_np4
    r = bench.run_load("127.0.0.1", port, "gemma", users=4, requests=8, prompt_tokens=32, max_tokens=16,
                       pid=pid, timeout=120, engine="llama.cpp", service="gemma")
    assert r.errors == 0, r.error_samples
    assert r.requests == 8
    assert r.output_tokens > 0
    assert r.ttft_p50_s > 0
    assert r.output_tokens <= 8 * 16
    assert r.peak_rss_bytes and r.peak_rss_bytes > 100 * 2**20  # the 253 MB model is resident
    assert r.max_concurrent_streams >= 2  # 4 slots serve users in parallel
