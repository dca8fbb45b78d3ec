"""Simulated vs measured: two real llama-server instances of Gemma 3 270M behind the rendered HAProxy config on
127.0.0.1, driven by closed-loop streaming users at 2, 4 and 8; the same plan through `stackgen simulate`.

    set -a; . ~/.cache/stackgen-ci/engines.env; set +a
    .venv/bin/python benchmarks/bench_scale.py [--users 2,4,8] [--min-requests 16] [--calibration 6]

Everything binds 127.0.0.1 and is stopped at the end. Prompts are random words (seeded) so llama-server cannot
reuse a cached prefix between requests: every request pays its full prefill, as the simulation assumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stackgen.run.bench import _WORDS, one_request, percentile  # noqa: E402
from tests.tools.fleet import Fleet, plan_for  # noqa: E402
from dataclasses import replace  # noqa: E402

from stackgen.plan.capacity import fleet_curves, simulate_service  # noqa: E402
from stackgen.plan.simulate import Variability, simulate  # noqa: E402

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
            "throughput_tokens_per_s": sum(r.tokens for r in measured) / span, "wall_s": wall,
            "requests": len(measured), "ttfts": [r.ttft_s for r in measured],
            "step_s": [1 / x for x in rates]}  # each request's mean decode step


def drive_each(ports: list[int], users: int, requests: int, prompt: int, output: int, seed: int) -> dict:
    """`drive` on every instance's own port at the same time: the pooled requests' figures."""
    out: list[dict] = []
    threads = [threading.Thread(target=lambda i=i, p=p: out.append(drive(p, users, requests, prompt, output,
                                                                         seed + 100 * i))) for i, p in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return pooled(out)


def pooled(out: list[dict]) -> dict:
    """The requests of several drives as one sample: mean time to first token and decode step, and their spread."""
    ttfts = [x for d in out for x in d["ttfts"]]
    decode = [x for d in out for x in d["step_s"]]
    return {"ttfts": ttfts, "step_s": decode, "errors": sum(d["errors"] for d in out),
            "ttft_mean_s": statistics.fmean(ttfts), "step_mean_s": statistics.fmean(decode),
            "ttft_cv": statistics.pstdev(ttfts) / statistics.fmean(ttfts),
            "decode_cv": statistics.pstdev(decode) / statistics.fmean(decode)}


def prompt_token_cv(port: int, prompt: int, n: int, seed: int) -> tuple[float, float]:
    """(mean, cv) of the token counts of `n` prompts as the bench makes them, by the server's own /tokenize."""
    rng = random.Random(seed)
    counts = []
    for _ in range(n):
        body = json.dumps({"content": random_prompt(prompt, rng)}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize", body, {"Content-Type": "application/json"})
        counts.append(len(json.loads(urllib.request.urlopen(req, timeout=30).read())["tokens"]))
    return statistics.fmean(counts), statistics.pstdev(counts) / statistics.fmean(counts)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def calibrated(one: dict, prompt: int, base):
    """The plan's own curve (capacity.service_curve: its shape, e.g. what a second stream costs) with its decode
    times scaled to the mean 1-stream decode step measured now, and prefill from the mean measured time to first
    token (the step's jitter has mean 1, so the means set the curve)."""
    k = one["step_mean_s"] / base.step_s(1, 0)
    prompt_s = max(1e-6, one["ttft_mean_s"] - base.overhead_s) / prompt
    step = replace(base.step, weights_s=base.step.weights_s * k, kv_s=base.step.kv_s * k, t0_s=base.step.t0_s * k,
                   batch_token_s=base.step.batch_token_s * k, prompt_token_s=prompt_s)
    return replace(base, weights_read_s=step.weights_s, kv_read_s_per_seq=step.kv_s, flop_s_per_token=prompt_s,
                   step=step)


def variability(one: dict, prompt_cv: float) -> Variability:
    """From the 1-stream requests: the spread of their times to first token is the prompts' length spread
    (/tokenize) and the host's jitter (CVs of independent factors add in squares); decode: the host's jitter
    alone (every request decodes exactly `output` tokens, ignore_eos)."""
    host = math.sqrt(max(0.0, one["ttft_cv"] ** 2 - prompt_cv ** 2))
    return Variability(prompt_cv=prompt_cv, prefill_cv=host, decode_cv=one["decode_cv"])


def row(users: int, sim, got: dict, extra: str = "") -> str:
    d0 = got["ttft_p50_s"] / sim.ttft_p50_s - 1
    d1 = got["ttft_p95_s"] / sim.ttft_p95_s - 1
    d2 = got["throughput_tokens_per_s"] / sim.throughput_tokens_per_s - 1
    return (f"| {users} | {sim.ttft_p50_s:.2f} / {got['ttft_p50_s']:.2f} s | {d0:+.0%} | {sim.ttft_p95_s:.2f} / "
            f"{got['ttft_p95_s']:.2f} s | **{d1:+.0%}** | "
            f"{sim.throughput_tokens_per_s:.1f} / {got['throughput_tokens_per_s']:.1f} | **{d2:+.0%}** | "
            f"{sim.tokens_per_s_per_user:.1f} / {got['tokens_per_s_per_user']:.1f} |{extra}")


HEAD = ("| users | TTFT p50 sim / measured | diff | TTFT p95 sim / measured | diff | tok/s (all) sim / measured | "
        "diff | tok/s/user sim / measured |")
RULE = "|---|---|---|---|---|---|---|---|"
SIM_REQUESTS = 400  # simulated requests per level with variability: enough for a steady p95


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="2,4,8")
    ap.add_argument("--min-requests", type=int, default=16, help="measured requests per level, after the warm-up")
    ap.add_argument("--calibration", type=int, default=4,
                    help="1-stream requests per instance before and again after the fleet run (the first is a warm-up)")
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
                tokens_mean, prompt_cv = prompt_token_cv(sp.capacity.ports[0], a.prompt, 40, seed=3000 + users)
                # In-run calibration (this machine's CPUs are shared, so its speed drifts): 1 stream on every
                # instance at once, as the fleet runs (instances on one host share its cores), just before and
                # just after the fleet run, pooled, so a drift during the run is in the calibration too.
                ports = list(sp.capacity.ports)
                before = drive_each(ports, 1, a.calibration, a.prompt, a.output, seed=1000 + users)
                during = load()
                requests = users + max(a.min_requests, 2 * users)
                got = drive(a.port, users, requests, a.prompt, a.output, seed=users)
                after = drive_each(ports, 1, a.calibration, a.prompt, a.output, seed=2000 + users)
                one = pooled([before, after]) | {"before": 1 / before["step_mean_s"], "after": 1 / after["step_mean_s"]}
            base = fleet_curves(sp, plan.hardware)[0]
            curve = calibrated(one, a.prompt, base)
            var = variability(one, prompt_cv)
            rounds = max(3, math.ceil(SIM_REQUESTS / users))
            noisy = simulate([curve] * sp.replicas, users=users, prompt_tokens=a.prompt, output_tokens=a.output,
                             rounds=rounds, variability=var)
            flat = simulate([curve] * sp.replicas, users=users, prompt_tokens=a.prompt, output_tokens=a.output,
                            rounds=3)
            rows[users] = (sim, noisy, flat, got, one, var, tokens_mean, during)
        print(f"users {users} done: load {during}", file=sys.stderr, flush=True)
    print()
    print("Calibrated in the same run, with variability (the plan's curve scaled to the mean 1-stream speed "
          "measured just before and just after the fleet run; prompt-length and step jitter from the same 1-stream "
          "requests):")
    print()
    print(HEAD + " measured requests | 1-stream tok/s before / after, TTFT mean | prompt tokens mean, cv | "
          "prefill / decode jitter cv | load during |")
    print(RULE + "---|---|---|---|---|")
    for users, (_, noisy, _, got, one, var, tokens_mean, during) in rows.items():
        print(row(users, noisy, got, f" {got['requests']} | {one['before']:.1f} / {one['after']:.1f}, "
                                     f"{one['ttft_mean_s']:.2f} s | {tokens_mean:.0f}, {var.prompt_cv:.2f} | "
                                     f"{var.prefill_cv:.2f} / {var.decode_cv:.2f} | {during} |"))
    print()
    print("The same calibration without variability (every request alike, as before):")
    print()
    print(HEAD)
    print(RULE)
    for users, (_, _, flat, got, _, _, _, _) in rows.items():
        print(row(users, flat, got))
    print()
    print("Plan constants (stackgen simulate, nothing measured):")
    print()
    print(HEAD + " errors |")
    print(RULE + "---|")
    for users, (sim, _, _, got, _, _, _, _) in rows.items():
        print(row(users, sim, got, f" {got['errors']} |"))
    print()
    print(f"load average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
