"""stackgen's own speed in cold processes (what a user waits for), median of N runs: `plan` and `render` on
every example, and `--help` start-up.

Goal (issue: spec/plan): `plan` under 0.5 s per example on the project's 2-core machine. Prints a table; --write
records it in benchmarks/results/plan.md with the machine, date and versions. The GGUF header read time is
measured by benchmarks/bench_gguf_header.py.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 0.5


def time_cmd(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {proc.stderr}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    rows = []
    baseline = statistics.median(time_cmd([sys.executable, "-c", "pass"], a.runs))
    import tempfile

    out = tempfile.mkdtemp(prefix="stackgen-bench-")
    for stack in sorted(REPO.glob("examples/*/stack.yaml")):
        if stack.parent.name == "quickstart" and not (stack.parent / "models").exists():
            continue  # needs the GGUF the quickstart assembles
        rel = str(stack.relative_to(REPO))
        for verb, extra in (("plan", []), ("render", ["-o", f"{out}/{stack.parent.name}"])):
            t = time_cmd([sys.executable, "-m", "stackgen", verb, rel, *extra], a.runs)
            rows.append((f"{verb} {stack.parent.name}", statistics.median(t), max(t), verb == "plan"))
    t = time_cmd([sys.executable, "-m", "stackgen", "--help"], a.runs)
    rows.append(("--help", statistics.median(t), max(t), False))
    lines = [f"| command | median s | max s | goal (plan) < {GOAL_S} s |", "|---|---|---|---|"]
    lines += [f"| {n} | {m:.3f} | {x:.3f} | {('ok' if m < GOAL_S else 'MISSED') if g else ''} |" for n, m, x, g in rows]
    lines.append(f"| (python -c pass, same machine) | {baseline:.3f} | | |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        head = (f"# stackgen plan: cold-process wall time\n\nMeasured {date.today()} on {platform.node()} "
                f"({platform.machine()}, {platform.python_version()}), median of {a.runs} runs, with "
                f"`python benchmarks/bench_plan.py --write`. The machine is shared and noisy; the interpreter "
                f"start-up row is the floor measured in the same run.\n\n")
        (REPO / "benchmarks/results/plan.md").write_text(head + table + "\n")


if __name__ == "__main__":
    main()
