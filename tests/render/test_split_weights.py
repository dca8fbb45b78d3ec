"""A split GGUF (llama-gguf-split: m-00001-of-00003.gguf ...) is given to llama.cpp by its first part, and llama.cpp
opens the other parts beside it by name. Every artifact that installs, allows (ReadOnlyPaths=), mounts or copies the
weights covers all parts, or the service cannot start (audit a1 #2: each target shipped part 1 only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackgen.cli import load_and_plan
from stackgen.render.artifact import RenderContext
from stackgen.render.container_spec import model_mount
from stackgen.render.paths import weight_files
from stackgen.render.targets.launchd import launchd_target
from stackgen.run.preflight import check_models

from test_gguf import BASIC_KVS, BASIC_TENSORS, I32, U16, make_gguf

PARTS = [f"m-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


def write_split(folder: Path, names: list[str] = PARTS) -> None:
    """Three parts as llama-gguf-split writes them: the metadata in each, split.no/split.count/split.tensors.count."""
    folder.mkdir(parents=True, exist_ok=True)
    dense = [kv for kv in BASIC_KVS if "expert" not in kv[0]]
    for i, name in enumerate(names):
        split = [("split.no", U16, i), ("split.count", U16, len(names)), ("split.tensors.count", I32, 7)]
        (folder / name).write_bytes(make_gguf(dense + split, BASIC_TENSORS[i * 2:i * 2 + 3])[0])


LINUX = """\
version: 1
name: sp
hardware: cpu-server-64gb
serve:
  model_dir: /srv/llm/weights
services:
  chat:
    model: models/m-00001-of-00003.gguf
    engine: llama.cpp
    port: 18100
targets: [script, systemd, compose, quadlet, kubernetes, llama-swap]
"""


@pytest.fixture
def deploy(tmp_path, cli) -> Path:
    write_split(tmp_path / "models")
    (tmp_path / "stack.yaml").write_text(LINUX, encoding="utf-8")
    res = cli("render", tmp_path / "stack.yaml")
    assert res.exit_code == 0, res.output
    return tmp_path / "deploy"


def test_weight_files_names_every_part_in_order():
    assert weight_files("models/m-00001-of-00003.gguf") == [f"models/{p}" for p in PARTS]
    assert weight_files("/abs/x-00001-of-00002.gguf") == ["/abs/x-00001-of-00002.gguf", "/abs/x-00002-of-00002.gguf"]
    # not a first part, a single part, or a plain file or folder: the one path
    for one in ("models/m-00002-of-00003.gguf", "m-00001-of-00001.gguf", "models/m.gguf", "models/qwen"):
        assert weight_files(one) == [one]


def test_systemd_installs_and_allows_every_part(deploy):
    unit = (deploy / "systemd" / "stackgen-sp-chat.service").read_text()
    assert '"-m" "/srv/llm/weights/m-00001-of-00003.gguf"' in unit  # llama.cpp is given the first part
    for p in PARTS:
        assert f"sudo install -D -m 0644 models/{p} /srv/llm/weights/{p}" in unit
    allowed = [line for line in unit.splitlines() if line.startswith("ReadOnlyPaths=")]
    assert allowed == [f'ReadOnlyPaths="/srv/llm/weights/{p}"' for p in PARTS]


def test_compose_mounts_every_part(deploy):
    compose = (deploy / "compose" / "compose.yaml").read_text()
    for p in PARTS:
        assert f"- ../../models/{p}:/models/{p}:ro" in compose
        assert (deploy / "compose" / "../../models" / p).is_file()  # each resolves from the compose folder
    assert "    - /models/m-00001-of-00003.gguf\n" in compose  # the engine is given the first part


def test_quadlet_mounts_and_installs_every_part(deploy):
    unit = (deploy / "quadlet" / "stackgen-sp-chat.container").read_text()
    volumes = [line for line in unit.splitlines() if line.startswith("Volume=")]
    assert volumes == [f"Volume=/srv/llm/weights/{p}:/models/{p}:ro,z" for p in PARTS]
    for p in PARTS:
        assert f"# Weights: install models/{p} (relative to the stack's folder) at /srv/llm/weights/{p}" in unit


def test_kubernetes_says_to_copy_every_part(deploy):
    manifest = (deploy / "kubernetes" / "chat.yaml").read_text()
    assert ("# Copy the weights into the PVC sp-chat-models as " + ", ".join(f"/models/{p}" for p in PARTS)
            + " before the pod can become ready.") in manifest
    assert "- /models/m-00001-of-00003.gguf" in manifest  # the engine is given the first part


def test_llama_swap_says_to_install_every_part(deploy):
    config = (deploy / "llama-swap" / "config.yaml").read_text()
    for p in PARTS:
        assert f"# chat: install models/{p} (relative to the stack's folder) at /srv/llm/weights/{p}" in config


def test_the_docker_api_mounts_every_part_absolutely(tmp_path):
    write_split(tmp_path / "models")
    (tmp_path / "stack.yaml").write_text(LINUX, encoding="utf-8")
    _, plan = load_and_plan(tmp_path / "stack.yaml", None)
    mount = model_mount(plan.services[0], str(tmp_path / "stack.yaml"), None)
    assert mount.container_ref == "/models/m-00001-of-00003.gguf"
    binds = [v for v in mount.volumes if v.startswith("/")]
    assert binds == [f"{tmp_path / 'models' / p}:/models/{p}:ro" for p in PARTS]


def test_launchd_copies_every_part(tmp_path):
    write_split(tmp_path / "models")
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: m\nhardware: m3-max-64gb\nworkload: dev-loop\ntargets: [launchd]\n"
                     "serve:\n  model_dir: /opt/models\nservices:\n  chat:\n    model: models/m-00001-of-00003.gguf\n"
                     "    engine: llama.cpp\n    binary: /usr/local/bin/llama-server\n")
    spec, plan = load_and_plan(stack, None)
    plist = launchd_target(plan, RenderContext("stack.yaml", model_dir=spec.serve.model_dir))[0].content
    srcs = " ".join(f"models/{p}" for p in PARTS)
    assert f"sudo cp {srcs} /opt/models/" in plist
    assert "<string>/opt/models/m-00001-of-00003.gguf</string>" in plist


def test_up_refuses_a_split_file_whose_other_parts_are_missing(tmp_path):
    write_split(tmp_path / "models")
    (tmp_path / "stack.yaml").write_text(LINUX, encoding="utf-8")
    _, plan = load_and_plan(tmp_path / "stack.yaml", None)
    assert check_models(list(plan.services)) == []
    (tmp_path / "models" / PARTS[2]).unlink()
    [problem] = check_models(list(plan.services))
    assert "part 1 of 3" in problem and PARTS[2] in problem


SETUP = """\
version: 1
name: sp
hardware: rtx-4090
workload: {concurrent_users: 1, optimize: setup}
services:
  chat:
    model: models/m-00001-of-00003.gguf
    engine: ENGINE
targets: [script]
"""


def test_the_planner_does_not_pick_ollama_for_a_split_gguf(tmp_path):
    """`ollama create` uploads only the file FROM names (ollama parser/parser.go fileDigestMap); Ollama >= 0.30
    refuses a lone first part (server/create.go mergeSplitGGUFLayers: "has 1 shards, expected 3") and v0.12.10
    stores it as a digest-named blob llama.cpp cannot find the other parts from. Was: Ollama chosen, FROM part 1."""
    write_split(tmp_path / "models")
    dense = [kv for kv in BASIC_KVS if "expert" not in kv[0]]
    (tmp_path / "models" / "whole.gguf").write_bytes(make_gguf(dense, BASIC_TENSORS)[0])
    stack = tmp_path / "stack.yaml"
    stack.write_text(SETUP.replace("ENGINE", "auto").replace("m-00001-of-00003.gguf", "whole.gguf"), encoding="utf-8")
    assert load_and_plan(stack, None)[1].services[0].engine == "ollama"  # one file: Ollama is the setup pick
    stack.write_text(SETUP.replace("ENGINE", "auto"), encoding="utf-8")
    sp = load_and_plan(stack, None)[1].services[0]
    assert sp.engine != "ollama"
    assert sp.rejected["ollama"].startswith("cannot import a split GGUF (m-00001-of-00003.gguf is the first of 3 "
                                            "parts)")
    assert "`llama-gguf-split --merge m-00001-of-00003.gguf m.gguf`" in sp.rejected["ollama"]


def test_engine_ollama_with_a_split_gguf_is_refused_at_the_service(tmp_path, cli):
    write_split(tmp_path / "models")
    stack = tmp_path / "stack.yaml"
    stack.write_text(SETUP.replace("ENGINE", "ollama"), encoding="utf-8")
    for command in ("plan", "render"):
        res = cli(command, stack)
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert f"{stack}:7:5: services.chat: engine ollama cannot serve" in res.output, res.output
        assert "split GGUF" in res.output and "llama-gguf-split --merge m-00001-of-00003.gguf m.gguf" in res.output
    assert not (tmp_path / "deploy").exists()


def test_symlinked_parts_are_found_beside_the_link_and_all_sized(tmp_path):
    """Each part a symlink into a blob store (the HF cache's snapshots/ -> blobs/<sha256>): the loader resolved the
    first link and looked for the other parts beside the blob, so it refused the model ("split.count=3 but 1 parts
    were found"); llama.cpp opens them beside the path it is given (the link), as the Docker API mounts them."""
    write_split(tmp_path / "plain")
    write_split(tmp_path / "blobs")
    (tmp_path / "models").mkdir()
    for i, name in enumerate(PARTS):
        (tmp_path / "blobs" / name).rename(tmp_path / "blobs" / f"{i:064x}")
        (tmp_path / "models" / name).symlink_to(Path("..", "blobs", f"{i:064x}"))
    (tmp_path / "stack.yaml").write_text(LINUX, encoding="utf-8")
    _, linked = load_and_plan(tmp_path / "stack.yaml", None)
    (tmp_path / "plain" / "stack.yaml").write_text(LINUX.replace("models/", "./"), encoding="utf-8")
    _, plain = load_and_plan(tmp_path / "plain" / "stack.yaml", None)
    assert linked.services[0].memory.weights_bytes == plain.services[0].memory.weights_bytes > 0
    mount = model_mount(linked.services[0], str(tmp_path / "stack.yaml"), None)
    assert [v for v in mount.volumes if v.startswith("/")] == [f"{tmp_path / 'models' / p}:/models/{p}:ro"
                                                               for p in PARTS]
