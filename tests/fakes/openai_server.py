"""The one fake OpenAI-compatible server of the tests (stdlib only, 127.0.0.1).

Two ways to run it:

- in-process: `with FakeOpenAIServer(tokens=5, delay=0.01) as srv:` serves on `srv.port` from a thread; its settings
  are plain attributes a test may change while it runs (`srv.health = 200`, `srv.models = ["m"]`);
- as an engine binary: `write_engine(path)` writes an executable that `up` starts like llama-server (`--port`,
  `--host`, `--alias`, `--help`), whose behaviour comes from FAKE_* environment variables (see `engine_main`).

What it serves:

- GET /health: the health state, `health_state()`: 503 "loading model" until `load_s` has passed (forever when
  `hang`), 500 "error" while `sick_file` exists, else `health` (200 "ok"; 503 "loading model"; anything else
  "error"); `health_any_path` answers every GET path with it (a server that only has a health page);
- GET /v1/models: `models` (401 without `api_key` when one is set); GET /api/version: Ollama's daemon, when `api_version` is set; GET /metrics: `metrics`
  (name -> value) as Prometheus text, 404 when None;
- POST /v1/completions (and any POST): `completion_status` other than 200 answers that status with an error (503:
  "model is loading"); `api_key` wants `Authorization: Bearer <key>` (401 otherwise); `fail_every=k` answers every
  k-th request 500; `serialize` serves one request at a time (an engine with one slot). Not streaming: `n` times
  `word` and the usage. Streaming (SSE): an optional keep-alive comment, then `n` chunks `token_text.format(i=i)`,
  each `delay` seconds after the one before (token timing), a finish chunk, the usage (`usage`: "last" in the finish
  chunk as llama.cpp does, "separate" in a chunk of its own with no choices as OpenAI's include_usage does, None for
  none), then [DONE]; sent close-delimited (HTTP/1.0) or with `chunked` transfer encoding (HTTP/1.1). n is
  min(tokens, max_tokens), max_tokens when `tokens` is None.
- POST /completion (llama-server's own, what `stackgen calibrate` asks): `n_predict` tokens after n x `delay`
  seconds, with llama-server's "timings": prompt_n (the prompt's words) at `delay` / 10 each, predicted_n at `delay`.
Every request body is kept in `bodies` (and counted in `count`); `log` gets "request PATH" per request.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


class FakeOpenAIServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, health: int = 200, load_s: float = 0.0,
                 hang: bool = False, sick_file: str | None = None, health_any_path: bool = False,
                 models: list[str] | None = None, api_version: str | None = None,
                 metrics: dict[str, float] | None = None, completion_status: int = 200, tokens: int | None = 5,
                 delay: float = 0.0, token_text: str = " t{i}", word: str = " x", usage: str | None = "last",
                 keepalive: bool = True, chunked: bool = False, serialize: bool = False, fail_every: int = 0,
                 api_key: str | None = None, log: Callable[[str], None] | None = None):
        self.health, self.load_s, self.hang, self.sick_file = health, load_s, hang, sick_file
        self.health_any_path = health_any_path
        self.models = list(models) if models is not None else []
        self.api_version, self.metrics = api_version, metrics
        self.completion_status, self.tokens, self.delay = completion_status, tokens, delay
        self.token_text, self.word, self.usage, self.keepalive = token_text, word, usage, keepalive
        self.chunked, self.serialize, self.fail_every, self.api_key = chunked, serialize, fail_every, api_key
        self.log = log
        self.count = 0
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.serial = threading.Lock()
        self.t0 = time.monotonic()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # clients closing early are not test failures
        self.port = self.httpd.server_address[1]
        self.thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------------------- state

    def health_state(self) -> tuple[int, str]:
        """(HTTP status, the body's "status") of /health now."""
        if self.hang or time.monotonic() - self.t0 < self.load_s:
            return 503, "loading model"
        if self.sick_file and os.path.exists(self.sick_file):
            return 500, "error"
        return self.health, {200: "ok", 503: "loading model"}.get(self.health, "error")

    def metrics_text(self) -> str:
        return "".join(f"# TYPE {k} gauge\n{k} {v}\n" for k, v in (self.metrics or {}).items())

    # -------------------------------------------------------------------------------------------- running

    def __enter__(self) -> "FakeOpenAIServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(timeout=5)
            self.thread = None
        self.httpd.server_close()

    def serve_forever(self) -> None:
        """In this thread (the engine binary)."""
        self.httpd.serve_forever()


def _handler(fake: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if fake.chunked else "HTTP/1.0"

        def log_message(self, *a):
            if fake.log is not None:
                fake.log(f"request {self.path}")

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def _send(self, code: int, data: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health" or fake.health_any_path:
                code, text = fake.health_state()
                return self._json(code, {"status": text})
            if self.path == "/v1/models":
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._json(401, {"error": "bad key"})  # as llama-server and vLLM guard it
                return self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
            if self.path == "/api/version" and fake.api_version:
                return self._json(200, {"version": fake.api_version})
            if self.path == "/metrics" and fake.metrics is not None:
                return self._send(200, fake.metrics_text().encode(), "text/plain; version=0.0.4")
            self._json(404, {"error": "not found"})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            with fake.lock:
                fake.count += 1
                number = fake.count
                fake.bodies.append(body)
            if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                return self._json(401, {"error": "bad key"})
            if fake.fail_every and number % fake.fail_every == 0:
                return self._json(500, {"error": "boom"})
            if fake.completion_status != 200:
                return self._json(fake.completion_status,
                                  {"error": "model is loading" if fake.completion_status == 503 else "boom"})
            if fake.serialize:
                with fake.serial:
                    self._answer(body)
            else:
                self._answer(body)

        def _answer(self, body: dict) -> None:
            if self.path == "/completion":  # llama-server's own endpoint: the calibration's timings
                n = int(body.get("n_predict", 4))
                time.sleep(n * fake.delay)
                words = max(1, len(str(body.get("prompt", "")).split()))
                return self._json(200, {"content": fake.word * n, "timings": {
                    "prompt_n": words, "prompt_ms": words * fake.delay * 100, "predicted_n": n,
                    "predicted_ms": n * fake.delay * 1000}})
            want = int(body.get("max_tokens", 4))
            n = want if fake.tokens is None else min(fake.tokens, want)
            if not body.get("stream"):
                return self._json(200, {"choices": [{"text": fake.word * n, "index": 0, "finish_reason": "length"}],
                                        "usage": {"completion_tokens": n, "prompt_tokens": 10}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if fake.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if fake.keepalive:
                self._write(b": keep-alive\n\n")
            for i in range(n):
                time.sleep(fake.delay)
                self._event({"choices": [{"text": fake.token_text.format(i=i), "index": 0, "finish_reason": None}]})
            usage = {"completion_tokens": n, "prompt_tokens": 10}
            last: dict = {"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}
            if fake.usage == "last":
                last["usage"] = usage
            self._event(last)
            if fake.usage == "separate":
                self._event({"choices": [], "usage": usage})
            self._write(b"data: [DONE]\n\n")
            if fake.chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _event(self, obj: dict) -> None:
            self._write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def _write(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if fake.chunked else data)
            self.wfile.flush()

    return Handler


# ------------------------------------------------------------------------------------------------ the engine binary


def engine_main(argv: list[str] | None = None, *, load_s: float = 0.5, help_text: str = "usage: fake engine, a test double",
                **settings) -> None:
    """A fake engine process: serves FakeOpenAIServer on --host/--port with --alias as its model, logging to stdout
    like an engine. `load_s` and `settings` are the defaults the written binary bakes in; the environment decides
    what a test changes:
    FAKE_MODE: ok | hang (never ready) | exit (a bad flag: status 1) | nomodel (the model file is missing: status 1) |
      fork / setsid (leaves a child that ignores SIGTERM, its pid in FAKE_CHILD_PID; setsid: in a session of its own)
      | orphan (leaves a child in its session that no longer carries the STACKGEN_SERVICE_ID marker, as vLLM's
      EngineCore, whose setproctitle overwrites the environment /proc shows; its pid in FAKE_CHILD_PID)
      | ignore_term (ignores SIGTERM) | die_after (crashes with status 3 FAKE_DIE_S seconds after start);
    FAKE_LOAD_S: seconds until /health says ready; FAKE_SICK_FILE: /health answers 500 while that file exists."""
    args = sys.argv[1:] if argv is None else argv

    def arg(name: str, default: str | None = None) -> str | None:
        return args[args.index(name) + 1] if name in args else default

    mode = os.environ.get("FAKE_MODE", "ok")
    port = int(arg("--port", "8080"))
    host = arg("--host", "127.0.0.1")
    if "--help" in args:  # like a real engine: print usage and exit
        print(help_text)
        sys.exit(0)
    print("fake engine starting", args, flush=True)
    if mode == "exit":
        print("error: invalid argument: --bogus-flag", flush=True)
        sys.exit(1)
    if mode == "nomodel":
        print("gguf_init_from_file: failed to open GGUF file '/nope.gguf' (No such file or directory)", flush=True)
        sys.exit(1)
    if mode in ("fork", "setsid"):
        pid = os.fork()
        if pid == 0:
            if mode == "setsid":
                os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn worker: needs SIGKILL
            with open(os.environ["FAKE_CHILD_PID"], "w") as f:
                f.write(str(os.getpid()))
            for _ in range(6000):
                time.sleep(0.1)
            os._exit(0)
    if mode == "orphan":
        pid = os.fork()
        if pid == 0:
            env = {k: v for k, v in os.environ.items() if k != "STACKGEN_SERVICE_ID"}
            code = ("import os, time\n"
                    f"open({os.environ['FAKE_CHILD_PID']!r}, 'w').write(str(os.getpid()))\n"
                    "time.sleep(600)\n")
            os.execve(sys.executable, [sys.executable, "-c", code], env)
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("die_after", "exit0_after"):  # answers, then crashes with status 3 (a crash loop once restarted), or
        status = 3 if mode == "die_after" else 0  # exits 0 by itself, as vLLM's API server does after its engine dies
        def die():
            print("fatal: simulated crash" if status else "EngineDeadError: simulated; shutting down", flush=True)
            os._exit(status)
        threading.Timer(float(os.environ.get("FAKE_DIE_S", "1")), die).start()
    # an engine streams what it is asked for (max_tokens), one token every 10 ms, no usage
    settings = {"tokens": None, "delay": 0.01, "token_text": " tok", "word": " Paris", "usage": None,
                "keepalive": False, **settings}
    srv = FakeOpenAIServer(host=host, port=port, load_s=float(os.environ.get("FAKE_LOAD_S", load_s)),
                           hang=mode == "hang", sick_file=os.environ.get("FAKE_SICK_FILE"),
                           models=[arg("--alias", "m")], log=lambda line: print(line, flush=True), **settings)
    print("listening on", port, flush=True)
    if mode != "ignore_term":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    srv.serve_forever()


def stop_fake_stacks(stacks, folder: Path) -> None:
    """A test's teardown: `down` each stack (a fake engine's), then SIGKILL the child a fork/orphan fake left, whose
    pid it wrote to folder/child.pid (FAKE_CHILD_PID): never leave processes behind."""
    from stackgen.errors import LaunchError
    from stackgen.run.lifecycle import down

    for stack in stacks:
        try:
            down(stack, grace_s=1)
        except LaunchError:
            pass
    child = Path(folder) / "child.pid"
    if child.exists():
        try:
            os.kill(int(child.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def write_engine(path: Path, **defaults) -> Path:
    """An executable at `path` that runs engine_main with `defaults` (load_s, help_text, FakeOpenAIServer
    settings), for a stack's `binary:`."""
    path = Path(path)
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(HERE)!r})\n"
                    f"from openai_server import engine_main\nengine_main(**{defaults!r})\n", encoding="utf-8")
    path.chmod(0o755)
    return path
