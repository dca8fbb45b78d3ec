"""Readiness probes per engine and a plain completion, through the one client (run/client.py).

Ready means the model answers, not that a port is open (reliability property 13): each engine says what that takes
in its one readiness definition (`stackgen.engines.base.Readiness`: a health path, the model in /v1/models, or a
1-token completion for servers that answer HTTP before any model is loaded).

"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from stackgen import engines
from stackgen.engines.base import Readiness
from stackgen.run.client import Endpoint, HTTPError, request

DOWN, LOADING, READY, ERROR = "down", "loading", "ready", "error"


@dataclass(frozen=True)
class Probe:
    state: str  # down | loading | ready | error
    detail: str = ""


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
