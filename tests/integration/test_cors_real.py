"""Secure defaults on real engines: a web page on another origin gets no CORS grant (llama-server's and
mlx_lm.server's own defaults are '*')."""

from __future__ import annotations

import urllib.request

from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack


def _plan_argv(tmp_path, model: str, engine: str, binary: str, port: int, cors: str = "") -> list[str]:
    (tmp_path / "stack.yaml").write_text(
        f"version: 1\nhardware: cpu-server-64gb\nworkload: {{concurrent_users: 1, context_tokens: 512, prompt_tokens: 64, output_tokens: 32}}\n"
        f"services:\n  svc:\n    model: {model}\n    engine: {engine}\n    binary: {binary}\n    port: {port}\n"
        f"serve: {{host: 127.0.0.1{cors}}}\n")
    plan = resolve(load_stack(tmp_path / "stack.yaml"), HostFacts(hardware=None))  # type: ignore[arg-type]
    return list(plan.services[0].command)


def _origin_grant(url: str, origin: str) -> str | None:
    req = urllib.request.Request(url, headers={"Origin": origin})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Access-Control-Allow-Origin")


def test_llama_server_grants_no_foreign_origin(tmp_path, llama_server, gguf_path, free_port, serve_process):
    port = free_port()
    argv = _plan_argv(tmp_path, str(gguf_path), "llama.cpp", str(llama_server), port)
    assert "--cors-origins" in argv
    serve_process(argv, f"http://127.0.0.1:{port}/health")
    url = f"http://127.0.0.1:{port}/v1/models"
    assert _origin_grant(url, "http://evil.example.com") in (None, "")
    assert _origin_grant(url, "http://localhost:3000") == "http://localhost:3000"


def test_llama_server_default_really_is_a_wildcard(llama_server, gguf_path, free_port, serve_process):
    """The control: without stackgen's flags the same build echoes any origin (why the flags exist)."""
    port = free_port()
    argv = [llama_server, "-m", gguf_path, "--host", "127.0.0.1", "--port", str(port), "-c", "512"]
    serve_process(argv, f"http://127.0.0.1:{port}/health")
    grant = _origin_grant(f"http://127.0.0.1:{port}/v1/models", "http://evil.example.com")
    assert grant in ("*", "http://evil.example.com")


def test_mlx_server_grants_no_foreign_origin(tmp_path, mlx_server, tiny_llama, hf_hub_cache, free_port,
                                             serve_process):
    env = {"HF_HUB_CACHE": str(hf_hub_cache), "HF_HUB_OFFLINE": "1"}  # /v1/models needs an existing HF_HUB_CACHE
    control_port = free_port()
    control = [mlx_server, "--model", tiny_llama, "--host", "127.0.0.1", "--port", str(control_port)]
    serve_process(control, f"http://127.0.0.1:{control_port}/health", "control.log", env=env)
    # the engine's own default answers every origin
    assert _origin_grant(f"http://127.0.0.1:{control_port}/v1/models", "http://evil.example.com") == "*"
    port = free_port()
    argv = _plan_argv(tmp_path, str(tiny_llama), "mlx", str(mlx_server), port)
    serve_process(argv, f"http://127.0.0.1:{port}/health", env=env)
    assert _origin_grant(f"http://127.0.0.1:{port}/v1/models", "http://evil.example.com") in (None, "")


def test_llama_server_with_one_listed_origin_grants_it_and_only_it(tmp_path, llama_server, gguf_path, free_port,
                                                                  serve_process):
    """What stackgen keeps of serve.cors_origins for llama.cpp (one origin; a list is refused at validate): the real
    server grants that origin as a valid single-origin header; it replaces localhost, as the schema says."""
    port = free_port()
    argv = _plan_argv(tmp_path, str(gguf_path), "llama.cpp", str(llama_server), port,
                      ", cors_origins: [https://app.example.com]")
    serve_process(argv, f"http://127.0.0.1:{port}/health")
    url = f"http://127.0.0.1:{port}/v1/models"
    assert _origin_grant(url, "https://app.example.com") == "https://app.example.com"
    # any other page (localhost included) gets a grant for another origin, which its browser refuses
    assert _origin_grant(url, "http://localhost:3000") != "http://localhost:3000"
    assert _origin_grant(url, "http://evil.example.com") != "http://evil.example.com"
