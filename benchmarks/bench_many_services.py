"""Validate (load_stack) and plan a stack of N services that all use one local GGUF, with and without the header
cache in stackgen.models.facts (issue 10.7: 10,000 services re-read the same header 10,000 times, 287 s to validate).

Usage: python benchmarks/bench_many_services.py [--services 10000] [--uncached 1000] [--path FILE] [--write]

--uncached N times N services with the cache bypassed (every service reads the header, as before the fix); the
10,000-service uncached figure is that time scaled linearly (the read is per service, nothing else is shared).
The GGUF comes from --path, $STACKGEN_GGUF or ~/.cache/stackgen-ci/models/gemma-3-270m-Q4_K_M.gguf.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stackgen.models import facts as models, gguf  # noqa: E402
from stackgen.spec.stack import load_stack  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "many_services.md"


def model_path(arg: str | None) -> Path:
    for cand in (arg, os.environ.get("STACKGEN_GGUF"),
                 str(Path.home() / ".cache/stackgen-ci/models/gemma-3-270m-Q4_K_M.gguf")):
        if cand and Path(cand).is_file():
            return Path(cand)
    sys.exit("no GGUF: pass --path or set STACKGEN_GGUF")


def write_stack(folder: Path, gguf_file: Path, n: int) -> Path:
    (folder / "models").mkdir(exist_ok=True)
    link = folder / "models" / "m.gguf"
    if not link.exists():
        link.symlink_to(gguf_file)
    lines = ["version: 1", "hardware: cpu-server-64gb", "services:"]
    lines += [f"  s{i}: {{model: models/m.gguf, engine: llama.cpp, port: {20000 + i}}}" for i in range(n)]
    path = folder / f"stack-{n}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def time_load(path: Path, cached: bool) -> tuple[float, int]:
    """Seconds to load_stack, and how many times the header was read."""
    reads = [0]
    real_read = gguf.read_gguf_header

    def counting(p):
        reads[0] += 1
        return real_read(p)

    gguf.read_gguf_header = counting
    original = models._gguf_summary
    if not cached:
        models._gguf_summary = original.__wrapped__  # every call reads the file, as before the cache
    models._gguf_summary.__dict__.get("cache_clear", lambda: None)()
    original.cache_clear()
    try:
        t0 = time.perf_counter()
        stack = load_stack(path)
        elapsed = time.perf_counter() - t0
    finally:
        gguf.read_gguf_header = real_read
        models._gguf_summary = original
    assert len(stack.services) == int(path.stem.split("-")[1])
    return elapsed, reads[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--uncached", type=int, default=1000)
    ap.add_argument("--path")
    ap.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args()
    src = model_path(args.path)
    t_one = time.perf_counter()
    gguf.read_gguf_header(src)
    one = time.perf_counter() - t_one
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before, before_reads = time_load(write_stack(folder, src, args.uncached), cached=False)
        after_small, small_reads = time_load(write_stack(folder, src, args.uncached), cached=True)
        after, after_reads = time_load(write_stack(folder, src, args.services), cached=True)
    scaled = before * args.services / args.uncached
    rows = [
        ("one header read", "", f"{one * 1000:.1f} ms", ""),
        (f"validate {args.uncached} services, no cache (before)", before_reads, f"{before:.2f} s", ""),
        (f"validate {args.uncached} services, cache (after)", small_reads, f"{after_small:.2f} s",
         f"{before / after_small:.1f}x"),
        (f"validate {args.services} services, no cache (before, scaled)", args.services, f"{scaled:.1f} s", ""),
        (f"validate {args.services} services, cache (after)", after_reads, f"{after:.2f} s",
         f"{scaled / after:.1f}x"),
    ]
    table = ["| case | header reads | time | speed-up |", "|---|---:|---:|---:|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = (f"# Validating many services on one GGUF\n\nModel: {src.name} ({src.stat().st_size / 2**20:.0f} MiB). "
            f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs (shared). "
            "`python benchmarks/bench_many_services.py --write`.\n\n" + "\n".join(table) + "\n")
    print(text)
    if args.write:
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
