"""How long a native service is down after its engine is SIGKILLed, with the supervisor's on-failure restart:
from the kill to the first good completion of the restarted llama-server (real engine, Gemma 3 270M GGUF,
127.0.0.1), and how long a crash loop takes until the supervisor gives up.

Usage: python benchmarks/bench_restart.py [--runs 5] [--write]

The first backoff is 1 s (RestartPolicy.backoff_s); the rest is stackgen noticing the exit (it polls every 0.2 s),
spawning the engine, and the engine loading the model and answering. Needs $STACKGEN_LLAMA_SERVER and
$STACKGEN_GGUF (`set -a; . ~/.cache/stackgen-ci/engines.env; set +a`).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stackgen.host.facts import detect  # noqa: E402
from stackgen.run.readiness import Endpoint, complete  # noqa: E402
from stackgen.run.lifecycle import down, status  # noqa: E402
from stackgen.run.preflight import free_port  # noqa: E402
from stackgen.run.results import UpOptions  # noqa: E402
from stackgen.run.up import up  # noqa: E402
from stackgen.plan.resolve import resolve  # noqa: E402
from stackgen.spec.stack import load_stack  # noqa: E402
from stackgen.run.state import StateDir  # noqa: E402
from stackgen.run.supervise import RestartPolicy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "restart.md"


def write_stack(folder: Path, port: int) -> Path:
    path = folder / "stack.yaml"
    path.write_text(f"""version: 1
name: bench-restart
hardware: detect
workload: {{concurrent_users: 1, context_tokens: 2048, prompt_tokens: 32, output_tokens: 8}}
services:
  chat:
    model: {os.environ['STACKGEN_GGUF']}
    engine: llama.cpp
    binary: {os.environ['STACKGEN_LLAMA_SERVER']}
    port: {port}
""", encoding="utf-8")
    return path


def answers(port: int) -> bool:
    try:
        return complete(Endpoint("127.0.0.1", port, "llama.cpp", "chat"), "Hello", max_tokens=1,
                        timeout=5).completion_tokens == 1
    except Exception:  # noqa: BLE001 - refused or loading: not yet
        return False


def kill_and_time(path: Path, port: int) -> float:
    pid = StateDir(path).load().services["chat"].pid
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while True:
        st = StateDir(path).load().services["chat"]
        if st.pid != pid and answers(port):
            return time.monotonic() - t0
        if time.monotonic() - t0 > 180:
            raise SystemExit("the engine did not come back within 180 s")
        time.sleep(0.05)


def crash_loop(path: Path, max_restarts: int) -> float:
    """Kill every engine as soon as it is recorded, until the supervisor gives up."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        rows = status(path, 1.0)
        if rows and "gave up" in rows[0].last_exit:
            return time.monotonic() - t0
        st = StateDir(path).load().services["chat"]
        try:
            os.kill(st.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.1)
    raise SystemExit("the supervisor did not give up within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if not os.environ.get("STACKGEN_LLAMA_SERVER") or not os.environ.get("STACKGEN_GGUF"):
        sys.exit("set STACKGEN_LLAMA_SERVER and STACKGEN_GGUF (see ~/.cache/stackgen-ci/engines.env)")
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("STACKGEN_STATE_HOME", str(Path(d) / "state"))
        port = free_port()
        path = write_stack(Path(d), port)
        plan = resolve(load_stack(path), detect())
        policy = RestartPolicy(max_restarts=args.runs + 1)
        t0 = time.monotonic()
        up(plan, UpOptions(timeout_s=120, policy=policy))
        first = time.monotonic() - t0
        try:
            times = [kill_and_time(path, port) for _ in range(args.runs)]
            down(path, grace_s=5)
            up(plan, UpOptions(timeout_s=120, policy=RestartPolicy(max_restarts=3)))
            loop_s = crash_loop(path, 3)
        finally:
            down(path, grace_s=5)
    backoffs = [policy.delay(i) for i in range(len(times))]
    over = [t - b for t, b in zip(times, backoffs)]
    runs = "\n".join(f"| {i + 1} | {b:g} s | {t:.2f} s | {o:.2f} s |" for i, (b, t, o) in
                     enumerate(zip(backoffs, times, over)))
    text = (f"# Recovery after SIGKILL (native supervisor, restart on-failure)\n\n"
            f"{Path(os.environ['STACKGEN_LLAMA_SERVER']).name} from "
            f"{Path(os.environ['STACKGEN_LLAMA_SERVER']).parents[5].name}, {Path(os.environ['STACKGEN_GGUF']).name}; "
            f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs (shared). "
            f"`python benchmarks/bench_restart.py --write`.\n\n"
            f"First `up` to ready: {first:.2f} s. Each kill below comes after the previous recovery, so the "
            f"supervisor's backoff doubles (1, 2, 4, 8 s, at most 10 s within 300 s); \"overhead\" is the time "
            f"beyond the backoff: noticing the exit, spawning, loading the model, the first completion.\n\n"
            f"| kill | backoff | SIGKILL -> answering again | overhead |\n|---:|---:|---:|---:|\n{runs}\n\n"
            f"Median overhead {statistics.median(over):.2f} s. A crash loop (each engine killed as soon as it is "
            f"recorded; at most 3 restarts) is given up after {loop_s:.2f} s (backoffs 1 + 2 + 4 s).\n")
    print(text)
    if args.write:
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
