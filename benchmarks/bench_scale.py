"""Simulated vs measured: two real llama-server instances of Gemma 3 270M behind the rendered HAProxy config on
127.0.0.1, driven by closed-loop streaming users at 2, 4 and 8; the same plan through `stackgen simulate`.

    set -a; . ~/.cache/stackgen-ci/engines.env; set +a
    .venv/bin/python benchmarks/bench_scale.py [--users 2,4,8] [--rounds 3] > benchmarks/results/scale.md

Everything binds 127.0.0.1 and is stopped at the end. Prompts are random words (seeded) so llama-server cannot
reuse a cached prefix between requests: every request pays its full prefill, as the simulation assumes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stackgen.bench import _WORDS, one_request, percentile  # noqa: E402
from tests.tools.fleet import Fleet, plan_for  # noqa: E402
from dataclasses import replace  # noqa: E402

from stackgen.capacity import fleet_curves, simulate_service  # noqa: E402
from stackgen.simulate import simulate  # noqa: E402

STACK = """version: 1
name: scale-bench
hardware: detect
workload:
  concurrent_users: {users}
  context_tokens: 512
  prompt_tokens: {prompt}
  output_tokens: {output}
services:
  chat:
    model: {gguf}
    engine: llama.cpp
    binary: {binary}
    port: {port}
    replicas: 2
    overrides:
      cache-ram: 0
"""


def random_prompt(tokens: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) + str(rng.randrange(100)) for _ in range(max(1, tokens // 2)))


def drive(port: int, users: int, requests: int, prompt: int, output: int, seed: int) -> dict:
    rng = random.Random(seed)
    prompts = [random_prompt(prompt, rng) for _ in range(requests)]
    lock, results, issued = threading.Lock(), [], [0]

    def user() -> None:
        while True:
            with lock:
                if issued[0] >= requests:
                    return
                i = issued[0]
                issued[0] += 1
            r = one_request("127.0.0.1", port, "chat", prompts[i], output, timeout=300)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, daemon=True) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    measured = sorted(ok, key=lambda r: r.start)[users:] or ok  # the first round is a warm-up, as in the simulation
    rates = [x for x in (r.decode_tokens_per_s() for r in measured) if x]
    span = max(r.end for r in measured) - min(r.start for r in measured)
    return {"errors": len(results) - len(ok), "ttft_p50_s": percentile([r.ttft_s for r in measured], 50),
            "ttft_p95_s": percentile([r.ttft_s for r in measured], 95),
            "tokens_per_s_per_user": percentile(rates, 50),
            "throughput_tokens_per_s": sum(r.tokens for r in measured) / span, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--output", type=int, default=64)
    ap.add_argument("--port", type=int, default=18500)
    a = ap.parse_args()
    levels = [int(x) for x in a.users.split(",")]
    calibrated = []
    print("| users | sim TTFT p95 | measured TTFT p95 | diff | sim tok/s (all) | measured tok/s (all) | diff | "
          "sim tok/s/user | measured tok/s/user | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for users in levels:
        with tempfile.TemporaryDirectory(prefix="stackgen-scale-") as tmp:
            stack = Path(tmp) / "stack.yaml"
            stack.write_text(STACK.format(users=users, prompt=a.prompt, output=a.output, port=a.port,
                                          gguf=os.environ["STACKGEN_GGUF"],
                                          binary=os.environ["STACKGEN_LLAMA_SERVER"]))
            plan = plan_for(stack)
            sp = plan.services[0]
            sim = simulate_service(sp, plan.hardware, [users])[0]
            with Fleet(sp, Path(tmp), haproxy=shutil.which("haproxy") or "haproxy") as fleet:
                fleet.wait_ready(180)
                # In-run calibration (this machine's CPUs are shared, so its speed drifts): one user, one busy
                # instance: prefill seconds per token and decode seconds per step, measured now.
                one = drive(a.port, 1, 3, a.prompt, a.output, seed=1000 + users)
                got = drive(a.port, users, users * a.rounds, a.prompt, a.output, seed=users)
            base = fleet_curves(sp, plan.hardware)[0]
            cal = replace(base, weights_read_s=1 / one["tokens_per_s_per_user"], kv_read_s_per_seq=0.0,
                          flop_s_per_token=one["ttft_p50_s"] / a.prompt)
            csim = simulate([cal] * sp.replicas, users=users, prompt_tokens=a.prompt, output_tokens=a.output,
                            rounds=3)
            calibrated.append((users, csim, got))
        d1 = got["ttft_p95_s"] / sim.ttft_p95_s - 1
        d2 = got["throughput_tokens_per_s"] / sim.throughput_tokens_per_s - 1
        print(f"| {users} | {sim.ttft_p95_s:.2f} s | {got['ttft_p95_s']:.2f} s | {d1:+.0%} | "
              f"{sim.throughput_tokens_per_s:.1f} | {got['throughput_tokens_per_s']:.1f} | {d2:+.0%} | "
              f"{sim.tokens_per_s_per_user:.1f} | {got['tokens_per_s_per_user']:.1f} | {got['errors']} |", flush=True)
    print()
    print("Calibrated in the same run (1 user measured just before each level sets prefill s/token and decode "
          "s/step; batching, queueing and routing are the simulator's):")
    print()
    print("| users | sim TTFT p95 | measured TTFT p95 | diff | sim tok/s (all) | measured tok/s (all) | diff |")
    print("|---|---|---|---|---|---|---|")
    for users, sim, got in calibrated:
        d1 = got["ttft_p95_s"] / sim.ttft_p95_s - 1
        d2 = got["throughput_tokens_per_s"] / sim.throughput_tokens_per_s - 1
        print(f"| {users} | {sim.ttft_p95_s:.2f} s | {got['ttft_p95_s']:.2f} s | {d1:+.0%} | "
              f"{sim.throughput_tokens_per_s:.1f} | {got['throughput_tokens_per_s']:.1f} | {d2:+.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
