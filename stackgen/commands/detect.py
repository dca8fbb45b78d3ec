"""`stackgen detect` (this machine as an inline hardware profile) and `stackgen init` (a starter stack.yaml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from stackgen.cli import UsageError, _host, app, guarded
from stackgen.errors import StackgenError
from stackgen.run.state import write_new
from stackgen.spec.stack import hardware_by_name
from stackgen.pipeline import (HEADROOM, SCHEMA_ID, USABLE_DECODE_TOKENS_PER_S, has_headroom, stack_text,  # noqa: F401
                               planned_speed, suggest_model, usable_speed)
from stackgen.pipeline import plan_text as _plan_in_memory  # noqa: F401

def hardware_yaml(host: Any) -> str:
    """The detected hardware as a YAML `hardware:` block (notes as comments), ready to paste into stack.yaml."""
    data = host.hardware.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump({"hardware": data}, sort_keys=False, default_flow_style=False, width=120)
    notes = "".join(f"# - {n}\n" for n in host.notes)
    return "# stackgen detect: this machine as an inline hardware profile\n" + (
        "# where each figure came from:\n" + notes if notes else "") + body


@app.command()
@guarded
def detect(
    as_json: bool = typer.Option(False, "--json", help="HostFacts JSON (for `stackgen plan --host-facts FILE`)."),
    measure: bool = typer.Option(False, "--measure", help="Measure system RAM bandwidth (a few hundred ms)."),
) -> int:
    """Print this machine as an inline hardware profile (YAML), or as HostFacts JSON with --json."""
    from stackgen.host.detect import detect_host

    host = detect_host(measure=measure)
    typer.echo(host.to_json() if as_json else hardware_yaml(host).rstrip("\n"))
    return 0


# ---------------------------------------------------------------------------------------------- init


def schema_ref(target_dir: Path) -> str:
    """Where editors find the schema: the committed schema/stack-v1.json relative to the new file, else the $id."""
    import stackgen

    pkg = Path(stackgen.__file__).resolve().parent
    for candidate in (pkg / "_data" / "schema" / "stack-v1.json", pkg.parent / "schema" / "stack-v1.json"):
        if candidate.is_file():
            try:
                return Path(os.path.relpath(candidate, target_dir.resolve())).as_posix()
            except ValueError:  # another drive on Windows
                return candidate.as_posix()
    return SCHEMA_ID


def _slug(folder: Path) -> str:
    import re

    slug = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")[:63].strip("-")
    return slug if slug and slug[0].isalnum() else "stack"


def _choose_workload(workload: Optional[str], names: list[str]) -> tuple[str, str | None]:
    if workload:
        return workload, None
    if not sys.stdin.isatty():
        return "dev-loop", "stdin is not a terminal: using workload dev-loop (pass --workload NAME to choose)"
    typer.echo("Workloads: " + ", ".join(names))
    # A plain text prompt checked here: typer's choice type moved between versions (typer.Choice is gone in 0.29).
    while True:
        chosen = typer.prompt("Workload", default="dev-loop").strip()
        if chosen in names:
            return chosen, None
        typer.echo(f"unknown workload {chosen!r}; pick one of: {', '.join(names)}", err=True)


def _check_folder(directory: Path) -> None:
    """init's DIR is a folder, or can become one: the nearest part of it that exists must be a folder."""
    for part in (directory, *directory.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                what = "" if part == directory else f" ({directory} would be inside it)"
                raise StackgenError(f"{part} is a file, not a folder{what}: `stackgen init DIR` writes DIR/stack.yaml "
                                    f"(give a folder, new or existing, e.g. `stackgen init {part}-stack`)")
            return


@app.command()
@guarded
def init(
    directory: Path = typer.Argument(Path("."), help="Folder for stack.yaml (created if missing).", show_default=True),
    hardware: Optional[str] = typer.Option(None, "--hardware", help="A built-in hardware profile instead of this machine."),
    workload: Optional[str] = typer.Option(None, "--workload", help="Workload profile (default: ask; dev-loop when not a TTY)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing stack.yaml."),
    host_facts: Optional[Path] = typer.Option(None, "--host-facts", help="Use a recorded host (JSON from `stackgen detect --json`)."),
    measure: bool = typer.Option(False, "--measure", help="Measure system RAM bandwidth while detecting."),
) -> int:
    """Write a starter stack.yaml for this machine: detected hardware, a workload and a model that fits."""
    from stackgen.host.facts import HostFacts
    from stackgen.spec.profiles import load_profiles
    from stackgen.plan.report import plan_text

    target = directory / "stack.yaml"
    _check_folder(directory)
    if target.exists() and not force:
        raise StackgenError(f"{target} already exists; pass --force to overwrite it")
    profiles = load_profiles(directory if directory.is_dir() else None)
    wl, said = _choose_workload(workload, sorted(profiles.workloads))
    if wl not in profiles.workloads:  # a bad --workload is a wrong command line: exit 64 (README, Exit codes)
        raise (UsageError if workload is not None else StackgenError)(
            f"--workload: unknown workload {wl!r} (known: {', '.join(sorted(profiles.workloads))})")
    if said:
        typer.echo(said, err=True)
    notes: tuple[str, ...] = ()
    named, said = hardware_by_name(hardware, profiles) if hardware is not None else (None, [])
    for message, hint in said:  # the forms a stack file's `hardware:` takes, its messages
        if message.startswith("unknown hardware profile") and not hint.startswith("did you mean"):
            hint = f"known: {', '.join(sorted(profiles.hardware))}; or `<N>x <profile>`, e.g. `--hardware '2x rtx-4090'`"
        hint = hint.replace("`hardware: ", "`--hardware ")
        raise UsageError(f"--hardware: {message} ({hint})")
    if named is not None:
        hw_ref: Any = hardware.strip()
        host = HostFacts(named)
    else:  # no --hardware, or --hardware detect
        if host_facts is not None:
            host = _host(host_facts)
        else:
            from stackgen.host.detect import detect_host

            host = detect_host(measure=measure)
        hw_ref, notes = host.hardware, host.notes
    name = _slug(directory)
    schema = schema_ref(directory)
    model, plan, tried = suggest_model(name=name, hardware=hw_ref, workload=wl, host=host, path=target,
                                       profiles=profiles, schema=schema)
    text = stack_text(name=name, hardware=hw_ref, workload=wl, model=model, schema=schema, notes=notes)
    fix = "give a folder you can write to, e.g. `stackgen init ./my-stack`"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackgenError(f"cannot create the folder {directory}: {exc.strerror or exc} ({fix})") from None
    try:
        write_new(target, text, shared=True)  # a planted `.stack.yaml.tmp` symlink is not followed (audit a2 #8)
    except OSError as exc:
        raise StackgenError(f"cannot write {target}: {exc.strerror or exc} ({fix})") from None
    typer.echo(f"wrote {target} (workload {wl}, model {model})")
    for t in tried:
        typer.echo(f"  {t}" if t.startswith("note: ") else f"  skipped {t}")
    typer.echo("")
    typer.echo(plan_text(plan).rstrip("\n"))
    return 0


__all__ = ["detect", "init", "hardware_yaml", "stack_text", "suggest_model", "has_headroom", "schema_ref"]
