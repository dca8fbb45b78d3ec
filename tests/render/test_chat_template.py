"""services.<name>.chat_template and .system reach the engine or are refused (audit auda F6: both were accepted for
every engine and silently left out of every artifact but Ollama's Modelfile)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from stackgen.errors import RenderError, SpecError
from stackgen.render.artifact import RenderContext, render_plan
from stackgen.spec.stack import load_stack
from tools.stacks import plan_for

TEMPLATE = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}\n{% endfor %}<<assistant>>"


def _stack(tmp_path: Path, service: str, targets: str = "[script]", hardware: str = "cpu-server-64gb") -> str:
    (tmp_path / "tmpl").mkdir(exist_ok=True)
    (tmp_path / "tmpl" / "chat.jinja").write_text(TEMPLATE, encoding="utf-8")
    body = "".join(f"    {line}\n" for line in service.splitlines())
    return ("version: 1\nname: tp\nhardware: " + hardware + "\nworkload: {concurrent_users: 1, context_tokens: 2048}\n"
            "services:\n  chat:\n" + body + f"targets: {targets}\n")


def _problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "stack.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as exc:
        load_stack(tmp_path / "stack.yaml")
    return [str(p) for p in exc.value.problems]


def test_system_is_refused_at_validate_for_an_engine_without_a_server_side_system_message(tmp_path):
    found = _problems(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nengine: llama.cpp\nsystem: You are helpful."))
    assert len(found) == 1, found
    assert ":9:" in found[0] and "services.chat.system" in found[0]
    assert "no server-side system message" in found[0] and "role: system" in found[0]


def test_an_auto_engine_with_a_system_message_is_planned_on_ollama(tmp_path):
    sp = plan_for(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nsystem: You are helpful.")).services[0]
    assert sp.engine == "ollama"
    assert "no server-side system message" in sp.rejected["llama.cpp"]


def test_mlx_refuses_a_chat_template_file(tmp_path):
    found = _problems(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nengine: mlx\nchat_template: tmpl/chat.jinja"))
    assert len(found) == 1 and "services.chat.chat_template" in found[0], found
    assert "text itself" in found[0]


@pytest.mark.parametrize("target", ["quadlet", "llama-swap"])
def test_a_target_that_does_not_ship_the_template_is_refused_at_validate_and_render(tmp_path, target):
    text = _stack(tmp_path, "model: gemma-3-270m\nengine: llama.cpp\nchat_template: tmpl/chat.jinja",
                  f"[script, {target}]")
    found = _problems(tmp_path, text)
    assert len(found) == 1 and "services.chat.chat_template" in found[0] and f"the {target} target" in found[0]
    plan = plan_for(tmp_path, text.replace(f"[script, {target}]", "[script]"))
    with pytest.raises(RenderError, match=f"the {target} target does not ship a chat template"):
        render_plan(plan, RenderContext("stack.yaml"), [target])


def test_llama_cpp_template_reaches_run_sh_systemd_and_compose(tmp_path):
    plan = plan_for(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nengine: llama.cpp\nchat_template: tmpl/chat.jinja",
                                     "[script, systemd, compose]"))
    sp = plan.services[0]
    assert list(sp.command)[-2:] == ["--chat-template-file", "tmpl/chat.jinja"]  # the plan, run.sh and `up`
    arts = {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), ["script", "systemd", "compose"])}
    run_sh = arts["chat/run.sh"]
    assert "--chat-template-file tmpl/chat.jinja" in " ".join(run_sh.split()), run_sh  # run.sh cds to the stack
    unit = arts["systemd/stackgen-tp-chat.service"]
    exec_start = unit.split("ExecStart=", 1)[1].split("\n", 1)[0]
    assert '"--chat-template-file" "/etc/stackgen/tp/chat.chat.jinja"' in exec_start
    assert "sudo install -D -m 0644 tmpl/chat.jinja /etc/stackgen/tp/chat.chat.jinja" in unit
    doc = yaml.safe_load(arts["compose/compose.yaml"])
    svc = doc["services"]["chat"]
    assert "../../tmpl/chat.jinja:/stackgen-template/chat.jinja:ro" in svc["volumes"]
    cmd = svc["command"]
    assert cmd[cmd.index("--chat-template-file") + 1] == "/stackgen-template/chat.jinja"


@pytest.mark.parametrize("engine,flag", [("vllm", "--chat-template"), ("sglang", "--chat-template")])
def test_python_engines_take_the_template_file_too(tmp_path, engine, flag):
    """vLLM: "The file path to the chat template"; SGLang: "the path of the chat template file" (their --help)."""
    plan = plan_for(tmp_path, _stack(tmp_path, f"model: qwen2.5-0.5b-instruct\nengine: {engine}\n"
                                               "chat_template: tmpl/chat.jinja", hardware="rtx-4090")
                    .replace("name: tp\n", "name: tp\nserve: {api_key_env: TP_KEY}\n"))
    argv = list(plan.services[0].command)
    assert argv[argv.index(flag) + 1] == "tmpl/chat.jinja"


def test_real_llama_server_applies_the_rendered_template(tmp_path, monkeypatch):
    """The real llama-server started with the plan's argv in the stack's folder (as run.sh and `up` start it) formats
    chat messages with the stack's template (POST /apply-template), not the GGUF's own."""
    import os
    import subprocess
    import time
    import json
    import socket
    import urllib.request

    binary, gguf = os.environ.get("STACKGEN_LLAMA_SERVER"), os.environ.get("STACKGEN_GGUF")
    if not (binary and gguf and Path(binary).exists() and Path(gguf).exists()):
        pytest.skip("no real llama-server (source ~/.cache/stackgen-ci/engines.env)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = plan_for(tmp_path, _stack(tmp_path, f"model: {gguf}\nengine: llama.cpp\nbinary: {binary}\nport: {port}\n"
                                               "chat_template: tmpl/chat.jinja"))
    argv = list(plan.services[0].command)
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, shlex.join(argv)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/apply-template", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            prompt = json.loads(r.read())["prompt"]
        assert prompt == "<<user>>hi\n<<assistant>>", prompt
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize("replicas", [1, 3])
def test_kubernetes_ships_the_template_in_a_config_map(tmp_path, replicas):
    plan = plan_for(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nengine: llama.cpp\nchat_template: tmpl/chat.jinja"
                                               f"\nreplicas: {replicas}", "[kubernetes]"))
    (art,) = [a for a in render_plan(plan, RenderContext("stack.yaml"), ["kubernetes"]) if a.path == "kubernetes/chat.yaml"]
    docs = [d for d in yaml.safe_load_all(art.content) if d]
    cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tp-chat-chat-template"][0]
    assert cm["data"] == {"chat-template.jinja": TEMPLATE}
    pod = [d for d in docs if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][c["args"].index("--chat-template-file") + 1] == "/stackgen-template/chat-template.jinja"
    assert {"name": "chat-template", "mountPath": "/stackgen-template", "readOnly": True} in c["volumeMounts"]
    assert {"name": "chat-template", "configMap": {"name": "tp-chat-chat-template"}} in pod["volumes"]


@pytest.mark.parametrize("ref, why", [("missing.jinja", "does not exist"), ("tmpl", "is not a file"),
                                      ("bad.jinja", "is not UTF-8")])
def test_a_chat_template_that_cannot_be_read_is_refused_at_validate(tmp_path, ref, why):
    # review M2: a missing file passed validate, render and up's preflight (all load the stack here); the engine then
    # died blaming its flags
    (tmp_path / "bad.jinja").write_bytes(b"\xff\xfe{{ x }}")
    found = _problems(tmp_path, _stack(tmp_path, f"model: gemma-3-270m\nengine: llama.cpp\nchat_template: {ref}"))
    assert len(found) == 1, found
    assert ":9:" in found[0] and "services.chat.chat_template" in found[0] and why in found[0], found
    assert "relative to the stack's folder" in found[0]


def test_one_predicate_says_which_services_ship_a_template_file(tmp_path):
    """Review L9: `chat_template and engine.chat_template_flag` was re-derived by each target, and the mount point
    defined twice; the targets now ask container_spec.chat_template_file and share TEMPLATE_MOUNT."""
    from stackgen.render import container_spec
    from stackgen.render.targets import kubernetes

    assert kubernetes.TEMPLATE_MOUNT is container_spec.TEMPLATE_MOUNT
    llama = plan_for(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nengine: llama.cpp\nchat_template: tmpl/chat.jinja"))
    assert container_spec.chat_template_file(llama.services[0]) == "tmpl/chat.jinja"
    olla = plan_for(tmp_path, _stack(tmp_path, "model: gemma-3-270m\nengine: ollama\nchat_template: tmpl/chat.jinja"))
    assert container_spec.chat_template_file(olla.services[0]) is None  # its Modelfile carries the text instead
