"""Where a vLLM CPU server's memory goes (issue 18): RSS, anonymous and file-backed memory of each process of a real
`vllm serve` (API server, engine core, worker), at ready and after 12 requests from 4 clients, plus the worker's
largest mappings (the KV space, the packed lm_head, the heap). Feeds memory.vllm_cpu_runtime_terms; results in
benchmarks/results/vllm_cpu_memory.md.

    set -a; . ~/.cache/stackgen-ci/engines.env; set +a
    $STACKGEN_VLLM_PY benchmarks/vllm_cpu_breakdown.py $STACKGEN_GEMMA_HF --max-model-len 4096 --max-num-seqs 4

Runs under the vLLM venv's Python (psutil comes with vLLM). The baseline of one process importing vLLM:
    $STACKGEN_VLLM_PY -c "import vllm.entrypoints.openai.api_server; print(open('/proc/self/status').read())"
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import psutil


def breakdown(pid: int) -> list[dict]:
    out = []
    for p in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
        try:
            st = {k: int(v.split()[0]) // 1024 for k, v in
                  (line.split(":", 1) for line in open(f"/proc/{p.pid}/status") if ":" in line)
                  if k in ("VmRSS", "RssAnon", "RssFile")}
            out.append({"pid": p.pid, "name": p.name(), **st})
        except (OSError, psutil.Error):
            pass
    return out


def big_mappings(pid: int, over_mib: int = 20) -> list[tuple[int, str]]:
    regs, path = [], "[anon]"
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            path = parts[5] if len(parts) > 5 else "[anon]"
        elif line.startswith("Rss:") and int(line.split()[1]) > over_mib * 1024:
            regs.append((int(line.split()[1]) // 1024, path))
    return sorted(regs, reverse=True)[:8]


def main() -> int:
    model, extra = sys.argv[1], sys.argv[2:]
    port = 18000 + os.getpid() % 1000
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    argv = [os.environ["STACKGEN_VLLM"], "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", "m", "--enforce-eager", *extra]
    log = open(f"/tmp/vllm-breakdown-{port}.log", "w")
    p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        while not ready():
            if time.time() - t0 > 600 or p.poll() is not None:
                print("not ready (log: " + log.name + ")")
                return 1
            time.sleep(1)
        r = breakdown(p.pid)
        print(f"ready after {time.time() - t0:.0f} s:", json.dumps(r), "total", sum(x["VmRSS"] for x in r))
        for x in r:
            print(x["pid"], x["name"], big_mappings(x["pid"]))

        def req(i: int) -> None:
            body = json.dumps({"model": "m", "max_tokens": 32, "prompt": f"Request {i}: "
                               + " ".join(["river mountain", str(i)] * 200)}).encode()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                                          {"Content-Type": "application/json"}), timeout=300).read()

        threads = [threading.Thread(target=lambda k=k: [req(k * 100 + j) for j in range(3)]) for k in range(4)]
        for t in threads:
            t.start()
        peak = 0
        while any(t.is_alive() for t in threads):
            peak = max(peak, sum(x["VmRSS"] for x in breakdown(p.pid)))
            time.sleep(0.5)
        r = breakdown(p.pid)
        print("after load:", json.dumps(r), "total", sum(x["VmRSS"] for x in r), "peak", peak)
    finally:
        os.killpg(p.pid, 15)
        p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
