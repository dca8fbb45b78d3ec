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
