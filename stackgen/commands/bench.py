"""`stackgen bench FILE`: drive a running service with the workload's shape; compare with the plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileArg, FileOpt, HostOpt, UsageError, app, guarded, load_and_plan, stack_path


def _parse_sweep(text: str) -> list[int]:
    """A bad value is a wrong command line: exit 64 (README, Exit codes), as typer's own checks are."""
    try:
        users = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--sweep {text!r}: expected comma-separated user counts, e.g. 1,2,4,8") from None
    if not users or any(u < 1 for u in users):
        raise UsageError(f"--sweep {text!r}: user counts must be positive integers")
    return users


def _mib(n: int | None) -> str:
    return "n/a (pid unknown)" if n is None else f"{n / 2**20:.0f} MiB"


def result_text(r) -> str:
    pred = f"{r.predicted_decode_tokens_per_s:.1f} tok/s per stream" if r.predicted_decode_tokens_per_s else "n/a"
    lines = [
        f"{r.service} ({r.engine}) at {r.url}, model {r.model!r}: {r.concurrent_users} users, "
        f"~{r.prompt_tokens} prompt tokens, {r.max_tokens} output tokens",
        f"  requests       {r.requests} ({r.errors} errors) in {r.wall_s:.1f} s",
        f"  throughput     {r.output_tokens_per_s:.1f} output tok/s aggregate ({r.output_tokens} tokens)",
        f"  per stream     {r.per_stream_decode_tokens_per_s:.1f} tok/s decode (plan: {pred})",
        *([f"  speed model    {r.predicted_per_user_tokens_per_s:.1f} tok/s per user, "
           f"{r.predicted_aggregate_tokens_per_s:.1f} aggregate, TTFT {r.predicted_ttft_s:.2f} s at "
           f"{r.concurrent_users} users (+-{r.predicted_error * 100:.0f}%); measured "
           f"{r.per_stream_decode_tokens_per_s:.1f} per user, {r.decode_aggregate_tokens_per_s:.1f} decode aggregate "
           f"({r.output_tokens_per_s:.1f} over the run, prefill included), TTFT p95 {r.ttft_p95_s:.2f} s"] if r.predicted_per_user_tokens_per_s else []),
        f"  TTFT           p50 {r.ttft_p50_s:.3f} s  p95 {r.ttft_p95_s:.3f} s  max {r.ttft_max_s:.3f} s",
        f"  inter-token    p50 {r.itl_p50_s * 1000:.1f} ms  p95 {r.itl_p95_s * 1000:.1f} ms",
        f"  streams        at most {r.max_concurrent_streams} at once",
        f"  peak RSS       {_mib(r.peak_rss_bytes)}"
        + (f" (plan: {_mib(r.predicted_host_bytes)} host)" if r.predicted_host_bytes else ""),
    ]
    if r.json_schema:
        lines.append(f"  json schema    every request constrained; {r.invalid_json} outputs not valid JSON")
    if r.error_samples:
        lines.append("  errors: " + "; ".join(r.error_samples))
    if r.findings:
        lines += [f"  ! {f}" for f in r.findings]
    else:
        lines.append("  measured agrees with the plan")
    return "\n".join(lines)


@app.command()
@guarded
def bench(
    file: Optional[Path] = FileArg,
    file_opt: Optional[Path] = FileOpt,
    service: Optional[str] = typer.Option(None, "--service", "-s", help="Service to drive (default: the only one)."),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", help="Total requests (default: 4 per user)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds to keep starting requests instead of a count."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated user counts, e.g. 1,2,4,8."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of throughput and TTFT (needs matplotlib)."),
    timeout: float = typer.Option(120.0, "--timeout", help="Per-request timeout in seconds (at least 1)."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="Constrain every request to this JSON "
                                               "schema (llama.cpp, vLLM) to measure what structured output costs."),
    host_facts: Optional[Path] = HostOpt,
) -> int:
    """Drive a running service with the workload's users and lengths; report throughput, TTFT, ITL, peak RSS
    beside the plan's prediction, and say where they disagree."""
    from stackgen.run.bench import bench_plan, load_schema, pick_service, plot, require_matplotlib

    if requests is not None and duration is not None:
        raise UsageError("give --requests or --duration, not both")
    if requests is not None and requests < 1:
        raise UsageError(f"--requests {requests}: give at least 1")
    if duration is not None and not duration > 0:
        raise UsageError(f"--duration {duration:g}: give a positive number of seconds")
    if not timeout >= 1:  # as `up --timeout`; below that every request fails (0: non-blocking; <0: a traceback)
        raise UsageError(f"--timeout {timeout:g}: give at least 1 second per request")
    if sweep is not None:
        _parse_sweep(sweep)  # before planning, as typer checks its own options
    if plot_out is not None:
        require_matplotlib()  # fail before the run, not after it
    schema = load_schema(json_schema) if json_schema is not None else None
    path = stack_path(file, file_opt)
    _, p = load_and_plan(path, host_facts)
    sp = pick_service(p, service)
    user_counts = _parse_sweep(sweep) if sweep else [sp.workload.concurrent_users]
    from stackgen.commands._console import console, live_ok

    err = console(stderr=True)
    live = err.status("bench") if live_ok(err) else None

    def progress(done: int, total: int, errors: int) -> None:
        of = f"/{total}" if total > 0 else ""
        line = f"bench {sp.name}: {done}{of} requests, {errors} errors"
        if live is not None:
            live.update(line)
        elif total > 0 and done == total:
            typer.echo(line, err=True)

    results = []
    if live is not None:
        live.start()
    try:
        for u in user_counts:
            n = requests if requests is not None else (None if duration is not None else u * 4)
            results.append(bench_plan(p, path, sp.name, users=u, requests=n, duration_s=duration,
                                      progress=progress, timeout=timeout, json_schema=schema))
    finally:
        if live is not None:
            live.stop()
    if plot_out is not None:
        plot(results, plot_out)
    if as_json:  # one shape with or without --sweep: a result per user count
        doc = {"file": str(path), "service": sp.name, "engine": sp.engine,
               "results": [r.to_json() for r in results]}
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        typer.echo("\n\n".join(result_text(r) for r in results))
        if plot_out is not None:
            typer.echo(f"wrote {plot_out}")
    return 1 if any(r.errors for r in results) else 0
