"""stackgen.bench against a real llama-server (-np 4) with the Gemma 3 270M GGUF on 127.0.0.1.

Needs STACKGEN_LLAMA_SERVER and STACKGEN_GGUF (environment, or `${STACKGEN_CACHE:-~/.cache/stackgen-ci}/engines.env`
from .ci/provision.sh). Skips with the reason when they are missing, FAILS when the `CI` variable is set.
Self-contained (its own env reading and process cleanup) so it does not depend on other fixtures.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from stackgen import bench

_EXPORT = re.compile(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")


def _engines_env() -> dict[str, str]:
    cache = Path(os.environ.get("STACKGEN_CACHE") or Path.home() / ".cache" / "stackgen-ci")
    env: dict[str, str] = {}
    try:
        text = (cache / "engines.env").read_text(encoding="utf-8")
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
    env.update({k: v for k, v in os.environ.items() if k.startswith("STACKGEN_") and v})
    return env


def _require(env: dict[str, str], key: str, what: str, exe: bool = False) -> str:
    value = env.get(key, "")
    ok = bool(value) and Path(value).is_file() and (not exe or os.access(value, os.X_OK))
    if not ok:
        msg = f"{what} is not available (${key}={value or 'unset'}; run `bash .ci/provision.sh`)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {msg}", pytrace=False)
        pytest.skip(msg)
    return value


@pytest.fixture
def llama_np4(tmp_path):
    env = _engines_env()
    binary = _require(env, "STACKGEN_LLAMA_SERVER", "llama-server", exe=True)
    gguf = _require(env, "STACKGEN_GGUF", "the Gemma 3 270M GGUF")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "llama.log", "wb")
    argv = [binary, "-m", gguf, "--alias", "gemma", "--host", "127.0.0.1", "--port", str(port),
            "-np", "4", "-c", "4096", "-t", "2"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "llama.log").read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "llama-server not healthy in 180 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_bench_real_llama_server(llama_np4):
    port, pid = llama_np4
    r = bench.run_load("127.0.0.1", port, "gemma", users=4, requests=8, prompt_tokens=32, max_tokens=16,
                       pid=pid, timeout=120, engine="llama.cpp", service="gemma")
    assert r.errors == 0, r.error_samples
    assert r.requests == 8
    assert r.output_tokens > 0
    assert r.ttft_p50_s > 0
    assert r.output_tokens <= 8 * 16
    assert r.peak_rss_bytes and r.peak_rss_bytes > 100 * 2**20  # the 253 MB model is resident
    assert r.max_concurrent_streams >= 2  # 4 slots serve users in parallel
