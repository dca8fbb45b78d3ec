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

from stackgen.run.bench import _WORDS, one_request, percentile  # noqa: E402
from tests.tools.fleet import Fleet, plan_for  # noqa: E402
from dataclasses import replace  # noqa: E402

from stackgen.plan.capacity import fleet_curves, simulate_service  # noqa: E402
from stackgen.plan.simulate import simulate  # noqa: E402

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


def drive_each(ports: list[int], users: int, requests: int, prompt: int, output: int, seed: int) -> dict:
    """`drive` on every instance's own port at the same time; the mean of their figures."""
    out: list[dict] = []
    threads = [threading.Thread(target=lambda i=i, p=p: out.append(drive(p, users, requests, prompt, output,
                                                                         seed + 100 * i))) for i, p in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = ("ttft_p50_s", "ttft_p95_s", "tokens_per_s_per_user", "throughput_tokens_per_s")
    return {k: sum(d[k] for d in out) / len(out) for k in keys} | {"errors": sum(d["errors"] for d in out)}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def fit(one: dict, two: dict | None, prompt: int, base):
    """A per-instance curve from two points measured now on one instance: 1 stream and 2 streams. The decode step
    is `shared + d x per_seq` (ServiceCurve's weights_read_s and kv_read_s_per_seq); with one point only, the
    whole step is shared (the roofline's assumption that batching is free)."""
    step1 = 1 / one["tokens_per_s_per_user"]
    per_seq = 0.0
    if two is not None:
        step2 = 1 / two["tokens_per_s_per_user"]
        per_seq = min(step1, max(0.0, step2 - step1))
    return replace(base, weights_read_s=step1 - per_seq, kv_read_s_per_seq=per_seq, decode_s_per_seq=0.0,
                   flop_s_per_token=one["ttft_p50_s"] / prompt)


def scaled(one: dict, prompt: int, base):
    """The plan's own curve (capacity.service_curve: its shape, e.g. what a second stream costs) with its decode
    times scaled to the 1-stream speed measured now, and prefill from the measured time to first token."""
    k = (1 / one["tokens_per_s_per_user"]) / base.step_s(1, 0)
    return replace(base, weights_read_s=base.weights_read_s * k, kv_read_s_per_seq=base.kv_read_s_per_seq * k,
                   decode_s_per_seq=base.decode_s_per_seq * k, flop_s_per_token=one["ttft_p50_s"] / prompt)


def row(users: int, sim, got: dict, extra: str = "") -> str:
    d1 = got["ttft_p95_s"] / sim.ttft_p95_s - 1
    d2 = got["throughput_tokens_per_s"] / sim.throughput_tokens_per_s - 1
    return (f"| {users} | {sim.ttft_p50_s:.2f} / {got['ttft_p50_s']:.2f} s | {sim.ttft_p95_s:.2f} s | "
            f"{got['ttft_p95_s']:.2f} s | {d1:+.0%} | "
            f"{sim.throughput_tokens_per_s:.1f} | {got['throughput_tokens_per_s']:.1f} | {d2:+.0%} | "
            f"{sim.tokens_per_s_per_user:.1f} | {got['tokens_per_s_per_user']:.1f} |{extra}")


HEAD = ("| users | TTFT p50 sim / measured | sim TTFT p95 | measured TTFT p95 | diff | sim tok/s (all) | measured tok/s (all) | diff | "
        "sim tok/s/user | measured tok/s/user |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--output", type=int, default=64)
    ap.add_argument("--port", type=int, default=18500)
    a = ap.parse_args()
    levels = [int(x) for x in a.users.split(",")]
    rows = {}
    print(f"load average at start (1/5/15 min): {load()}; {os.cpu_count()} CPUs", flush=True)
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
                # In-run calibration (this machine's CPUs are shared, so its speed drifts), on instance 1 directly:
                # 1 stream (prefill s/token, decode s/step), then 2 streams when its slots allow (the decode
                # step's cost per extra sequence).
                # Every instance at once, as the fleet runs: instances on one host share its cores.
                one = drive_each(sp.capacity.ports, 1, 3, a.prompt, a.output, seed=1000 + users)
                two = drive_each(sp.capacity.ports, 2, 4, a.prompt, a.output, seed=2000 + users) \
                    if sp.memory.parallel >= 2 else None
                during = load()
                got = drive(a.port, users, users * a.rounds, a.prompt, a.output, seed=users)
            base = fleet_curves(sp, plan.hardware)[0]
            model = simulate([scaled(one, a.prompt, base)] * sp.replicas, users=users, prompt_tokens=a.prompt,
                             output_tokens=a.output, rounds=3)
            roof = simulate([fit(one, None, a.prompt, base)] * sp.replicas, users=users, prompt_tokens=a.prompt,
                            output_tokens=a.output, rounds=3)
            lin = simulate([fit(one, two, a.prompt, base)] * sp.replicas, users=users, prompt_tokens=a.prompt,
                           output_tokens=a.output, rounds=3) if two else None
            rows[users] = (sim, roof, lin, got, one, two, during, model)
        print(f"users {users} done: load {during}", file=sys.stderr, flush=True)
    print()
    print("Plan constants (stackgen simulate, nothing measured):")
    print()
    print(HEAD + " errors | load during |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for users, (sim, _, _, got, _, _, during, _) in rows.items():
        print(row(users, sim, got, f" {got['errors']} | {during} |"))
    print()
    print("The plan's model (its curve's shape) scaled to the 1-stream speed measured now on every instance at once:")
    print()
    print(HEAD + " 1-stream tok/s, TTFT p50 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for users, (_, _, _, got, one, _, _, model) in rows.items():
        print(row(users, model, got, f" {one['tokens_per_s_per_user']:.1f}, {one['ttft_p50_s']:.2f} s |"))
    print()
    print("Calibrated in the same run, batching free (1 stream on every instance at once sets prefill s/token and decode "
          "s/step; the step does not grow with the batch):")
    print()
    print(HEAD)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for users, (_, roof, _, got, _, _, _, _) in rows.items():
        print(row(users, roof, got))
    print()
    print("Calibrated in the same run, step = shared + per-sequence (1, then 2 streams on every instance at once):")
    print()
    print(HEAD + " 1-stream / 2-stream tok/s per stream |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for users, (_, _, lin, got, one, two, _, _) in rows.items():
        if lin is not None:
            print(row(users, lin, got, f" {one['tokens_per_s_per_user']:.1f} / {two['tokens_per_s_per_user']:.1f} |"))
    print()
    print(f"load average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
