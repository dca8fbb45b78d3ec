"""The llama-swap target: every config validates against llama-swap's published schema (check-jsonschema on the
vendored config-schema.json), follows the rules its loader adds (each model in at most one group, members defined),
and each `cmd` splits, by llama-swap's rules, into exactly the planned command; ttl and groups follow the plan."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stackgen import engines
from stackgen.cli import load_and_plan
from stackgen.errors import RenderError
from stackgen.render.artifact import RenderContext
from stackgen.render.targets.llama_swap import fit_groups, llama_swap_target, ttl_s
from stackgen.plan.plan import startup_budget_s

HERE = Path(__file__).parent.parent
SCHEMA = HERE / "tools" / "vendor" / "llama-swap" / "config-schema.json"
GOLDEN = HERE / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected" / "llama-swap").is_dir())


def check_jsonschema() -> str:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(tool).exists():
        pytest.fail("check-jsonschema (a test dependency: pip install -e '.[test]') is missing")
    return tool


def sanitize_command(text: str) -> list[str]:
    """llama-swap's SanitizeCommand (internal/config/commands.go) on POSIX: drop # comment lines, turn a trailing
    backslash into a space, split with POSIX shell rules."""
    lines = []
    for line in text.split("\n"):
        trimmed = line.strip()
        if trimmed.startswith("#"):
            continue
        lines.append(trimmed[:-1] + " " if trimmed.endswith("\\") else line)
    return shlex.split("\n".join(lines), posix=True)


def render(stack: Path):
    spec, plan = load_and_plan(stack, None)
    [art] = llama_swap_target(plan, RenderContext("stack.yaml", model_dir=spec.serve.model_dir))
    return plan, art.content


def test_there_is_a_llama_swap_golden_case():
    assert CASES


@pytest.mark.parametrize("case", CASES)
def test_golden_config_passes_llama_swaps_schema(case):
    path = GOLDEN / case / "expected" / "llama-swap" / "config.yaml"
    r = subprocess.run([check_jsonschema(), "--schemafile", str(SCHEMA), str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_check_can_fail(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("models:\n  a:\n    cmd: x\n    ttl: -5\n")  # ttl minimum is -1
    r = subprocess.run([check_jsonschema(), "--schemafile", str(SCHEMA), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr


@pytest.mark.parametrize("case", CASES)
def test_loader_rules_and_commands(case):
    plan, text = render(GOLDEN / case / "stack.yaml")
    doc = yaml.safe_load(text)
    members = [m for g in doc.get("groups", {}).values() for m in g["members"]]
    assert len(members) == len(set(members)) and set(members) <= set(doc["models"])
    for sp in plan.services:
        model = doc["models"][sp.name]
        argv = sanitize_command(model["cmd"])
        assert argv[argv.index("--port") + 1] == str(sp.port) and argv[argv.index("--host") + 1] == "127.0.0.1"
        assert model["proxy"] == f"http://127.0.0.1:{sp.port}"
        engine = engines.get(sp.engine)
        want = engines.command(engine, dataclasses.replace(sp, host="127.0.0.1", api_key_env=None),
                               binary=sp.spec.binary or engine.binary, model_ref=sp.model_ref, host="127.0.0.1",
                               port=sp.port, key_file=None).argv
        assert argv == list(want)  # the shell quoting survives llama-swap's split


def test_golden_plan_choices():
    plan, text = render(GOLDEN / "llama-swap-3090" / "stack.yaml")
    doc = yaml.safe_load(text)
    assert doc["apiKeys"] == ["${env.SWAP_KEY}"]
    assert doc["models"]["tiny"]["ttl"] == 0  # four users: never unloaded
    assert doc["models"]["coder"]["ttl"] >= 300
    assert doc["groups"] == {"fit-1": {"swap": False, "exclusive": True, "members": ["coder", "chat", "tiny"]}}
    for sp in plan.services:
        argv = sanitize_command(doc["models"][sp.name]["cmd"])
        assert "--api-key" not in argv and "--api-key-file" not in argv  # llama-swap checks the key


def test_services_that_do_not_fit_together_are_left_to_swap():
    plan, _ = render(GOLDEN / "llama-swap-3090" / "stack.yaml")
    big = dataclasses.replace(plan.services[1].memory, gpu_bytes=20 * 2**30)  # chat alone fills most of the 24 GB
    services = (plan.services[0], dataclasses.replace(plan.services[1], memory=big), plan.services[2])
    assert fit_groups(dataclasses.replace(plan, services=services)) == [["coder", "tiny"]]


def test_ttl_from_the_workload():
    plan, _ = render(GOLDEN / "llama-swap-3090" / "stack.yaml")
    one = plan.services[0]
    assert ttl_s(one) == max(300, 10 * startup_budget_s(one.memory.weights_bytes, fetched=False))
    shared = dataclasses.replace(one, workload=one.workload.model_copy(update={"concurrent_users": 2}))
    assert ttl_s(shared) == 0


def _stack(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nname: s\nhardware: rtx-3090\ntargets: [llama-swap]\n" + body)
    return path


@pytest.mark.parametrize("body, message", [
    ("services:\n  a:\n    model: llama-3.2-3b-instruct\n    engine: ollama\n", "OLLAMA_MAX_LOADED_MODELS"),
    ("services:\n  a:\n    model: llama-3.2-3b-instruct\n    engine: llama.cpp\n    overrides:\n      alias: '${HOME}'\n",
     "macro"),
    ("serve:\n  tls:\n    cert_file: /etc/c.pem\n    key_file: /etc/k.pem\nservices:\n  a:\n"
     "    model: llama-3.2-3b-instruct\n    engine: llama.cpp\n", "TLS"),
])
def test_refusals(tmp_path, body, message):
    with pytest.raises(RenderError, match=message):
        render(_stack(tmp_path, body))


def test_awkward_words_survive_llama_swaps_split(tmp_path):
    alias = "it's a \"model\" \\ # $x"
    plan, text = render(_stack(tmp_path, "services:\n  a:\n    model: llama-3.2-3b-instruct\n    engine: llama.cpp\n"
                                         f"    overrides:\n      alias: {yaml.safe_dump(alias).strip()}\n"))
    argv = sanitize_command(yaml.safe_load(text)["models"]["a"]["cmd"])
    assert argv[argv.index("--alias") + 1] == alias


def test_llama_swap_listens_where_the_stack_serves():
    """serve.host 0.0.0.0 with a key: llama-swap (which enforces apiKeys) is the front door on 0.0.0.0, as the
    stack's other targets serve; it said --listen 127.0.0.1 whatever serve.host was."""
    from pathlib import Path

    from stackgen.cli import load_and_plan
    from stackgen.render.artifact import RenderContext, render_plan

    golden = Path(__file__).resolve().parents[1] / "golden"
    _, plan = load_and_plan(golden / "compose-llama-cuda-key" / "stack.yaml", None)
    assert plan.services[0].host == "0.0.0.0" and plan.services[0].api_key_env
    (art,) = [a for a in render_plan(plan, RenderContext("stack.yaml"), ["llama-swap"]) if a.path.endswith(".yaml")]
    assert "llama-swap --config config.yaml --listen 0.0.0.0:" in art.content and "apiKeys" in art.content
    _, local = load_and_plan(golden / "llama-swap-3090" / "stack.yaml", None)
    (art,) = [a for a in render_plan(local, RenderContext("stack.yaml"), ["llama-swap"]) if a.path.endswith(".yaml")]
    assert "--listen 127.0.0.1:" in art.content
