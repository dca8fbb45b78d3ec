"""The quadlet target: every [Container] key is one Podman 4.9's Quadlet generator accepts (the vendored key list),
the sections systemd reads ([Unit], [Service], [Install]) pass `systemd-analyze verify`, Exec= reads back (through
systemd's own parser, whose quoting Quadlet shares) as exactly the container command, and the unit carries GPUs by
CDI, the health check, the hardening and no secret.

Podman's generator itself cannot run here: Debian 12 ships podman 4.3.1, older than Quadlet (4.4)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from stackgen.cli import load_and_plan
from stackgen.errors import RenderError
from stackgen.render.artifact import RenderContext
from stackgen.render.targets.compose import container_command
from stackgen.render.targets.quadlet import quadlet_target
from test_systemd import ANALYZE, exec_time, needs_analyze, parsed_command_lines

HERE = Path(__file__).parent.parent
KEYS = json.loads((HERE / "tools" / "vendor" / "podman-quadlet" / "container-keys.json").read_text())
MIN_RELEASE = "v4.9.0"
GOLDEN = HERE / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected" / "quadlet").is_dir())


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax as Quadlet reads it: [Section], Key=Value lines (keys may repeat), # and ; comments."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip()[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            current = line[1:-1]
            assert current not in sections, f"[{current}] twice"
            sections[current] = []
            continue
        assert current is not None and "=" in line, f"not a Key=Value line: {line!r}"
        key, value = line.split("=", 1)
        sections[current].append((key, value))
    return sections


def systemd_part(sections: dict, stub: Path, exec_value: str) -> str:
    """What systemd itself reads of the generated service: [Unit], [Service], [Install], with Quadlet's ExecStart
    stood in for by the stub and the unit's Exec= words (Quadlet splits Exec= with systemd's rules and writes the
    words into ExecStart=, where systemd then expands % and $)."""
    out = []
    for title in ("Unit", "Service", "Install"):
        lines = [f"{k}={v}" for k, v in sections.get(title, [])]
        if title == "Service":
            lines.append(f'ExecStart="{stub}" {exec_value}')
        out.append(f"[{title}]\n" + "\n".join(lines) + "\n")
    return "\n".join(out)


@pytest.fixture
def stub(tmp_path) -> Path:
    path = tmp_path / "bin" / "podman"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def render(stack: Path):
    spec, plan = load_and_plan(stack, None)
    ctx = RenderContext("stack.yaml", model_dir=spec.serve.model_dir)
    return plan, {a.path: a.content for a in quadlet_target(plan, ctx)}


def test_there_is_a_quadlet_golden_case():
    assert CASES


@pytest.mark.parametrize("case", CASES)
def test_container_keys_are_quadlet_keys(case):
    allowed = set(KEYS["releases"][MIN_RELEASE]["keys"])
    for path in sorted((GOLDEN / case / "expected" / "quadlet").glob("*.container")):
        sections = parse_unit(path.read_text())
        assert set(sections) == {"Unit", "Container", "Service", "Install"}
        used = {k for k, _ in sections["Container"]}
        assert used <= allowed, f"{path.name}: not accepted by Podman {MIN_RELEASE}'s Quadlet: {used - allowed}"
        assert {"Image", "Exec", "HealthCmd", "NoNewPrivileges", "DropCapability", "PublishPort"} <= used


@needs_analyze
@pytest.mark.parametrize("case", CASES)
def test_systemd_sections_verify_and_exec_reads_back(case, stub, tmp_path):
    plan, arts = render(GOLDEN / case / "stack.yaml")
    for sp in plan.services:
        path = f"quadlet/stackgen-{plan.stack_name}-{sp.name}.container"
        sections = parse_unit(arts[path])
        container = dict(sections["Container"])
        unit = tmp_path / f"{sp.name}.service"
        unit.write_text(systemd_part(sections, stub, container["Exec"]))
        r = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        [argv] = parsed_command_lines(unit)
        volumes = [v for k, v in sections["Container"] if k == "Volume"]
        ref = next((v.split(":")[1] for v in volumes if v.split(":")[1].startswith("/models/")), sp.model_ref)
        assert [exec_time(w) for w in argv[1:]] == container_command(sp, ref)


def test_gpus_by_cdi_health_hardening_and_the_key_as_a_secret(monkeypatch):
    monkeypatch.setenv("TEAM_LLM_KEY", "sk-must-not-appear")
    plan, arts = render(GOLDEN / "quadlet-cuda-team" / "stack.yaml")
    chat = parse_unit(arts["quadlet/stackgen-pod-team-chat.container"])["Container"]
    small = parse_unit(arts["quadlet/stackgen-pod-team-small.container"])["Container"]
    assert [v for k, v in chat if k == "AddDevice"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]  # the -ts split
    assert [v for k, v in small if k == "AddDevice"] == ["nvidia.com/gpu=0"]  # vLLM TP=1
    assert ("Secret", "stackgen-pod-team-api-key,type=env,target=LLAMA_API_KEY") in chat
    assert ("Secret", "stackgen-pod-team-api-key,type=env,target=VLLM_API_KEY") in small
    health = json.loads(dict(chat)["HealthCmd"])
    assert health == ["curl", "-f", "http://localhost:8080/health"]  # exec form: no "CMD" keyword for Podman
    assert ("ReadOnly", "true") in chat and ("ReadOnly", "true") not in small and ("ShmSize", "2g") in small
    assert all("sk-must-not-appear" not in text for text in arts.values())


def _stack(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nname: s\n" + body)
    return path


def test_loopback_publish_amd_devices_and_local_weights_from_model_dir(tmp_path):
    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf  # the synthetic GGUF writer

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(
        make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]], BASIC_TENSORS)[0])
    _, arts = render(_stack(tmp_path, "hardware: rx-7900-xtx\nserve:\n  model_dir: /srv/models\nservices:\n  a:\n"
                                      "    model: models/m.gguf\n    engine: llama.cpp\ntargets: [quadlet]\n"))
    c = parse_unit(arts["quadlet/stackgen-s-a.container"])["Container"]
    assert ("PublishPort", "127.0.0.1:8080:8080") in c
    assert [v for k, v in c if k == "AddDevice"] == ["/dev/kfd", "/dev/dri"]
    assert ("Volume", "/srv/models/m.gguf:/models/m.gguf:ro,z") in c


@pytest.mark.parametrize("body, message", [
    ("hardware: m3-max-64gb\nservices:\n  a:\n    model: qwen2.5-7b-instruct\n    engine: mlx\n", "needs Linux"),
    ("hardware: rtx-3090\nservices:\n  a:\n    model: llama-3.2-3b-instruct\n    engine: ollama\n", "ollama create"),
    ("hardware: rtx-3090\nserve:\n  tls:\n    cert_file: /etc/c.pem\n    key_file: /etc/k.pem\nservices:\n  a:\n"
     "    model: llama-3.2-3b-instruct\n    engine: llama.cpp\n", "TLS"),
])
def test_refusals(tmp_path, body, message):
    with pytest.raises(RenderError, match=message):
        render(_stack(tmp_path, body + "targets: [quadlet]\n"))


def test_amd_device_nodes_keep_the_users_groups(write_stack):
    """/dev/kfd and /dev/dri belong to video/render: a rootless container opens them only with the user's groups kept
    (compose renders group_add: [video, render]); CDI-named NVIDIA GPUs need nothing of the kind."""
    amd = write_stack("version: 1\nhardware: rx-7900-xtx\nworkload: dev-loop\nservices:\n"
                      "  coder: {model: qwen2.5-7b-instruct, engine: llama.cpp}\ntargets: [quadlet]\n")
    _, files = render(amd)
    (unit,) = [parse_unit(t) for p, t in files.items() if p.endswith(".container")]
    keys = unit["Container"]
    assert ("AddDevice", "/dev/kfd") in keys and ("PodmanArgs", "--group-add keep-groups") in keys
    assert "PodmanArgs" in KEYS["releases"][MIN_RELEASE]["keys"]
    nv = write_stack("version: 1\nhardware: rtx-4090\nworkload: dev-loop\nservices:\n"
                     "  coder: {model: qwen2.5-7b-instruct, engine: llama.cpp}\ntargets: [quadlet]\n")
    _, files = render(nv)
    (unit,) = [parse_unit(t) for p, t in files.items() if p.endswith(".container")]
    assert not any(k == "PodmanArgs" and "group-add" in v for k, v in unit["Container"])


def test_a_hub_model_gets_hf_token_by_reference_and_a_local_one_none(tmp_path, monkeypatch):
    """Review M1: compose, kubernetes and systemd passed HF_TOKEN to an engine that fetches a gated Hub repo at start;
    its Podman twin did not. Quadlet's Environment= takes only NAME=value and its EnvironmentFile= fails a start
    without the file, so: an optional [Service] EnvironmentFile=- (%E: /etc, or ~/.config rootless) and
    `podman run --env HF_TOKEN`, which podman skips when unset."""
    monkeypatch.setenv("HF_TOKEN", "hf_canary_quadlet")
    _, arts = render(_stack(tmp_path, "hardware: rtx-3090\nservices:\n  a:\n    model: qwen2.5-7b-instruct\n"
                                      "    engine: llama.cpp\ntargets: [quadlet]\n"))
    text = arts["quadlet/stackgen-s-a.container"]
    unit = parse_unit(text)
    assert ("PodmanArgs", "--env HF_TOKEN") in unit["Container"]
    assert ("EnvironmentFile", "-%E/stackgen/s/hf-token.env") in unit["Service"]
    assert "`HF_TOKEN=<token>` in /etc/stackgen/s/hf-token.env (as a user: ~/.config/stackgen/s/hf-token.env)" in text
    assert "hf_canary_quadlet" not in text
    assert not [k for k, v in unit["Container"] if k == "Environment" and v.startswith("HF_TOKEN")]

    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf  # the synthetic GGUF writer

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(
        make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]], BASIC_TENSORS)[0])
    _, arts = render(_stack(tmp_path, "hardware: rtx-3090\nservices:\n  a:\n    model: models/m.gguf\n"
                                      "    engine: llama.cpp\ntargets: [quadlet]\n"))
    assert "HF_TOKEN" not in arts["quadlet/stackgen-s-a.container"]
