"""Find a command-line tool the way a fresh machine has it: `.ci/run` installs the test tools into the project's
venv, whose bin/ is not on PATH unless the venv is activated. Look beside the running interpreter first, then PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def need(name: str, hint: str = "") -> str:
    """`tool(name)`, or fail in CI (which installs every tool the tests use) and skip elsewhere. `hint`: where the
    CI failure message says the tool comes from."""
    import pytest

    path = tool(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI{f' ({hint})' if hint else ''}")
        pytest.skip(f"{name} is not installed")
    return path
