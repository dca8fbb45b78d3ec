"""Terminal output through rich (installed with typer): tables sized to the terminal, colour only where it is
wanted. rich itself honours NO_COLOR and TERM=dumb; without a terminal (pipes, CI logs) nothing moves the cursor
and tables are laid out wide instead of being folded at 80 columns."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table
from rich.text import Text

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


_GAP = 2  # the padding right of each column (table's padding)
_MIN_LAST = 30  # a wrapping last column stays in the table while it gets at least this many columns


def print_rows(c: Console, headers: list[str], rows: list[list[str]], movable: list[str],
               labels: dict[str, str] | None = None) -> None:
    """A table that stays readable on a narrow terminal: no column is cut (the last, free text, wraps); when the
    columns do not fit, those in `movable` (in that order) leave the table and are printed below it, one line per
    row: `NAME: label value; label value` (wrapped by the console). Cells may hold rich markup."""
    labels = labels or {}

    def width(cell: str) -> int:
        return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)

    natural = {h: max([len(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(headers)}
    shown = list(headers)

    def needed() -> int:
        widths = [natural[h] for h in shown]
        widths[-1] = min(widths[-1], max(_MIN_LAST, len(shown[-1])))  # the last column wraps
        return sum(widths) + _GAP * (len(shown) - 1)

    moved: list[str] = []
    for h in movable:
        if needed() <= c.width:
            break
        if h in shown and len(shown) > 1:
            shown.remove(h)
            moved.append(h)
    t = table(*shown)
    for r in rows:
        t.add_row(*(r[headers.index(h)] for h in shown))
    print_table(c, t)
    if not moved:
        return
    for r in rows:
        parts = []
        for h in moved:
            value = Text.from_markup(r[headers.index(h)]).plain
            label = labels.get(h, h.lower())
            parts.append(f"{label} {value}" if label else value)
        c.print(f"{Text.from_markup(r[0]).plain}: " + "; ".join(parts), markup=False, highlight=False)
