"""The compose target: structure, security defaults, determinism, and validation by the real compose validators
(check-jsonschema's bundled compose-spec schema and docker-compose v1's `config -q`, which needs no daemon)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stackgen.errors import RenderError
from stackgen.render.artifact import RenderContext, render_plan, write_tree
from stackgen.render.targets.compose import container_command
from tools.stacks import EXTRA_STACKS, plan_for
from tools.which import need
from tools.compose_v1 import compose_v1

CANARY = "canary-secret-5f1d"  # the API key value; it must never appear in any rendered file


def render(tmp_path: Path, text: str):
    plan = plan_for(tmp_path, text)
    arts = render_plan(plan, RenderContext("stack.yaml"), ["compose"])
    return plan, {a.path: a for a in arts}


def compose_doc(arts) -> dict:
    return yaml.safe_load(arts["compose/compose.yaml"].content)



def need_tool(name: str) -> str:
    return need(name, "see the apt/pip packages in the compose tests' docstring")


@pytest.mark.parametrize("case", ["llama-kvq-offload", "llama-multi-gpu-key-overrides", "vllm-tp-key-overrides",
                                  "ollama-tuned"])
def test_command_is_the_engine_argv_minus_the_entrypoint(tmp_path, case):
    plan, arts = render(tmp_path, EXTRA_STACKS[case])
    for sp in plan.services:
        entry = compose_doc(arts)["services"][sp.name]
        assert entry["command"] == container_command(sp, _container_ref(sp))
        assert all(isinstance(tok, str) for tok in entry["command"])  # "off", "8080" stay strings after a reload
        assert "0.0.0.0" in entry["command"] or sp.engine == "ollama"


def _container_ref(sp) -> str:
    return f"/models/{Path(sp.model.path).name}" if sp.model.path else sp.model_ref


def test_ports_are_loopback_by_default_and_follow_serve_host(tmp_path):
    _, local = render(tmp_path / "a", EXTRA_STACKS["llama-kvq-offload"])
    _, public = render(tmp_path / "b", EXTRA_STACKS["llama-multi-gpu-key-overrides"])
    assert compose_doc(local)["services"]["chat"]["ports"] == ["127.0.0.1:8080:8080"]
    assert compose_doc(public)["services"]["chat"]["ports"] == ["0.0.0.0:8080:8080"]


def test_each_stack_is_its_own_compose_project(tmp_path):
    """Audit F11: no `name:`, so Compose named every stack's project after the file's folder, `compose`: `up` of one
    stack recreated another's same-named `chat` container and shared its volumes and network. Each file now names
    `stackgen-<stack name>`, a valid Compose project name for any stack name (a folder's name is slugged to one)."""
    stacks = {"team-a": "name: team-a\n", "team-b": "name: team-b\n", "My Team_2 (ünï)": "", "___": ""}
    names = {}
    for folder, name in stacks.items():
        _, arts = render(tmp_path / folder, name + EXTRA_STACKS["llama-kvq-offload"].lstrip("\n"))
        text = arts["compose/compose.yaml"].content
        names[folder] = compose_doc(arts)["name"]
        assert f"Compose project {names[folder]} (`name:` below)" in text  # the header says which project
        # review L5: a deployment rendered before `name:` is project `compose`; the header says how to retire it
        assert "`docker compose -p compose down` first" in text
    assert names == {"team-a": "stackgen-team-a", "team-b": "stackgen-team-b", "My Team_2 (ünï)": "stackgen-my-team-2-n",
                     "___": "stackgen-stack"}
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_-]*", n) for n in names.values())  # compose-spec's project pattern


def test_api_key_is_interpolated_from_the_environment_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKGEN_TEST_KEY", CANARY)
    _, arts = render(tmp_path, EXTRA_STACKS["llama-multi-gpu-key-overrides"])
    env = compose_doc(arts)["services"]["chat"]["environment"]
    assert env == {"LLAMA_API_KEY": "${STACKGEN_TEST_KEY:?set STACKGEN_TEST_KEY to the API key}",
                   "HF_TOKEN": "${HF_TOKEN:-}"}  # fetched from the Hub: the token passes through too
    assert all(CANARY not in a.content for a in arts.values())


def test_nvidia_gpus_are_reserved_and_hardening_is_on(tmp_path):
    plan, arts = render(tmp_path, EXTRA_STACKS["vllm-tp-key-overrides"])
    entry = compose_doc(arts)["services"]["api"]
    devices = entry["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}]
    assert entry["image"] == "vllm/vllm-openai:v0.33.0"
    assert entry["init"] is True and entry["cap_drop"] == ["ALL"]
    assert entry["security_opt"] == ["no-new-privileges:true"]
    assert entry["shm_size"] == "16gb" and "ipc" not in entry


def test_amd_gets_rocm_image_devices_and_groups(tmp_path):
    text = "version: 1\nhardware: rx-7900-xtx\nservices:\n  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n"
    _, arts = render(tmp_path, text)
    entry = compose_doc(arts)["services"]["chat"]
    assert entry["image"] == "ghcr.io/ggml-org/llama.cpp:server-rocm"
    assert entry["devices"] == ["/dev/kfd", "/dev/dri"] and entry["group_add"] == ["video", "render"]
    assert "deploy" not in entry


def test_healthcheck_start_period_scales_with_weights(tmp_path):
    plan, arts = render(tmp_path, EXTRA_STACKS["llama-kvq-offload"])
    hc = compose_doc(arts)["services"]["chat"]["healthcheck"]
    sp = plan.services[0]
    assert hc["start_period"] == f"{sp.startup_budget_s}s"  # the plan's one budget: weights read, then downloaded
    assert sp.startup_budget_s >= 60 + sp.memory.weights_bytes / 100e6 + (sp.memory.weights_bytes / 25e6
                                                                          if sp.fetches_weights else 0)
    assert hc["test"] == ["CMD", "curl", "-f", "http://localhost:8080/health"]


def test_local_model_is_mounted_read_only_relative_to_the_compose_file(tmp_path):
    gguf = os.environ.get("STACKGEN_GGUF") or _cached_gguf()
    if gguf is None:
        pytest.skip("no GGUF file to point a stack at (set STACKGEN_GGUF)")
    (tmp_path / "models").mkdir(parents=True)
    _link_or_copy(Path(gguf), tmp_path / "models" / "m.gguf")
    text = "version: 1\nhardware: cpu-laptop-16gb\nservices:\n  g: {model: models/m.gguf, engine: llama.cpp}\n"
    _, arts = render(tmp_path, text)
    entry = compose_doc(arts)["services"]["g"]
    assert entry["volumes"] == ["../../models/m.gguf:/models/m.gguf:ro"]
    assert entry["command"][:2] == ["-m", "/models/m.gguf"] and entry["read_only"] is True


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _cached_gguf() -> str | None:
    path = Path.home() / ".cache/stackgen-ci/models/gemma-3-270m-Q4_K_M.gguf"
    return str(path) if path.is_file() else None


def test_mlx_services_are_left_out_with_a_reason(tmp_path):
    text = EXTRA_STACKS["mlx-concurrent"].replace("services:\n", "services:\n  chat: {model: llama-3.1-8b-instruct, "
                                                   "engine: llama.cpp, port: 9000}\n")
    _, arts = render(tmp_path, text)
    assert list(compose_doc(arts)["services"]) == ["chat"]
    assert "'dev' (MLX) is not in this file: MLX needs Metal" in arts["compose/compose.yaml"].content


def test_mlx_only_stack_is_refused(tmp_path):
    with pytest.raises(RenderError, match="MLX services cannot run in containers"):
        render(tmp_path, EXTRA_STACKS["mlx-concurrent"])


def test_vllm_cpu_needs_an_explicit_image(tmp_path):
    with pytest.raises(RenderError, match="services.api: vLLM's CPU backend has no official image"):
        render(tmp_path / "a", EXTRA_STACKS["vllm-cpu"])
    text = EXTRA_STACKS["vllm-cpu"].replace("engine: vllm}", "engine: vllm, image: 'local/vllm-cpu:0.32.0'}")
    _, arts = render(tmp_path / "b", text)
    assert compose_doc(arts)["services"]["api"]["image"] == "local/vllm-cpu:0.32.0"


def test_ollama_gets_its_env_file_and_a_container_modelfile(tmp_path):
    _, arts = render(tmp_path, EXTRA_STACKS["ollama-tuned"])
    entry = compose_doc(arts)["services"]["chat"]
    assert entry["env_file"] == ["chat.env"] and entry["command"] == ["serve"]
    assert "OLLAMA_HOST=0.0.0.0:11434\n" in arts["compose/chat.env"].content
    assert "./chat:/stackgen:ro" in entry["volumes"] and "ollama:/root/.ollama" in entry["volumes"]
    assert "FROM llama3.1:8b\n" in arts["compose/chat/Modelfile"].content
    assert entry["healthcheck"]["test"] == ["CMD", "ollama", "list"]


def test_rendering_is_deterministic(tmp_path):
    _, first = render(tmp_path / "a" / "stack", EXTRA_STACKS["llama-multi-gpu-key-overrides"])
    _, second = render(tmp_path / "b" / "stack", EXTRA_STACKS["llama-multi-gpu-key-overrides"])
    assert {k: v.content for k, v in first.items()} == {k: v.content for k, v in second.items()}


COMPOSE_CASES = ["llama-kvq-offload", "llama-multi-gpu-key-overrides", "vllm-tp-key-overrides", "vllm-fp8",
                 "ollama-tuned"]


@pytest.mark.parametrize("case", COMPOSE_CASES)
def test_compose_spec_schema_accepts_it(tmp_path, case):
    """check-jsonschema (PyPI) ships the compose-spec JSON schema: `--builtin-schema vendor.compose-spec`."""
    tool = need_tool("check-jsonschema")
    path = _written(tmp_path, case)
    proc = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", COMPOSE_CASES)
def test_docker_compose_config_accepts_it(tmp_path, case):
    """docker-compose v1.29 (Debian package docker-compose) validates and interpolates without a daemon."""
    path = _written(tmp_path, case)
    env = {**os.environ, "STACKGEN_TEST_KEY": CANARY}
    proc = compose_v1(path, "config", "-q", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_compose_refuses_to_start_without_the_key(tmp_path):
    path = _written(tmp_path, "llama-multi-gpu-key-overrides")
    env = {k: v for k, v in os.environ.items() if k != "STACKGEN_TEST_KEY"}
    proc = compose_v1(path, "config", "-q", env=env)
    assert proc.returncode != 0 and "set STACKGEN_TEST_KEY to the API key" in proc.stderr


def _written(tmp_path: Path, case: str) -> Path:
    plan = plan_for(tmp_path, EXTRA_STACKS[case])
    write_tree(tmp_path / "deploy", render_plan(plan, RenderContext("stack.yaml"), ["compose"]))
    return tmp_path / "deploy" / "compose" / "compose.yaml"


@pytest.mark.parametrize("case", ["llama-multi-gpu-key-overrides", "vllm-tp-key-overrides", "ollama-tuned"])
def test_up_containers_runs_the_container_compose_describes(tmp_path, monkeypatch, case):
    """One neutral container spec (stackgen.render.container_spec): the Docker API call of `up --containers` and the compose
    entry agree on image, command, environment, key variable, volumes and hardening."""
    from stackgen.run.containers import container_spec

    monkeypatch.setenv("STACKGEN_TEST_KEY", "k")
    plan, arts = render(tmp_path, EXTRA_STACKS[case])
    sp = plan.services[0]
    entry = compose_doc(arts)["services"][sp.name]
    api = container_spec(sp, "st", Path(plan.stack_path))
    assert api.image == entry["image"]
    assert api.command == [c.replace("$$", "$") for c in entry["command"]]
    env_file = arts[f"compose/{sp.name}.env"].content if f"compose/{sp.name}.env" in arts else ""
    listed = dict(line.split("=", 1) for line in env_file.splitlines() if line and not line.startswith("#"))
    key = [k for k, v in entry.get("environment", {}).items() if "STACKGEN_TEST_KEY" in v]
    assert {k: v for k, v in api.environment.items() if k not in key} == listed
    assert [api.environment[k] for k in key] == (["k"] if sp.api_key_env else [])
    binds = sorted(v["bind"] for v in api.volumes.values())
    assert binds == sorted(v.split(":")[1] for v in entry["volumes"] if not v.startswith(f"./{sp.name}:"))
    assert api.options.get("read_only", False) == entry.get("read_only", False)
    assert api.options.get("shm_size") == entry.get("shm_size")
