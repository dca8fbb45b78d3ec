"""llama.cpp RPC for real, on one machine: ggml-rpc-server on 127.0.0.1 (argv from stackgen's rpc_server_argv) and
llama-server `--rpc 127.0.0.1:PORT` with the Gemma 3 270M GGUF, answering a completion. The fixtures FAIL instead of
skipping when CI is set and a binary is missing."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

from stackgen.engines.llamacpp import rpc_server_argv


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"port {port} never opened")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except OSError:
        return 0, b""


def test_llama_server_through_a_local_rpc_worker(rpc_server, llama_server, gguf_path, free_port, pid_cleanup, tmp_path):
    rpc_port, http_port = free_port(), free_port()
    rpc_log = open(tmp_path / "rpc.log", "wb")
    rpc = subprocess.Popen(rpc_server_argv(str(rpc_server), "127.0.0.1", rpc_port, threads=1, cache=False),
                           stdout=rpc_log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_cleanup.append(rpc.pid)
    _wait_port(rpc_port, rpc, 30)
    log = open(tmp_path / "server.log", "wb")
    t0 = time.monotonic()
    server = subprocess.Popen([str(llama_server), "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(http_port),
                               "-c", "512", "-np", "1", "-ngl", "all", "-t", "1", "--rpc", f"127.0.0.1:{rpc_port}"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_cleanup.append(server.pid)
    try:
        end = time.monotonic() + 120
        while _get(f"http://127.0.0.1:{http_port}/health")[0] != 200:
            assert server.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < end, "llama-server never became healthy"
            time.sleep(0.5)
        ready_s = time.monotonic() - t0
        body = json.dumps({"prompt": "The capital of France is", "n_predict": 16, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{http_port}/completion", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())
        assert out["content"].strip(), out
        assert out["tokens_predicted"] > 0
        # llama-server holds an RPC session open while it serves: the worker's device is in use, not only probed.
        rpc_log.flush()
        worker = (tmp_path / "rpc.log").read_text(errors="replace")
        assert worker.count("Accepted client connection") > worker.count("Client connection closed"), worker
        print(f"\nRPC run: ready in {ready_s:.1f} s, {out['tokens_predicted']} tokens, "
              f"{out['timings']['predicted_per_second']:.1f} tok/s decode, "
              f"{out['timings']['prompt_per_second']:.1f} tok/s prompt; content={out['content']!r}")
    finally:
        for p in (server, rpc):
            p.kill()
            p.wait(timeout=10)
