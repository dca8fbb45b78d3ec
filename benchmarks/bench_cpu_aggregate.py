"""Forecast vs measured decode at 1, 2 and 4 streams for the quickstart stack (issue 13: "predicted aggregate within
20% here"): the quickstart's own llama-server command (examples/quickstart/stack.yaml: Gemma 3 270M Q4_K_M, CPU,
-np 4), driven the way `up --verify` drives it (stackgen.run.bench.drive: one streaming request per user, all at once,
the verify prompt), beside the plan's forecast at that many users uncalibrated (`plan --no-calibration`) and, with
--calibrate, calibrated (`stackgen calibrate --model` run in-process into a temporary config folder first).

    set -a; . ~/.cache/stackgen-ci/engines.env; set +a
    .venv/bin/python benchmarks/bench_cpu_aggregate.py [--streams 1,2,4] [--repeats 3] [--tokens 128] [--calibrate]

Rounds interleave the stream counts (1, 2, 4, 1, 2, 4, ...) so that machine noise hits them alike; the table gives
the median over rounds. The GGUF: $STACKGEN_GGUF, else examples/quickstart/models/gemma-3-270m-Q4_K_M.gguf; the
binary: $STACKGEN_LLAMA_SERVER, else llama-server on PATH. Everything binds 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stackgen.run.bench import drive, summarize  # noqa: E402
from stackgen.run.preflight import free_port  # noqa: E402
from stackgen.run.up import VERIFY_PROMPT  # noqa: E402

STACK = ROOT / "examples" / "quickstart" / "stack.yaml"


def load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def stack_copy(tmp: Path, gguf: str, binary: str) -> Path:
    """The quickstart stack with the model path and binary made absolute (the stack's own folder may lack the GGUF)."""
    text = STACK.read_text().replace("model: models/gemma-3-270m-Q4_K_M.gguf", f"model: {gguf}")
    text = text.replace("    engine: llama.cpp\n", f"    engine: llama.cpp\n    binary: {binary}\n")
    path = tmp / "stack.yaml"
    path.write_text(text)
    return path


def plan(path: Path, calibration: bool):
    from stackgen.pipeline import plan_stack

    return plan_stack(path, None, write_lock=False, calibration=calibration)[1]


def forecasts(p, streams: list[int]) -> dict[int, object]:
    from stackgen.plan.speed import forecast_at

    sp = p.services[0]
    return {n: forecast_at(sp, p.hardware, n) for n in streams}


def calibrate(gguf: str, binary: str, threads: int) -> str:
    """`stackgen calibrate --model GGUF` into the current STACKGEN_CONFIG_HOME; returns its engine point's text."""
    from stackgen import engines
    from stackgen.host import binaries
    from stackgen.host import calibration as cal
    from stackgen.pipeline import load_host

    host = load_host(None)
    eng = next(e for e in engines.ENGINES.values() if e.calibrates)
    build = binaries.engine_build(binary, eng.binary_package) if eng.plans_by_build else 0
    t = time.perf_counter()
    result = cal.measure(cal.machine_key(host.hardware), engine=lambda bw: cal.measure_engine(
        eng.name, binary, gguf, bandwidth_gbs=bw, threads=threads, build=build))
    cal.save(result)
    return f"{result.memory_bandwidth_gbs:g} GB/s; {result.engine.text()} ({time.perf_counter() - t:.0f} s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens per request (verify: 32)")
    ap.add_argument("--calibrate", action="store_true", help="also run `stackgen calibrate --model` and forecast "
                    "with it")
    args = ap.parse_args()
    streams = [int(x) for x in args.streams.split(",")]
    gguf = os.environ.get("STACKGEN_GGUF") or str(ROOT / "examples/quickstart/models/gemma-3-270m-Q4_K_M.gguf")
    binary = os.environ.get("STACKGEN_LLAMA_SERVER") or shutil.which("llama-server") or "llama-server"
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-agg-"))
    os.environ["STACKGEN_CONFIG_HOME"] = str(tmp / "config")  # never the user's own calibration
    path = stack_copy(tmp, gguf, binary)
    p0 = plan(path, calibration=False)
    sp = p0.services[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {p0.hardware.label()}; {load()}")
    print(f"# {' '.join(sp.command)}")
    rows = {"uncalibrated": forecasts(p0, streams)}
    if args.calibrate:
        print(f"# calibrate: {calibrate(gguf, binary, sp.threads)}")
        rows["calibrated"] = forecasts(plan(path, calibration=True), streams)
    port = free_port()
    argv = list(sp.command)
    argv[argv.index("--port") + 1] = str(port)
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **dict(sp.env)})
    # per round: (per-stream decode rate, decode aggregate = the streams' decode rates added up, tokens / wall time)
    measured: dict[int, list[tuple[float, float, float]]] = {n: [] for n in streams}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                print((tmp / "server.log").read_text()[-2000:])
                return 1
            time.sleep(0.3)
        drive("127.0.0.1", port, sp.name, users=1, requests=1, max_tokens=8, prompt=VERIFY_PROMPT)  # warm-up
        for rnd in range(args.repeats):
            for n in streams:
                res, wall, _ = drive("127.0.0.1", port, sp.name, users=n, requests=n, max_tokens=args.tokens,
                                     prompt=VERIFY_PROMPT, timeout=300)
                r = summarize(res, wall_s=wall, users=n, max_tokens=args.tokens)
                measured[n].append((r.per_stream_decode_tokens_per_s, r.decode_aggregate_tokens_per_s,
                                    r.output_tokens_per_s))
                print(f"  round {rnd + 1} {n} streams: {r.per_stream_decode_tokens_per_s:.1f} tok/s per stream, "
                      f"{r.decode_aggregate_tokens_per_s:.1f} decode aggregate, {r.output_tokens_per_s:.1f} over the "
                      f"wall time ({r.output_tokens} tokens in {wall:.2f} s, "
                      f"{r.errors} errors); {load()}", flush=True)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
    print()
    # The forecast's aggregate is the decode rate of N streams together (what the plan predicts), so it is compared
    # with the measured decode aggregate; tokens / wall time (prefill and HTTP included) is shown beside it.
    head = "| streams | measured per stream | measured decode aggregate | tokens / wall time |"
    for name in rows:
        head += f" {name} per stream | {name} aggregate | {name} error |"
    print(head)
    print("|" + "---|" * (4 + 3 * len(rows)))
    for n in streams:
        per = statistics.median(m[0] for m in measured[n])
        agg = statistics.median(m[1] for m in measured[n])
        wall_agg = statistics.median(m[2] for m in measured[n])
        line = f"| {n} | {per:.1f} | {agg:.1f} | {wall_agg:.1f} |"
        for name, fc in rows.items():
            f = fc[n]
            line += f" {f.per_user_tokens_per_s:.1f} | {f.aggregate_tokens_per_s:.1f} | " \
                    f"{(f.aggregate_tokens_per_s / agg - 1) * 100:+.0f}% |"
        print(line)
    print("\n# spread over rounds (decode aggregate min-max): " + ", ".join(
        f"{n}: {min(m[1] for m in measured[n]):.1f}-{max(m[1] for m in measured[n]):.1f}" for n in streams))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
