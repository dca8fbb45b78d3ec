"""The one HTTP client for a running engine: readiness probes (run/readiness.py), `bench` and `up --verify`
(run/bench.py) all talk through it.

Standard library only (http.client): a streaming completion needs the arrival time of each server-sent event as it
is read, TLS to a loopback child without verification, and a bounded read; http.client does all three, so a client
library (httpx + httpx-sse) would add two dependencies to an offline-first tool without removing code here. Every
call has a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


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


# ---------------------------------------------------------------------------------------------- SSE


def iter_sse_data(lines: Iterable[bytes]) -> Iterator[str]:
    """The `data:` payloads of a server-sent-events stream (multi-line data joined by newlines), stops at [DONE]."""
    buf: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line == "":
            if buf:
                payload = "\n".join(buf)
                buf = []
                if payload.strip() == "[DONE]":
                    return
                yield payload
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        if line.startswith("data:"):
            value = line[5:]
            buf.append(value[1:] if value.startswith(" ") else value)
    if buf:
        payload = "\n".join(buf)
        if payload.strip() != "[DONE]":
            yield payload


def chunk_text(obj: dict[str, Any]) -> str:
    """The text a /v1/completions (or chat) stream chunk carries."""
    choices = obj.get("choices") or []
    if not choices:
        return ""
    c = choices[0] or {}
    if "text" in c and c["text"]:
        return str(c["text"])
    delta = c.get("delta") or {}
    return str(delta.get("content") or "")


# ---------------------------------------------------------------------------------------------- streaming completion


@dataclass
class RequestResult:
    ok: bool
    error: str = ""
    start: float = 0.0
    ttft_s: float | None = None
    token_times: list[float] = field(default_factory=list)  # arrival time of each token chunk
    tokens: int = 0  # output tokens: the server's usage count when given, else token chunks
    json_ok: bool | None = None  # schema-constrained requests: whether the output parsed as JSON
    text: str = ""  # the generated text

    @property
    def end(self) -> float:
        return self.token_times[-1] if self.token_times else self.start

    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]

    def decode_tokens_per_s(self) -> float | None:
        t = self.token_times
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) / (t[-1] - t[0])


def stream_completion(host: str, port: int, fields: dict[str, Any], *, api_key: str | None = None,
                      timeout: float = 120.0, tls: bool = False, check_json: bool = False) -> RequestResult:
    """One streaming (SSE) /v1/completions request with `fields` as its body, timing the first text chunk and each
    one after it (time.perf_counter). Never raises: a failure is `ok=False` with `error`."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    res = RequestResult(ok=False, start=time.perf_counter())
    conn = connection(host, port, timeout, tls)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(fields), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(300).decode("utf-8", errors="replace").strip().replace("\n", " ")
            res.error = f"HTTP {resp.status}: {text[:200]}"
            return res
        chunks = 0
        usage_tokens = None
        text: list[str] = []
        for payload in iter_sse_data(iter(resp.readline, b"")):
            now = time.perf_counter()
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("error"):
                res.error = f"stream error: {str(obj['error'])[:200]}"
                return res
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                usage_tokens = int(usage["completion_tokens"])
            if isinstance(obj, dict) and chunk_text(obj):
                text.append(chunk_text(obj))
                chunks += 1
                if res.ttft_s is None:
                    res.ttft_s = now - res.start
                res.token_times.append(now)
        res.tokens = usage_tokens if usage_tokens is not None else chunks
        res.text = "".join(text)
        if res.ttft_s is None:
            res.error = "no tokens in the response"
            return res
        res.ok = True
        if check_json:
            res.json_ok = _parses(res.text)
        return res
    except (OSError, http.client.HTTPException) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:200]
        return res
    finally:
        conn.close()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
