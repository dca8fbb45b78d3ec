"""Every example plans and renders, and its committed deploy/ folder passes `render --check` (what a user's CI runs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/stack.yaml"))
COMMITTED = [e for e in EXAMPLES if (e / "deploy").is_dir()]


def test_the_issue_examples_exist():
    names = {e.name for e in EXAMPLES}
    assert {"quickstart", "seed-70b-rtx4090", "mac-dev-loop", "vllm-team-api", "cpu-server"} <= names
    for e in EXAMPLES:
        assert e.name in (REPO / "README.md").read_text(), f"README has a line for examples/{e.name}"


@pytest.mark.parametrize("example", COMMITTED, ids=[e.name for e in COMMITTED])
def test_committed_artifacts_are_up_to_date(cli, example):
    res = cli("render", example / "stack.yaml", "--check")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("example", COMMITTED, ids=[e.name for e in COMMITTED])
def test_check_notices_drift(cli, example, tmp_path):
    copy = tmp_path / example.name
    shutil.copytree(example, copy)
    victim = sorted(p for p in (copy / "deploy").rglob("*") if p.is_file() and p.name != ".stackgen-manifest.json")[0]
    victim.write_text(victim.read_text() + "# local edit\n")
    res = cli("render", copy / "stack.yaml", "--check")
    assert res.exit_code == 2
    assert victim.relative_to(copy / "deploy").as_posix() in res.output


def test_quickstart_plans_on_this_machine(cli, tmp_path):
    """The quickstart uses `hardware: detect` and a GGUF that quickstart.sh assembles; plan it with the
    provisioned copy of that file."""
    gguf = os.environ.get("STACKGEN_GGUF")
    if not gguf or not Path(gguf).is_file():
        if os.environ.get("CI"):
            pytest.fail("STACKGEN_GGUF is not provisioned (.ci/provision.sh)")
        pytest.skip("STACKGEN_GGUF not set: run .ci/provision.sh")
    stack = tmp_path / "stack.yaml"
    text = (REPO / "examples/quickstart/stack.yaml").read_text()
    stack.write_text(text.replace("models/gemma-3-270m-Q4_K_M.gguf", gguf))
    res = cli("plan", stack, "--json")
    assert res.exit_code == 0, res.output
    assert '"engine": "llama.cpp"' in res.output and '"fits": true' in res.output
