"""Quoting for systemd unit files, by systemd's rules rather than a shell's.

systemd parses ExecStart= itself: it first expands specifiers (`%n`, `%H`, ...), then splits words with C escapes
inside double quotes, and at exec time expands `$VAR` / `${VAR}` from the unit's environment. So `shlex.join` is
wrong twice over (specifiers expand, backslashes are eaten). Here every argument is double-quoted with `\\` and `"`
escaped, control characters written as `\\xNN`, `%` doubled to `%%` and `$` doubled to `$$`.

NUL, newline and carriage return are refused: systemd cannot carry NUL in an argument, and a line break is how a
value would smuggle in a second directive. So are Unicode noncharacters (U+FDD0..U+FDEF and every U+xxFFFE/U+xxFFFF):
systemd's unit parser takes them for invalid UTF-8 (src/basic/utf8.c unichar_is_valid) and drops the whole
ExecStart= line, quoted or escaped (`systemd-analyze verify` shows no command line for it; found by
tests/render/test_systemd.py's round trip).
"""

from __future__ import annotations

from typing import Iterable

from stackgen.errors import RenderError

_FORBIDDEN = {"\x00": "NUL", "\n": "a newline", "\r": "a carriage return"}


class Expand(str):
    """An argument systemd must expand at exec time, e.g. ``${CREDENTIALS_DIRECTORY}/api-key``: `$` is kept."""


def _noncharacter(ch: str) -> bool:
    c = ord(ch)
    return 0xFDD0 <= c <= 0xFDEF or (c & 0xFFFE) == 0xFFFE


def check_value(value: str, what: str = "value") -> str:
    for ch, name in _FORBIDDEN.items():
        if ch in value:
            raise RenderError(f"{what} {value!r} contains {name}, which cannot go into a systemd unit")
    bad = next((ch for ch in value if _noncharacter(ch)), None)
    if bad is not None:
        raise RenderError(f"{what} {value!r} contains U+{ord(bad):04X}, a Unicode noncharacter systemd refuses (it "
                          "drops the whole line): remove it from the value")
    return value


def _escape(value: str, dollars: bool) -> str:
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "$" and dollars:
            out.append("$$")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def quote_arg(arg: str) -> str:
    """One ExecStart= word. An :class:`Expand` keeps its `$` so systemd substitutes the variable (as one word)."""
    check_value(arg, "argument")
    return '"' + _escape(arg, dollars=not isinstance(arg, Expand)) + '"'


def systemd_quote(argv: Iterable[str]) -> str:
    """An ExecStart= command line that systemd parses back to exactly `argv`."""
    words = list(argv)
    if not words:
        raise RenderError("empty command line")
    return " ".join(quote_arg(w) for w in words)


def quote_value(value: str, what: str = "value") -> str:
    """A quoted word for directives without `$` expansion (Environment=, ReadOnlyPaths=, ...): `%` still doubles."""
    check_value(value, what)
    return '"' + _escape(value, dollars=False) + '"'


def escape_text(value: str, what: str = "value") -> str:
    """Free text such as Description=: specifiers expand there too, so `%` doubles; no quoting."""
    return check_value(value, what).replace("%", "%%")
