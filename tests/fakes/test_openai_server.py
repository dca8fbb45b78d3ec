"""The shared fake OpenAI server itself: health states, streaming with token timing, /metrics, failure modes, and
the engine binary `up` starts."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from fakes.openai_server import FakeOpenAIServer, write_engine
from stackgen.run.client import stream_completion


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_health_states(tmp_path):
    sick = tmp_path / "sick"
    with FakeOpenAIServer(health=503, load_s=0.3, sick_file=str(sick)) as srv:
        assert get(srv.port, "/health") == (503, b'{"status": "loading model"}')
        time.sleep(0.35)
        assert get(srv.port, "/health")[0] == 503  # still `health` = 503 once loaded
        srv.health = 200
        assert get(srv.port, "/health") == (200, b'{"status": "ok"}')
        sick.touch()
        assert get(srv.port, "/health") == (500, b'{"status": "error"}')
        srv.hang = True
        assert get(srv.port, "/health")[0] == 503
        assert get(srv.port, "/nope")[0] == 404
    with FakeOpenAIServer(health_any_path=True) as srv:
        assert get(srv.port, "/anything")[0] == 200


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("usage", ["last", "separate", None])
def test_streaming_with_token_timing(chunked, usage):
    with FakeOpenAIServer(tokens=4, delay=0.05, chunked=chunked, usage=usage) as srv:
        r = stream_completion("127.0.0.1", srv.port, {"prompt": "hi", "max_tokens": 10, "stream": True})
        assert r.ok and r.tokens == 4 and r.text == " t0 t1 t2 t3"
        gaps = [b - a for a, b in zip(r.token_times, r.token_times[1:])]
        assert len(gaps) == 3 and all(g >= 0.04 for g in gaps)
        r = stream_completion("127.0.0.1", srv.port, {"prompt": "hi", "max_tokens": 2, "stream": True})
        assert r.tokens == 2
        assert srv.count == 2 and srv.bodies[1]["max_tokens"] == 2


def test_models_metrics_and_ollama_version():
    with FakeOpenAIServer(models=["a"], metrics={"llamacpp:requests_deferred": 3}, api_version="0.12.0") as srv:
        assert json.loads(get(srv.port, "/v1/models")[1])["data"][0]["id"] == "a"
        code, text = get(srv.port, "/metrics")
        assert code == 200 and b"llamacpp:requests_deferred 3\n" in text
        assert json.loads(get(srv.port, "/api/version")[1]) == {"version": "0.12.0"}
    with FakeOpenAIServer() as srv:
        assert get(srv.port, "/metrics")[0] == 404 and get(srv.port, "/api/version")[0] == 404


def test_failure_modes():
    body = {"prompt": "hi", "max_tokens": 2, "stream": True}
    with FakeOpenAIServer(fail_every=2, tokens=2) as srv:
        assert stream_completion("127.0.0.1", srv.port, body).ok
        r = stream_completion("127.0.0.1", srv.port, body)
        assert not r.ok and "HTTP 500" in r.error
    with FakeOpenAIServer(api_key="k") as srv:
        assert "HTTP 401" in stream_completion("127.0.0.1", srv.port, body).error
        assert stream_completion("127.0.0.1", srv.port, body, api_key="k").ok
    with FakeOpenAIServer(completion_status=503) as srv:
        r = stream_completion("127.0.0.1", srv.port, body)
        assert "HTTP 503" in r.error and "model is loading" in r.error


def test_engine_binary(tmp_path):
    exe = write_engine(tmp_path / "engine", load_s=0.0, help_text="--port\n--host")
    assert subprocess.run([exe, "--help"], capture_output=True, text=True).stdout == "--port\n--host\n"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([exe, "--port", str(port), "--alias", "chat"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("fake engine starting")
        assert p.stdout.readline().strip() == f"listening on {port}"
        assert get(port, "/health")[0] == 200
        r = stream_completion("127.0.0.1", port, {"prompt": "hi", "max_tokens": 3, "stream": True})
        assert r.ok and r.text == " tok" * 3 and r.tokens == 3
        assert p.stdout.readline().strip() == "request /health"
    finally:
        p.terminate()
        assert p.wait(5) == 0
