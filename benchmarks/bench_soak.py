"""Soak test (issue 18): does memory stay inside the plan under sustained load? llama-server, vLLM (CPU) and
mlx_lm.server (CPU), Gemma 3 270M, stackgen's config beside the engine's defaults.

    python benchmarks/bench_soak.py --duration 90          # per engine and config; writes benchmarks/results/soak.md
    python benchmarks/bench_soak.py --engines llama.cpp --duration 3600   # an hour of llama-server

For each engine: `stackgen plan --json` (hardware: detect) of a quickstart-shaped stack gives the argv, env and the
planned system RAM (host_bytes, with its prompt cache line). Each config starts on 127.0.0.1 in its own process
group, gets 2 warm-up requests, then `concurrent_users` streaming clients send requests back to back for --duration
seconds: ~600-token prompts, each distinct, except a share that start with one of a few ~400-token shared prefixes
(a system prompt, as chat traffic has). A thread samples the RSS (and PSS) of the whole process tree every 0.5 s.
Reported: RSS when ready, steady state (median of the last third of the samples), peak, each against the plan.
Goal: the peak never more than 5% above the plan, never above the plan's host budget.

"defaults" is the same command without stackgen's cache bounds (llama-server: no --cache-ram/--ctx-checkpoints, so
8192 MiB and 32 per slot; mlx_lm.server: no --prompt-cache-size/--prompt-cache-bytes, so 10 entries and no byte
cap). vLLM's defaults run is `vllm serve MODEL` with the same VLLM_CPU_KVCACHE_SPACE: unset, vLLM's CPU backend
would take ~92% of the machine's RAM for its KV pool, which on a shared machine is not an experiment to run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tuning import Server, engines_env, set_flag, stack_text, stackgen_plan  # noqa: E402
from stackgen.run.preflight import free_port  # noqa: E402

from stackgen.run import bench  # noqa: E402

MIB = 2**20
USERS = 4
CONTEXT = 4096
PROMPT_TOKENS = 600
OUTPUT_TOKENS = 32
REQUEST_TIMEOUT = 180.0  # seconds per request; a request that takes longer counts as an error
PREFIX_TOKENS = 400
PREFIX_SHARE = 0.3  # requests that start with a shared prefix
PREFIXES = 4
SERVICE = "gemma"
ENGINES = ("llama.cpp", "vllm", "mlx")
CACHE_FLAGS = {"llama.cpp": ("--cache-ram", "--ctx-checkpoints"), "mlx": ("--prompt-cache-size", "--prompt-cache-bytes")}
_VOCAB = ("river mountain city garden window paper engine signal market winter summer orange silver forest "
          "question answer model memory number letter village teacher student doctor planet ocean desert "
          "bridge castle music picture language history science story friend family morning evening").split()


def words(rng: random.Random, n: int) -> str:
    """About n tokens of varied text: words and numbers in random order."""
    out = []
    while len(out) < n:
        out.append(rng.choice(_VOCAB) if rng.random() < 0.8 else str(rng.randint(10, 99)))
    return " ".join(out)


def prompt(i: int) -> str:
    rng = random.Random(i)
    prefix = min(PREFIX_TOKENS, PROMPT_TOKENS * 2 // 3)
    if rng.random() < PREFIX_SHARE:
        k = i % PREFIXES
        head = f"System prompt {k}: " + words(random.Random(10_000 + k), prefix)
        return f"{head}\nUser {i}: " + words(rng, PROMPT_TOKENS - prefix)
    return f"Request {i}: " + words(rng, PROMPT_TOKENS)


def pss_tree(pid: int) -> int:
    """Proportional set size of a process tree (shared pages split among the processes that map them)."""
    import psutil

    total = 0
    for p in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
        try:
            with open(f"/proc/{p.pid}/smaps_rollup", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int]] = []  # (t, rss, pss)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic() - t0, bench.rss_tree(self.pid), pss_tree(self.pid)))
            except Exception:  # noqa: BLE001  (the process may be gone at the very end)
                pass
            self.stop.wait(self.interval)


def drive(port: int, model: str, duration: float) -> dict:
    """USERS clients, each with one streaming request in flight, until `duration` has passed."""
    lock = threading.Lock()
    counter = [0]
    results: list[bench.RequestResult] = []
    deadline = time.monotonic() + duration

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = counter[0]
                counter[0] += 1
            r = bench.one_request("127.0.0.1", port, model, prompt(i), OUTPUT_TOKENS, timeout=REQUEST_TIMEOUT)
            with lock:
                results.append(r)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    ok = [r for r in results if r.ok]
    return {"requests": len(results), "errors": len(results) - len(ok),
            "error_samples": sorted({r.error for r in results if not r.ok})[:3],
            "output_tokens_per_s": round(sum(r.tokens for r in ok) / wall, 1) if wall else 0.0,
            "wall_s": round(wall, 1)}


def run_config(name: str, argv: list[str], env: dict[str, str], port: int, model: str, duration: float,
               log: Path) -> dict:
    t = time.monotonic()
    srv = Server(argv, port, log, budget_s=300.0, env=env).__enter__()
    startup = time.monotonic() - t
    try:
        for i in range(2):  # warm-up: the first requests load (MLX) or allocate
            w = bench.one_request("127.0.0.1", port, model, "Warm up " + str(i), 4, timeout=300)
            if not w.ok:
                raise RuntimeError(f"{name}: the warm-up request failed: {w.error} (log: {log})")
        ready_rss = bench.rss_tree(srv.pid)
        sampler = Sampler(srv.pid)
        sampler.start()
        load = drive(port, model, duration)
        sampler.stop.set()
        sampler.join(timeout=5)
    finally:
        srv.__exit__()
    rss = [s[1] for s in sampler.samples] or [ready_rss]
    pss = [s[2] for s in sampler.samples] or [0]
    tail = rss[len(rss) * 2 // 3:] or rss
    return {"config": name, "argv": shlex.join(argv[1:]), "env": env, "startup_s": round(startup, 1),
            "ready_rss": ready_rss, "steady_rss": int(statistics.median(tail)), "peak_rss": max(rss),
            "end_rss": rss[-1], "peak_pss": max(pss), "samples": len(rss),
            "rss_curve_mib": [round(s[1] / MIB) for s in sampler.samples[:: max(1, len(sampler.samples) // 24)]],
            **load}


def without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in flags:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def soak_engine(engine: str, env_: dict[str, str], duration: float, work: Path,
                only: tuple[str, ...] = ("stackgen", "defaults")) -> dict:
    binary = {"llama.cpp": env_.get("STACKGEN_LLAMA_SERVER"), "vllm": env_.get("STACKGEN_VLLM"),
              "mlx": env_.get("STACKGEN_MLX_SERVER")}[engine]
    model = env_.get("STACKGEN_GGUF") if engine == "llama.cpp" else env_.get("STACKGEN_GEMMA_HF")
    if not binary or not model or not Path(binary).exists() or not Path(model).exists():
        return {"engine": engine, "skipped": "engine or model not provisioned (run .ci/provision.sh)"}
    load_before = os.getloadavg()
    port = free_port()
    stack = work / f"stack-{engine}.yaml"
    stack.write_text(stack_text(model, USERS, CONTEXT, port, engine=engine, service=SERVICE, binary=binary,
                                prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS), encoding="utf-8")
    sp = stackgen_plan(stack)
    tuned = set_flag(set_flag([binary] + sp["command"][1:], "--host", "127.0.0.1"), "--port", str(port))
    tuned_env = {k: str(v) for k, v in (sp.get("env") or {}).items()}
    served = SERVICE
    if engine == "vllm":
        tuned.append("--enforce-eager")  # both sides: bounds start-up on 2 cores (no torch.compile)
        tuned_env.setdefault("HF_HUB_OFFLINE", "1")
        base = [binary, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager"]
        base_env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": tuned_env["VLLM_CPU_KVCACHE_SPACE"]}
        configs = [("stackgen", tuned, tuned_env, SERVICE), ("defaults", base, base_env, model)]
    else:
        if engine == "mlx":
            tuned_env["HF_HUB_CACHE"] = env_.get("STACKGEN_HF_HUB_CACHE") or str(work / "hf-hub-cache")
            served = "default_model"  # mlx_lm.server maps this name to its --model
        configs = [("stackgen", tuned, tuned_env, served),
                   ("defaults", without(tuned, CACHE_FLAGS[engine]), tuned_env, served)]
    runs = []
    for name, argv, cenv, m in [c for c in configs if c[0] in only]:
        print(f"[{engine}] {name}: {duration:.0f} s of load ...", file=sys.stderr, flush=True)
        r = run_config(name, argv, cenv, port, m, duration, work / f"{engine}-{name}.log")
        print(f"[{engine}] {name}: ready {r['ready_rss'] / MIB:.0f} MiB, steady {r['steady_rss'] / MIB:.0f}, peak "
              f"{r['peak_rss'] / MIB:.0f} (plan {sp['memory']['host_bytes'] / MIB:.0f}), {r['requests']} requests, "
              f"{r['errors']} errors", file=sys.stderr, flush=True)
        runs.append(r)
    return {"engine": engine, "binary": binary, "model": model, "plan": sp["memory"], "plan_reasons": sp["reasons"],
            "workload": {"users": USERS, "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                         "request_timeout_s": REQUEST_TIMEOUT},
            "duration_s": duration, "load_before": load_before, "load_after": os.getloadavg(), "runs": runs}


def mib(n: float) -> str:
    return f"{n / MIB:.0f}"


def report(results: list[dict], args, load0, load1, wall: float) -> str:
    from stackgen import __version__

    lines = [
        "# Soak benchmark: peak and steady RSS under sustained load against the memory plan (issue 18)",
        "",
        f"Generated by `python benchmarks/bench_soak.py` on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
        "(one run per engine, merged with --merge; durations below).",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} logical CPUs, shared with other engineers' builds and "
        "tests (load average per engine below)"
        + (f"; load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load0)} at start, "
           f"{' '.join(f'{x:.2f}' for x in load1)} at end; total wall time {wall:.0f} s" if wall >= 1 else ""),
        f"- stackgen {__version__}, Python {platform.python_version()}; argv and env from `stackgen plan --json` "
        "(hardware: detect, CPU only) of a quickstart-shaped stack",
        f"- workload (unless an engine's line below says otherwise): {USERS} concurrent streaming users (= the stack's concurrent_users and the engine's slots), "
        f"context {CONTEXT} tokens per user, ~{PROMPT_TOKENS}-token prompts, {OUTPUT_TOKENS} output tokens; every "
        f"prompt distinct, {PREFIX_SHARE:.0%} starting with one of {PREFIXES} shared ~{PREFIX_TOKENS}-token prefixes; "
        "load per config after 2 warm-up requests: "
        + ", ".join(f"{r['engine']} {r.get('duration_s', args.duration):g} s" for r in results if "runs" in r),
        "- RSS: psutil RSS summed over the engine's process tree every 0.5 s (shared pages count once per process; "
        "PSS, which splits them, is given too); steady = median of the last third of the samples",
        "- plan = `memory.host_bytes` of stackgen's plan (weights + KV + compute + overhead + the new prompt cache "
        "line); 'defaults' is compared with the same plan, since that is what the user was told",
        "",
        "## Result",
        "",
    ]
    for res in results:
        if "skipped" in res:
            lines.append(f"- {res['engine']}: skipped ({res['skipped']})")
            continue
        plan = res["plan"]["host_bytes"]
        if "load_before" in res:
            lines.append(f"- {res['engine']}: load average (1/5/15 min) "
                         f"{' '.join(f'{x:.2f}' for x in res['load_before'])} before its runs, "
                         f"{' '.join(f'{x:.2f}' for x in res['load_after'])} after")
        w = res.get("workload")
        if w:
            lines.append(f"- {res['engine']}: workload {w['users']} users, ~{w['prompt_tokens']}-token prompts, "
                         f"{w['output_tokens']} output tokens, {w['request_timeout_s']:g} s request timeout")
        for r in res["runs"]:
            over = (r["peak_rss"] - plan) / plan
            ok = r["peak_rss"] <= plan * 1.05 and r["peak_rss"] <= res["plan"]["host_budget_bytes"]
            verdict = "within the goal" if ok else "ABOVE the goal (plan + 5%)"
            if r["requests"] == r["errors"]:
                verdict += ", but NOT a soak: no request completed, so no cache was exercised"
            lines.append(f"- {res['engine']} {r['config']} ({res.get('duration_s', 0):g} s): peak {mib(r['peak_rss'])} MiB vs plan {mib(plan)} MiB "
                         f"({over * 100:+.1f}%), steady {mib(r['steady_rss'])} MiB: "
                         f"{verdict}")
    lines += ["", "| engine | config | plan host MiB | of which prompt cache | host budget MiB | ready RSS | steady RSS | "
              "peak RSS | peak vs plan | peak PSS | requests | errors | tok/s | start-up s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        if "skipped" in res:
            continue
        p = res["plan"]
        for r in res["runs"]:
            lines.append(f"| {res['engine']} | {r['config']} ({res.get('duration_s', 0):g} s) | {mib(p['host_bytes'])} | {mib(p['prompt_cache_bytes'])} | "
                         f"{mib(p['host_budget_bytes'])} | {mib(r['ready_rss'])} | {mib(r['steady_rss'])} | "
                         f"{mib(r['peak_rss'])} | {(r['peak_rss'] - p['host_bytes']) / p['host_bytes'] * 100:+.1f}% | "
                         f"{mib(r['peak_pss'])} | {r['requests']} | {r['errors']} | {r['output_tokens_per_s']} | "
                         f"{r['startup_s']} |")
    lines += ["", "Commands:", ""]
    for res in results:
        for r in res.get("runs", []):
            env = " ".join(f"{k}={v}" for k, v in sorted(r["env"].items()))
            lines.append(f"- {res['engine']} {r['config']}: `{env + ' ' if env else ''}{Path(res['binary']).name} "
                         f"{r['argv']}`")
    lines += ["", "RSS over time (MiB, ~24 points per run):", ""]
    for res in results:
        for r in res.get("runs", []):
            lines.append(f"- {res['engine']} {r['config']} ({res.get('duration_s', 0):g} s): "
                         f"{' '.join(map(str, r['rss_curve_mib']))}")
    lines += ["", "Raw (JSON):", "", "```json", json.dumps(results, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def main() -> int:
    global USERS, PROMPT_TOKENS, OUTPUT_TOKENS, REQUEST_TIMEOUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of load per engine and config (default 90)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.md")
    ap.add_argument("--configs", default="stackgen,defaults", help="which of stackgen,defaults to run")
    ap.add_argument("--users", type=int, default=USERS, help=f"concurrent users = slots (default {USERS})")
    ap.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS, help=f"default {PROMPT_TOKENS}")
    ap.add_argument("--output-tokens", type=int, default=OUTPUT_TOKENS, help=f"default {OUTPUT_TOKENS}")
    ap.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT, help=f"default {REQUEST_TIMEOUT:g} s")
    ap.add_argument("--json", type=Path, help="also write the raw results here (to merge runs)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="raw results of earlier runs to report with")
    args = ap.parse_args()
    USERS, PROMPT_TOKENS, OUTPUT_TOKENS = args.users, args.prompt_tokens, args.output_tokens
    REQUEST_TIMEOUT = args.request_timeout
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad or args.duration <= 0:
        ap.error(f"unknown engine(s) {bad}" if bad else "--duration must be positive")
    env_ = engines_env()
    work = Path(tempfile.mkdtemp(prefix="stackgen-bench-soak-"))
    load0, t0 = os.getloadavg(), time.monotonic()
    results = []
    for f in args.merge:
        results += json.loads(f.read_text(encoding="utf-8"))
    for e in engines:
        results.append(soak_engine(e, env_, args.duration, work, tuple(args.configs.split(","))))
    results.sort(key=lambda r: ENGINES.index(r["engine"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True), encoding="utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, args, load0, os.getloadavg(), time.monotonic() - t0), encoding="utf-8")
    print(f"wrote {args.out} (logs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
