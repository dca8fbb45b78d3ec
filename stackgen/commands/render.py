"""`stackgen render FILE [-o DIR] [--check]`: write (or compare) what the stack's targets call for."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileArg, FileOpt, HostOpt, app, guarded, stack_path


def default_out_dir(stack_file: Path) -> Path:
    return stack_file.parent / "deploy"


def render_artifacts(stack_file: Path, out_dir: Path, host_facts: Optional[Path], write_lock: bool = True,
                     probe: bool = False):
    """pipeline.render_stack, saying on stderr when it wrote the stack's lock file."""
    from stackgen.cli import _said_lock
    from stackgen.pipeline import render_stack

    return render_stack(stack_file, out_dir, host_facts, write_lock=write_lock, probe=probe, on_lock=_said_lock)


@app.command()
@guarded
def render(
    file: Optional[Path] = FileArg,
    file_opt: Optional[Path] = FileOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: deploy/ next to the stack file)."),
    check: bool = typer.Option(False, "--check", help="Compare instead of writing: exit 0 clean, 2 drifted, 1 invalid."),
    host_facts: Optional[Path] = HostOpt,
    probe: bool = typer.Option(False, "--probe", help="Also check that the installed engine binary's --help lists "
                               "every planned flag (as `up` and `doctor` do). Exit 1, writing nothing, when a "
                               "service's binary is not found or its --help is not an engine's (each is named)."),
) -> int:
    """Write each service's artifacts for the stack's targets (launch scripts, systemd units, ...)."""
    from stackgen.pipeline import stack_display
    from stackgen.render.artifact import check_tree, write_tree
    from stackgen.render.tree import refuse_link_out_of

    path = stack_path(file, file_opt)
    out_dir = out if out is not None else default_out_dir(path)
    if out is None:
        refuse_link_out_of(out_dir, path.parent)
    artifacts = render_artifacts(path, out_dir, host_facts, write_lock=not check, probe=probe)
    stack = stack_display(path, out_dir)  # the manifest records it: another stack's render here is refused
    if check:
        check_tree(out_dir, artifacts, stack)
        typer.echo(f"{out_dir}: up to date ({len(artifacts)} files)")
        return 0
    def stale(rel: str, removed: bool) -> None:
        if removed:
            typer.echo(f"removed {out_dir / rel} (rendered before, not by this render)")
        else:
            typer.echo(f"warning: kept {out_dir / rel}: the manifest lists it, but it changed since stackgen wrote it "
                       "(it is yours now; delete it if you do not need it)", err=True)

    for path in write_tree(out_dir, artifacts, stack, on_stale=stale):
        typer.echo(f"wrote {out_dir / path}")
    return 0
