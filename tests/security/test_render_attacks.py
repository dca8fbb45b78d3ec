"""Attacks on the render side (issue 10): what a hostile committed tree or stack file, or a crash in mid-render,
could do to files on disk, and the safe outcome each must have now.

Each test reproduces one attack from the security review; before the fix it deleted, overwrote or misreported.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stackgen.render.artifact import MANIFEST, recover_tree

REPO = Path(__file__).resolve().parents[2]

STACK = """version: 1
name: demo
hardware: rtx-4090
workload: team-api
services:
  {name}:
    model: llama-3.1-8b-instruct
    port: {port}
targets: [script, systemd, compose]
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stages(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".stackgen-stage-")]


@pytest.fixture
def rendered(cli, write_stack):
    """A stack rendered once into deploy/; returns (stack file, output folder)."""
    stack = write_stack(STACK.format(name="chat", port=8080))
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    return stack, stack.parent / "deploy"


def _add_to_manifest(out: Path, *paths: str) -> None:
    data = json.loads((out / MANIFEST).read_text())
    data["files"].update({p: "0" * 64 for p in paths})
    (out / MANIFEST).write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------- item 3: manifest


def test_manifest_naming_an_absolute_or_parent_path_deletes_nothing(cli, rendered, tmp_path):
    stack, out = rendered
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    _add_to_manifest(out, str(victim), "../outside/victim.txt", "chat/../../outside/victim.txt")
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "precious"


def test_manifest_through_a_symlinked_subfolder_deletes_nothing(cli, rendered, tmp_path):
    stack, out = rendered
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("precious")
    (out / "link").symlink_to(elsewhere)
    _add_to_manifest(out, "link/victim.txt", "link")
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    assert (elsewhere / "victim.txt").read_text() == "precious"
    assert (out / "link").is_symlink()


def test_a_symlinked_output_subfolder_is_refused_not_written_through(cli, rendered, tmp_path):
    """A committed deploy/systemd -> /etc/systemd/system (here: a folder of ours) must not receive files."""
    stack, out = rendered
    target = tmp_path / "etc-systemd"
    target.mkdir()
    (target / "stackgen-demo-chat.service").write_text("someone else's unit")
    for f in (out / "systemd").iterdir():
        f.unlink()
    (out / "systemd").rmdir()
    (out / "systemd").symlink_to(target)
    stack.write_text(STACK.format(name="chat", port=9090))
    r = cli("render", stack)
    assert r.exit_code == 1
    assert "symlink" in r.output and "Traceback" not in r.output
    assert (target / "stackgen-demo-chat.service").read_text() == "someone else's unit"
    check = cli("render", "--check", stack)
    assert check.exit_code == 2 and "unsafe: systemd/stackgen-demo-chat.service" in check.output


def test_a_symlink_at_a_file_path_is_replaced_not_followed(cli, rendered, tmp_path):
    stack, out = rendered
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "chat" / "run.sh").unlink()
    (out / "chat" / "run.sh").symlink_to(victim)
    assert cli("render", stack).exit_code == 0
    assert victim.read_text() == "precious"
    assert not (out / "chat" / "run.sh").is_symlink()


# ---------------------------------------------------------------------------------------------- item 6: all-or-nothing


def test_an_unwritable_subfolder_leaves_the_old_tree_whole(cli, rendered, monkeypatch):
    """A read-only deploy/systemd (EACCES on rename there) used to leave compose and run.sh new, the unit old.
    Tests run as root, where chmod does not stop a write, so the refusal is the kernel's answer, injected."""
    stack, out = rendered
    before = snapshot(out)
    stack.write_text(STACK.format(name="chat", port=9090))
    real = os.replace

    def read_only_systemd(src, dst):
        if "/systemd/" in str(dst) or "/systemd/" in str(src).split(".stackgen-stage-")[0]:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", read_only_systemd)
    r = cli("render", stack)
    assert r.exit_code == 1 and "Permission denied" in r.output and "nothing was changed" in r.output
    assert snapshot(out) == before
    assert stages(out) == []


KILLER = """
import os, signal, sys
n, stack = int(sys.argv[1]), sys.argv[2]
real, calls = os.replace, [0]
def replace(src, dst):
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    calls[0] += 1
    real(src, dst)
os.replace = replace
sys.argv = ["stackgen", "render", stack]
from stackgen.cli import main
main()
"""


@pytest.mark.parametrize("moves_done", [0, 1, 4, 7, 9])  # 10 renames in all; 9: the manifest
def test_kill_9_in_mid_render_is_drift_and_is_rolled_back(cli, rendered, moves_done):
    """kill -9 after `moves_done` of the swap's 10 renames: --check must not say "up to date", and the next render
    first restores the previous tree (a renamed service: new files in new folders, old ones stale)."""
    stack, out = rendered
    before = snapshot(out)
    stack.write_text(STACK.format(name="chat2", port=9090))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(moves_done), str(stack)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert stages(out), "the stage with its journal stays behind"
    check = cli("render", "--check", stack)
    assert check.exit_code == 2 and "interrupted: .stackgen-stage-" in check.output
    assert recover_tree(out) and stages(out) == []
    assert snapshot(out) == before
    assert not (out / "chat2").exists()
    assert cli("render", stack).exit_code == 0
    assert cli("render", "--check", stack).exit_code == 0
    assert not (out / "chat").exists() or not any((out / "chat").iterdir())


def test_next_render_rolls_back_by_itself(cli, rendered):
    stack, out = rendered
    stack.write_text(STACK.format(name="chat", port=9090))
    proc = subprocess.run([sys.executable, "-c", KILLER, "3", str(stack)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    assert stages(out) == []
    assert cli("render", "--check", stack).exit_code == 0


def test_check_reports_a_leftover_stage_folder(cli, rendered):
    stack, out = rendered
    (out / ".stackgen-stage-abc123").mkdir()
    r = cli("render", "--check", stack)
    assert r.exit_code == 2 and "interrupted: .stackgen-stage-abc123" in r.output


def test_check_reports_generated_files_the_manifest_does_not_list(cli, rendered):
    """The old failure: the manifest was already replaced when kill -9 hit the stale-file removal, so 979 old files
    were listed nowhere and --check said "up to date"."""
    stack, out = rendered
    (out / "old").mkdir()
    (out / "old" / "run.sh").write_text("#!/bin/sh\n# Generated by stackgen 0.1.0 from stack.yaml. Do not edit\n")
    r = cli("render", "--check", stack)
    assert r.exit_code == 2 and "extra: old/run.sh" in r.output


def test_check_reports_a_manifest_that_does_not_match(cli, rendered):
    stack, out = rendered
    _add_to_manifest(out, "chat/ghost.sh")
    r = cli("render", "--check", stack)
    assert r.exit_code == 2 and f"changed: {MANIFEST}" in r.output


def test_user_files_beside_and_inside_are_kept_and_not_drift(cli, rendered):
    """Files stackgen never wrote (no header, not in the manifest) are the user's: never touched, never drift."""
    stack, out = rendered
    mine = {"README.md": "how we deploy", ".gitignore": "*.local\n", "compose/.env": "SG_KEY=x\n",
            "chat/NOTES.md": "tuning notes"}
    for rel, text in mine.items():
        (out / rel).write_text(text)
    assert cli("render", "--check", stack).exit_code == 0
    stack.write_text(STACK.format(name="chat", port=9090))
    assert cli("render", stack).exit_code == 0
    assert cli("render", "--check", stack).exit_code == 0
    assert {rel: (out / rel).read_text() for rel in mine} == mine


# ---------------------------------------------------------------------------------------------- item 7: -o


def test_output_folder_that_is_a_file_is_a_message(cli, write_stack, tmp_path):
    stack = write_stack(STACK.format(name="chat", port=8080))
    afile = tmp_path / "deploy.txt"
    afile.write_text("x")
    for args in (["-o", afile], ["-o", afile / "sub"]):
        r = cli("render", stack, *args)
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert "output folder" in r.output, r.output
    assert afile.read_text() == "x"
    r = cli("render", "--check", stack, "-o", afile)
    assert r.exit_code == 1 and "output folder" in r.output


def test_unwritable_output_folder_is_a_message(cli, write_stack):
    stack = write_stack(STACK.format(name="chat", port=8080))
    r = cli("render", stack, "-o", "/proc/stackgen-cannot-be-here")
    assert r.exit_code == 1 and "output folder" in r.output and "-o" in r.output


# ---------------------------------------------------------------------------------------------- item 5: files, `$`

sys.path.insert(0, str(REPO / "tests"))
from test_gguf import ARR, STR, U32, make_gguf  # noqa: E402
from tools.which import need  # noqa: E402
from tools.compose_v1 import compose_v1


def tiny_gguf(path: Path) -> Path:
    """A small but plannable llama GGUF (2 layers, one Q8_0 tensor)."""
    kvs = [("general.architecture", STR, "llama"), ("general.file_type", U32, 7), ("llama.block_count", U32, 2),
           ("llama.embedding_length", U32, 64), ("llama.feed_forward_length", U32, 128),
           ("llama.attention.head_count", U32, 4), ("llama.context_length", U32, 4096),
           ("tokenizer.ggml.tokens", ARR, (STR, ["a", "b"]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_gguf(kvs, [("blk.0.attn_q.weight", [64, 64], "Q8_0")])[0])
    return path




OLLAMA_STACK = """version: 1
hardware: rtx-4090
services:
  chat: {{model: llama-3.1-8b-instruct, engine: ollama, chat_template: '{template}'}}
targets: [script]
"""


def test_chat_template_outside_the_stack_folder_is_refused(cli, tmp_path):
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    project = tmp_path / "project"
    project.mkdir()
    for ref in ("../home/.ssh/id_ed25519", str(secret)):
        stack = project / "stack.yaml"
        stack.write_text(OLLAMA_STACK.format(template=ref))
        r = cli("render", stack)
        assert r.exit_code == 1, r.output
        assert "chat_template" in r.output and "outside the stack's folder" in r.output
        assert "copy the template next to stack.yaml" in r.output
        assert not (project / "deploy").exists()


def test_chat_template_symlink_leading_outside_is_refused(cli, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    project = tmp_path / "project"
    (project / "templates").mkdir(parents=True)
    (project / "templates" / "chat.tmpl").symlink_to(secret)
    stack = project / "stack.yaml"
    stack.write_text(OLLAMA_STACK.format(template="templates/chat.tmpl"))
    r = cli("render", stack)
    assert r.exit_code == 1 and "outside the stack's folder" in r.output
    assert not (project / "deploy").exists()


def test_chat_template_inside_the_stack_folder_still_works(cli, tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.tmpl").write_text("{{ .Prompt }} inside")
    stack = tmp_path / "stack.yaml"
    stack.write_text(OLLAMA_STACK.format(template="templates/chat.tmpl"))
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    assert "{{ .Prompt }} inside" in (tmp_path / "deploy" / "chat" / "Modelfile").read_text()


DOLLAR_STACK = """version: 1
hardware: cpu-server-64gb
serve: {{host: 0.0.0.0, api_key_env: SG_KEY}}
services:
  chat: {{model: '{model}', engine: llama.cpp, overrides: {{alias: '{alias}'}}}}
targets: [compose, kubernetes]
"""
EVIL_NAME = "${EVILVAR}$HOME.gguf"


def _dollar_stack(tmp_path: Path, alias: str) -> Path:
    tiny_gguf(tmp_path / "models" / EVIL_NAME)
    stack = tmp_path / "stack.yaml"
    stack.write_text(DOLLAR_STACK.format(model=f"models/{EVIL_NAME}", alias=alias))
    return stack


def test_compose_does_not_substitute_dollars_from_user_values(cli, tmp_path):
    """A model path `${EVILVAR}$HOME` and an alias `${SG_KEY}` were substituted by compose (the key in argv)."""
    stack = _dollar_stack(tmp_path, "${SG_KEY}")
    assert cli("render", stack).exit_code == 0
    path = tmp_path / "deploy" / "compose" / "compose.yaml"
    env = dict(os.environ, EVILVAR="pwned", HOME="/home/victim", SG_KEY="sk-canary-4d2f")
    proc = compose_v1(path, "config", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pwned" not in proc.stdout and "/home/victim" not in proc.stdout
    assert proc.stdout.count("sk-canary-4d2f") == 1  # the environment entry stackgen interpolates on purpose
    import yaml

    service = yaml.safe_load(proc.stdout)["services"]["chat"]
    assert service["environment"]["LLAMA_API_KEY"] == "sk-canary-4d2f"
    assert "sk-canary-4d2f" not in service["command"]
    assert service["command"][service["command"].index("--alias") + 1] in ("${SG_KEY}", "$${SG_KEY}")
    schema = subprocess.run([need("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr


def kubelet_expand(value: str, env: dict[str, str]) -> str:
    """kubernetes third_party/forked/golang/expansion.Expand: `$$` -> `$`, `$(VAR)` -> its value when defined."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(" and ")" in value[i + 2:]:
                end = value.index(")", i + 2)
                name = value[i + 2:end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
                continue
        out.append(value[i])
        i += 1
    return "".join(out)


def test_kubernetes_does_not_expand_dollar_parens_from_user_values(cli, tmp_path):
    """An alias `$(LLAMA_API_KEY)` was expanded by the kubelet from the pod's env: the key in argv."""
    kv = pytest.importorskip("kubernetes_validate")
    import yaml

    stack = _dollar_stack(tmp_path, "$(LLAMA_API_KEY)")
    assert cli("render", stack).exit_code == 0
    docs = list(yaml.safe_load_all((tmp_path / "deploy" / "kubernetes" / "chat.yaml").read_text()))
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    pod_env = {"LLAMA_API_KEY": "sk-canary-4d2f", "HOME": "/home/stackgen"}
    args = [kubelet_expand(a, pod_env) for a in container["args"]]
    assert args[args.index("--alias") + 1] == "$(LLAMA_API_KEY)"
    assert args[args.index("-m") + 1] == f"/models/{EVIL_NAME}"
    for e in container["env"]:
        if "value" in e:
            assert "$(" not in kubelet_expand(e["value"], pod_env) or "$$(" in e["value"]
    for doc in docs:
        kv.validate(doc, "1.30.0", strict=True)


def test_kubernetes_keeps_text_before_a_backslash(cli, tmp_path):
    """`-m /models/a\\b.gguf` became `-m /models/b.gguf`: a backslash was read as a Windows separator."""
    import yaml

    tiny_gguf(tmp_path / "models" / "team\\chat.gguf")
    stack = tmp_path / "stack.yaml"
    stack.write_text(DOLLAR_STACK.format(model="models/team\\chat.gguf", alias="chat"))
    assert cli("render", stack).exit_code == 0, cli("render", stack).output
    docs = list(yaml.safe_load_all((tmp_path / "deploy" / "kubernetes" / "chat.yaml").read_text()))
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-m") + 1] == "/models/team\\chat.gguf"
    compose = yaml.safe_load((tmp_path / "deploy" / "compose" / "compose.yaml").read_text())["services"]["chat"]
    assert compose["command"][compose["command"].index("-m") + 1] == "/models/team\\chat.gguf"


def test_compose_env_values_with_dollars_are_escaped_not_left_to_env_files(cli, tmp_path):
    """compose v2 interpolates env_file values, v1 does not: a value with `$` goes to `environment:` as `$$`."""
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nhardware: rtx-4090\nservices:\n  chat: {model: llama-3.1-8b-instruct, "
                     "engine: ollama, overrides: {OLLAMA_MODELS: '/srv/${EVILVAR}/models'}}\ntargets: [compose]\n")
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    env_file = (tmp_path / "deploy" / "compose" / "chat.env").read_text()
    assert "$" not in env_file
    path = tmp_path / "deploy" / "compose" / "compose.yaml"
    proc = compose_v1(path, "config", env=dict(os.environ, EVILVAR="pwned"))
    assert proc.returncode == 0, proc.stderr
    assert "pwned" not in proc.stdout and "OLLAMA_MODELS" in proc.stdout


# ---------------------------------------------------------------------------------------------- audit a2 #5

INJECTED = "llama3.2:1b\n[Service]\nExecStartPre=+/bin/sh -c 'id > /tmp/pwned'\nEnvironment=X="


def test_a_profile_model_with_a_newline_is_refused_at_validate(cli, tmp_path):
    """A catalog `ollama:` value in profiles/models.yaml with newlines wrote `[Service]` / `ExecStartPre=+...` into the
    systemd unit (validate said ok); now validate and render name the file, line, column and field."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "models.yaml").write_text(
        "team-model:\n"
        f"  ollama: {json.dumps(INJECTED)}\n"
        "  architecture: llama\n  params_b: 1.2\n  layers: 16\n  hidden_size: 2048\n  heads: 32\n  kv_heads: 8\n"
        "  vocab_size: 128256\n  context_length: 8192\n  gguf: {Q4_K_M: 807694464}\n")
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: prof\nhardware: cpu-server-64gb\n"
                     "services:\n  chat: {model: team-model, engine: ollama, port: 18178}\ntargets: [systemd]\n")
    for command in ("validate", "render"):
        r = cli(command, stack)
        assert r.exit_code == 1, r.output
        assert f"{tmp_path / 'profiles' / 'models.yaml'}:2:11: team-model.ollama: control characters" in r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "deploy").exists()


def test_a_lock_fact_with_a_newline_is_refused(cli, tmp_path):
    """The same value in stack.lock's facts of a pinned catalog model (read_lock loaded it unchecked)."""
    from dataclasses import replace

    from stackgen.models.lock import LockEntry, facts_to_json, lock_path_for, write_lock
    from stackgen.spec.profiles import load_profiles

    facts = load_profiles().models["llama-3.1-8b-instruct"]
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: lock1\nhardware: {memory_gib: 64, memory_bandwidth_gbs: 80, cpu: {cores: 16}}\n"
                     "services:\n  o: {model: llama-3.1-8b-instruct, engine: ollama, port: 18158}\n"
                     "targets: [systemd]\n")
    entry = LockEntry(facts.ref, None, {"kind": "hf"}, facts_to_json(replace(facts, ollama="llama3.1:8b")))
    write_lock(lock_path_for(stack), {entry.key: entry})
    assert cli("validate", stack).exit_code == 0  # the lock is read and pinned: a clean one passes
    entry = LockEntry(facts.ref, None, {"kind": "hf"}, facts_to_json(replace(facts, ollama=INJECTED)))
    write_lock(lock_path_for(stack), {entry.key: entry})
    for command in ("validate", "render"):
        r = cli(command, stack)
        assert r.exit_code == 1, r.output
        assert ": models[0].facts.ollama: control characters" in r.output, r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "deploy").exists()


def test_unit_comment_lines_go_through_the_unit_value_check(tmp_path):
    """Facts that reach a unit's header comments by any other way (a newline in a model's ollama name here, set on the
    plan after loading) are refused at render, not written as a directive."""
    from dataclasses import replace

    from stackgen.errors import RenderError
    from stackgen.pipeline import plan_stack
    from stackgen.render.artifact import RenderContext, render_plan

    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: c\nhardware: cpu-server-64gb\n"
                     "services:\n  chat: {model: llama-3.2-3b-instruct, engine: ollama, port: 18178}\n")
    _, plan = plan_stack(stack, None, write_lock=False, calibration=False)
    ctx = RenderContext("stack.yaml")
    assert render_plan(plan, ctx, ["systemd"])  # as loaded: fine
    sp = plan.services[0]
    bad = replace(plan, services=[replace(sp, model=replace(sp.model, ollama=INJECTED), model_ref=INJECTED)])
    with pytest.raises(RenderError, match="comment line .* contains a newline"):
        render_plan(bad, ctx, ["systemd"])


# ---------------------------------------------------------------------------------------------- audit a2 #9


def test_a_default_output_folder_symlinked_out_of_the_stack_folder_is_refused(cli, write_stack, tmp_path):
    """A committed `deploy -> ../victim_home/.config/systemd/user`: render wrote the units there, no warning."""
    stack = write_stack(STACK.format(name="chat", port=8080))
    victim = tmp_path.parent / f"{tmp_path.name}-victim" / ".config" / "systemd" / "user"
    victim.mkdir(parents=True)
    (tmp_path / "deploy").symlink_to(victim)
    for args in ((), ("--check",)):
        r = cli("render", stack, *args)
        assert r.exit_code == 1, r.output
        assert f"{tmp_path / 'deploy'}: the output folder is a symlink to {victim.resolve()}, outside the stack's folder" in r.output
        assert "Traceback" not in r.output
    assert list(victim.iterdir()) == []
    # A link inside the stack's folder, and any folder named with -o, are followed as before.
    (tmp_path / "deploy").unlink()
    (tmp_path / "build").mkdir()
    (tmp_path / "deploy").symlink_to(tmp_path / "build")
    assert cli("render", stack).exit_code == 0 and (tmp_path / "build" / MANIFEST).is_file()
    assert cli("render", stack, "-o", victim).exit_code == 0 and (victim / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------- audit a2 #7


def test_a_manifest_entry_for_a_users_file_does_not_delete_it(cli, rendered):
    """The compose `.env` holding the key, added to a committed manifest by a PR, was silently deleted by the next
    render; a listed file is removed only while it holds what stackgen wrote (the manifest's sha256)."""
    stack, out = rendered
    env = out / "compose" / ".env"
    env.write_text("SG_KEY=my-real-key\n")
    _add_to_manifest(out, "compose/.env")
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    assert env.read_text() == "SG_KEY=my-real-key\n"
    assert f"warning: kept {env}: the manifest lists it, but it changed since stackgen wrote it" in r.output
    assert "compose/.env" not in json.loads((out / MANIFEST).read_text())["files"]
    assert cli("render", stack, "--check").exit_code == 0  # kept, not stale drift


def test_stale_files_stackgen_wrote_are_still_removed_and_reported(cli, rendered):
    stack, out = rendered
    unit = next((out / "systemd").iterdir())
    edited = out / "compose" / "compose.yaml"
    edited.write_text(edited.read_text() + "# my note\n")
    stack.write_text(stack.read_text().replace("targets: [script, systemd, compose]", "targets: [script]"))
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    assert not unit.exists() and f"removed {unit} (rendered before, not by this render)" in r.output
    assert edited.is_file() and f"warning: kept {edited}" in r.output


# ---------------------------------------------------------------------------------------------- audit a2 #13


def test_ollama_env_is_shell_quoted_so_sourcing_it_runs_nothing(cli, tmp_path):
    """`OLLAMA_MODELS: "/tmp/m; touch .../PWNED #"` was written bare into ollama.env; `set -a; . ./ollama.env` ran it."""
    marker = tmp_path / "PWNED"
    value = f"/tmp/m; touch {marker} #$(touch {marker}) 'q\" $HOME"
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: o1\nhardware: cpu-server-64gb\nservices:\n"
                     f"  oll:\n    model: llama-3.2-3b-instruct\n    engine: ollama\n    port: 18152\n"
                     f"    overrides:\n      OLLAMA_MODELS: {json.dumps(value)}\ntargets: [script]\n")
    r = cli("render", stack)
    assert r.exit_code == 0, r.output
    env = tmp_path / "deploy" / "oll" / "ollama.env"
    out = subprocess.run(["sh", "-c", 'set -a; . "$1"; printf %s "$OLLAMA_MODELS"', "sh", str(env)],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    assert out.stdout == value and not marker.exists()


# ---------------------------------------------------------------------------------------------- audit a2 #14


@pytest.mark.parametrize("image", ["evil.example/x:${SG_KEY} %h $HOME", "x:%h", "x:$HOME", "x --privileged"])
def test_quadlet_refuses_an_image_systemd_would_expand(cli, tmp_path, image):
    """`Image=evil.example/x:${SG_KEY} %h $HOME` went into the unit as is (compose escaped it to `$${SG_KEY}`)."""
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: img1\nhardware: cpu-server-64gb\nserve: {api_key_env: SG_KEY}\nservices:\n"
                     f"  gemma: {{model: gemma-3-270m, engine: llama.cpp, port: 18163, image: {json.dumps(image)}}}\n"
                     "targets: [quadlet]\n")
    r = cli("render", stack)
    assert r.exit_code == 1, r.output
    assert f"services.gemma.image: {image!r} is not an image reference the quadlet target can write" in r.output
    assert not (tmp_path / "deploy").exists()
    stack.write_text(stack.read_text().replace(json.dumps(image), "ghcr.io/ggml-org/llama.cpp:server-b6000"))
    assert cli("render", stack).exit_code == 0
    assert "Image=ghcr.io/ggml-org/llama.cpp:server-b6000\n" in next((tmp_path / "deploy" / "quadlet").iterdir()).read_text()


# ---------------------------------------------------------------------------------------------- audit a2 #15


def test_the_kubernetes_key_command_keeps_the_key_out_of_argv(cli, tmp_path):
    """The header said `kubectl create secret ... --from-literal=api-key="$SG_KEY"`: the key in kubectl's argv (ps,
    /proc). Run the command the header gives against a kubectl that records its argv and stdin."""
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: t1\nhardware: cpu-server-64gb\nserve: {api_key_env: SG_KEY}\nservices:\n"
                     "  gemma: {model: gemma-3-270m, engine: llama.cpp, port: 18163}\ntargets: [kubernetes]\n")
    assert cli("render", stack).exit_code == 0
    text = (tmp_path / "deploy" / "kubernetes" / "gemma.yaml").read_text()
    command = re.search(r"^# API key: (.*) \(the value is never written here\)\.$", text, re.M).group(1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\ncat "${{5#--from-file=api-key=}}" '
                                     f"> {tmp_path}/stdin\n")
    (bin_dir / "kubectl").chmod(0o755)
    r = subprocess.run(["sh", "-c", command], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SG_KEY": "k-7c1e secret"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    argv = (tmp_path / "argv").read_text()
    assert "k-7c1e" not in argv and "--from-file=api-key=/dev/stdin" in argv.splitlines()
    assert (tmp_path / "stdin").read_text() == "k-7c1e secret"
