"""`stackgen lock FILE [--upgrade] [--check]`: resolve the stack's remote models and pin them in stack.lock."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stackgen.cli import EX_DRIFT, FileArg, FileOpt, app, guarded, stack_path


@app.command()
@guarded
def lock(
    file: Optional[Path] = FileArg,
    file_opt: Optional[Path] = FileOpt,
    upgrade: bool = typer.Option(False, "--upgrade", help="Re-resolve every remote model and show what changed."),
    check: bool = typer.Option(False, "--check", help="Write nothing: exit 0 when the lock is up to date, 2 if not."),
    catalog: bool = typer.Option(False, "--catalog", help="Also resolve the reference each catalog name stands for "
                                 "(its `ref:`) and pin its real facts instead of the catalog's offline figures."),
) -> int:
    """Pin the stack's remote models (hf:, ollama:, https://...gguf) in stack.lock beside it: revision, files,
    sizes and the facts the planner uses. `plan` and `render` then read the lock and never touch the network.
    With --catalog, catalog names are pinned too (through the same resolver); `--upgrade` re-pins the ones the lock
    already pins."""
    from stackgen.models.lock import (LockError, RemoteModels, diff_entries, dump_lock, lock_path_for, read_lock,
                                      write_lock)
    from stackgen.spec.stack import SpecError, load_stack

    file = stack_path(file, file_opt)
    path = lock_path_for(file)
    try:
        old = read_lock(path, str(file)) if path.is_file() else {}
    except LockError as exc:
        if not upgrade:
            raise
        # --upgrade replaces the lock: one it cannot read (a bad merge, another version) is rebuilt from the stack
        typer.echo(f"{exc}\n--upgrade: {path} is rebuilt from {file} without reading it", err=True)
        old = {}
    pin: bool | frozenset[str] = True if catalog else frozenset(ref for ref, _ in old)
    # --check alone compares with the lock as it is: an entry it lacks is drift (exit 2), found without the network
    mode = "upgrade" if upgrade else "check" if check else "lock"
    remote = RemoteModels(path, stack_display=str(file), mode=mode, pin_catalog=pin)
    try:
        load_stack(file, remote=remote)
    except SpecError:
        if not remote.missing:
            raise
        for ref, quant in remote.missing:
            typer.echo(f"+ {ref}" + (f" (quant {quant})" if quant else "") + f": {path.name} has no entry for it"
                       + ("" if path.is_file() else " (there is no lock file)"))
        typer.echo(f"run `stackgen lock {file}` to pin {'it' if len(remote.missing) == 1 else 'them'}")
        return EX_DRIFT
    new = dict(remote.used)
    if not new:
        typer.echo(f"{file}: no remote models (catalog names and local files need no lock; "
                   "`--catalog` pins the references catalog names stand for)")
        return 0
    changes = diff_entries(old, new)
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if check:
        from stackgen.models.lock import url_pin_changes
        from stackgen.models.remote import HttpClient

        replaced, notes = url_pin_changes(new, HttpClient())  # a URL has no commit: ask its server (offline: not)
        for note in notes:
            typer.echo(note, err=True)
        if current == dump_lock(new) and not replaced:
            typer.echo(f"{path}: up to date ({len(new)} model{'s' if len(new) != 1 else ''})")
            return 0
        typer.echo("\n".join(changes + replaced or [f"{path}: would be rewritten"]))
        if replaced:
            typer.echo(f"run `stackgen lock --upgrade {file}` to plan the new file (or restore the old one)")
        return EX_DRIFT
    for line in changes:
        typer.echo(line)
    if current == dump_lock(new):
        typer.echo(f"{path}: unchanged")
        return 0
    write_lock(path, new)
    typer.echo(f"wrote {path} ({len(new)} model{'s' if len(new) != 1 else ''})")
    return 0
