"""Run docker-compose v1 (Debian bookworm's 1.29: what CI has, and it validates and interpolates with no daemon) on a
rendered compose file.

v1 predates the compose-spec's top-level `name:` (the project name, read by Compose v2) and rejects the key. So the
file goes to v1 on stdin with its one `name:` line taken out and given as `-p` instead, the project folder and the cwd
set to the file's own (relative mounts and env_file paths resolve as they would); everything else is validated as
written. The `name:` value itself is checked by the compose-spec schema tests (check-jsonschema) and by
test_compose's project test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tools.which import need

NAME_LINE = re.compile(r"^name: (\S+)\n", re.M)


def compose_v1(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    text = Path(path).read_text()
    names = NAME_LINE.findall(text)
    assert len(names) == 1, f"{path}: expected one top-level `name:` line, found {names}"
    tool = need("docker-compose", "Debian package docker-compose")
    return subprocess.run([tool, "-p", names[0], "--project-directory", str(Path(path).parent), "-f", "-", *args],
                          input=NAME_LINE.sub("", text, count=1), capture_output=True, text=True, env=env,
                          cwd=Path(path).parent)  # v1 reads env_file paths of a `-f -` file from the cwd
