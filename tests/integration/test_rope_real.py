"""Issue 16 on real engines: the rendered YaRN flags serve a prompt longer than the model's trained context
(llama-server with a copy of the Gemma 3 270M GGUF whose trained context is made 1024), a JSON-schema request returns
valid JSON, and vLLM 0.32's own ModelConfig accepts the rendered --hf-overrides and --max-model-len for the tiny
Llama made to document YaRN (trained 512 positions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import pytest

from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack
from tools.yarn_fixture import yarn_gguf
from tools.stacks import CPU_HOST

NATIVE = 1024


def _plan(folder: Path, model: str, engine: str, context: int):
    (folder / "stack.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        hardware: cpu-server-64gb
        workload: {{concurrent_users: 1, context_tokens: {context}, output_tokens: 32}}
        services:
          chat: {{model: {model}, engine: {engine}, structured_output: {{}}}}
        """), encoding="utf-8")
    (folder / "host.json").write_text(json.dumps(CPU_HOST), encoding="utf-8")
    return resolve(load_stack(folder / "stack.yaml"), HostFacts.load(folder / "host.json")).services[0]


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=240) as r:
        return json.load(r)


@pytest.mark.parametrize("context,factor", [(4096, "4"), (8192, "8")])
def test_llama_server_serves_past_the_trained_context_with_the_rendered_yarn_flags(
        tmp_path, llama_server, gguf_path, serve_process, free_port, context, factor):
    # The file documents YaRN x8 over 1024 positions; the workload needs 4096 (factor 4) or 8192 (the file's own
    # factor 8: without --override-kv of the trained length, llama-server capped that slot at 1024).
    yarn_gguf(gguf_path, tmp_path / "gemma-yarn.gguf", NATIVE, 8.0)
    sp = _plan(tmp_path, "gemma-yarn.gguf", "llama.cpp", context)
    argv = list(sp.command)
    assert argv[argv.index("--rope-scale") + 1] == factor and argv[argv.index("--yarn-orig-ctx") + 1] == str(NATIVE)
    port = free_port()
    argv[0] = str(llama_server)
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("-t") + 1] = "2"
    serve_process(argv, f"http://127.0.0.1:{port}/health", timeout_s=120)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=10) as r:
        assert json.load(r)["default_generation_settings"]["n_ctx"] == context  # the slot is not capped at 1024
    words = "city river mountain ocean forest garden house street market school library music story book".split()
    prompt = " ".join(words[i % len(words)] for i in range(2500))
    out = _post(port, {"model": "chat", "prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert out["usage"]["prompt_tokens"] > 2 * NATIVE
    assert out["choices"][0]["text"]
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "count": {"type": "integer"}},
              "required": ["city", "count"]}
    out = _post(port, {"model": "chat", "prompt": "A city and a number as JSON:", "max_tokens": 64,
                       "temperature": 0, "json_schema": schema})
    doc = json.loads(out["choices"][0]["text"])
    assert isinstance(doc["city"], str) and isinstance(doc["count"], int)


VLLM_CONFIG = r"""
import json, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser
root = FlexibleArgumentParser(prog="vllm")
ServeSubcommand().subparser_init(root.add_subparsers(dest="subparser"))
args = root.parse_args(json.loads(sys.argv[1]))
args.model = args.model_tag  # what `vllm serve MODEL` does (ServeSubcommand.cmd)
mc = EngineArgs.from_cli_args(args).create_model_config()
print(json.dumps({"max_model_len": mc.max_model_len, "rope": mc.hf_text_config.rope_parameters}))
"""


def test_vllm_model_config_accepts_the_rendered_rope_override(tmp_path, vllm_py, tiny_llama):
    model = tmp_path / "tiny-yarn"
    shutil.copytree(tiny_llama, model)
    cfg = json.loads((model / "config.json").read_text())
    native = cfg["max_position_embeddings"]
    cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": native}  # what the Qwen cards tell users to add
    (model / "config.json").write_text(json.dumps(cfg))
    sp = _plan(tmp_path, str(model), "vllm", 4 * native)
    argv = list(sp.command)
    assert argv[argv.index("--max-model-len") + 1] == str(4 * native)
    serve_args = ["serve", str(model)] + argv[3:]  # the binary dropped; the model as this test's absolute path
    run = subprocess.run([str(vllm_py), "-c", VLLM_CONFIG, json.dumps(serve_args)], capture_output=True, text=True,
                         timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["max_model_len"] == 4 * native
    assert got["rope"]["rope_type"] == "yarn" and got["rope"]["factor"] == 4.0
