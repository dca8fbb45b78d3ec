"""Talking to a running engine over HTTP: readiness probes per engine, a completion, and a streaming completion.

Ready means the model answers, not that a port is open (reliability property 13): each engine says what that takes
in its one readiness definition (`stackgen.engines.base.Readiness`: a health path, the model in /v1/models, or a
1-token completion for servers that answer HTTP before any model is loaded).

Standard library only (http.client); every call has a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from stackgen import engines
from stackgen.engines.base import Readiness

DOWN, LOADING, READY, ERROR = "down", "loading", "ready", "error"


@dataclass(frozen=True)
class Probe:
    state: str  # down | loading | ready | error
    detail: str = ""


@dataclass(frozen=True)
class Endpoint:
    """Where a service answers and how to call it."""

    host: str
    port: int
    engine: str
    model: str = ""  # the model name requests carry ("" = let the server pick its one model)
    api_key: str | None = None
    tls: bool = False  # serve.tls: the engine speaks HTTPS

    @property
    def connect_host(self) -> str:
        return connect_host(self.host)

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


def connect_host(bind: str) -> str:
    """The address to reach a server bound to `bind` from this machine: loopback for wildcard/loopback binds."""
    if bind in ("", "0.0.0.0", "localhost") or bind.startswith("127."):
        return "127.0.0.1"
    if bind in ("::", "::1"):
        return "::1"
    return bind


def connection(host: str, port: int, timeout: float, tls: bool = False) -> http.client.HTTPConnection:
    """An HTTP(S) connection to a service this machine started. With TLS the certificate is for the service's public
    name, not the loopback address probed here, so it is not verified: the probe talks to its own child."""
    if tls:
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def api_key_from_env(env_name: str | None) -> str | None:
    return os.environ.get(env_name) if env_name else None


class HTTPError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status, self.body = status, body


def request(ep: Endpoint, method: str, path: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """One HTTP request; returns (status, body text). Raises OSError for connection problems (refused, timeout)."""
    conn = connection(ep.connect_host, ep.port, timeout, ep.tls)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=ep.headers())
        resp = conn.getresponse()
        text = resp.read(4 * 1024 * 1024).decode("utf-8", "replace")
        return resp.status, text
    except http.client.HTTPException as exc:
        raise ConnectionError(f"bad HTTP response: {exc.__class__.__name__}") from None
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- readiness


def probe(ep: Endpoint, timeout: float = 5.0) -> Probe:
    """Where an engine is on its way to answering requests, by the engine's one readiness definition
    (`Engine.readiness`). Never raises for network problems."""
    try:
        return _probe(ep, engines.get(ep.engine).readiness, timeout)
    except ConnectionRefusedError:
        return Probe(DOWN, "connection refused")
    except (socket.timeout, TimeoutError):
        return Probe(LOADING, f"no answer within {timeout:g} s")
    except OSError as exc:
        return Probe(DOWN, f"{exc.__class__.__name__}: {exc}")


def _probe(ep: Endpoint, r: Readiness, timeout: float) -> Probe:
    if r.path is not None:
        status, body = request(ep, "GET", r.path, timeout=timeout)
        if status != 200:
            if r.loading is None or status in r.loading:
                return Probe(LOADING, f"{r.path} {status}" + (" (loading model)" if r.path_is_ready else ""))
            return Probe(ERROR, f"{r.path} {status}" + (f": {body[:120]}" if r.path_is_ready else ""))
        if r.path_is_ready:
            return Probe(READY, f"{r.path} 200")
    if r.listed_model:
        status, body = request(ep, "GET", "/v1/models", timeout=timeout)
        if status != 200:
            return Probe(LOADING, f"{r.path} 200, /v1/models {status}")
        ids = _model_ids(body)
        if ep.model and ep.model not in ids:
            return Probe(LOADING, f"/v1/models lists {ids}, not {ep.model!r} yet")
        if not r.completion:
            return Probe(READY, f"{r.path} 200, serving {ep.model or ids}")
    return _probe_one_token(ep, timeout)


def _probe_one_token(ep: Endpoint, timeout: float) -> Probe:
    """Engines that answer before loading: the model is ready when a 1-token completion returns."""
    status, body = request(ep, "POST", "/v1/completions", _completion_body(ep, "Hi", 1), timeout=timeout)
    if status == 200:
        return Probe(READY, "1-token completion answered")
    if status in (503, 404) or "loading" in body.lower():
        return Probe(LOADING, f"completion {status}: {body[:120]}")
    return Probe(ERROR, f"completion {status}: {body[:160]}")


def _model_ids(body: str) -> list[str]:
    try:
        return [m.get("id", "") for m in json.loads(body).get("data", [])]
    except (ValueError, AttributeError):
        return []


# ---------------------------------------------------------------------------------------------- requests


def _completion_body(ep: Endpoint, prompt: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if ep.model:
        body["model"] = ep.model
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    seconds: float


def complete(ep: Endpoint, prompt: str, max_tokens: int = 16, timeout: float = 60.0) -> Completion:
    """A non-streaming /v1/completions call. Raises OSError / HTTPError."""
    t0 = time.monotonic()
    status, body = request(ep, "POST", "/v1/completions", _completion_body(ep, prompt, max_tokens), timeout=timeout)
    if status != 200:
        raise HTTPError(status, body)
    data = json.loads(body)
    text = (data.get("choices") or [{}])[0].get("text", "")
    usage = data.get("usage") or {}
    return Completion(text, int(usage.get("completion_tokens") or 0), time.monotonic() - t0)


@dataclass
class StreamResult:
    ttft_s: float | None = None  # time to the first generated text
    tokens: int = 0
    seconds: float = 0.0  # whole request
    text: str = ""
    error: str = ""
    chunk_times: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time after the first (the decode rate, prefill excluded)."""
        if self.ttft_s is None or self.tokens < 2 or self.seconds <= self.ttft_s:
            return None
        return (self.tokens - 1) / (self.seconds - self.ttft_s)


def stream_completion(ep: Endpoint, prompt: str, max_tokens: int, timeout: float = 120.0) -> StreamResult:
    """A streaming (SSE) /v1/completions call, timing the first token and the rest. Never raises."""
    res = StreamResult()
    t0 = time.monotonic()
    conn = connection(ep.connect_host, ep.port, timeout, ep.tls)
    try:
        headers = ep.headers() | {"Accept": "text/event-stream"}
        conn.request("POST", "/v1/completions", body=json.dumps(_completion_body(ep, prompt, max_tokens, True)),
                     headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            res.error = f"HTTP {resp.status}: {resp.read(500).decode('utf-8', 'replace')}"
            return res
        chunks, usage_tokens = 0, None
        for event in _sse_events(resp, deadline=t0 + timeout):
            if event == "[DONE]":
                break
            try:
                data = json.loads(event)
            except ValueError:
                continue
            if isinstance(data.get("usage"), dict) and data["usage"].get("completion_tokens"):
                usage_tokens = int(data["usage"]["completion_tokens"])
            for ch in data.get("choices") or []:
                piece = ch.get("text") or (ch.get("delta") or {}).get("content") or ""
                if piece:
                    now = time.monotonic() - t0
                    if res.ttft_s is None:
                        res.ttft_s = now
                    res.chunk_times.append(now)
                    res.text += piece
                    chunks += 1
        res.tokens = usage_tokens if usage_tokens else chunks
    except (OSError, http.client.HTTPException) as exc:
        res.error = f"{exc.__class__.__name__}: {exc}"
    finally:
        res.seconds = time.monotonic() - t0
        conn.close()
    return res


def _sse_events(resp: http.client.HTTPResponse, deadline: float, max_lines: int = 200_000) -> Iterator[str]:
    """`data:` payloads of a server-sent event stream (bounded in lines and time)."""
    for _ in range(max_lines):
        if time.monotonic() > deadline:
            return
        line = resp.readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("data:"):
            yield text[5:].strip()
