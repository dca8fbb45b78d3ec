"""HF_TOKEN reaches services whose model is fetched from the Hugging Face Hub at start, by reference only (audit auda
F8: examples/vllm-team-api runs gated meta-llama/Llama-3.1-70B-Instruct, and compose, kubernetes and systemd gave
no way to pass a token; run.sh inherits it)."""

from __future__ import annotations

import yaml

from stackgen.render.artifact import RenderContext, render_plan
from tools.stacks import plan_for

TOKEN = "hf_canary_0b7e5d"  # set in the environment while rendering: it must never appear in an artifact

HUB = ("version: 1\nname: hub\nhardware: rtx-4090\nworkload: {concurrent_users: 1, context_tokens: 2048}\n"
       "serve: {api_key_env: HUB_KEY}\nservices:\n  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n"
       "  olla: {model: llama-3.1-8b-instruct, engine: ollama, port: 11500}\n"
       "targets: [compose, kubernetes, systemd]\n")


def test_hub_services_get_the_token_by_reference_in_compose_kubernetes_and_systemd(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    plan = plan_for(tmp_path, HUB)
    assert plan.services[0].model_ref.startswith("hf:")  # llama-server -hf: from the Hub at start
    arts = {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"),
                                                   ["compose", "kubernetes", "systemd"])}
    assert not [p for p, t in arts.items() if TOKEN in t]

    compose = yaml.safe_load(arts["compose/compose.yaml"])
    assert compose["services"]["chat"]["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"
    assert "HF_TOKEN" not in compose["services"]["olla"].get("environment", {})  # Ollama's own registry
    assert "a gated repo needs HF_TOKEN" in arts["compose/compose.yaml"]

    pod = [d for d in yaml.safe_load_all(arts["kubernetes/chat.yaml"]) if d and d["kind"] == "Deployment"][0]
    env = {e["name"]: e for e in pod["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hub-hf-token", "key": "token", "optional": True}
    assert "kubectl create secret generic hub-hf-token --from-file=token=/dev/stdin" in arts["kubernetes/chat.yaml"]
    olla_pod = [d for d in yaml.safe_load_all(arts["kubernetes/olla.yaml"]) if d and d["kind"] == "Deployment"][0]
    assert "HF_TOKEN" not in {e["name"] for e in olla_pod["spec"]["template"]["spec"]["containers"][0]["env"]}

    unit = arts["systemd/stackgen-hub-chat.service"]
    assert "EnvironmentFile=-/etc/stackgen/hub/hf-token.env\n" in unit  # optional: '-'
    assert "`HF_TOKEN=<token>` in /etc/stackgen/hub/hf-token.env" in unit
    assert "hf-token" not in arts["systemd/stackgen-hub-olla.service"]


def test_local_weights_need_no_token(tmp_path):
    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf  # the synthetic GGUF writer

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]],
                                                           BASIC_TENSORS)[0])
    plan = plan_for(tmp_path, HUB.replace("model: llama-3.1-8b-instruct, engine: llama.cpp",
                                          "model: models/m.gguf, engine: llama.cpp"))
    arts = render_plan(plan, RenderContext("stack.yaml"), ["compose", "kubernetes", "systemd"])
    chat = [a.content for a in arts if "chat" in a.path]
    assert chat and not [t for t in chat if "HF_TOKEN" in t or "hf-token" in t]
