"""Attacks on the launcher side (`up`/`down`/`status`/`logs` and the `.stackgen/` state folder), issue 10 items 2,
5 and 7. Each test plays the attack and asserts the safe outcome. Where the engine matters (a SIGSTOP'd server, a
server killed under `logs -f`) it is the real llama-server (tests/integration fixtures); elsewhere a tiny fake
engine keeps the test fast. Victims are real unrelated processes (`sleep`) that must survive."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from fakes.openai_server import write_engine
from stackgen.run.lifecycle import down, logs, status

from stackgen.run.results import UpOptions

from stackgen.run.up import up
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack
from stackgen.run.state import StateDir

REPO = Path(__file__).resolve().parents[2]

# The real-engine fixtures of tests/integration (llama_server, gguf_path, free_port, ...), loaded under a name of
# their own so this folder needs no conftest.
_spec = importlib.util.spec_from_file_location("_stackgen_integration_fixtures", REPO / "tests/integration/conftest.py")
_fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fx)
engines_env, llama_server, gguf_path, free_port = _fx.engines_env, _fx.llama_server, _fx.gguf_path, _fx.free_port
stack_cleanup, pid_cleanup, wait_gone, run_stackgen = _fx.stack_cleanup, _fx.pid_cleanup, _fx.wait_gone, _fx.run_stackgen

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_stack(folder: Path, name: str = "stack.yaml", port: int | None = None) -> Path:
    engine = folder / "fake-llama-server"
    if not engine.exists():  # ready at once; every GET path is the health page (500 while FAKE_SICK_FILE exists)
        write_engine(engine, load_s=0.0, health_any_path=True)
    path = folder / name
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: {Path(name).stem}
        hardware: cpu-laptop-16gb
        workload: {{concurrent_users: 1, context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}}
        services:
          chat:
            model: gemma-3-270m
            engine: llama.cpp
            binary: {engine}
            port: {port or _free_port()}
        """), encoding="utf-8")
    return path


def _real_stack(folder: Path, llama_server: Path, gguf: Path, port: int) -> Path:
    path = folder / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: sec-llama
        hardware: detect
        workload: {{concurrent_users: 1, context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}}
        services:
          gemma:
            model: {gguf}
            engine: llama.cpp
            binary: {llama_server}
            port: {port}
        """), encoding="utf-8")
    return path


def _plan(path: Path):
    return resolve(load_stack(path), None)


@pytest.fixture
def fake(tmp_path):
    """A fake-engine stack; everything it started is stopped at the end."""
    made: list[Path] = []

    def make(name: str = "stack.yaml") -> Path:
        path = _fake_stack(tmp_path, name)
        made.append(path)
        return path

    yield make
    for path in made:
        try:
            for st in StateDir(path).load().services.values():
                if st.service_id:  # only what stackgen started (never a victim named by a test)
                    down(path, grace_s=1)
                    break
        except Exception:  # noqa: BLE001 - cleanup
            pass


@pytest.fixture
def victim():
    """A real unrelated process (`sleep`, its own process group) that no stackgen command may touch."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "300"], start_new_session=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _write_state(path: Path, services: dict) -> None:
    sd = StateDir(path)
    sd.ensure()
    sd.state_file.write_text(json.dumps({"version": 2, "stack": "x", "file": str(sd.stack_file),
                                         "services": services}), encoding="utf-8")


def _entry(pid: int, **extra) -> dict:
    p = psutil.Process(pid)
    return {"name": "chat", "engine": "llama.cpp", "kind": "process", "host": "127.0.0.1", "port": 18080,
            "config_hash": "x", "started_at": p.create_time(), "pid": pid, "pgid": os.getpgid(pid),
            "create_time": p.create_time(), "argv": ["/usr/bin/llama-server", "--port", "18080"], **extra}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stackgen", *map(str, args)], cwd=str(REPO), capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


# ------------------------------------------------------------------------------------------ item 2: foreign pids


@pytest.mark.parametrize("forge", ["pid-and-times", "with-exe-and-marker-field"])
def test_down_spares_an_unrelated_process_named_as_the_supervisor(tmp_path, victim, forge):
    """state.json names a `sleep` as a service's supervisor (exact start time and ticks; even its exe): it has no
    supervisor marker in its environment, so neither `down` nor `up` signals it."""
    v, engine = victim(), victim()
    path = _fake_stack(tmp_path)
    p = psutil.Process(v.pid)
    sup = {"sup_pid": v.pid, "sup_create_time": p.create_time(), "sup_id": "1" * 32,
           "sup_start_ticks": int(open(f"/proc/{v.pid}/stat").read().rsplit(")", 1)[1].split()[19])}
    if forge == "with-exe-and-marker-field":
        sup["sup_exe"] = p.exe()
    _write_state(path, {"chat": _entry(engine.pid, service_id="2" * 32, **sup)})
    r = _cli("down", path)
    assert r.returncode == 0, r.stderr
    assert "is not the process stackgen started for the supervisor of service chat" in r.stderr, r.stderr
    time.sleep(0.3)
    assert _alive(v.pid) and _alive(engine.pid)
    assert StateDir(path).load().services == {}


@pytest.mark.parametrize("forge", ["pid-and-create-time", "with-exe-and-marker-field", "legacy-same-argv-name"])
def test_down_spares_an_unrelated_process_named_in_the_state(tmp_path, victim, forge):
    """state.json names a `sleep` by pid/pgid with its exact create time (PID reuse, or a hand-edited file)."""
    v = victim()
    path = _fake_stack(tmp_path)
    extra = {}
    if forge == "with-exe-and-marker-field":  # even its exe and start ticks copied: no marker in its environment
        extra = {"exe": psutil.Process(v.pid).exe(), "service_id": "0" * 32}
    if forge == "legacy-same-argv-name":  # an old-format entry whose argv names the same program
        extra = {"argv": ["sleep", "600"]}
    _write_state(path, {"chat": _entry(v.pid, **extra)})
    r = _cli("down", path)
    time.sleep(0.3)
    assert _alive(v.pid), "down killed an unrelated process"
    assert r.returncode == 0, r.stderr
    assert f"pid {v.pid} is not the process stackgen started" in r.stderr and "left it running" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert StateDir(path).load().services == {}  # the stale entry is forgotten


def test_up_spares_an_unrelated_process_named_in_the_state(tmp_path, victim, fake):
    """`up` stops a recorded service whose config changed: with the entry naming a stranger, it must not."""
    v = victim()
    path = fake()
    _write_state(path, {"chat": _entry(v.pid)})
    res = up(_plan(path), UpOptions(timeout_s=20, grace_s=1))
    assert _alive(v.pid)
    assert res.services[0].action == "restarted"
    assert any(f"pid {v.pid} is not the process stackgen started" in n for n in res.notes), res.notes
    assert StateDir(path).load().services["chat"].pid != v.pid


def test_down_never_signals_a_recorded_group_that_is_not_the_services(tmp_path, victim, fake):
    """The real service's pid with a hand-edited pgid naming another process group: killpg must not reach it."""
    v = victim()
    path = fake()
    up(_plan(path), UpOptions(timeout_s=20))
    state = json.loads(StateDir(path).state_file.read_text())
    pid = state["services"]["chat"]["pid"]
    state["services"]["chat"]["pgid"] = v.pid
    StateDir(path).state_file.write_text(json.dumps(state))
    stopped = down(path, grace_s=2)
    assert stopped and not _alive(pid)
    assert _alive(v.pid), "down signalled the process group named in the state file"


def test_status_says_the_pid_is_someone_elses(tmp_path, victim):
    v = victim()
    path = _fake_stack(tmp_path)
    _write_state(path, {"chat": _entry(v.pid, create_time=psutil.Process(v.pid).create_time() - 3)})
    rows = status(path)
    assert rows[0].state == "crashed" and f"pid {v.pid} is not the process stackgen started" in rows[0].detail
    assert _alive(v.pid)


# ------------------------------------------------------------------------------------- item 7: damaged state


@pytest.mark.parametrize("content", [
    "[]", "[1, 2]", '"abc"', '{"services": []}', '{"services": {"chat": 5}}',
    "PID:-1", "PID:\"abc\"", "PID:0", "PID:true", "PGID:-1", "NAME:../../etc",
])
@pytest.mark.parametrize("command", ["down", "status", "logs", "up"])
def test_damaged_state_file_gives_a_message(tmp_path, victim, content, command):
    v = victim()
    path = _fake_stack(tmp_path)
    if content.startswith(("PID:", "PGID:", "NAME:")):
        key, value = content.split(":", 1)
        entry = _entry(v.pid)
        name = "chat"
        if key == "NAME":
            name = value
            entry["name"] = value
        else:
            entry[key.lower()] = json.loads(value)
        content = json.dumps({"version": 2, "file": str(path.resolve()), "services": {name: entry}})
    StateDir(path).ensure()
    StateDir(path).state_file.write_text(content)
    r = _cli(command, path, *(["--timeout", "5", "--force"] if command == "up" else []))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert "state file is damaged or was edited by hand" in r.stderr and "delete" in r.stderr, r.stderr
    assert _alive(v.pid)


# --------------------------------------------------------------------------------------- item 5: the lock


@pytest.mark.parametrize("command", ["up", "down"])
def test_lock_symlink_is_not_followed(tmp_path, command):
    path = _fake_stack(tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    sd = StateDir(path)
    sd.ensure()
    sd.lock_file.symlink_to(precious)
    r = _cli(command, path, *(["--timeout", "5", "--force"] if command == "up" else []))
    assert precious.read_text() == "keep me\n", "the lock symlink's target was truncated"
    assert r.returncode == 1 and "is a symbolic link" in r.stderr and "Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- item 5: one state per stack file


def test_two_stack_files_in_one_folder_keep_separate_state(tmp_path, fake):
    a, b = fake("a.yaml"), fake("b.yaml")
    up(_plan(a), UpOptions(timeout_s=20))
    pid_a = StateDir(a).load().services["chat"].pid
    res = up(_plan(b), UpOptions(timeout_s=20))
    assert res.stopped == [] and [o.action for o in res.services] == ["started"]
    assert _alive(pid_a), "`up b.yaml` stopped a.yaml's service"
    pid_b = StateDir(b).load().services["chat"].pid
    assert down(b, grace_s=1) and not _alive(pid_b)
    assert _alive(pid_a), "`down b.yaml` stopped a.yaml's service"
    assert [r.state for r in status(a)] == ["running"] and status(b) == []
    assert StateDir(a).state_file != StateDir(b).state_file


def test_old_shared_state_file_is_read_by_its_own_stack_only(tmp_path, fake):
    """A `.stackgen/state.json` from before per-file state: `down` of its stack stops it, another stack's not."""
    a, b = fake("a.yaml"), fake("b.yaml")
    up(_plan(a), UpOptions(timeout_s=20))
    sd = StateDir(a)
    pid = sd.load().services["chat"].pid
    data = json.loads(sd.state_file.read_text())
    data["version"] = 1
    sd.legacy_state_file.write_text(json.dumps(data))
    sd.state_file.unlink()
    assert down(b, grace_s=1) == [] and _alive(pid)
    assert [r.state for r in status(a)] == ["running"]
    assert down(a, grace_s=1) and not _alive(pid)
    assert not sd.legacy_state_file.exists()  # migrated into .stackgen/stacks/a.yaml/ and then emptied


# ------------------------------------------------------------------------ item 7: logs/status read only .stackgen/


def test_logs_and_status_do_not_read_a_log_path_outside_the_state_folder(tmp_path, victim):
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-SECRET-LINE\n")
    v = victim()
    path = _fake_stack(tmp_path)
    _write_state(path, {"chat": _entry(v.pid, log=str(secret), create_time=0.5)})
    out = [ln for _, ln in logs(path, "chat")]
    assert not any("CANARY" in ln for ln in out), out
    assert any("not inside" in ln for ln in out), out
    rows = status(path)
    assert "CANARY" not in rows[0].detail
    r = _cli("logs", path)
    assert "CANARY" not in r.stdout + r.stderr


def test_logs_does_not_follow_a_planted_symlink_or_a_path_service_name(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-SECRET-LINE\n")
    path = _fake_stack(tmp_path)
    sd = StateDir(path)
    sd.ensure()
    sd.log_path("chat").symlink_to(secret)
    r = _cli("logs", path, "chat")
    assert "CANARY" not in r.stdout + r.stderr
    rel = os.path.relpath(secret, sd.logs_dir)[: -len(".txt")]
    secret.with_suffix(".log").write_text("CANARY-SECRET-LINE\n")
    r = _cli("logs", path, rel)
    assert "CANARY" not in r.stdout + r.stderr
    assert r.returncode == 1 and "not a service name" in r.stderr and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------- item 7: `up` re-checks kept services


def test_up_restarts_an_unchanged_service_that_stopped_answering(tmp_path, fake, monkeypatch):
    sick = tmp_path / "sick"
    monkeypatch.setenv("FAKE_SICK_FILE", str(sick))
    path = fake()
    up(_plan(path), UpOptions(timeout_s=20))
    pid = StateDir(path).load().services["chat"].pid
    sick.touch()  # the engine now answers /health with 500
    time.sleep(0.2)
    assert status(path)[0].state == "unhealthy"
    monkeypatch.setenv("FAKE_SICK_FILE", str(tmp_path / "healthy-now"))  # the new process reads this one
    res = up(_plan(path), UpOptions(timeout_s=20, grace_s=1))
    o = res.services[0]
    assert o.action == "restarted" and "health check" in o.reason, o
    assert not _alive(pid) and StateDir(path).load().services["chat"].pid != pid


def test_up_restarts_a_sigstopped_llama_server(tmp_path, llama_server, gguf_path, free_port, stack_cleanup,
                                               wait_gone, run_stackgen):
    path = _real_stack(tmp_path, llama_server, gguf_path, free_port())
    stack_cleanup.append(path)
    r = run_stackgen("up", path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    pid = StateDir(path).load().services["gemma"].pid
    os.kill(pid, signal.SIGSTOP)
    r = run_stackgen("status", path)
    assert r.returncode == 1 and "unhealthy" in r.stdout and "SIGSTOP" in r.stdout, r.stdout
    t0 = time.monotonic()
    r = run_stackgen("up", path, "--grace", "5", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gemma: restarted" in r.stdout and "was stopped (SIGSTOP)" in r.stdout, r.stdout
    assert "unchanged" not in r.stdout
    assert wait_gone(pid, 5), "the stopped llama-server was left behind"
    new = StateDir(path).load().services["gemma"].pid
    assert new != pid and _alive(new)
    assert time.monotonic() - t0 < 120  # SIGCONT after SIGTERM: no waiting out the grace period on a stopped one
    r = run_stackgen("status", path)
    assert r.returncode == 0 and "running" in r.stdout, r.stdout


# ------------------------------------------------------------------------ item 7: `logs -f` ends with the engine


def test_logs_follow_ends_when_llama_server_is_killed(tmp_path, llama_server, gguf_path, free_port, stack_cleanup,
                                                     pid_cleanup, wait_gone, run_stackgen):
    path = _real_stack(tmp_path, llama_server, gguf_path, free_port())
    stack_cleanup.append(path)
    r = run_stackgen("up", path, "--restart", "no", timeout=300)  # with on-failure, `logs -f` follows the restart
    assert r.returncode == 0, r.stdout + r.stderr
    pid = StateDir(path).load().services["gemma"].pid
    follower = subprocess.Popen([sys.executable, "-m", "stackgen", "logs", "-f", str(path), "gemma"], cwd=str(REPO),
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    pid_cleanup.append(follower.pid)
    time.sleep(2)
    assert follower.poll() is None, "logs -f ended while the service runs"
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 5)
    try:
        out, err = follower.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        follower.kill()
        pytest.fail("`logs -f` kept following a dead llama-server")
    assert follower.returncode == 0, err
    assert "[stackgen] gemma ended: pid" in out, out[-2000:]
    assert "Traceback" not in err


def test_logs_follow_reports_the_exit_status_it_can_see(tmp_path, fake):
    """The exact signal is reported (the engine's supervisor is its parent and records it)."""
    from stackgen.run.supervise import RestartPolicy

    path = fake()
    up(_plan(path), UpOptions(timeout_s=20, policy=RestartPolicy(mode="no")))
    pid = StateDir(path).load().services["chat"].pid
    it = logs(path, "chat", follow=True, lines=5, max_seconds=30)
    next(it)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    rest = list(it)
    assert time.monotonic() - t0 < 10
    assert rest and rest[-1][1].startswith(f"[stackgen] chat ended: pid {pid} killed by signal SIGKILL at "), rest
    assert "most likely out of memory (the kernel's OOM killer) or killed by another process" in rest[-1][1]


# ------------------------------------------------------------------ item 2: containers named in the state file


class _FakeContainer:
    def __init__(self, name: str, labels: dict):
        self.name, self.labels, self.status, self.attrs, self.calls = name, labels, "running", {}, []

    def stop(self, timeout=None):
        self.calls.append("stop")

    def remove(self, force=False):
        self.calls.append("remove")


def test_down_spares_a_container_that_is_not_the_services(tmp_path, monkeypatch):
    """A hand-edited container_id naming someone else's container: `down` must neither stop nor remove it."""
    from types import SimpleNamespace

    from stackgen.run import lifecycle, native

    path = _fake_stack(tmp_path)
    other = _FakeContainer("their-db", {"com.example": "theirs"})
    ours = _FakeContainer("stackgen-x-chat", {"dev.stackgen.stack-file": str(path.resolve()),
                                              "dev.stackgen.service": "chat"})
    table = {"their-db-id": other, "ours-id": ours}
    fake_client = SimpleNamespace(containers=SimpleNamespace(get=lambda ident: table[ident],
                                                             list=lambda **kw: []))
    entry = {"name": "chat", "engine": "llama.cpp", "kind": "container", "host": "127.0.0.1", "port": 18080,
             "config_hash": "x", "started_at": time.time(), "container_id": "their-db-id"}
    _write_state(path, {"chat": entry})
    real = native._runner_for

    def runner_for(kind, stack_file, stack_name=""):
        r = real(kind, stack_file, stack_name)
        r._client = fake_client
        return r

    import stackgen.run.containers as containers

    monkeypatch.setattr(lifecycle, "_runner_for", runner_for)  # where down() looks it up
    monkeypatch.setattr(containers, "remove_labelled", lambda *a, **k: [])
    notes: list[str] = []
    assert down(path, grace_s=1, notes=notes) == []
    assert other.calls == [] and "is not the one stackgen started" in notes[0], notes
    _write_state(path, {"chat": {**entry, "container_id": "ours-id"}})
    assert down(path, grace_s=1) and ours.calls == ["stop", "remove"]


# A .venv planted above the stack (audit a2 #2): another user's /tmp/.venv was run by doctor/up/run.sh and got the key.

def _planted_venv_project(tmp_path: Path) -> tuple[Path, Path, Path]:
    """shared/.venv/bin/llama-server planted above shared/alice/proj/stack.yaml; returns (shared, stack, run.sh)."""
    from stackgen.commands.render import render_artifacts
    from stackgen.render.artifact import write_tree

    shared = tmp_path / "shared"
    stack = shared / "alice" / "proj" / "stack.yaml"
    stack.parent.mkdir(parents=True)
    stack.write_text("version: 1\nname: proj\nhardware: cpu-laptop-16gb\nserve: {api_key_env: SG_KEY}\n"
                     "services:\n  gemma: {model: gemma-3-270m, engine: llama.cpp}\n")
    write_tree(stack.parent / "deploy", render_artifacts(stack, stack.parent / "deploy", None))
    planted = shared / ".venv" / "bin" / "llama-server"
    planted.parent.mkdir(parents=True)
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o755)
    return shared, stack, stack.parent / "deploy" / "gemma" / "run.sh"


def _which(stack: Path, run_sh: Path) -> tuple[str | None, str | None]:
    from stackgen.host.binaries import find_or_none

    path = os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))
    proc = subprocess.run(["sh", str(run_sh), "--which"], env={"PATH": path}, capture_output=True, text=True)
    return find_or_none("llama.cpp", None, stack.parent, path=path), (proc.stdout.strip() or None)


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o775])
def test_a_venv_planted_in_a_folder_others_can_write_is_not_run(tmp_path, mode):
    """`/tmp` (1777), a world-writable or a group-writable shared folder above the stack: its .venv is not found by
    `up`/`doctor` (binaries.find) nor by run.sh, which now say llama-server cannot be found."""
    if any(os.access(os.path.join(p, "llama-server"), os.X_OK) for p in ("/usr/bin", "/bin")):
        pytest.skip("llama-server in /usr/bin or /bin")
    shared, stack, run_sh = _planted_venv_project(tmp_path)
    assert _which(stack, run_sh) == (str(shared / ".venv/bin/llama-server"),) * 2  # an owner-only folder: found
    if mode & 0o020 and not mode & 0o002:  # a shared group: one that is not the user's own private group
        if os.getuid() != 0:
            pytest.skip("chgrp to a group of others needs root")
        os.chown(shared, -1, 65534)
    shared.chmod(mode)
    assert _which(stack, run_sh) == (None, None)


def test_a_folder_group_writable_for_the_users_private_group_is_still_walked(tmp_path):
    """User Private Groups (umask 002): a project folder group-writable for the user's own group, named as the user,
    is writable by no one else; its .venv is still found, by up and run.sh alike."""
    from stackgen.host.binaries import private_group

    if not private_group():
        pytest.skip("this user's primary group is not a private group")
    if any(os.access(os.path.join(p, "llama-server"), os.X_OK) for p in ("/usr/bin", "/bin")):
        pytest.skip("llama-server in /usr/bin or /bin")
    shared, stack, run_sh = _planted_venv_project(tmp_path)
    os.chown(shared, -1, os.getgid())
    shared.chmod(0o775)
    assert _which(stack, run_sh) == (str(shared / ".venv/bin/llama-server"),) * 2


def test_a_venv_owned_by_another_user_is_not_run(tmp_path):
    if os.getuid() != 0:
        pytest.skip("chown needs root")
    if any(os.access(os.path.join(p, "llama-server"), os.X_OK) for p in ("/usr/bin", "/bin")):
        pytest.skip("llama-server in /usr/bin or /bin")
    shared, stack, run_sh = _planted_venv_project(tmp_path)
    os.chown(shared / ".venv", 65534, 65534)
    assert _which(stack, run_sh) == (None, None)
    os.chown(shared / ".venv", 0, 0)
    os.chown(shared, 65534, 65534)  # the folder walked through, not the .venv, belongs to someone else
    assert _which(stack, run_sh) == (None, None)


# Fixed-name temp files written through planted symlinks (audit a2 #8): `.stackgen/` comes from a clone (git keeps
# symlinks) or a shared folder; each write now goes through state.write_new (mkstemp + rename).

def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious user data\n")
    return victim


def test_the_fleet_balancer_config_is_not_written_through_a_planted_tmp_symlink(tmp_path):
    from stackgen.run import fleet

    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: fl2\nhardware: cpu-laptop-16gb\nworkload: {concurrent_users: 4, "
                     "context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}\nservices:\n  gemma: {model: gemma-3-270m, engine: llama.cpp, port: 18165, "
                     "replicas: 2}\n")
    sp = resolve(load_stack(stack), None).services[0]
    root = tmp_path / ".stackgen" / "stacks" / "stack.yaml"
    cfg = fleet.config_path(root, sp)
    cfg.parent.mkdir(parents=True)
    victim = _victim(tmp_path)
    cfg.with_suffix(".tmp").symlink_to(victim)  # the name write_config used to write first
    assert fleet.write_config(sp, root, "/bin/true") == cfg
    assert victim.read_text() == "precious user data\n"
    assert not cfg.is_symlink() and "gemma" in cfg.read_text()


def test_ollama_modelfile_is_not_written_through_a_planted_symlink(tmp_path):
    from stackgen.engines import get

    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\nname: o\nhardware: cpu-server-64gb\n"
                     "services:\n  chat: {model: llama-3.2-3b-instruct, engine: ollama, port: 18178}\n")
    sp = resolve(load_stack(stack), None).services[0]
    state = tmp_path / "state"
    state.mkdir()
    victim = _victim(tmp_path)
    (state / "chat.Modelfile").symlink_to(victim)
    steps = get(sp.engine).setup_steps(sp, "/opt/engine", state, stack)
    assert victim.read_text() == "precious user data\n"
    assert not (state / "chat.Modelfile").is_symlink() and "FROM" in (state / "chat.Modelfile").read_text()
    assert steps[-1][-1] == str(state / "chat.Modelfile")


def test_init_does_not_write_through_a_planted_tmp_symlink(tmp_path, cli):
    proj = tmp_path / "init1"
    proj.mkdir()
    victim = _victim(tmp_path)
    (proj / ".stack.yaml.tmp").symlink_to(victim)
    old = os.umask(0o022)
    try:
        r = cli("init", proj, "--hardware", "rtx-4090", "--workload", "dev-loop")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "precious user data\n"
    made = proj / "stack.yaml"
    assert not made.is_symlink() and made.read_text().startswith("# yaml-language-server")
    assert made.stat().st_mode & 0o777 == 0o644  # a plain file's mode, not mkstemp's 0600


def test_the_lock_is_not_written_through_a_planted_tmp_symlink(tmp_path):
    from stackgen.models.lock import LockEntry, lock_path_for, read_lock, write_lock

    lock = lock_path_for(tmp_path / "stack.yaml")
    victim = _victim(tmp_path)
    (tmp_path / f".{lock.name}.tmp-{os.getpid()}").symlink_to(victim)  # the name write_lock used to write first
    from stackgen.models.lock import facts_to_json
    from stackgen.spec.profiles import load_profiles

    facts = load_profiles().models["gemma-3-270m"]
    entry = LockEntry(facts.ref, None, {"kind": "hf"}, facts_to_json(facts))
    write_lock(lock, {entry.key: entry})
    assert victim.read_text() == "precious user data\n"
    assert not lock.is_symlink() and read_lock(lock).keys() == {entry.key}


# `bench` and the key (audit a2 #10): it took host/port from state.json and sent the key there.

class _HeaderLog:
    """A listener that records the Authorization header of every request (the attacker's port)."""

    def __init__(self, port: int):
        import http.server
        import threading

        seen = self.seen = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST  # noqa: N815

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_bench_sends_the_key_only_to_the_engine_up_started(tmp_path, victim, monkeypatch):
    from stackgen.run.bench import BenchError, bench_plan

    monkeypatch.setenv("SG_KEY", "victim-key-777")
    path = _fake_stack(tmp_path)
    keyed = write_engine(tmp_path / "keyed-engine", load_s=0.0, api_key="victim-key-777")  # up checks it is keyed
    path.write_text(path.read_text().replace(str(tmp_path / "fake-llama-server"), str(keyed))
                    + "serve: {api_key_env: SG_KEY}\n")
    port = _plan(path).services[0].port
    elsewhere = _HeaderLog(_free_port())
    on_port = _HeaderLog(port)  # whatever holds the service's port while it is down
    try:
        # A planted state.json naming another host:port and a stranger's pid; then one naming the plan's own port.
        v = victim()
        for entry in (_entry(v.pid, host="localhost", port=elsewhere.srv.server_port), _entry(v.pid, port=port)):
            _write_state(path, {"chat": entry})
            with pytest.raises(BenchError, match=r"sends the API key \(\$SG_KEY\) only to the engine `stackgen up`"):
                bench_plan(_plan(path), path, requests=2, timeout=5)
        StateDir(path).state_file.unlink()
        with pytest.raises(BenchError, match="none it started runs on port"):  # nothing recorded at all
            bench_plan(_plan(path), path, requests=2, timeout=5)
        assert elsewhere.seen == [] and on_port.seen == []
    finally:
        elsewhere.close()
        on_port.close()
    try:  # the service `up` started gets the key, on the plan's port
        up(_plan(path), UpOptions(timeout_s=30))
        res = bench_plan(_plan(path), path, requests=2, timeout=10)
        assert res.requests == 2 and res.errors == 0 and f"127.0.0.1:{port}/" in res.url
    finally:
        down(path, grace_s=1)
