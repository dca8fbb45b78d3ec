"""Committed artifacts never depend on where the checkout lives or on the cwd `render` ran from (issue 11.2):
the same stack rendered from three cwds and in two clones at different paths gives byte-identical trees, and
`render --check` passes in each."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf

STACK = """\
version: 1
name: port
hardware: cpu-server-64gb
serve:
  model_dir: /srv/llm/weights
services:
  chat:
    model: models/tiny.gguf
    engine: llama.cpp
  local:
    model: ./models/../models/tiny.gguf
    engine: ollama
targets: [script, systemd, compose, kubernetes]
"""


def make_project(root: Path) -> Path:
    """A repo holding the stack in a sub-folder (a/qs/stack.yaml) and its model in a/qs/models/."""
    stack_dir = root / "a" / "qs"
    (stack_dir / "models").mkdir(parents=True)
    dense = [kv for kv in BASIC_KVS if "expert" not in kv[0]]
    (stack_dir / "models" / "tiny.gguf").write_bytes(make_gguf(dense, BASIC_TENSORS)[0])
    (stack_dir / "stack.yaml").write_text(STACK, encoding="utf-8")
    return stack_dir / "stack.yaml"


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def render_from(cli, monkeypatch, cwd: Path, stack: Path, *extra: str):
    monkeypatch.chdir(cwd)
    return cli("render", os.path.relpath(stack, cwd), *extra)


@pytest.fixture
def clones(tmp_path) -> tuple[Path, Path]:
    return make_project(tmp_path / "first"), make_project(tmp_path / "elsewhere" / "deeper" / "second")


def test_same_bytes_from_three_cwds_and_two_clones(cli, monkeypatch, clones):
    trees = []
    for stack in clones:
        stack_dir, root = stack.parent, stack.parents[2]
        for cwd in (stack_dir, root, stack_dir / "models"):
            shutil.rmtree(stack_dir / "deploy", ignore_errors=True)
            res = render_from(cli, monkeypatch, cwd, stack)
            assert res.exit_code == 0, res.output
            trees.append(tree(stack_dir / "deploy"))
            for check_cwd in (stack_dir, root, stack_dir / "models"):
                res = render_from(cli, monkeypatch, check_cwd, stack, "--check")
                assert res.exit_code == 0, f"--check from {check_cwd}: {res.output}"
    assert len(trees) == 6 and all(t == trees[0] for t in trees[1:])
    for stack in clones:  # no trace of either checkout's location in any file
        for path, (data, _) in trees[0].items():
            assert str(stack.parents[2]).encode() not in data, path
            assert b"/tmp/" not in data, path


def test_the_committed_tree_of_one_clone_checks_clean_in_the_other(cli, monkeypatch, clones):
    first, second = clones
    assert render_from(cli, monkeypatch, first.parent, first).exit_code == 0
    shutil.copytree(first.parent / "deploy", second.parent / "deploy")
    res = render_from(cli, monkeypatch, second.parents[2], second, "--check")
    assert res.exit_code == 0, res.output


def test_each_artifact_names_the_model_from_its_own_folder(cli, monkeypatch, clones):
    stack = clones[0]
    assert render_from(cli, monkeypatch, stack.parents[2], stack).exit_code == 0
    deploy = stack.parent / "deploy"
    run_sh = (deploy / "chat" / "run.sh").read_text()
    assert 'cd "$here"/../..\n' in run_sh and "-m models/tiny.gguf" in run_sh
    compose = (deploy / "compose" / "compose.yaml").read_text()
    assert "- ../../models/tiny.gguf:/models/tiny.gguf:ro" in compose  # not ../../../../ (issue 11.2)
    assert "FROM ../../models/tiny.gguf\n" in (deploy / "local" / "Modelfile").read_text()
    unit = (deploy / "systemd" / "stackgen-port-chat.service").read_text()
    assert '"-m" "/srv/llm/weights/tiny.gguf"' in unit
    assert "sudo install -D -m 0644 models/tiny.gguf /srv/llm/weights/tiny.gguf" in unit
    for rel in ("models/tiny.gguf", "../../models/tiny.gguf"):  # each relative path resolves from its folder
        base = deploy / "compose" if rel.startswith("..") else stack.parent
        assert (base / rel).is_file()


def test_a_relative_output_folder_elsewhere_still_points_at_the_model(cli, monkeypatch, clones):
    stack = clones[0]
    root = stack.parents[2]
    res = render_from(cli, monkeypatch, root, stack, "-o", "out/deploy")
    assert res.exit_code == 0, res.output
    compose = (root / "out" / "deploy" / "compose" / "compose.yaml").read_text()
    assert "- ../../../a/qs/models/tiny.gguf:/models/tiny.gguf:ro" in compose
    assert (root / "out/deploy/compose" / "../../../a/qs/models/tiny.gguf").is_file()
    assert 'cd "$here"/../../../a/qs\n' in (root / "out" / "deploy" / "chat" / "run.sh").read_text()


def test_model_dir_must_be_an_absolute_plain_path(cli, write_stack):
    for bad in ("weights", "/srv/../etc", "'/srv/my models'"):
        path = write_stack(STACK.replace("/srv/llm/weights", bad))
        res = cli("validate", path)
        assert res.exit_code == 1 and "serve.model_dir" in res.output, (bad, res.output)


def test_render_dash_o_dot_from_inside_the_output_folder(cli, monkeypatch, clones):
    """`cd deploy; stackgen render ../stack.yaml -o .` renders and checks the bytes a render from the stack's folder
    does (audit a4 #2: it named the stack '../stack.yaml' in the manifest and headers, and re-rendering in a
    committed folder was an internal error, ValueError from Path('.').with_name)."""
    stack = clones[0]
    assert render_from(cli, monkeypatch, stack.parent, stack).exit_code == 0
    committed = tree(stack.parent / "deploy")
    monkeypatch.chdir(stack.parent / "deploy")
    for args in (("--check",), ()):
        res = cli("render", "../stack.yaml", "-o", ".", *args)
        assert res.exit_code == 0, res.output
    assert tree(stack.parent / "deploy") == committed
    # a new folder rendered from inside it names the same stack as one rendered from above
    out = stack.parent / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    assert cli("render", "../stack.yaml", "-o", ".").exit_code == 0
    assert tree(out) == committed
    res = render_from(cli, monkeypatch, stack.parents[2], stack, "-o", os.path.relpath(out, stack.parents[2]),
                      "--check")
    assert res.exit_code == 0, res.output


def test_another_stack_in_dash_o_dot_is_refused_with_paths_from_the_cwd(cli, monkeypatch, clones):
    stack = clones[0]
    assert render_from(cli, monkeypatch, stack.parent, stack).exit_code == 0
    other = stack.with_name("other.yaml")
    other.write_text(stack.read_text(encoding="utf-8").replace("name: port", "name: other"), encoding="utf-8")
    monkeypatch.chdir(stack.parent / "deploy")
    res = cli("render", "../other.yaml", "-o", ".", "--check")
    assert res.exit_code == 1
    assert ("holds the artifacts of another stack, ../stack.yaml" in res.output
            and "rendering ../other.yaml here" in res.output and "`-o ../deploy-other`" in res.output), res.output


SYMLINK_STACK = """\
version: 1
name: sym
hardware: cpu-server-64gb
workload: {concurrent_users: 1, context_tokens: 2048}
services:
  chat: {model: models/gemma.gguf, engine: llama.cpp, port: 19503}
targets: [script, systemd, compose, kubernetes, quadlet, llama-swap]
"""
BLOB = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_a_symlinked_model_keeps_the_name_the_stack_wrote(cli, monkeypatch, tmp_path):
    """Audit F1: the loader resolved symlinks, so `models/gemma.gguf` -> an HF cache's blobs/<sha256> named the model
    after the blob: kubernetes ran `-m /models/<sha256>` (every other target `gemma.gguf`), and llama-swap's name and
    the systemd/quadlet Description said <sha256>; a teammate whose symlink points at a named file got another tree
    (`render --check` drift). Now a symlinked model renders the same bytes as a plain file of that name."""
    dense = [kv for kv in BASIC_KVS if "expert" not in kv[0]]
    weights = make_gguf(dense, BASIC_TENSORS)[0]
    plain, linked = tmp_path / "plain", tmp_path / "linked"
    for stack_dir in (plain, linked):
        (stack_dir / "models").mkdir(parents=True)
        (stack_dir / "stack.yaml").write_text(SYMLINK_STACK, encoding="utf-8")
    (plain / "models" / "gemma.gguf").write_bytes(weights)
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / BLOB).write_bytes(weights)
    (linked / "models" / "gemma.gguf").symlink_to(Path("..", "..", "blobs", BLOB))
    trees = []
    for stack_dir in (plain, linked):
        res = render_from(cli, monkeypatch, stack_dir, stack_dir / "stack.yaml")
        assert res.exit_code == 0, res.output
        trees.append(tree(stack_dir / "deploy"))
    assert trees[0] == trees[1]
    assert not [p for p, (data, _) in trees[1].items() if BLOB.encode() in data]
    chat = trees[1]["kubernetes/chat.yaml"][0].decode()
    assert "- /models/gemma.gguf\n" in chat and "as /models/gemma.gguf" in chat
    assert "serving gemma" in trees[1]["systemd/stackgen-sym-chat.service"][0].decode()
    shutil.rmtree(linked / "deploy")
    shutil.copytree(plain / "deploy", linked / "deploy")  # a teammate's committed tree checks clean here
    assert render_from(cli, monkeypatch, linked, linked / "stack.yaml", "--check").exit_code == 0
