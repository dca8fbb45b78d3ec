"""Does stackgen's generated vLLM config beat vLLM's defaults? Real vLLM (CPU build), tiny HF Llama, 8 users.

    python benchmarks/bench_vllm_tuning.py       # ~6-11 minutes on 2 cores; writes benchmarks/results/vllm_tuning.md

Needs STACKGEN_VLLM and STACKGEN_TINY_LLAMA (environment, or `$STACKGEN_CACHE/engines.env` written by
.ci/provision.sh). Starts `vllm serve` on 127.0.0.1 (own process group, `--enforce-eager` on both sides to bound the
~30-75 s start-up) once per (configuration, round), alternating stackgen's config and the defaults within each round
(order swapped every round), drives it with stackgen.run.bench's driver, and kills the process group. Stops starting new
rounds once the next one would overrun --budget-s (at least one round always runs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tuning import Server, engines_env, mem_gib, set_flag, stack_text, stackgen_plan  # noqa: E402
from stackgen.run.preflight import free_port  # noqa: E402

from stackgen.run import bench  # noqa: E402

USERS = 8
PROMPT_TOKENS = 32
OUTPUT_TOKENS = 32
CONTEXT = 512
SERVICE = "tiny"
# vLLM's CPU backend needs KV-cache RAM set explicitly; the Hub must not be contacted (local folder).
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}

# What vLLM 0.32.0 (CPU platform, OpenAI API server) uses when a flag is absent (engine/arg_utils.py,
# config defaults); the figures actually used are read back from the server log's "non-default args" line.
VLLM_DEFAULTS = {"--max-model-len": "from the model's config (max_position_embeddings)",
                 "--max-num-seqs": "128 (CPU, API server)", "--max-num-batched-tokens": "2048 (CPU, API server)",
                 "--enable-prefix-caching": "on for decoder-only models (V1)",
                 "--served-model-name": "the model path"}


def flag_map(argv: list[str]) -> dict[str, str]:
    """--flag value pairs (and bare --switches as "on") after `serve MODEL`."""
    out: dict[str, str] = {}
    rest = argv[3:]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                out[k] = v
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                out[a] = rest[i + 1]
                i += 1
            else:
                out[a] = "on"
        i += 1
    return out


def non_default_args(log: Path) -> str:
    """vLLM's own 'non-default args: {...}' log line (what it parsed differently from its defaults)."""
    m = re.search(r"non-default args: (\{.*\})", log.read_text(errors="replace"))
    return m.group(1) if m else "(not found in the log)"


def engine_config(log: Path) -> str:
    """The effective settings from the EngineCore's 'Initializing a V1 LLM engine ... with config:' line."""
    text = log.read_text(errors="replace")
    keys = ("max_seq_len", "enable_prefix_caching", "chunked_prefill_enabled", "dtype")
    found = [m.group(0) for k in keys for m in [re.search(rf"\b{k}=[^,]+", text)] if m]
    return ", ".join(found) or "(not found in the log)"


def measure(argv: list[str], env: dict[str, str], model: str, port: int, log: Path, requests: int,
            budget_s: float) -> tuple[bench.BenchResult, float]:
    t = time.monotonic()
    srv = Server(argv, port, log, budget_s=budget_s, env=env).__enter__()
    startup = time.monotonic() - t
    try:
        for i in range(2):  # warm-up (first requests compile/allocate)
            bench.one_request("127.0.0.1", port, model, bench.make_prompt(8, 1000 + i), 4, timeout=60)
        r = bench.run_load("127.0.0.1", port, model, users=USERS, prompt_tokens=PROMPT_TOKENS,
                           max_tokens=OUTPUT_TOKENS, requests=requests, pid=srv.pid, timeout=120, engine="vllm",
                           service=SERVICE)
    finally:
        srv.__exit__()
    return r, startup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=660.0,
                    help="wall-clock budget: no new round starts if it would overrun (default 660)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vllm_tuning.md")
    args = ap.parse_args()
    env = engines_env()
    binary, model = env.get("STACKGEN_VLLM"), env.get("STACKGEN_TINY_LLAMA")
    if not binary or not model or not Path(binary).exists() or not Path(model).is_dir():
        print("bench_vllm_tuning: needs STACKGEN_VLLM and STACKGEN_TINY_LLAMA (run .ci/provision.sh)", file=sys.stderr)
        return 1
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="stackgen-bench-vllm-tuning-"))
    stack = work / "stack.yaml"
    stack.write_text(stack_text(model, USERS, CONTEXT, port, engine="vllm", service=SERVICE, binary=binary,
                                 prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS), encoding="utf-8")
    sp = stackgen_plan(stack)
    tuned = [binary] + sp["command"][1:]
    tuned = set_flag(set_flag(tuned, "--host", "127.0.0.1"), "--port", str(port))
    if "--enforce-eager" not in tuned:
        tuned.append("--enforce-eager")  # both sides: bounds start-up (no torch.compile / graph capture)
    tuned_env = {**VLLM_ENV, **{k: str(v) for k, v in (sp.get("env") or {}).items()}}
    base = [binary, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager"]
    configs = {"stackgen": (tuned, tuned_env, SERVICE), "defaults": (base, dict(VLLM_ENV), model)}
    names = list(configs)
    raw: dict[str, list[bench.BenchResult]] = {n: [] for n in names}
    startups: dict[str, list[float]] = {n: [] for n in names}
    ndargs: dict[str, str] = {}
    effective: dict[str, str] = {}
    load0 = os.getloadavg()
    t0 = time.monotonic()
    round_s = 0.0
    rounds_done = 0
    for rnd in range(args.rounds):
        elapsed = time.monotonic() - t0
        if rnd > 0 and elapsed + round_s * 1.1 > args.budget_s:
            print(f"stopping after {rnd} round(s): another (~{round_s:.0f} s) would overrun --budget-s "
                  f"{args.budget_s:.0f} ({elapsed:.0f} s used)", file=sys.stderr, flush=True)
            break
        rs = time.monotonic()
        order = names if rnd % 2 == 0 else names[::-1]  # swap so neither config always runs first
        for name in order:
            argv, cenv, served = configs[name]
            log = work / f"{name}-{rnd}.log"
            r, st = measure(argv, cenv, served, port, log, args.requests, budget_s=240.0)
            raw[name].append(r)
            startups[name].append(st)
            ndargs.setdefault(name, non_default_args(log))
            effective.setdefault(name, engine_config(log))
            print(f"round {rnd + 1}/{args.rounds} {name:9s} {r.output_tokens_per_s:7.1f} tok/s  "
                  f"TTFT p50 {r.ttft_p50_s:.3f} p95 {r.ttft_p95_s:.3f} s  errors {r.errors}  start-up {st:.0f} s  "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        round_s = max(round_s, time.monotonic() - rs)
        rounds_done += 1

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in raw[name])

    tps = {n: med(n, "output_tokens_per_s") for n in names}
    p50 = {n: med(n, "ttft_p50_s") for n in names}
    p95 = {n: med(n, "ttft_p95_s") for n in names}
    ratio_tps = tps["stackgen"] / tps["defaults"] if tps["defaults"] else float("nan")
    ratio_p50 = p50["stackgen"] / p50["defaults"] if p50["defaults"] else float("nan")
    ratio_p95 = p95["stackgen"] / p95["defaults"] if p95["defaults"] else float("nan")
    fs, fd = flag_map(tuned), flag_map(base)
    diff = {k: (v, fd.get(k, VLLM_DEFAULTS.get(k, "default"))) for k, v in fs.items()
            if k not in ("--host", "--port") and fd.get(k) != v}
    ahead = ratio_tps > 1 and ratio_p95 < 1
    per_round = [raw["stackgen"][i].output_tokens_per_s / raw["defaults"][i].output_tokens_per_s
                 for i in range(rounds_done) if raw["defaults"][i].output_tokens_per_s]
    verdict = [f"stackgen/defaults throughput {ratio_tps:.2f}x, TTFT p50 {ratio_p50:.2f}x, TTFT p95 {ratio_p95:.2f}x "
               f"({'ahead' if ahead else 'NOT ahead'} of the defaults; per-round throughput ratios "
               + ", ".join(f"{x:.2f}" for x in per_round) + ")",
               "flags where stackgen's argv differs from the defaults: "
               + ", ".join(f"{k} {a} (defaults: {b})" for k, (a, b) in diff.items())]
    vtext = _dists(binary, ("vllm", "vllm_cpu", "torch", "transformers"))
    try:
        cfg = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        mdesc = (f"{cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
                 f"max_position_embeddings {cfg.get('max_position_embeddings')}, {cfg.get('dtype') or cfg.get('torch_dtype')}")
    except (OSError, ValueError):
        mdesc = "?"

    from stackgen import __version__

    lines = [
        "# Tuning benchmark: stackgen's vLLM config vs vLLM's defaults",
        "",
        f"Generated by `python benchmarks/bench_vllm_tuning.py` on "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} logical CPUs, {mem_gib():.1f} GiB RAM "
        f"(shared, noisy: other engineers' builds and tests run at the same time)",
        f"- vLLM: `{binary}` ({vtext}), env "
        + " ".join(f"{k}={v}" for k, v in VLLM_ENV.items()),
        f"- model: `{Path(model).name}` (tiny random-weight Llama: {mdesc})",
        f"- stackgen {__version__}, Python {platform.python_version()}",
        f"- workload: {USERS} concurrent streaming users, {args.requests} requests per run (after 2 warm-up "
        f"requests), ~{PROMPT_TOKENS} prompt tokens, {OUTPUT_TOKENS} output tokens (ignore_eos), {rounds_done} "
        f"round(s), configs alternated within each round (order swapped per round); figures are medians over rounds",
        f"- stackgen's argv (from `stackgen plan --json`, hardware: detect, context_tokens {CONTEXT}; "
        f"`--enforce-eager` added): `{shlex.join(tuned[1:])}`",
        f"- defaults argv: `{shlex.join(base[1:])}` (the model's max_position_embeddings is already {CONTEXT}, so "
        f"no `--max-model-len` is needed to start)",
        f"- vLLM's own 'non-default args' log line: stackgen `{ndargs.get('stackgen')}`; "
        f"defaults `{ndargs.get('defaults')}`",
        f"- effective engine config (EngineCore log line): stackgen `{effective.get('stackgen')}`; "
        f"defaults `{effective.get('defaults')}`",
        f"- load average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in load0)}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "- start-up to /health 200 (s): "
        + "; ".join(f"{n} " + ", ".join(f"{s:.0f}" for s in startups[n]) for n in names),
        f"- total benchmark wall time {time.monotonic() - t0:.0f} s",
        "",
        "## Result",
        "",
        *[f"- {v}" for v in verdict],
        "",
        "| config | tok/s (median) | TTFT p50 s | TTFT p95 s | ITL p50 ms | ITL p95 ms | max streams | peak RSS MiB "
        "| errors | tok/s per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in names:
        rss = statistics.median((r.peak_rss_bytes or 0) for r in raw[n]) / 2**20
        lines.append(f"| {n} | {tps[n]:.1f} | {p50[n]:.3f} | {p95[n]:.3f} | {med(n, 'itl_p50_s') * 1000:.1f} | "
                     f"{med(n, 'itl_p95_s') * 1000:.1f} | {min(r.max_concurrent_streams for r in raw[n])} | {rss:.0f} | "
                     f"{sum(r.errors for r in raw[n])} | " + ", ".join(f"{r.output_tokens_per_s:.1f}" for r in raw[n])
                     + " |")
    lines += ["", "Raw results (JSON, per config and round):", "", "```json",
              json.dumps({n: [r.to_json() for r in raw[n]] for n in names}, indent=1, sort_keys=True), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(verdict))
    print(f"wrote {args.out} (server logs in {work})")
    return 0


def _dists(binary: str, names: tuple[str, ...]) -> str:
    """Versions from the venv's *.dist-info folder names (importing vLLM to ask takes 15-40 s)."""
    found = []
    for name in names:
        hits = sorted(Path(binary).resolve().parent.parent.glob(f"lib/python*/site-packages/{name}-*.dist-info"))
        if hits:
            found.append(f"{name} {hits[0].name[len(name) + 1:-len('.dist-info')]}")
    return ", ".join(found) or "versions unknown"


if __name__ == "__main__":
    sys.exit(main())
