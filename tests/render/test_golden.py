"""Golden tests: tests/golden/<case>/ holds stack.yaml, host.json (recorded HostFacts) and expected/ with every
file `stackgen render` writes for it. The exact SET of files and their bytes must match (an extra or missing file
fails), and so must the executable bit. `STACKGEN_REGEN_GOLDEN=1` rewrites expected/ (review the diff like code)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stackgen.commands.render import render_artifacts

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "stack.yaml").is_file()) if GOLDEN.is_dir() else []
REGEN = os.environ.get("STACKGEN_REGEN_GOLDEN") == "1"


def expected_files(folder: Path) -> dict[str, tuple[bytes, bool]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), os.access(p, os.X_OK))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rendered_files(case: Path) -> dict[str, tuple[bytes, bool]]:
    host = case / "host.json"
    artifacts = render_artifacts(case / "stack.yaml", case / "expected", host if host.is_file() else None)
    return {a.path: (a.content.encode("utf-8"), bool(a.mode & 0o111)) for a in artifacts}


def regenerate(case: Path, files: dict[str, tuple[bytes, bool]]) -> None:
    shutil.rmtree(case / "expected", ignore_errors=True)
    for path, (data, executable) in files.items():
        dest = case / "expected" / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(0o755 if executable else 0o644)


def test_the_required_cases_exist():
    assert {"seed-70b-rtx4090", "cpu-llamacpp", "vllm-team-api", "ollama-dev-loop", "mac-mlx-dev-loop"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_golden(name):
    case = GOLDEN / name
    got = rendered_files(case)
    if REGEN:
        regenerate(case, got)
    want = expected_files(case / "expected")
    assert sorted(got) == sorted(want), "the set of rendered files changed (STACKGEN_REGEN_GOLDEN=1 to accept)"
    for path in want:
        assert got[path][0].decode() == want[path][0].decode(), f"{name}: {path} differs"
        assert got[path][1] == want[path][1], f"{name}: {path} executable bit differs"


@pytest.mark.parametrize("name", CASES)
def test_golden_render_is_deterministic(name):
    assert rendered_files(GOLDEN / name) == rendered_files(GOLDEN / name)
