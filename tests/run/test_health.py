"""Readiness probes and request helpers against a scripted local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stackgen.run.client import connect_host, stream_completion
from stackgen.run.readiness import DOWN, ERROR, LOADING, READY, Endpoint, complete, probe


class Script:
    health = 503
    models: list[str] = []
    completion = 200
    tokens = 5


@pytest.fixture
def server():
    script = Script()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _json(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                return self._json(script.health, {"status": "ok" if script.health == 200 else "loading"})
            if self.path == "/v1/models":
                return self._json(200, {"data": [{"id": m} for m in script.models]})
            if self.path == "/api/version":  # Ollama's daemon is up
                return self._json(200, {"version": "0.12.0"})
            self._json(404, {})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if script.completion != 200:
                return self._json(script.completion, {"error": "model is loading" if script.completion == 503 else "boom"})
            if not req.get("stream"):
                n = req["max_tokens"]
                return self._json(200, {"choices": [{"text": " x" * n}], "usage": {"completion_tokens": n}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for _ in range(script.tokens):
                self.wfile.write(b'data: {"choices":[{"text":" t"}]}\n\n')
            self.wfile.write(b'data: {"choices":[],"usage":{"completion_tokens":%d}}\n\n' % script.tokens)
            self.wfile.write(b"data: [DONE]\n\n")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], script
    srv.shutdown()
    srv.server_close()


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
    script.completion = 503
    assert probe(ep).state == LOADING
    script.completion = 500
    assert probe(ep).state == ERROR
    script.completion = 200
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
