"""Every SGLang argv stackgen generates is accepted by SGLang's REAL argument parser (sglang 0.5.23, provisioned by
.ci/provision.sh step `sglang`: installed --no-deps with only what sglang.srt.server_args imports, CPU torch, no GPU).

The parser is ServerArgs.add_cli_args on an argparse parser, as `python -m sglang.launch_server` builds it
(tests/tools/sglang_parse.py). Argvs come from every golden and example stack that plans SGLang plus a range of
plans (GPUs x models x users x context, TP, KV dtypes, overrides, TLS, structured output). Without the venv the
tests skip with the reason; with `CI` set they fail (conftest.missing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import missing, read_engines_env
from stackgen import engines
from stackgen.engines import flagcheck
from stackgen.engines.base import LaunchContext
from stackgen.engines.sglang import LAUNCHER
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

REPO = Path(__file__).resolve().parents[2]
PARSE = REPO / "tests" / "tools" / "sglang_parse.py"
HOST = HostFacts(hardware=None)  # type: ignore[arg-type]  # every stack below names its hardware


@pytest.fixture(scope="module")
def sglang_py() -> Path:
    value = read_engines_env().get("STACKGEN_SGLANG_PY")
    if not value or not Path(value).is_file():
        missing("SGLang's parser venv ($STACKGEN_SGLANG_PY)")
    return Path(value)


def _stacks() -> list[tuple[str, str]]:
    """(name, stack text): a range of plans SGLang serves."""
    out = []
    for hw in ("h100-80gb", "a100-40gb", "l4", "rtx-4090", "2x h100-80gb", "4x a100-80gb", "dgx-h100"):
        for model in ("qwen2.5-0.5b-instruct", "llama-3.1-8b-instruct", "llama-3.1-70b-instruct"):
            for users, ctx in ((4, 4096), (32, 16384), (256, 8192)):
                out.append((f"{hw}-{model}-{users}u", f"""
version: 1
hardware: {hw}
workload: {{concurrent_users: {users}, context_tokens: {ctx}, prompt_tokens: {ctx // 2}, output_tokens: 256}}
serve: {{api_key_env: STACK_KEY}}
services:
  chat: {{model: {model}, engine: sglang}}
"""))
    out.append(("overrides-tls-grammar", """
version: 1
hardware: 2x h100-80gb
workload: {concurrent_users: 64, context_tokens: 32768}
serve: {host: 0.0.0.0, api_key_env: STACK_KEY, tls: {cert_file: /etc/stackgen/cert.pem, key_file: /etc/stackgen/key.pem}}
services:
  agents:
    model: llama-3.1-70b-instruct
    quant: fp8
    engine: sglang
    structured_output: {backend: guidance}
    overrides: {tensor-parallel-size: 2, kv-cache-dtype: fp8_e5m2, mem-fraction-static: 0.85, log-level: warning,
                disable-radix-cache: false, page-size: 16}
"""))
    out.append(("dp-fp8", """
version: 1
hardware: 4x h100-80gb
workload: {concurrent_users: 128, context_tokens: 8192, prompt_tokens: 6000, output_tokens: 300}
serve: {api_key_env: STACK_KEY}
services:
  chat:
    model: llama-3.1-8b-instruct
    quant: fp8
    overrides: {dp-size: 4}
"""))
    return out


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sglang-stacks")
    found = []
    named = set()
    for src in sorted((REPO / "examples").glob("*/stack.yaml")) + sorted((REPO / "tests/golden").glob("*/stack.yaml")):
        text = src.read_text(encoding="utf-8")
        if "sglang" not in text:
            continue
        host_file = src.parent / "host.json"
        host = HostFacts.load(host_file) if host_file.is_file() else HOST
        for sp in resolve(load_stack(src), host).services:
            if sp.engine == "sglang":
                found.append((src.parent.name, sp))
    for name, text in _stacks():
        d = tmp / name.replace(" ", "")
        d.mkdir()
        (d / "stack.yaml").write_text(text, encoding="utf-8")
        try:
            services = resolve(load_stack(d / "stack.yaml"), HOST).services
        except PlanError:
            continue  # a model this hardware cannot hold (70B on one GPU): no argv to check
        found.extend((name, sp) for sp in services if sp.engine == "sglang")
        named.update(name for sp in services if sp.engine == "sglang")
    assert {"overrides-tls-grammar", "dp-fp8"} <= named, "the stacks with every optional flag must plan SGLang"
    assert len(found) >= 40, f"too few SGLang plans to check: {len(found)}"
    return found


def parse(sglang_py: Path, argvs: list[list[str]]) -> list[dict]:
    proc = subprocess.run([str(sglang_py), str(PARSE), "check"], input=json.dumps(argvs), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sglang_parser_accepts_every_generated_argv(plans, sglang_py):
    argvs = []
    for _, sp in plans:
        ctx = LaunchContext(binary="python3", model_ref=sp.model_ref, host=sp.host, port=sp.port)
        argv = engines.get("sglang").argv(sp, ctx)
        assert argv[1:3] == ["-c", LAUNCHER]
        argvs.append(argv[3:])  # what the launcher hands sglang.launch_server (plus --api-key when keyed)
    # the oracle must be able to fail: an unknown flag, and a KV dtype outside the parser's choices
    bad = [["--model-path", "m", "--no-such-flag"], ["--model-path", "m", "--kv-cache-dtype", "q4_0"]]
    results = parse(sglang_py, argvs + [a + ["--api-key", "k"] for a in argvs[:3]] + bad)
    assert not results[-1]["ok"] and "invalid choice" in results[-1]["error"]
    assert not results[-2]["ok"] and "unrecognized arguments" in results[-2]["error"]
    rejected = [(name, argv, r["error"]) for (name, _), argv, r in zip(plans, argvs, results) if not r["ok"]]
    assert not rejected, rejected[:3]
    assert all(r["ok"] for r in results[len(argvs):len(argvs) + 3]), "the launcher's --api-key must parse too"


def test_sglang_0_5_23_flag_table_matches_the_real_parser(sglang_py):
    proc = subprocess.run([str(sglang_py), str(PARSE), "dump"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert flagcheck.table("sglang", "0.5.23").flags == real


def test_the_launcher_runs_the_real_launch_server_module(sglang_py, tmp_path):
    """`python3 -c LAUNCHER` resolves the real sglang.launch_server (it then stops on a module the parser-only venv
    does not have, or on the missing model: no GPU here) and the key never shows in what it writes."""
    env = {"PATH": "/usr/bin:/bin", "SGLANG_API_KEY": "canary-5e1b", "HOME": str(tmp_path)}
    proc = subprocess.run([str(sglang_py), "-c", LAUNCHER, "--model-path", str(tmp_path / "missing"),
                           "--port", "39999", "--max-running-requests", "4"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sglang/launch_server.py" in out, out[-2000:]
    assert "canary-5e1b" not in out
    assert "unrecognized arguments" not in out and "invalid choice" not in out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
