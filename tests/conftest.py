"""Shared fixtures: write a stack file, run the CLI in-process, a recorded CPU host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stackgen.host.facts import HostFacts
from stackgen.spec.stack import CPUSpec, HardwareSpec

REPO = Path(__file__).resolve().parent.parent

# Tests share a few writers across stage folders (test_gguf's synthetic GGUF writer, test_launch_unit's fake engine):
# every stage folder is importable up front, so any subset (`pytest tests/render`) finds them, not only a full run
# that happened to collect tests/models first.
for _stage in sorted(p for p in Path(__file__).resolve().parent.iterdir() if p.is_dir() and p.name not in
                     ("golden", "fixtures", "tools", "integration", "security", "fakes", "__pycache__")):
    if str(_stage) not in sys.path:
        sys.path.append(str(_stage))
# Test doubles shared by every folder, one import name each: `from fakes.openai_server import FakeOpenAIServer`.
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's ~/.cache/stackgen (e.g. a measured memory bandwidth)."""
    monkeypatch.setenv("STACKGEN_USER_CACHE", str(tmp_path_factory.mktemp("user-cache")))
    # nor the user's registry of running stacks (`stackgen ps`)
    monkeypatch.setenv("STACKGEN_STATE_HOME", str(tmp_path_factory.mktemp("state-home")))
    # nor the user's `stackgen calibrate` measurement (plans of detected hosts would change with it)
    monkeypatch.setenv("STACKGEN_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
    # nor the engine binaries installed here (a detected plan follows the llama-server build it finds)
    monkeypatch.setenv("STACKGEN_ENGINE_PROBE", "0")


@pytest.fixture
def write_stack(tmp_path):
    def write(text: str, name: str = "stack.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def cli():
    from stackgen.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def cpu_host() -> HostFacts:
    hw = HardwareSpec(gpus=(), memory_gib=24, memory_bandwidth_gbs=40, cpu=CPUSpec(cores=2, threads=2), os="linux")
    return HostFacts(hw, 20 * 2**30)
