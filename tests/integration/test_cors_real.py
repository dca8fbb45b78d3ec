"""Secure defaults on real engines: a web page on another origin gets no CORS grant (llama-server's and
mlx_lm.server's own defaults are '*')."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request

from stackgen.hardware import HostFacts
from stackgen.resolve import resolve
from stackgen.spec import load_stack


def _plan_argv(tmp_path, model: str, engine: str, binary: str, port: int, cors: str = "") -> list[str]:
    (tmp_path / "stack.yaml").write_text(
        f"version: 1\nhardware: cpu-server-64gb\nworkload: {{concurrent_users: 1, context_tokens: 512}}\n"
        f"services:\n  svc:\n    model: {model}\n    engine: {engine}\n    binary: {binary}\n    port: {port}\n"
        f"serve: {{host: 127.0.0.1{cors}}}\n")
    plan = resolve(load_stack(tmp_path / "stack.yaml"), HostFacts(hardware=None))  # type: ignore[arg-type]
    return list(plan.services[0].command)


def _origin_grant(url: str, origin: str) -> str | None:
    req = urllib.request.Request(url, headers={"Origin": origin})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Access-Control-Allow-Origin")


def _serve(argv: list[str], url: str, log, env=None, timeout: float = 120):
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "engine exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{argv[0]} not ready in {timeout} s")


def _stop(proc) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_llama_server_grants_no_foreign_origin(tmp_path, llama_server, gguf_path, free_port):
    port = free_port()
    argv = _plan_argv(tmp_path, str(gguf_path), "llama.cpp", str(llama_server), port)
    assert "--cors-origins" in argv
    with open(tmp_path / "log", "wb") as log:
        proc = _serve(argv, f"http://127.0.0.1:{port}/health", log)
        try:
            url = f"http://127.0.0.1:{port}/v1/models"
            assert _origin_grant(url, "http://evil.example.com") in (None, "")
            assert _origin_grant(url, "http://localhost:3000") == "http://localhost:3000"
        finally:
            _stop(proc)


def test_llama_server_default_really_is_a_wildcard(tmp_path, llama_server, gguf_path, free_port):
    """The control: without stackgen's flags the same build echoes any origin (why the flags exist)."""
    port = free_port()
    argv = [str(llama_server), "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(port), "-c", "512"]
    with open(tmp_path / "log", "wb") as log:
        proc = _serve(argv, f"http://127.0.0.1:{port}/health", log)
        try:
            grant = _origin_grant(f"http://127.0.0.1:{port}/v1/models", "http://evil.example.com")
            assert grant in ("*", "http://evil.example.com")
        finally:
            _stop(proc)


def test_mlx_server_grants_no_foreign_origin(tmp_path, mlx_server, tiny_llama, hf_hub_cache, free_port):
    env = {"HF_HUB_CACHE": str(hf_hub_cache), "HF_HUB_OFFLINE": "1"}
    port = free_port()
    control = [str(mlx_server), "--model", str(tiny_llama), "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "control.log", "wb") as log:
        proc = _serve(control, f"http://127.0.0.1:{port}/health", log, env=env)
        try:  # the engine's own default answers every origin
            assert _origin_grant(f"http://127.0.0.1:{port}/v1/models", "http://evil.example.com") == "*"
        finally:
            _stop(proc)
    port = free_port()
    argv = _plan_argv(tmp_path, str(tiny_llama), "mlx", str(mlx_server), port)
    with open(tmp_path / "log", "wb") as log:
        proc = _serve(argv, f"http://127.0.0.1:{port}/health", log, env=env)
        try:
            # /v1/models needs an existing HF_HUB_CACHE; both answer with the CORS headers of the server.
            assert _origin_grant(f"http://127.0.0.1:{port}/v1/models", "http://evil.example.com") in (None, "")
        finally:
            _stop(proc)
