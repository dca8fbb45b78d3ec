"""A local stand-in for the Hugging Face Hub and the Ollama registry, on 127.0.0.1, honouring Range requests.

It speaks the same URLs stackgen.models.remote/hub read (and huggingface_hub uses with HF_ENDPOINT):
  GET /api/models/{org}/{repo}/revision/{rev}?blobs=true   -> {"id", "sha", "siblings": [{rfilename, size, lfs}]}
  GET /{org}/{repo}/resolve/{rev}/{file}                    -> the file (206 + Content-Range for Range requests)
  GET /v2/{ns}/{model}/manifests/{tag}                      -> a Docker v2 manifest (Docker-Content-Digest header)
  GET /v2/{ns}/{model}/blobs/sha256:{hex}                   -> the blob, with Range
A file is `bytes` or a `Sparse(prefix, size)`: a real header followed by zeros up to the real file size, so a
recorded safetensors header of a 536 MB checkpoint serves as that checkpoint without storing its weights.
Every request is logged (path, Range, whether an Authorization header came, bytes sent). A handler appends its
entry after it wrote the body, so a client can have its answer before the entry is in: `Hub.log` (and bytes_sent)
first waits until no request is being answered. Every request the client got an answer to has entered do_GET, and
counted itself in-flight there, before the answer was written; so once none is in flight, every entry is in.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Sparse:
    prefix: bytes
    size: int

    def slice(self, start: int, end: int) -> bytes:  # end exclusive
        head = self.prefix[start:end]
        return head + bytes(max(0, end - max(start, len(self.prefix))))


@dataclass(frozen=True)
class OnDisk:
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def slice(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


Content = Union[bytes, Sparse, OnDisk]


def _size(c: Content) -> int:
    return len(c) if isinstance(c, bytes) else c.size


def _slice(c: Content, start: int, end: int) -> bytes:
    return c[start:end] if isinstance(c, bytes) else c.slice(start, end)


@dataclass
class Repo:
    files: dict[str, Content]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated_token: str | None = None  # when set, every request needs `Authorization: Bearer <token>`
    sha256: dict[str, str] = field(default_factory=dict)  # LFS sha256 per file (as the Hub lists them)
    etag: dict[str, str] = field(default_factory=dict)  # an ETag header per file, sent with its content when set


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)  # "org/name"
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # "ns/model:tag" -> (body, digest)
    blobs: dict[str, Content] = field(default_factory=dict)  # "sha256:hex"
    honour_range: bool = True
    fail_next: list[int] = field(default_factory=list)  # statuses to answer before serving normally (retries)
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: list[dict] = field(default_factory=list, init=False)  # the log, as the handlers append to it
    in_flight: int = field(default=0, init=False)  # requests in do_GET: answered or being answered, not yet logged

    def __post_init__(self) -> None:
        self.settled = threading.Condition(self.lock)  # notified when in_flight drops to 0

    @property
    def log(self) -> list[dict]:
        """Every request answered so far, once the handlers still answering (or logging) one are done."""
        with self.settled:
            if not self.settled.wait_for(lambda: self.in_flight == 0, timeout=30):
                raise AssertionError(f"hub: {self.in_flight} request(s) still being answered after 30 s")
            return self.entries

    def add_manifest(self, name: str, layers: list[tuple[str, Content]]) -> str:
        """layers: (mediaType, content); returns the manifest digest."""
        entries = []
        for media, content in layers:
            digest = "sha256:" + _sha256(content)
            self.blobs[digest] = content
            entries.append({"mediaType": media, "digest": digest, "size": _size(content)})
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "digest": "sha256:" + "0" * 64, "size": 2},
                           "layers": entries}, indent=2).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[name] = (body, digest)
        return digest

    @property
    def bytes_sent(self) -> int:
        return sum(e["bytes"] for e in self.log)


def _sha256(c: Content) -> str:
    h = hashlib.sha256()
    size, pos = _size(c), 0
    while pos < size:
        chunk = _slice(c, pos, min(size, pos + (8 << 20)))
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        with self.hub.lock:
            self.hub.in_flight += 1
        try:
            self._get()
        finally:  # after _send logged it (or an exception ended the request)
            with self.hub.settled:
                self.hub.in_flight -= 1
                self.hub.settled.notify_all()

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.hub.lock:
            fail = self.hub.fail_next.pop(0) if self.hub.fail_next else None
        if fail:
            return self._send(fail, b"try again", "text/plain")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            return self._model_info(m.group(1))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self._repo(m.group(1))
            if repo is None or m.group(3) not in repo.files:
                return self._send(404, b"not found", "text/plain")
            etag = repo.etag.get(m.group(3))
            return self._content(repo.files[m.group(3)], {"ETag": etag} if etag else None)
        m = re.fullmatch(r"/v2/([^/]+/[^/]+)/manifests/([^/]+)", path)
        if m:
            entry = self.hub.manifests.get(f"{m.group(1)}:{m.group(2)}")
            if entry is None:
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json")
            return self._send(200, entry[0], "application/vnd.docker.distribution.manifest.v2+json",
                              {"Docker-Content-Digest": entry[1]})
        m = re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/(sha256:[0-9a-f]{64})", path)
        if m and m.group(1) in self.hub.blobs:
            return self._content(self.hub.blobs[m.group(1)])
        self._send(404, b"not found", "text/plain")

    def _repo(self, name: str) -> Repo | None:
        repo = self.hub.repos.get(name)
        if repo is not None and repo.gated_token and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            self._send(401, b'{"error":"Access to model is restricted"}', "application/json")
            raise _Answered
        return repo

    def _model_info(self, name: str) -> None:
        repo = self._repo(name)
        if repo is None:
            return self._send(404, b'{"error":"Repository not found"}', "application/json")
        siblings = []
        for fname in sorted(repo.files):
            size = _size(repo.files[fname])
            entry: dict = {"rfilename": fname, "size": size}
            if fname in repo.sha256:
                entry["lfs"] = {"sha256": repo.sha256[fname], "size": size, "pointerSize": 134}
            siblings.append(entry)
        body = json.dumps({"id": name, "sha": repo.sha, "siblings": siblings}).encode()
        self._send(200, body, "application/json")

    def _content(self, c: Content, extra: dict | None = None) -> None:
        size = _size(c)
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and self.hub.honour_range:
            start = int(m.group(1))
            end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            if start >= size:
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
            return self._send(206, _slice(c, start, end + 1), "application/octet-stream",
                              {"Content-Range": f"bytes {start}-{end}/{size}", "Accept-Ranges": "bytes", **(extra or {})})
        self._send(200, _slice(c, 0, size), "application/octet-stream", extra)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
            sent = len(body)
        except (BrokenPipeError, ConnectionResetError):  # the client read only what it needed
            sent = 0
            self.close_connection = True
        with self.hub.lock:
            self.hub.entries.append({"path": self.path, "range": self.headers.get("Range"), "status": status,
                                 "auth": self.headers.get("Authorization") is not None, "bytes": sent})

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Answered:
            pass


class _Answered(Exception):
    pass


class HubServer:
    """`with HubServer(hub) as url:` serves `hub` on 127.0.0.1 until the block ends."""

    def __init__(self, hub: Hub) -> None:
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hub"


def recorded_repo(name: str) -> Repo:
    """A repository from tests/fixtures/hub/<name>: its real config.json and real safetensors header, the weights
    after the header served as zeros up to the real file size (sizes.json, with the real file's sha256)."""
    folder = FIXTURES / name
    sizes = json.loads((folder / "sizes.json").read_text())
    files: dict[str, Content] = {"config.json": (folder / "config.json").read_bytes()}
    sha256 = {}
    for fname, meta in sizes.items():
        files[fname] = Sparse((folder / f"{fname}.header").read_bytes(), meta["size"])
        sha256[fname] = meta["sha256"]
    return Repo(files, sha256=sha256)
