"""`stackgen doctor FILE`: does this host match the stack? The same host check `up` runs before starting."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileArg, FileOpt, HostOpt, _host, app, guarded, load_and_plan, stack_path


def host_report(file: Path, host_facts: Optional[Path], *, containers: bool = False, memory: bool = True,
                ports: bool = True):
    """(plan, report) for the stack on this host (or a recorded one): binary, flags, GPUs, CPU, memory, ports."""
    from stackgen.host.check import check_host

    stack, plan = load_and_plan(file, host_facts)
    stated = plan.hardware if stack.hardware is not None else None
    host = _host(host_facts) if (stated is not None or memory) else None
    if host is None:
        from stackgen.host.facts import HostFacts

        host = HostFacts(plan.hardware)  # `hardware: detect` and nothing needing free memory: the plan's own host
    own = None
    if ports:  # a port this stack's own running service holds is no mismatch (audit a4 #12: doctor said ERROR)
        from stackgen.run.lifecycle import serving_ports

        own = serving_ports(file)
    report = check_host(plan, host, Path(file).resolve().parent, stated, containers=containers, memory=memory,
                        ports=ports, own_ports=own)
    return plan, report


@app.command()
@guarded
def doctor(
    file: Optional[Path] = FileArg,
    file_opt: Optional[Path] = FileOpt,
    containers: bool = typer.Option(False, "--containers", help="Check for `up --containers` (no native binary)."),
    host_facts: Optional[Path] = HostOpt,
) -> int:
    """Check this host against the stack: engine binary and its flags, GPUs, CPU, free memory, free ports."""
    from stackgen.host.check import HostMismatch

    plan, report = host_report(stack_path(file, file_opt), host_facts, containers=containers)
    typer.echo(f"stack {plan.stack_name} on {plan.hardware_label}:")
    typer.echo(report.text())
    if report.errors:
        raise HostMismatch(f"{len(report.errors)} problem(s) (the ERROR lines above); `stackgen up` refuses to "
                           "start until they are fixed, unless --force")
    return 0
