#!/usr/bin/env python3
"""Run the llama-server image through the Docker API (podman's) and check it answers.

Usage: python check_llama_image.py DOCKER_HOST IMAGE MODEL.gguf

Starts IMAGE with -p 127.0.0.1:PORT:8080 and MODEL.gguf mounted read-only at /models/m.gguf,
`--host 0.0.0.0 --port 8080` inside, waits (at most 120 s) for /health 200, asks for an
8-token greedy completion, then removes the container. Exit 0 when all of that worked.
Needs the `docker` SDK.
"""
import json
import socket
import sys
import time
import urllib.error
import urllib.request

import docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(host: str, image: str, model: str) -> int:
    client = docker.DockerClient(base_url=host, timeout=60)
    port = free_port()
    t0 = time.monotonic()
    c = client.containers.run(
        image,
        command=["-m", "/models/m.gguf", "--host", "0.0.0.0", "--port", "8080", "-c", "2048", "-np", "1"],
        ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={model: {"bind": "/models/m.gguf", "mode": "ro"}},
        detach=True,
        name=f"stackgen-ci-check-{port}",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        status = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    status = r.status
                    if status == 200:
                        break
            except urllib.error.HTTPError as e:
                status = e.code
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            c.reload()
            if c.status not in ("created", "running"):
                break
            time.sleep(0.5)
        if status != 200:
            print(f"no /health 200 (last {status}, container {c.status})", file=sys.stderr)
            print(c.logs(tail=30).decode(errors="replace"), file=sys.stderr)
            return 1
        t_health = time.monotonic() - t0
        body = json.dumps({"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/completion", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            content = json.load(r)["content"]
        print(f"container {c.short_id} on 127.0.0.1:{port}: /health 200 after {t_health:.1f}s; "
              f"completion {content!r}")
        return 0 if content.strip() else 1
    finally:
        c.remove(force=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
