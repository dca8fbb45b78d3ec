"""Where the built-in profiles/ and templates/ live: inside the wheel (stackgen/_data) or, in a source checkout or
editable install, at the repository root."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"stackgen's built-in {name}/ folder is missing from this installation")
