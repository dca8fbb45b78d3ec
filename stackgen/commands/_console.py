"""Terminal output through rich (installed with typer): tables sized to the terminal, colour only where it is
wanted. rich itself honours NO_COLOR and TERM=dumb; without a terminal (pipes, CI logs) nothing moves the cursor
and tables are laid out wide instead of being folded at 80 columns."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

_PIPE_WIDTH = 250  # no terminal: one row per line in CI logs and `| grep`


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, highlight=False, soft_wrap=False, width=_PIPE_WIDTH)
    return c


def live_ok(c: Console) -> bool:
    """A spinner/updating line only on a real terminal that can move the cursor."""
    return c.is_terminal and not c.is_dumb_terminal


def table(*columns: str) -> Table:
    t = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for i, col in enumerate(columns):  # on a narrow terminal only the last column (free text) wraps
        last = i == len(columns) - 1
        t.add_column(col, no_wrap=not last, overflow="fold" if last else "ellipsis")
    return t


def print_table(c: Console, t: Table) -> None:
    """Print a table without the padding rich leaves at the end of each line."""
    with c.capture() as cap:
        c.print(t)
    c.file.write("\n".join(line.rstrip() for line in cap.get().splitlines()) + "\n")
    c.file.flush()
