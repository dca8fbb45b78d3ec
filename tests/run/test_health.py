"""Readiness probes and request helpers against a scripted local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import socket

import pytest

from fakes.openai_server import FakeOpenAIServer
from stackgen.run.client import connect_host, stream_completion
from stackgen.run.readiness import DOWN, ERROR, LOADING, READY, Endpoint, complete, probe


@pytest.fixture
def server():
    """The shared fake (tests/fakes/openai_server.py): loading (503) until a test says otherwise, no model listed,
    Ollama's /api/version, five tokens per stream with the usage in a chunk of its own."""
    with FakeOpenAIServer(health=503, models=[], api_version="0.12.0", tokens=5, token_text=" t", word=" x",
                          usage="separate") as srv:
        yield srv.port, srv


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llamacpp_503_then_200(server):
    port, script = server
    ep = Endpoint("127.0.0.1", port, "llama.cpp", "m")
    assert probe(ep).state == LOADING
    script.health = 200
    assert probe(ep).state == READY


def test_vllm_refused_then_health_then_model(server):
    assert probe(Endpoint("127.0.0.1", closed_port(), "vllm", "m")).state == DOWN
    port, script = server
    ep = Endpoint("127.0.0.1", port, "vllm", "m")
    script.health = 200
    assert probe(ep).state == LOADING  # healthy, but the served model is not listed yet
    script.models = ["m"]
    assert probe(ep).state == READY


@pytest.mark.parametrize("engine", ["mlx", "ollama"])
def test_engines_that_answer_early_need_a_token(server, engine):
    port, script = server
    ep = Endpoint("127.0.0.1", port, engine, "")
    script.completion_status = 503
    assert probe(ep).state == LOADING
    script.completion_status = 500
    assert probe(ep).state == ERROR
    script.completion_status = 200
    assert probe(ep).state == READY


def test_complete_and_stream(server):
    port, script = server
    ep = Endpoint("127.0.0.1", port, "llama.cpp", "m")
    c = complete(ep, "hi", max_tokens=3)
    assert c.completion_tokens == 3 and c.text == " x x x"
    r = stream_completion("127.0.0.1", port, {"model": "m", "prompt": "hi", "max_tokens": 5, "stream": True})
    assert r.ok and not r.error and r.tokens == 5 and r.text == " t" * 5 and r.ttft_s is not None


def test_stream_error_is_reported_not_raised():
    r = stream_completion("127.0.0.1", closed_port(), {"prompt": "hi", "max_tokens": 4, "stream": True}, timeout=2)
    assert not r.ok and r.error and r.tokens == 0


def test_connect_host():
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("localhost") == "127.0.0.1"
    assert connect_host("127.0.0.1") == "127.0.0.1"
    assert connect_host("::1") == "::1"
