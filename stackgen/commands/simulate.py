"""`stackgen simulate FILE [--users 10,100,1000]`: the planned fleet under load, before anyone rents it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileArg, FileOpt, HostOpt, app, guarded, load_and_plan, stack_path


def parse_users(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--users: {text!r} is not a comma-separated list of numbers, e.g. 10,100,1000") from None
    if not out or any(n < 1 or n > 100_000 for n in out):
        raise typer.BadParameter("--users: each level must be between 1 and 100000")
    return out


@app.command()
@guarded
def simulate(
    file: Optional[Path] = FileArg,
    file_opt: Optional[Path] = FileOpt,
    users: Optional[str] = typer.Option(None, "--users", help="Load levels, e.g. 10,100,1000 (default: 1/4, 1/2, 1, "
                                        "2 and 4 times the workload's concurrent_users)."),
    service: Optional[str] = typer.Option(None, "--service", help="Only this service."),
    jitter: float = typer.Option(0.0, "--jitter", min=0.0, max=10.0, help="Coefficient of variation of each step's "
                                 "time (a shared or throttled host; benchmarks/results/scale.md measured 0.05-0.3 on "
                                 "a busy 2-core VM). 0: every step as the plan predicts."),
    length_spread: float = typer.Option(0.0, "--length-spread", min=0.0, max=10.0, help="Coefficient of variation "
                                        "of prompt and output lengths around the workload's prompt_tokens and "
                                        "output_tokens (0: every request has exactly those)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    host_facts: Optional[Path] = HostOpt,
) -> int:
    """Simulate the workload's users against the planned fleet: p50/p95 TTFT, tokens/s per user, utilization."""
    from stackgen.plan.capacity import simulate_service
    from stackgen.plan.simulate import Variability

    var = Variability(prompt_cv=length_spread, output_cv=length_spread, prefill_cv=jitter, decode_cv=jitter)
    _, plan = load_and_plan(stack_path(file, file_opt), host_facts)
    rows = []
    for sp in plan.services:
        if service and sp.name != service:
            continue
        n = sp.workload.concurrent_users
        levels = parse_users(users) if users else sorted({max(1, n // 4), max(1, n // 2), n, n * 2, n * 4})
        results = simulate_service(sp, plan.hardware, levels, variability=var)
        rows.append((sp, results))
    if service and not rows:
        raise typer.BadParameter(f"--service: no service named {service!r}")
    if as_json:
        typer.echo(json.dumps([{"service": sp.name, "replicas": sp.replicas, "levels": [r.to_json() for r in rs]}
                               for sp, rs in rows], indent=2))
        return 0
    for sp, rs in rows:
        wl = sp.workload
        lay = sp.capacity.layout.label() if sp.capacity else "1 instance"
        typer.echo(f"{sp.name}: {sp.engine}, {lay}; targets p95 TTFT <= {wl.ttft_p95_ms / 1000:g} s, >= "
                   f"{wl.tokens_per_s_per_user:g} tokens/s per user; {wl.prompt_tokens} prompt + "
                   f"{wl.output_tokens} output tokens")
        typer.echo(f"  {'users':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'tok/s/user':>10} {'tok/s all':>10} "
                   f"{'util':>5} {'queued':>6}  meets")
        for r in rs:
            ok = r.ttft_p95_s * 1000 <= wl.ttft_p95_ms and r.tokens_per_s_per_user >= wl.tokens_per_s_per_user
            typer.echo(f"  {r.users:>7} {r.ttft_p50_s:>8.2f}s {r.ttft_p95_s:>8.2f}s "
                       f"{r.tokens_per_s_per_user:>10.1f} {r.throughput_tokens_per_s:>10.1f} "
                       f"{r.utilization:>5.0%} {r.queued_share:>6.0%}  {'yes' if ok else 'no'}")
    return 0
