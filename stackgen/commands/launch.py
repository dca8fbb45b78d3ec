"""`stackgen up / down / status / logs`: run a stack on this machine (native processes or containers)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileArg, HostOpt, app, run


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _fmt_bytes(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:.0f} MiB"


class _ProgressLine:
    """One live line on stderr for a terminal; a line every 5 s otherwise (CI logs)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_plain = 0.0
        self.dirty = False

    def __call__(self, p) -> None:
        last = p.last_log.strip()
        if len(last) > 70:
            last = last[:67] + "..."
        text = f"{p.service}: waiting for {p.waiting_for} {p.elapsed_s:.0f}s/{p.budget_s:.0f}s" + (f" | {last}" if last else "")
        if self.tty:
            sys.stderr.write("\r\033[K" + text[: 200])
            sys.stderr.flush()
            self.dirty = True
        elif time.monotonic() - self.last_plain >= 5.0:
            self.last_plain = time.monotonic()
            typer.echo(text, err=True)

    def clear(self) -> None:
        if self.tty and self.dirty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.dirty = False


@app.command()
def up(
    file: Path = FileArg,
    containers: bool = typer.Option(False, "--containers", help="Run each service as a container through the Docker "
                                    "Engine API (DOCKER_HOST honoured; podman's API works) instead of a native process."),
    verify: bool = typer.Option(False, "--verify", help="After ready, send short streaming requests at the declared "
                                "concurrency and report time to first token and tokens/s beside the plan."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, help="Seconds each service may take to become "
                                            "ready (default: 30 s + weights at 100 MB/s; vLLM +120 s)."),
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds between SIGTERM and SIGKILL when stopping."),
    no_memory_check: bool = typer.Option(False, "--no-memory-check", help="Start even if free RAM is below the plan."),
    force: bool = typer.Option(False, "--force", help="Start even when this host does not match the stack (GPUs, "
                               "the binary's flags, free memory; see `stackgen doctor`): mismatches become warnings."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
    host_facts: Optional[Path] = HostOpt,
) -> None:
    """Start every service and wait until each model really answers (unchanged services are left running)."""

    def body() -> int:
        from stackgen.launch import UpOptions
        from stackgen.launch import up as do_up

        from stackgen.commands.doctor import host_report
        from stackgen.hostcheck import mismatch_error

        from stackgen.state import StateDir

        StateDir(file).load()  # a damaged state file is reported before anything else (it decides what up may stop)
        # Ports and free memory are checked by `up` itself (it knows which services it will restart).
        plan, report = host_report(file, host_facts, containers=containers, memory=False, ports=False)
        if report.errors and not force:
            raise mismatch_error(report)
        for finding in report.errors:
            typer.echo(f"warning (--force): {finding.line()}", err=True)
        line = _ProgressLine()
        opts = UpOptions(containers=containers, verify=verify, timeout_s=timeout, grace_s=grace,
                         memory_check=not (no_memory_check or force))
        try:
            res = do_up(plan, opts, progress=line)
        finally:
            line.clear()
        if as_json:
            from dataclasses import asdict

            typer.echo(json.dumps({"services": [asdict(o) for o in res.services], "stopped": res.stopped,
                                   "verify": [asdict(v) for v in res.verify], "notes": res.notes}, indent=2))
            return 0 if all(v.failed == 0 for v in res.verify) else 1
        for note in res.notes:
            typer.echo(f"warning: {note}", err=True)
        for name in res.stopped:
            typer.echo(f"{name}: stopped (removed or changed)")
        for o in res.services:
            sp = plan.service(o.name)
            ready = f", ready in {o.ready_s:.1f} s" if o.ready_s is not None else ""
            why = f"; restarted because {o.reason}" if o.reason else ""
            typer.echo(f"{o.name}: {o.action} ({sp.engine}, {o.where}) on http://{sp.host}:{o.port}/v1{ready}{why}")
        for v in res.verify:
            typer.echo(_verify_text(v))
        typer.echo(f"stop with: stackgen down {file}")
        return 0 if all(v.failed == 0 for v in res.verify) else 1

    run(body)


def _verify_text(v) -> str:
    head = (f"verify {v.service}: {v.ok}/{v.concurrency} streams ok; time to first token p50 {_fmt_s(v.ttft_p50_s)}, "
            f"max {_fmt_s(v.ttft_max_s)}; decode ")
    per = f"{v.decode_tokens_per_s_p50:.1f}" if v.decode_tokens_per_s_p50 else "-"
    text = (head + f"{per} tokens/s per stream (plan predicted {v.predicted_tokens_per_s:g}), "
            f"{v.aggregate_tokens_per_s:.1f} tokens/s over all {v.concurrency} streams")
    if v.sample:
        text += f"\n  sample: {v.sample.strip()[:120]!r}"
    for e in v.errors:
        text += f"\n  error: {e}"
    return text


@app.command()
def down(
    file: Path = FileArg,
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """Stop everything `up` started for this stack (process groups, containers)."""

    def body() -> int:
        from stackgen.launch import down as do_down

        notes: list[str] = []
        stopped = do_down(file, grace, notes)
        for note in notes:
            typer.echo(f"warning: {note}", err=True)
        if not stopped:
            typer.echo(f"{file}: nothing running")
        for s in stopped:
            typer.echo(f"stopped {s}")
        return 0

    run(body)


@app.command()
def status(
    file: Path = FileArg,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Each service: running / loading / dead / unhealthy, pid or container, port, uptime, RSS (health is probed)."""

    def body() -> int:
        from dataclasses import asdict

        from stackgen.launch import status as do_status

        rows = do_status(file)
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        elif not rows:
            typer.echo(f"{file}: nothing running (start it with `stackgen up {file}`)")
        else:
            header = f"{'SERVICE':<16}{'ENGINE':<11}{'STATE':<11}{'WHERE':<22}{'PORT':<7}{'UPTIME':<9}{'RSS':<10}DETAIL"
            typer.echo(header)
            for r in rows:
                typer.echo(f"{r.name:<16}{r.engine:<11}{r.state:<11}{r.where:<22}{r.port:<7}{_fmt_s(r.uptime_s):<9}"
                           f"{_fmt_bytes(r.rss_bytes):<10}{r.detail[:80]}")
        return 0 if all(r.state in ("running", "loading") for r in rows) else 1

    run(body)


@app.command()
def logs(
    file: Path = FileArg,
    service: Optional[str] = typer.Argument(None, help="One service (default: all)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (Ctrl-C to stop)."),
    lines: int = typer.Option(200, "-n", "--lines", min=0, help="How many past lines to show first."),
    max_seconds: float = typer.Option(86400.0, "--max-seconds", hidden=True, help="Stop following after this long."),
) -> None:
    """Print a service's log (engine stdout and stderr)."""

    def body() -> int:
        from stackgen.launch import logs as do_logs

        many = service is None
        for name, line in do_logs(file, service, follow, lines, max_seconds):
            typer.echo(f"{name} | {line}" if many else line)
        return 0

    run(body)
