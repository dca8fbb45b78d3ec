"""Time and bytes on the wire to resolve the Gemma 3 270M GGUF over HTTP range requests, against the file's size.

Usage: python benchmarks/bench_resolve.py [--path FILE] [--runs 5] [--write]

The file is served by tests/tools/hub_server.py on 127.0.0.1 (Range honoured) three ways: as an `hf:org/repo`
GGUF repository, as an `https://.../x.gguf` URL and as an Ollama registry blob named by a manifest. Each run is a
fresh resolution (new client, nothing cached); bytes are those the server sent. The model comes from
$STACKGEN_GGUF (.ci/provision.sh).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from stackgen.models.hub import resolve_remote  # noqa: E402
from stackgen.models.remote import HttpClient  # noqa: E402
from tools.hub_server import Hub, HubServer, OnDisk, Repo  # noqa: E402


def measure(path: Path, runs: int) -> list[tuple[str, float, int, int]]:
    hub = Hub(repos={"google/gemma-3-270m-GGUF": Repo({path.name: OnDisk(path)})})
    hub.add_manifest("library/gemma3:270m", [("application/vnd.ollama.image.model", OnDisk(path))])
    rows = []
    with HubServer(hub) as url:
        refs = {"hf:google/gemma-3-270m-GGUF:Q4_K_M": "hf: GGUF repo",
                f"{url}/google/gemma-3-270m-GGUF/resolve/main/{path.name}": "https:// URL",
                "ollama:gemma3:270m": "ollama: manifest + blob"}
        for ref, label in refs.items():
            times, sent, reqs = [], [], []
            for _ in range(runs):
                hub.log.clear()
                c = HttpClient(env={"HF_ENDPOINT": url, "STACKGEN_OLLAMA_REGISTRY": url})
                t = time.perf_counter()
                r = resolve_remote(ref, None, c)
                times.append(time.perf_counter() - t)
                sent.append(hub.bytes_sent)
                reqs.append(len(hub.log))
                assert r.summary["layers"] == 18, r.summary
            rows.append((label, statistics.median(times), max(sent), max(reqs)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", type=Path, default=Path(os.environ.get("STACKGEN_GGUF", "")))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="append to benchmarks/results/resolve.md")
    a = ap.parse_args()
    if not a.path.is_file():
        sys.exit("no GGUF: set STACKGEN_GGUF (.ci/provision.sh) or pass --path")
    size = a.path.stat().st_size
    rows = measure(a.path, a.runs)
    lines = [f"## {platform.machine()} {platform.python_version()}, {a.runs} runs, {a.path.name} ({size:,} bytes)", "",
             "| reference | median s | bytes sent | % of file | requests |", "|---|---|---|---|---|"]
    for label, t, sent, reqs in rows:
        lines.append(f"| {label} | {t:.3f} | {sent:,} | {100 * sent / size:.2f} % | {reqs} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        with open(ROOT / "benchmarks" / "results" / "resolve.md", "a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
