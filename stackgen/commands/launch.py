"""`stackgen up / down / restart / status / logs / ps`: run a stack on this machine (native processes or
containers), like `docker compose`: the stack file is ./stack.yaml unless given (FILE or -f FILE), and each
command takes service names."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileOpt, HostOpt, StackArgs, app, guarded, run, stack_and_services
from stackgen.commands._console import console, live_ok, print_rows


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


class _Progress:
    """A live status line (rich) on a terminal; a plain line every 5 s otherwise (CI logs, NO_COLOR, TERM=dumb)."""

    def __init__(self) -> None:
        self.err = console(stderr=True)
        self.live = live_ok(self.err)
        self.status = None
        self.last_plain = 0.0

    def __call__(self, p) -> None:
        last = p.last_log.strip()
        if len(last) > 70:
            last = last[:67] + "..."
        text = f"{p.service}: waiting for {p.waiting_for} {p.elapsed_s:.0f}s/{p.budget_s:.0f}s" + (f" | {last}" if last else "")
        if self.live:
            if self.status is None:
                self.status = self.err.status(text)
                self.status.start()
            else:
                self.status.update(text)
        elif time.monotonic() - self.last_plain >= 5.0:
            self.last_plain = time.monotonic()
            typer.echo(text, err=True)

    def clear(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


_RESTART_MODES = ("on-failure", "no")


def _policy(restart: str):
    from stackgen.cli import UsageError
    from stackgen.run.supervise import RestartPolicy

    if restart not in _RESTART_MODES:
        raise UsageError(f"--restart {restart!r}: expected one of {', '.join(_RESTART_MODES)}")
    return RestartPolicy(mode=restart)


def _check_names(plan, services, restart_services: bool, file: Path) -> None:
    """up's and restart's names checked as run/up.py checks them, before the host check: an unknown service was
    reported only once the host check passed (audit a4 #12: `up FILE nosuch` said only that llama-server is not
    installed)."""
    from stackgen.run import fleet
    from stackgen.run.native import select_services
    from stackgen.run.state import StateDir

    names = (sorted(u.name for u in fleet.expand(plan.services)) if restart_services
             else [sp.name for sp in plan.services])
    select_services(names, services, str(StateDir(file).stack_file))


def _up(words, file_opt, containers, verify, timeout, grace, no_memory_check, force, as_json, host_facts, restart,
        restart_services: bool) -> int:
    from stackgen.commands.doctor import host_report
    from stackgen.host.check import mismatch_error
    from stackgen.run.results import UpOptions
    from stackgen.run.up import up as do_up
    from stackgen.run.state import StateDir

    file, services = stack_and_services(words, file_opt)
    policy = _policy(restart)
    StateDir(file).load()  # a damaged state file is reported before anything else (it decides what up may stop)
    # Ports and free memory are checked by `up` itself (it knows which services it will restart).
    try:
        plan, report = host_report(file, host_facts, containers=containers, memory=False, ports=False)
    except KeyboardInterrupt:  # planning and the host check: nothing has started yet, and `up` says so
        from stackgen.run.results import Interrupted

        raise Interrupted("interrupted (SIGINT): stopped nothing (nothing had started)") from None
    _check_names(plan, services, restart_services, file)  # a mistyped name first: no host finding hides it
    if report.errors and not force:
        raise mismatch_error(report)
    for finding in report.errors:
        typer.echo(f"warning (--force): {finding.line()}", err=True)
    if restart_services and not services:
        services = [sp.name for sp in plan.services]
    line = _Progress()
    opts = UpOptions(containers=containers, verify=verify, timeout_s=timeout, grace_s=grace,
                     memory_check=not (no_memory_check or force), policy=policy,
                     services=() if restart_services else tuple(services),
                     restart=tuple(services) if restart_services else ())
    try:
        res = do_up(plan, opts, progress=line)
    finally:
        line.clear()
    if as_json:
        typer.echo(json.dumps({"file": str(file), "services": [asdict(o) for o in res.services],
                               "stopped": res.stopped, "verify": [asdict(v) for v in res.verify],
                               "notes": res.notes}, indent=2))
        return 0 if all(v.failed == 0 for v in res.verify) else 1
    for note in res.notes:
        typer.echo(f"warning: {note}", err=True)
    for name in res.stopped:
        typer.echo(f"{name}: stopped (no longer in {file})")
    from stackgen.run.fleet import BALANCER, expand

    units = {u.name: u for u in expand(plan.services)}  # a fleet: its instances and its balancer
    for o in res.services:
        sp = units[o.name]
        ready = f", ready in {o.ready_s:.1f} s" if o.ready_s is not None else ""
        why = f"; restarted because {o.reason}" if o.reason else ""
        scheme = "https" if sp.tls is not None else "http"
        what = (f"haproxy, least connections over {sp.name}-1 .. {sp.name}-{sp.replicas}"
                if sp.unit_role == BALANCER else sp.engine)
        typer.echo(f"{o.name}: {o.action} ({what}, {o.where}) on {scheme}://{sp.host}:{o.port}/v1{ready}{why}")
    if not containers:
        typer.echo(f"restart policy: {policy.text()}")
    for v in res.verify:
        typer.echo(_verify_text(v))
    typer.echo(f"stop with: stackgen down {file}")
    return 0 if all(v.failed == 0 for v in res.verify) else 1


_CONTAINERS = typer.Option(False, "--containers", help="Run each service as a container through the Docker "
                           "Engine API (DOCKER_HOST honoured; podman's API works) instead of a native process.")
_VERIFY = typer.Option(False, "--verify", help="After ready, send short streaming requests at the declared "
                       "concurrency and report time to first token and tokens/s beside the plan.")


def timeout_help() -> str:
    """--timeout's default in words, from the constants `up` budgets with (plan.startup_budget_s), so the help
    cannot drift from them again (it said 30 s + weights at 100 MB/s where the base was 60 s)."""
    from stackgen import engines
    from stackgen.plan import plan

    extra = ", ".join(f"{e.display} {e.startup_extra_s:g} s" for e in engines.ENGINES.values() if e.startup_extra_s)
    return (f"Seconds each service may take to become ready (default: {plan.STARTUP_BASE_S} s + the weights at "
            f"{plan.LOAD_BYTES_PER_S / 1e6:g} MB/s, + at {plan.DOWNLOAD_BYTES_PER_S / 1e6:g} MB/s when the engine "
            f"downloads them, + the engine's own start-up ({extra}), rounded up to {plan.STARTUP_STEP_S} s).")


_TIMEOUT = typer.Option(None, "--timeout", min=1, help=timeout_help())
_GRACE = typer.Option(10.0, "--grace", min=0, help="Seconds between SIGTERM and SIGKILL when stopping.")
_NO_MEM = typer.Option(False, "--no-memory-check", help="Start even if free RAM is below the plan.")
_FORCE = typer.Option(False, "--force", help="Start even when this host does not match the stack (GPUs, the "
                      "binary's flags, free memory; see `stackgen doctor`): mismatches become warnings.")
_RESTART = typer.Option("on-failure", "--restart", help="Native services: `on-failure` restarts an engine that "
                        "crashes or exits, status 0 included, so one that handles a `kill PID` (SIGTERM) and exits 0, "
                        "as llama-server does, is restarted too (stop services with `stackgen down`); only an engine "
                        "killed by SIGTERM/SIGINT/SIGHUP itself stays down; backoff from 1 s, at most 5 restarts in "
                        "300 s, as the systemd unit with RestartForceExitStatus=0. Or `no`.")
_JSON = typer.Option(False, "--json", help="Machine-readable result on stdout.")


@app.command()
def up(
    words: Optional[list[str]] = StackArgs,
    file_opt: Optional[Path] = FileOpt,
    containers: bool = _CONTAINERS,
    verify: bool = _VERIFY,
    timeout: Optional[float] = _TIMEOUT,
    grace: float = _GRACE,
    no_memory_check: bool = _NO_MEM,
    force: bool = _FORCE,
    restart: str = _RESTART,
    as_json: bool = _JSON,
    host_facts: Optional[Path] = HostOpt,
) -> None:
    """Start the stack's services (or the ones named) and wait until each model really answers; unchanged
    services are left running. Native engines are watched by a supervisor that applies --restart."""
    run(lambda: _up(words, file_opt, containers, verify, timeout, grace, no_memory_check, force, as_json,
                    host_facts, restart, restart_services=False))


@app.command("restart")
def restart_cmd(
    words: Optional[list[str]] = StackArgs,
    file_opt: Optional[Path] = FileOpt,
    containers: bool = _CONTAINERS,
    timeout: Optional[float] = _TIMEOUT,
    grace: float = _GRACE,
    no_memory_check: bool = _NO_MEM,
    force: bool = _FORCE,
    restart: str = _RESTART,
    as_json: bool = _JSON,
    host_facts: Optional[Path] = HostOpt,
) -> None:
    """Stop and start the named services (default: all) even if they run unchanged; wait until they answer."""
    run(lambda: _up(words, file_opt, containers, False, timeout, grace, no_memory_check, force, as_json,
                    host_facts, restart, restart_services=True))


def _verify_text(v) -> str:
    """One service's verify: what it measured at `concurrency` streams beside the plan's speed forecast at that many
    users (the figures `stackgen plan` prints as "predicted for users"), not the single-stream roofline."""
    text = (f"verify {v.service}: {v.ok}/{v.concurrency} streams ok; time to first token p50 {_fmt_s(v.ttft_p50_s)}, "
            f"max {_fmt_s(v.ttft_max_s)}")
    per = f"{v.decode_tokens_per_s_p50:.1f}" if v.decode_tokens_per_s_p50 else "-"
    users = f"{v.concurrency} user{'s' if v.concurrency != 1 else ''}"
    decode = (f"{v.decode_aggregate_tokens_per_s:.1f} decode aggregate; " if v.decode_aggregate_tokens_per_s
              else "")
    text += (f"\n  measured at {users}: {per} tokens/s per stream (decode), {decode}"
             f"{v.aggregate_tokens_per_s:.1f} tokens/s aggregate over all {v.concurrency} streams"
             + (" (prefill and HTTP included)" if decode else ""))
    if v.predicted_per_user_tokens_per_s is not None:
        slots = (f", {v.predicted_streams} decoding at once" if v.predicted_streams is not None
                 and v.predicted_streams < v.concurrency else "")
        err = f" (+-{v.predicted_error * 100:.0f}%)" if v.predicted_error is not None else ""
        text += (f"\n  plan forecast at {users}: {v.predicted_per_user_tokens_per_s:g} tokens/s per user, "
                 f"{v.predicted_aggregate_tokens_per_s:g} aggregate{slots}{err}")
    else:  # a multi-node service: the planner has only the single-stream figure
        text += f"\n  plan: {v.predicted_tokens_per_s:g} tokens/s for one stream alone (no forecast at {users})"
    if v.sample:
        text += f"\n  sample: {v.sample.strip()[:120]!r}"
    for e in v.errors:
        text += f"\n  error: {e}"
    return text


@app.command()
@guarded
def down(
    words: Optional[list[str]] = StackArgs,
    file_opt: Optional[Path] = FileOpt,
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds between SIGTERM and SIGKILL."),
) -> int:
    """Stop what `up` started for this stack (or only the named services): supervisors, process groups,
    containers."""
    from stackgen.run.lifecycle import down as do_down

    file, services = _known_stack(words, file_opt)
    _check_stack_names(file, services)
    notes: list[str] = []
    ended: list[str] = []
    stopped = do_down(file, grace, notes, services=services, ended=ended)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    if not stopped and not ended:
        typer.echo(f"{file}: nothing running")
    for s in stopped:
        typer.echo(f"stopped {s}")
    for s in ended:  # as compose's "Removed": nothing of it ran any more
        typer.echo(f"removed {s}: it had already ended")
    return 0


def _known_stack(words, file_opt) -> tuple[Path, list[str]]:
    """stack_and_services for down/status/logs: a FILE that does not exist, and has no state that `up` left
    (a stack file deleted while its services run can still be stopped), is an error (exit 1), not "nothing
    running": a mistyped name must not look like a stopped stack."""
    from stackgen.errors import LaunchError
    from stackgen.run.state import StateDir

    file, services = stack_and_services(words, file_opt)
    if not file.is_file() and not StateDir(file).has_state():
        raise LaunchError(f"{file}: no such stack file (check the path, or give it with -f FILE; `stackgen ps` "
                          f"lists every stack that runs)")
    return file, services


def _check_stack_names(file: Path, services: list[str]) -> None:
    """`down FILE NAME` with nothing running: a NAME that is neither a service of the stack file (or one of its
    fleet's `<svc>-N`) nor anything running is an error, as it is while the stack runs (audit a4 #12: it said
    "nothing running", exit 0). The names come from the file's YAML alone: down never needs a valid stack."""
    import re

    from stackgen.errors import StackgenError
    from stackgen.run.lifecycle import running_names
    from stackgen.run.native import select_services
    from stackgen.run.state import StateDir
    from stackgen.spec.stack import parse_document, read_stack_text

    if not services or not file.is_file():
        return
    running = running_names(file)
    if running:  # the library checks them against what runs
        return
    try:
        declared = parse_document(read_stack_text(file), str(file)).data.get("services")
    except StackgenError:
        return
    if not isinstance(declared, dict):
        return
    names = sorted(str(n) for n in declared)
    unknown = [w for w in services if w not in names
               and not any(re.fullmatch(re.escape(n) + r"-\d+", w) for n in names)]
    select_services(names, unknown, str(StateDir(file).stack_file))


_HEALTHY = ("running", "loading")


def _ctx(r) -> str:
    return f"{r.context_tokens}x{r.slots}" if r.context_tokens and r.slots else "-"


def _state_cell(state: str) -> str:
    colour = {"running": "green", "loading": "yellow", "restarting": "yellow"}.get(state, "red")
    return f"[{colour}]{state}[/{colour}]"


def _print_ended(out, rows) -> None:
    """Below the table: how each engine that is not running ended, and its last log lines."""
    for r in rows:
        if r.state in _HEALTHY and r.restarts and r.last_exit:
            out.print(f"\n{r.name}: restarted {r.restarts} time{'s' if r.restarts > 1 else ''} by its supervisor; "
                      f"last end: {r.last_exit}", markup=False, highlight=False)
        if r.state in _HEALTHY or not (r.last_exit or r.log_tail):
            continue
        out.print(f"\n{r.name}: {r.state}" + (f": {r.last_exit}" if r.last_exit else ""), markup=False,
                  highlight=False)
        for ln in r.log_tail[-8:]:
            out.print(f"  | {ln[:200]}", markup=False, highlight=False)


@app.command()
@guarded
def status(
    words: Optional[list[str]] = StackArgs,
    file_opt: Optional[Path] = FileOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> int:
    """Each service: running / loading / unhealthy / restarting / crashed, where, port, uptime, RSS, restart
    policy; how a crashed engine ended (exit status or signal, when, likely cause, last log lines)."""
    from stackgen.run.lifecycle import status as do_status

    file, services = _known_stack(words, file_opt)
    notes: list[str] = []
    rows = do_status(file, services=services, notes=notes)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
    elif not rows:
        typer.echo(f"{file}: nothing running (start it with `stackgen up {file}`)")
    else:
        out = console()
        # nothing is cut: DETAIL wraps, and on a narrow terminal it (then RESTART, UPTIME) goes below the table
        print_rows(out, ["SERVICE", "ENGINE", "STATE", "WHERE", "PORT", "UPTIME", "RSS", "RESTART", "DETAIL"],
                   [[r.name, r.engine, _state_cell(r.state), r.where, str(r.port), _fmt_s(r.uptime_s),
                     _fmt_bytes(r.rss_bytes), r.restart or "-", _escape(r.detail)] for r in rows],
                   movable=["DETAIL", "RESTART", "UPTIME"], labels={"DETAIL": ""})
        _print_ended(out, rows)
    # README: exit 1 unless every service is running or loading; nothing running is not "every service running"
    return 0 if rows and all(r.state in _HEALTHY for r in rows) else 1


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _short(path: Path) -> str:
    """A stack file as the user would type it: relative to the current folder when inside it, ~ for home."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path).replace(str(Path.home()), "~", 1)
    except ValueError:
        return str(path)


@app.command()
@guarded
def ps(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> int:
    """Every stackgen service running for this user, from every stack file (like `docker ps` / `ollama ps`):
    name, stack file, engine, model, port, uptime, RSS, health, context x slots."""
    from stackgen.run.lifecycle import ps as do_ps

    rows = do_ps()
    if as_json:
        typer.echo(json.dumps([{"stack_file": str(f), **asdict(r)} for f, r in rows], indent=2))
        return 0
    if not rows:
        typer.echo("no stackgen services are running")
        return 0
    # nothing is cut: on a narrow terminal STACK, MODEL, ... go below the table, one line per service
    print_rows(console(), ["NAME", "STACK", "ENGINE", "MODEL", "PORT", "UPTIME", "RSS", "HEALTH", "CTX x SLOTS",
                           "RESTART"],
               [[r.name, _escape(_short(f)), r.engine, _escape(r.model or "-"), str(r.port), _fmt_s(r.uptime_s),
                 _fmt_bytes(r.rss_bytes), _state_cell(r.state), _ctx(r), r.restart or "-"] for f, r in rows],
               movable=["STACK", "MODEL", "CTX x SLOTS", "RESTART", "UPTIME", "ENGINE"],
               labels={"CTX x SLOTS": "context x slots"})
    return 0


@app.command()
@guarded
def logs(
    words: Optional[list[str]] = StackArgs,
    file_opt: Optional[Path] = typer.Option(None, "--file", help="The stack file (instead of the FILE argument; "
                                            "-f is --follow here, as in `docker compose logs -f`)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (Ctrl-C to stop); follows an "
                                "engine its supervisor restarts."),
    lines: int = typer.Option(200, "-n", "--lines", min=0, help="How many past lines to show first."),
    max_seconds: float = typer.Option(86400.0, "--max-seconds", hidden=True, help="Stop following after this long."),
) -> int:
    """Print the services' logs (engine stdout and stderr, and the supervisor's lines about crashes and restarts)."""
    from stackgen.run.lifecycle import logs as do_logs
    from stackgen.run.lifecycle import processes_of

    file, services = _known_stack(words, file_opt)
    many = len(services) != 1 or len(processes_of(file, services[0])) > 1  # a fleet: its instances and balancer
    for name, line in do_logs(file, services or None, follow, lines, max_seconds):
        typer.echo(f"{name} | {line}" if many else line)
    return 0
