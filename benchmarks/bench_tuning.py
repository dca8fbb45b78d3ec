"""Does stackgen's generated llama-server config beat the defaults? Real llama-server, Gemma 3 270M, 8 users.

    python benchmarks/bench_tuning.py            # ~5-8 minutes on 2 cores; writes benchmarks/results/tuning.md

Needs STACKGEN_LLAMA_SERVER and STACKGEN_GGUF (environment, or `$STACKGEN_CACHE/engines.env` written by
.ci/provision.sh). Starts llama-server on 127.0.0.1 once per (configuration, round), alternating the configurations
within each round (rotating the order per round), drives it with stackgen.run.bench's driver, and kills it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stackgen.run import bench  # noqa: E402
from stackgen.run.preflight import free_port  # noqa: E402

USERS = 8
PROMPT_TOKENS = 64
OUTPUT_TOKENS = 48
CONTEXT = 4096


def engines_env() -> dict[str, str]:
    """STACKGEN_* from the environment, else from $STACKGEN_CACHE/engines.env (`export K='v'` lines)."""
    out: dict[str, str] = {}
    cache = Path(os.environ.get("STACKGEN_CACHE") or Path.home() / ".cache" / "stackgen-ci")
    f = cache / "engines.env"
    if f.exists():
        for line in f.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$", line)
            if m:
                vals = shlex.split(m.group(2)) or [""]
                out[m.group(1)] = vals[0]
    out.update({k: v for k, v in os.environ.items() if k.startswith("STACKGEN_")})
    return out


class Server:
    """llama-server in its own process group; killed (TERM, then KILL) on exit. `env`: variables set for the
    server on top of this process's environment."""

    def __init__(self, argv: list[str], port: int, log: Path, budget_s: float = 180.0,
                 env: dict[str, str] | None = None):
        self.argv, self.port, self.log, self.budget_s = argv, port, log, budget_s
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.fh = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=self.env)
        deadline = time.monotonic() + self.budget_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {shlex.join(self.argv)}\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"llama-server not healthy within {self.budget_s:.0f} s: {shlex.join(self.argv)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        self.fh.close()


def stack_text(model: str, users: int, context: int, port: int, hardware: str = "detect", *,
               engine: str = "llama.cpp", service: str = "gemma", binary: str | None = None,
               prompt_tokens: int = PROMPT_TOKENS, output_tokens: int = OUTPUT_TOKENS) -> str:
    """The benchmark's stack.yaml (shared with bench_memory.py and bench_vllm_tuning.py)."""
    binary_line = f"    binary: {json.dumps(binary)}\n" if binary else ""
    return f"""version: 1
name: bench
hardware: {hardware}
workload:
  concurrent_users: {users}
  context_tokens: {context}
  prompt_tokens: {prompt_tokens}
  output_tokens: {output_tokens}
  optimize: throughput
services:
  {service}:
    model: {json.dumps(model)}
    engine: {engine}
{binary_line}    port: {port}
"""


def stackgen_plan(stack: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "stackgen", "plan", "--json", str(stack)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"stackgen plan failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["services"][0]


def set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def flags(argv: list[str]) -> dict[str, str]:
    """The tuning flags of an argv, by short spelling (for the 'which knob differs' report)."""
    names = {"-c": "-c", "--ctx-size": "-c", "-np": "-np", "--parallel": "-np", "-t": "-t", "--threads": "-t",
             "-b": "-b", "--batch-size": "-b", "-ub": "-ub", "--ubatch-size": "-ub"}
    out = {}
    for i, a in enumerate(argv[:-1]):
        if a in names:
            out[names[a]] = argv[i + 1]
    return out


_C8 = str(CONTEXT * 8)
GRID: dict[str, list[str]] = {
    "np4": ["-c", str(CONTEXT * 4), "-np", "4"],
    "np8": ["-c", _C8, "-np", "8"],
    "np8-t1": ["-c", _C8, "-np", "8", "-t", "1"],
    "np8-b512-ub128": ["-c", _C8, "-np", "8", "-b", "512", "-ub", "128"],
    "np8-c8k": ["-c", "8192", "-np", "8"],
    "np16": ["-c", str(CONTEXT * 16), "-np", "16"],
}

LLAMA_DEFAULTS = {"-c": "0 (from model: 32768)", "-np": "auto (4)", "-t": "auto", "-b": "2048", "-ub": "512"}


def measure(argv: list[str], port: int, log: Path, requests: int) -> bench.BenchResult:
    with Server(argv, port, log) as srv:
        bench.one_request("127.0.0.1", port, "gemma", bench.make_prompt(8), 4, timeout=60)  # warm-up
        return bench.run_load("127.0.0.1", port, "gemma", users=USERS, prompt_tokens=PROMPT_TOKENS,
                              max_tokens=OUTPUT_TOKENS, requests=requests, pid=srv.pid, timeout=120,
                              engine="llama.cpp")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--configs", default="stackgen,defaults,np4,np8-t1,np16",
                    help="comma-separated subset of: stackgen, defaults, " + ", ".join(GRID))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tuning.md")
    args = ap.parse_args()
    env = engines_env()
    binary, gguf = env.get("STACKGEN_LLAMA_SERVER"), env.get("STACKGEN_GGUF")
    if not binary or not gguf or not Path(binary).exists() or not Path(gguf).exists():
        print("bench_tuning: needs STACKGEN_LLAMA_SERVER and STACKGEN_GGUF (run .ci/provision.sh)", file=sys.stderr)
        return 1
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="stackgen-bench-tuning-"))
    stack = work / "stack.yaml"
    stack.write_text(stack_text(gguf, USERS, CONTEXT, port), encoding="utf-8")
    sp = stackgen_plan(stack)
    tuned = [binary] + sp["command"][1:]
    tuned = set_flag(set_flag(tuned, "--host", "127.0.0.1"), "--port", str(port))
    base = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port)]
    all_configs = {"stackgen": tuned, "defaults": base, **{k: base + v for k, v in GRID.items()}}
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in all_configs]
    if unknown or "stackgen" not in names or "defaults" not in names or len(names) < 3:
        print(f"bench_tuning: --configs needs stackgen, defaults and at least one of {', '.join(GRID)} "
              f"(unknown: {', '.join(unknown) or '-'})", file=sys.stderr)
        return 1
    configs = {n: all_configs[n] for n in names}
    raw: dict[str, list[bench.BenchResult]] = {n: [] for n in names}
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate so no config always runs first
        for name in order:
            r = measure(configs[name], port, work / f"{name}-{rnd}.log", args.requests)
            raw[name].append(r)
            print(f"round {rnd + 1}/{args.rounds} {name:16s} {r.output_tokens_per_s:7.1f} tok/s  "
                  f"TTFT p50 {r.ttft_p50_s:.3f} p95 {r.ttft_p95_s:.3f} s  errors {r.errors}  "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in raw[name])

    grid = [n for n in names if n not in ("stackgen", "defaults")]
    best = max(grid, key=lambda n: med(n, "output_tokens_per_s"))
    tps = {n: med(n, "output_tokens_per_s") for n in names}
    p95 = {n: med(n, "ttft_p95_s") for n in names}
    ratio_def = tps["stackgen"] / tps["defaults"]
    ratio_best = tps["stackgen"] / tps[best]
    ttft_ratio = p95["stackgen"] / p95["defaults"] if p95["defaults"] else float("nan")
    diff = {k: (v, flags(configs[best]).get(k, LLAMA_DEFAULTS[k])) for k, v in flags(tuned).items()
            if k in LLAMA_DEFAULTS and v != flags(configs[best]).get(k, LLAMA_DEFAULTS[k])}
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    vtext = " ".join((version.stdout + version.stderr).split())[:200]
    verdict = []
    verdict.append(f"stackgen/defaults throughput {ratio_def:.2f}x, TTFT p95 {ttft_ratio:.2f}x "
                   f"({'ahead' if ratio_def > 1 and ttft_ratio < 1 else 'NOT ahead'} of the defaults)")
    verdict.append(f"stackgen/best grid point ({best}) throughput {ratio_best:.2f}x "
                   f"({'within' if ratio_best >= 0.95 else 'NOT within'} 5%)")
    if diff:
        verdict.append("knobs where stackgen's config differs from the best grid point: "
                       + ", ".join(f"{k} {a} (best: {b})" for k, (a, b) in sorted(diff.items())))

    from stackgen import __version__

    lines = [
        "# Tuning benchmark: stackgen's llama-server config vs defaults vs a small grid",
        "",
        f"Generated by `python benchmarks/bench_tuning.py` on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} logical CPUs, "
        f"{mem_gib():.1f} GiB RAM (shared, noisy)",
        f"- llama-server: `{binary}` ({vtext}); model `{Path(gguf).name}` ({Path(gguf).stat().st_size:,} bytes)",
        f"- stackgen {__version__}, Python {platform.python_version()}",
        f"- workload: {USERS} concurrent streaming users, {args.requests} requests per run, ~{PROMPT_TOKENS} prompt "
        f"tokens, {OUTPUT_TOKENS} output tokens (ignore_eos), {args.rounds} rounds, configs alternated within each "
        f"round (order rotated per round); figures are medians over rounds",
        f"- stackgen's argv (from `stackgen plan --json`, hardware: detect, context_tokens {CONTEXT}): "
        f"`{shlex.join(tuned[1:])}`",
        f"- total benchmark wall time {time.monotonic() - t0:.0f} s",
        "",
        "## Result",
        "",
        *[f"- {v}" for v in verdict],
        "",
        "| config | extra flags | tok/s (median) | TTFT p50 s | TTFT p95 s | ITL p50 ms | peak RSS MiB | errors | tok/s per round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in names:
        extra = shlex.join(configs[n][7:]) if n != "stackgen" else "(stackgen plan)"
        rss = statistics.median((r.peak_rss_bytes or 0) for r in raw[n]) / 2**20
        lines.append(f"| {n} | `{extra or '-'}` | {tps[n]:.1f} | {med(n, 'ttft_p50_s'):.3f} | {p95[n]:.3f} | "
                     f"{med(n, 'itl_p50_s') * 1000:.1f} | {rss:.0f} | {sum(r.errors for r in raw[n])} | "
                     + ", ".join(f"{r.output_tokens_per_s:.1f}" for r in raw[n]) + " |")
    lines += ["", "Raw results (JSON, per config and round):", "", "```json",
              json.dumps({n: [r.to_json() for r in raw[n]] for n in names}, indent=1, sort_keys=True), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(verdict))
    print(f"wrote {args.out}")
    return 0


def mem_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


if __name__ == "__main__":
    sys.exit(main())
