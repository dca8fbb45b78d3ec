"""`stackgen render FILE [-o DIR] [--check]`: write (or compare) what the stack's targets call for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import FileArg, FileOpt, HostOpt, app, load_and_plan, run, stack_path


def default_out_dir(stack_file: Path) -> Path:
    return stack_file.parent / "deploy"


def render_artifacts(stack_file: Path, out_dir: Path, host_facts: Optional[Path], write_lock: bool = True,
                     probe: bool = False):
    """Everything `render` would write, without touching the disk (invalid input raises before any write).
    `probe`: also ask the installed engine binary's --help (a host probe, so off by default: what render writes must
    not depend on PATH; `up` and `doctor` check the binary)."""
    from stackgen.flagcheck import check_plan
    from stackgen.render import RenderContext, render_plan

    stack, plan = load_and_plan(stack_file, host_facts, write_lock=write_lock)
    # A renamed or removed flag must fail here, not as a service that will not start.
    check_plan(plan, probe=probe)
    # Named relative to the output folder's parent so headers do not depend on the caller's working directory.
    display = Path(os.path.relpath(os.path.abspath(stack_file), os.path.abspath(out_dir.parent))).as_posix()
    # The output folder as seen from the stack's folder: targets place paths from it, whatever the cwd was.
    out_rel = Path(os.path.relpath(os.path.abspath(out_dir), os.path.abspath(stack_file.parent))).as_posix()
    ctx = RenderContext(stack_display=display, out_dir=out_rel, model_dir=stack.spec.serve.model_dir)
    return render_plan(plan, ctx, stack.targets)


@app.command()
def render(
    file: Optional[Path] = FileArg,
    file_opt: Optional[Path] = FileOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: deploy/ next to the stack file)."),
    check: bool = typer.Option(False, "--check", help="Compare instead of writing: exit 0 clean, 2 drifted, 1 invalid."),
    host_facts: Optional[Path] = HostOpt,
    probe: bool = typer.Option(False, "--probe", help="Also check that the installed engine binary's --help lists "
                               "every planned flag (as `up` and `doctor` do)."),
) -> None:
    """Write each service's artifacts for the stack's targets (launch scripts, systemd units, ...)."""

    def body() -> int:
        from stackgen.render import check_tree, write_tree

        path = stack_path(file, file_opt)
        out_dir = out if out is not None else default_out_dir(path)
        artifacts = render_artifacts(path, out_dir, host_facts, write_lock=not check, probe=probe)
        if check:
            check_tree(out_dir, artifacts)
            typer.echo(f"{out_dir}: up to date ({len(artifacts)} files)")
            return 0
        for path in write_tree(out_dir, artifacts):
            typer.echo(f"wrote {out_dir / path}")
        return 0

    run(body)
