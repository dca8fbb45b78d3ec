"""`stackgen calibrate`: measure this host once and keep it for later `hardware: detect` plans (issue 13)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import _host, app, guarded


@app.command()
@guarded
def calibrate(
    show: bool = typer.Option(False, "--show", help="Print the stored calibration and its file; measure nothing."),
    model: Optional[Path] = typer.Option(
        None, "--model", help="A small GGUF (e.g. Gemma 3 270M) to run the engine on for a few seconds: a decode "
        "point, the prefill rate and the RSS above the plan. Without it only the RAM bandwidth is measured."),
    binary: Optional[str] = typer.Option(None, "--binary", help="The engine binary to run (default: stackgen's "
                                         "binary rule from the current folder, as `up` finds it)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the run (default: cores)."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Measure nothing when the stored calibration is of "
                                    "this machine and already has what this call would measure (with --model: an "
                                    "engine point with the batched decode); the quickstart runs it so."),
) -> int:
    """Measure this machine (RAM bandwidth; with --model also a real engine's decode, prefill and RSS) and store it
    (per user) for `plan` with `hardware: detect`."""
    from stackgen import engines
    from stackgen.errors import StackgenError
    from stackgen.host import binaries
    from stackgen.host import calibration as cal

    if show:
        stored = cal.load()
        if stored is None:
            typer.echo(f"no calibration at {cal.calibration_path()}: run `stackgen calibrate`")
            return 1
        typer.echo(f"{cal.calibration_path()}: {stored.machine}, {stored.memory_bandwidth_gbs:g} GB/s "
                   f"system RAM bandwidth, measured {stored.date} ({stored.probe})")
        if stored.engine:
            typer.echo(f"  {stored.engine.text()}")
        if busy := stored.busy():
            typer.echo(f"warning: {busy}", err=True)
        return 0
    host = _host(None)
    if if_missing:
        try:
            stored = cal.load()
        except StackgenError:
            stored = None  # a damaged file: measure again and rewrite it
        if stored is not None and stored.machine == cal.machine_key(host.hardware) and (
                model is None or (stored.engine is not None and stored.engine.batch_streams > 0)):
            typer.echo(f"{cal.calibration_path()}: this machine was calibrated on {stored.date}; kept "
                       "(`stackgen calibrate` without --if-missing measures again)")
            return 0
    run = None
    if model is not None:
        if not model.is_file():
            raise StackgenError(f"--model {model}: no such file (give a small .gguf, e.g. Gemma 3 270M Q4_K_M)")
        # The engine reads the model's GGUF header first: a file that is not one is the user's error, said before
        # anything is measured (it was an internal error once the bandwidth was measured).
        from stackgen.errors import ModelRefError
        from stackgen.models.facts import resolve_model
        try:
            resolve_model(str(model.resolve()), None, Path("."), {})
        except ModelRefError as exc:
            # its hint names a stack's `model:`; calibrate has none
            raise StackgenError(f"--model {exc.message} (give --model a small .gguf, e.g. Gemma 3 270M "
                                "Q4_K_M)") from None
        eng = next(e for e in engines.ENGINES.values() if e.calibrates)
        found = binaries.find(eng.name, binary, Path.cwd(), option="--binary")
        build = binaries.engine_build(found, eng.binary_package) if eng.plans_by_build else 0
        n = threads or host.hardware.cpu.cores

        def run(bandwidth_gbs: float) -> cal.EnginePoint:
            return cal.measure_engine(eng.name, found, str(model.resolve()), bandwidth_gbs=bandwidth_gbs,
                                      threads=n, build=build)
    result = cal.measure(cal.machine_key(host.hardware), engine=run, cores=host.hardware.cpu.cores)
    path = cal.save(result)
    typer.echo(f"wrote {path}: {result.memory_bandwidth_gbs:g} GB/s system RAM bandwidth on {result.machine} "
               f"(detected profile said {host.hardware.memory_bandwidth_gbs:g} GB/s); `plan` uses it for "
               "`hardware: detect` stacks, `plan --no-calibration` ignores it")
    if result.engine:
        typer.echo(f"  {result.engine.text()}")
    if busy := result.busy():
        typer.echo(f"warning: {busy}", err=True)
    return 0
