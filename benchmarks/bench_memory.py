"""Memory plan vs measurement for llama-server with Gemma 3 270M over (context per slot) x (slots).

    python benchmarks/bench_memory.py            # ~1-2 minutes; writes benchmarks/results/memory.md

For each grid point: stackgen's plan (`stackgen plan --json`, hardware: detect, CPU only) gives the argv and the
predicted host bytes; llama-server is started with that argv plus `-lv 4` on 127.0.0.1; RSS (psutil, process
tree) is read once /health is 200 (and again after one short request); the engine's own
`*_memory_breakdown_print` Host row (self = model + context + compute MiB) is parsed from its log after it exits.
Goal: prediction within 10% of the measured RSS, never under by more than 5%.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tuning import Server, engines_env, set_flag, stack_text, stackgen_plan  # noqa: E402
from stackgen.run.preflight import free_port  # noqa: E402

from stackgen.run import bench  # noqa: E402

MIB = 2**20
CONTEXTS = (1024, 4096)
SLOTS = (1, 4, 8)

# e.g. "llama_memory_breakdown_print: |   - Host               |                  474 =   235 +     216 +      23                |"
_ROW = re.compile(r"memory_breakdown_print:.*\|\s*-?\s*(?P<dev>[A-Za-z0-9_ ]+?)\s*\|.*?(?P<self>\d+)\s*=\s*"
                  r"(?P<model>\d+)\s*\+\s*(?P<ctx>\d+)\s*\+\s*(?P<compute>\d+)")


def parse_breakdown(text: str) -> dict[str, dict[str, int]]:
    """Rows of the first memory breakdown table by device name: {dev: {self, model, context, compute}} in MiB."""
    rows: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = _ROW.search(line)
        if m and m.group("dev").strip() not in rows:
            rows[m.group("dev").strip()] = {k: int(m.group(g)) for k, g in
                                            (("self", "self"), ("model", "model"), ("context", "ctx"),
                                             ("compute", "compute"))}
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory.md")
    args = ap.parse_args()
    env = engines_env()
    binary, gguf = env.get("STACKGEN_LLAMA_SERVER"), env.get("STACKGEN_GGUF")
    if not binary or not gguf or not Path(binary).exists() or not Path(gguf).exists():
        print("bench_memory: needs STACKGEN_LLAMA_SERVER and STACKGEN_GGUF (run .ci/provision.sh)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="stackgen-bench-memory-"))
    rows = []
    t0 = time.monotonic()
    for ctx in CONTEXTS:
        for slots in SLOTS:
            port = free_port()
            stack = work / f"stack-{ctx}-{slots}.yaml"
            stack.write_text(stack_text(gguf, slots, ctx, port), encoding="utf-8")
            sp = stackgen_plan(stack)
            argv = [binary] + sp["command"][1:]
            argv = set_flag(set_flag(argv, "--host", "127.0.0.1"), "--port", str(port)) + ["-lv", "4"]
            log = work / f"llama-{ctx}-{slots}.log"
            with Server(argv, port, log) as srv:
                time.sleep(1.0)
                rss_ready = max(bench.rss_tree(srv.pid) for _ in range(3) if time.sleep(0.2) is None)
                bench.one_request("127.0.0.1", port, "gemma", bench.make_prompt(32), 16, timeout=60)
                rss_after = bench.rss_tree(srv.pid)
            bd = parse_breakdown(log.read_text(errors="replace"))
            m = sp["memory"]
            row = {
                "ctx_per_slot": ctx, "slots": slots, "argv": shlex.join(argv[1:]),
                # At start-up the prompt cache is empty: its line is what it may grow to (bench_soak.py measures it).
                "pred_host": m["host_bytes"] - m.get("prompt_cache_bytes", 0),
                "pred_prompt_cache": m.get("prompt_cache_bytes", 0), "pred_weights": m["weights_bytes"], "pred_kv": m["kv_cache_bytes"],
                "pred_compute": m["compute_bytes"], "pred_overhead": m["overhead_bytes"],
                "rss_ready": rss_ready, "rss_after_request": rss_after, "breakdown": bd,
            }
            row["err_rss"] = (row["pred_host"] - rss_ready) / rss_ready
            rows.append(row)
            host = bd.get("Host", {})
            print(f"ctx {ctx:5d} x {slots} slots: predicted {row['pred_host'] / MIB:6.0f} MiB, RSS {rss_ready / MIB:6.0f} "
                  f"MiB ({row['err_rss'] * 100:+.1f}%), engine Host {host or 'n/a'}  ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr, flush=True)

    worst_over = max(r["err_rss"] for r in rows)
    worst_under = min(r["err_rss"] for r in rows)
    ok = all(abs(r["err_rss"]) <= 0.10 for r in rows) and worst_under >= -0.05
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    vtext = " ".join((version.stdout + version.stderr).split())[:200]
    from stackgen import __version__

    def mib(n):
        return f"{n / MIB:.0f}"

    lines = [
        "# Memory benchmark: stackgen's llama.cpp plan vs measured RSS and the engine's own breakdown",
        "",
        f"Generated by `python benchmarks/bench_memory.py` on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} logical CPUs",
        f"- llama-server: `{binary}` ({vtext}); model `{Path(gguf).name}`",
        f"- stackgen {__version__}, Python {platform.python_version()}; argv from `stackgen plan --json` "
        f"(hardware: detect) plus `-lv 4`",
        "- RSS: psutil RSS of the llama-server process tree 1 s after /health returned 200 (max of 3 samples); "
        "'after req' = after one 32-token-prompt, 16-token request",
        "- engine: the Host row of `*_memory_breakdown_print` (MiB, self = model + context + compute)",
        "- predicted host = the plan's host_bytes less its prompt cache line (empty at start-up; what it may grow "
        "to under load is measured by bench_soak.py, results/soak.md)",
        "- error = (predicted host - RSS) / RSS; goal within 10%, never under by more than 5%",
        "",
        "## Result",
        "",
        f"- {'PASS' if ok else 'FAIL'}: errors range from {worst_under * 100:+.1f}% to {worst_over * 100:+.1f}% "
        f"({'never under-predicts' if worst_under >= 0 else f'under-predicts by up to {-worst_under * 100:.1f}%'})",
        "",
        "| ctx/slot | slots | predicted host MiB | RSS MiB | error | RSS after req MiB | engine self MiB | engine model | "
        "engine context | engine compute | plan weights | plan KV | plan compute | plan overhead |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        h = r["breakdown"].get("Host", {})
        g = lambda k: str(h.get(k, "n/a"))  # noqa: E731
        lines.append(f"| {r['ctx_per_slot']} | {r['slots']} | {mib(r['pred_host'])} | {mib(r['rss_ready'])} | "
                     f"{r['err_rss'] * 100:+.1f}% | {mib(r['rss_after_request'])} | {g('self')} | {g('model')} | "
                     f"{g('context')} | {g('compute')} | {mib(r['pred_weights'])} | {mib(r['pred_kv'])} | "
                     f"{mib(r['pred_compute'])} | {mib(r['pred_overhead'])} |")
    lines += ["", "Raw (JSON):", "", "```json", json.dumps(rows, indent=1, sort_keys=True), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"{'PASS' if ok else 'FAIL'}: errors " + ", ".join(f"{r['ctx_per_slot']}x{r['slots']} "
                                                           f"{r['err_rss'] * 100:+.1f}%" for r in rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
