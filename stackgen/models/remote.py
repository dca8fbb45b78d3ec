"""The one HTTP client stackgen reads remote model metadata with, and a seekable reader over HTTP range requests.

Everything that leaves the machine goes through :class:`HttpClient`: timeouts, retries with backoff on 429/5xx and
dropped connections, ``HF_TOKEN`` sent only to the Hugging Face endpoint (``HF_ENDPOINT``, default
https://huggingface.co) and never across a redirect, and offline mode (``HF_HUB_OFFLINE=1`` or
``STACKGEN_OFFLINE=1``) that refuses before any request. The transport is injectable (tests and benchmarks count
bytes); the default one is the standard library's urllib, so no HTTP package is needed.

:class:`RangeReader` gives ``seek``/``read`` over a remote file by fetching only the ranges asked for, in blocks
that double on each miss (1 MiB up to 8 MiB), so a GGUF header of a few MB is read in a handful of requests and the
weights behind it never are (the technique of gguf-parser-go and huggingface.js's gguf reader).
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Mapping

from stackgen.errors import ModelError

__all__ = ["RemoteError", "OfflineError", "AuthError", "NotFoundError", "Response", "HttpClient", "RangeReader",
           "urllib_transport", "offline_requested", "DEFAULT_HF_ENDPOINT"]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
USER_AGENT = "stackgen (model metadata; header ranges only)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class RemoteError(ModelError):
    """A remote model's metadata could not be read; the message names the URL and what to do."""


class OfflineError(RemoteError):
    """Offline mode is on and a model needs the network (the message names the lock file to use)."""


class AuthError(RemoteError):
    """401/403: a gated or private repository."""


class NotFoundError(RemoteError):
    """404: no such repository, revision, file or tag."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    url: str


# A transport: (method, url, headers, unredirected_headers, timeout_s, max_bytes) -> Response, within timeout_s in
# all (connect, headers and body). It raises OSError (urllib.error.URLError and TimeoutError are ones) for a
# connection that fails or runs out of time; HTTP error statuses come back as a Response.
Transport = Callable[[str, str, Mapping[str, str], Mapping[str, str], float, int], Response]


def urllib_transport(method: str, url: str, headers: Mapping[str, str], private: Mapping[str, str], timeout: float,
                     max_bytes: int) -> Response:
    """`private` headers (the token) are added with add_unredirected_header: urllib drops them on a redirect, so a
    CDN the Hub redirects a download to never sees the token. At most `max_bytes` of the body are read: a server
    that ignores Range must not make us download the weights. `timeout` bounds the whole exchange, not only each
    socket read: a server that trickles a byte every few seconds never trips a per-read timeout."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, method=method, headers=dict(headers))
    for k, v in private.items():
        req.add_unredirected_header(k, v)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only, checked by the client)
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(65536) if exc.fp is not None else b""
            return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, body, exc.geturl() or url)
    with resp:
        chunks: list[bytes] = []
        got = 0
        while got < max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the body did not arrive within {timeout:g} s ({got} bytes came)")
            _read_timeout(resp, left)
            chunk = resp.read1(min(65536, max_bytes - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, b"".join(chunks),
                        resp.geturl())


def _read_timeout(resp, seconds: float) -> None:
    """The next socket read waits at most `seconds` (what is left of the exchange's time); the socket under
    http.client's response is fp.raw._sock (socket.SocketIO), left alone where a transport has none."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def offline_requested(env: Mapping[str, str]) -> str | None:
    """The variable that turns offline mode on, or None. HF_HUB_OFFLINE is the Hub's own switch."""
    for name in ("STACKGEN_OFFLINE", "HF_HUB_OFFLINE"):
        if env.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


@dataclass
class HttpClient:
    """GETs with retries; counts requests and body bytes received (the benchmark and the tests read them)."""

    transport: Transport = urllib_transport
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    timeout_s: float = 20.0  # one try, all of it (connect, headers, body)
    deadline_s: float = 45.0  # one request, all its tries and waits: a stalled or silent server costs at most this
    retries: int = 3
    backoff_s: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    requests: int = 0
    bytes_received: int = 0

    @property
    def hf_endpoint(self) -> str:
        return (self.env.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")

    @property
    def ollama_registry(self) -> str:
        return (self.env.get("STACKGEN_OLLAMA_REGISTRY") or "https://registry.ollama.ai").rstrip("/")

    def check_online(self, what: str, lock_hint: str) -> None:
        name = offline_requested(self.env)
        if name:
            raise OfflineError(f"{what} needs the network to read its metadata and {name}=1 is set; {lock_hint}")

    def get(self, url: str, what: str, *, byte_range: tuple[int, int] | None = None, accept: str | None = None,
            max_bytes: int = 64 * 1024**2) -> Response:
        """GET `url`; `byte_range` is inclusive (start, end). Raises RemoteError subclasses with `what` in the text."""
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise RemoteError(f"{what}: only http(s) URLs can be read, not {url!r}")
        self.check_online(what, "plan from the lock file instead (`stackgen lock` writes it where the network is "
                                "reachable)")
        headers = {"User-Agent": USER_AGENT}
        if accept:
            headers["Accept"] = accept
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            max_bytes = byte_range[1] - byte_range[0] + 1
        private = self._auth(url)
        resp = self._with_retries(url, what, headers, private, max_bytes)
        self._raise_for_status(resp, url, what)
        return resp

    def _auth(self, url: str) -> dict[str, str]:
        """The token's header for a request to HF_ENDPOINT itself: the same scheme, host and port, and over HTTPS
        unless the endpoint is on this machine (a local mirror). An audit's `model: http://huggingface.co/...` (the
        same host and port as an endpoint given as http) sent the token in clear text."""
        token = self.env.get("HF_TOKEN") or self.env.get("HUGGING_FACE_HUB_TOKEN")
        to, hub = urllib.parse.urlsplit(url), urllib.parse.urlsplit(self.hf_endpoint)
        same = (to.scheme, to.netloc) == (hub.scheme, hub.netloc)
        private = to.scheme == "https" or (to.hostname or "") in ("localhost", "127.0.0.1", "::1")
        return {"Authorization": f"Bearer {token}"} if token and same and private else {}

    def _with_retries(self, url: str, what: str, headers: Mapping[str, str], private: Mapping[str, str],
                      max_bytes: int) -> Response:
        last = ""
        deadline = self.clock() + self.deadline_s
        tries = 0
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff_s * 2 ** (attempt - 1)
                if self.clock() + wait >= deadline:
                    break
                self.sleep(wait)
            left = deadline - self.clock()
            if left <= 0:
                break
            self.requests += 1
            tries += 1
            try:
                resp = self.transport("GET", url, headers, private, min(self.timeout_s, left), max_bytes)
            except (OSError, ValueError) as exc:  # URLError, timeouts, resets; ValueError: http.client's bad status
                last = str(getattr(exc, "reason", None) or exc)
                continue
            self.bytes_received += len(resp.body)
            if resp.status not in RETRY_STATUSES:
                return resp
            last = f"HTTP {resp.status}"
        within = f" within {self.deadline_s:g} s" if self.clock() >= deadline or tries < self.retries + 1 else ""
        raise RemoteError(f"{what}: {url} failed after {tries} {'try' if tries == 1 else 'tries'}{within} ({last}); "
                          "check the network, HF_ENDPOINT or the proxy settings")

    def _raise_for_status(self, resp: Response, url: str, what: str) -> None:
        if resp.status in (200, 206):
            return
        if resp.status in (401, 403):
            raise AuthError(f"{what}: {url} answered {resp.status}: the repository is gated or private; accept its "
                            "terms on the model page and set HF_TOKEN in the environment (stackgen sends it only to "
                            "HF_ENDPOINT and never writes it to any file)")
        if resp.status == 404:
            raise NotFoundError(f"{what}: {url} answered 404 (no such repository, revision, file or tag)")
        raise RemoteError(f"{what}: {url} answered HTTP {resp.status}")


class RangeReader:
    """A read-only, seekable view of a remote file; `size` comes from the first response's Content-Range."""

    def __init__(self, client: HttpClient, url: str, what: str, *, first_block: int = 1 << 20,
                 max_block: int = 8 << 20) -> None:
        self.client, self.url, self.what = client, url, what
        self.block, self.max_block = first_block, max_block
        self.pos = 0
        self.bytes_fetched = 0
        self.buf_start, self.buf = 0, b""
        self.size = -1
        # What the server says identifies this version of the file (ETag, Last-Modified), from the first response
        self.validators: dict[str, str] = {}
        self._fetch(0, first_block)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes. Like a raw stream it may return fewer: what the last block holds from `pos` on (the
        GGUF cursor asks for 1 MiB at a time and reads on when it needs more), so no byte is fetched twice."""
        if n < 0:
            n = self.size - self.pos
        end = min(self.pos + n, self.size)
        if self.pos >= end:
            return b""
        buf_end = self.buf_start + len(self.buf)
        if not self.buf_start <= self.pos < buf_end:
            self.block = min(self.block * 2, self.max_block)
            self._fetch(self.pos, self.block)
            buf_end = self.buf_start + len(self.buf)
        end = min(end, buf_end)
        out = self.buf[self.pos - self.buf_start:end - self.buf_start]
        self.pos += len(out)
        return out

    def _fetch(self, start: int, length: int) -> None:
        if self.size >= 0:
            length = min(length, self.size - start)
        resp = self.client.get(self.url, self.what, byte_range=(start, start + length - 1))
        self.bytes_fetched += len(resp.body)
        if not self.validators:
            self.validators = {k: resp.headers[k] for k in ("etag", "last-modified") if resp.headers.get(k)}
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", "").strip())
            if not m or int(m.group(1)) != start or m.group(3) == "*":
                raise RemoteError(f"{self.what}: {self.url} sent an unusable Content-Range "
                                  f"{resp.headers.get('content-range')!r} for bytes {start}-")
            self.size = int(m.group(3))
            self.buf_start, self.buf = start, resp.body
            return
        # 200: the server ignored Range; the transport read only `length` bytes of it.
        total = resp.headers.get("content-length")
        if start != 0 or total is None:
            raise RemoteError(f"{self.what}: {self.url} does not support HTTP range requests; download the file "
                              "and point `model:` at it")
        self.size = int(total)
        self.buf_start, self.buf = 0, resp.body[:length]


def hub_resolve_url(url: str) -> bool:
    """A file URL on the Hub itself (https://huggingface.co/<repo>/resolve/...): how stack.lock pins an `hf:` GGUF
    (models.lock, always the public endpoint) and how llama-server -mu then fetches it, sending HF_TOKEN (review M3).
    Any other host is a third party: the token must never reach it (llama-server sends HF_TOKEN as a bearer token to
    any -mu URL: engines.base.command drops it from the engine's environment there)."""
    to, hub = urllib.parse.urlsplit(url), urllib.parse.urlsplit(DEFAULT_HF_ENDPOINT)
    return (to.scheme, to.netloc.lower()) == (hub.scheme, hub.netloc) and "/resolve/" in to.path
