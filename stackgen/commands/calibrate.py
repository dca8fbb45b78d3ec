"""`stackgen calibrate`: measure this host once and keep it for later `hardware: detect` plans (issue 13)."""

from __future__ import annotations

import typer

from stackgen.cli import _host, app, guarded


@app.command()
@guarded
def calibrate(
    show: bool = typer.Option(False, "--show", help="Print the stored calibration and its file; measure nothing."),
) -> int:
    """Measure this machine's system RAM bandwidth and store it (per user) for `plan` with `hardware: detect`."""
    from stackgen.host import calibration as cal

    if show:
        stored = cal.load()
        if stored is None:
            typer.echo(f"no calibration at {cal.calibration_path()}: run `stackgen calibrate`")
            return 1
        typer.echo(f"{cal.calibration_path()}: {stored.machine}, {stored.memory_bandwidth_gbs:g} GB/s "
                   f"system RAM bandwidth, measured {stored.date} ({stored.probe})")
        return 0
    host = _host(None)
    result = cal.measure(cal.machine_key(host.hardware))
    path = cal.save(result)
    typer.echo(f"wrote {path}: {result.memory_bandwidth_gbs:g} GB/s system RAM bandwidth on {result.machine} "
               f"(detected profile said {host.hardware.memory_bandwidth_gbs:g} GB/s); `plan` uses it for "
               "`hardware: detect` stacks, `plan --no-calibration` ignores it")
    return 0

