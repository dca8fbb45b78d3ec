"""`stackgen up` of a service with replicas (stackgen/run/fleet.py) against fakes: the fake engine of
test_launch_unit.py as each instance, and a fake `haproxy` on PATH (checks the config with -c; with -db, a TCP proxy
from the config's `bind` to its `server` lines, round robin over the ones that accept). The real llama-server and
HAProxy run in tests/integration/test_scale_real.py."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import urllib.request

import psutil
import pytest

from stackgen.errors import LaunchError
from stackgen.run.lifecycle import down, logs, status
from stackgen.run.results import UpOptions
from stackgen.run.state import StateDir
from stackgen.run import fleet
from stackgen.run.up import up
from fakes.openai_server import write_engine
from test_launch_unit import free_port, plan_of

FAKE_HAPROXY = r'''
import itertools, os, re, signal, socket, sys, threading

args = sys.argv[1:]
cfg = open(args[args.index("-f") + 1]).read()
if "-c" in args:
    ok = "balance leastconn" in cfg and re.search(r"^\s+bind \S+", cfg, re.M) and os.environ.get("FAKE_HAPROXY") != "bad"
    print("" if ok else "[ALERT] fake: config refused", file=sys.stderr)
    sys.exit(0 if ok else 1)
if os.environ.get("FAKE_HAPROXY") == "exit":
    print("[ALERT] fake: cannot bind socket", flush=True)
    sys.exit(1)
host, port = re.search(r"^\s+bind (\S+):(\d+)", cfg, re.M).groups()
servers = [(h, int(p)) for h, p in re.findall(r"^\s+server \S+ ([\d.]+):(\d+)", cfg, re.M)]
print("fake haproxy on", host, port, "servers", servers, flush=True)
turn = itertools.cycle(range(len(servers)))

def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(client):
    for _ in range(len(servers)):
        try:
            up = socket.create_connection(servers[next(turn)], timeout=5)
            break
        except OSError:
            continue
    else:
        client.close()
        return
    print("forwarded to", up.getpeername()[1], flush=True)
    threading.Thread(target=pipe, args=(client, up), daemon=True).start()
    pipe(up, client)

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, int(port)))
srv.listen(64)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@pytest.fixture
def fleet_stack(tmp_path, monkeypatch):
    """A stack whose llama.cpp service has replicas: 2, run by the fake engine, with the fake haproxy on PATH."""
    engine = write_engine(tmp_path / "fake-llama-server")  # tests/fakes/openai_server.py: FAKE_MODE and friends
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    haproxy = bin_dir / "haproxy"
    haproxy.write_text(f"#!{sys.executable}\n" + FAKE_HAPROXY, encoding="utf-8")
    haproxy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_CHILD_PID", str(tmp_path / "child.pid"))
    port = free_port()
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: fleet
        hardware: cpu-laptop-16gb
        workload: {{concurrent_users: 4, context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}}
        services:
          chat:
            model: gemma-3-270m
            engine: llama.cpp
            binary: {engine}
            port: {port}
            replicas: 2
        """), encoding="utf-8")
    yield path, port, tmp_path
    try:
        down(path, grace_s=1)
    except LaunchError:
        pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _complete(port: int) -> dict:
    body = json.dumps({"model": "chat", "prompt": "hi", "max_tokens": 2}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def test_up_runs_every_instance_and_the_balancer(fleet_stack):
    path, port, _ = fleet_stack
    plan = plan_of(path)
    sp = plan.services[0]
    assert sp.capacity.separate and len(sp.capacity.ports) == 2
    res = up(plan, UpOptions(timeout_s=30, verify=True, verify_max_tokens=4))
    assert [(o.name, o.action, o.port) for o in res.services] == [
        ("chat-1", "started", sp.capacity.ports[0]), ("chat-2", "started", sp.capacity.ports[1]),
        ("chat", "started", port)]
    # Readiness order: the balancer answers only after both instances did.
    ready = {o.name: o.ready_s for o in res.services}
    # the balancer waits for HAProxy to mark every instance up (rise x inter), not only for one to answer
    assert ready["chat"] >= max(ready["chat-1"], ready["chat-2"]) + fleet.BALANCER_SETTLE_S - 0.5
    assert res.verify[0].service == "chat" and res.verify[0].failed == 0 and res.verify[0].ok >= 1
    state = StateDir(path).load().services
    assert {n: (st.unit_of, st.unit_role) for n, st in state.items()} == {
        "chat": ("chat", "balancer"), "chat-1": ("chat", "instance"), "chat-2": ("chat", "instance")}
    # Each instance runs run-N.sh's command: its port, loopback, the service's name as its alias.
    for i, p in enumerate(sp.capacity.ports, 1):
        argv = state[f"chat-{i}"].argv
        assert argv[argv.index("--port") + 1] == str(p) and argv[argv.index("--host") + 1] == "127.0.0.1"
        assert argv[argv.index("--alias") + 1] == "chat"
    cfg = StateDir(path).dir / "fleet" / "chat-haproxy.cfg"
    assert state["chat"].argv[1:] == ["-db", "-f", str(cfg)]
    assert f"127.0.0.1:{sp.capacity.ports[0]}" in cfg.read_text() and "balance leastconn" in cfg.read_text()
    assert _complete(port)["choices"]
    # status and logs: every process, by its name or by the service's.
    rows = {r.name: r for r in status(path)}
    assert {n: r.state for n, r in rows.items()} == {"chat": "running", "chat-1": "running", "chat-2": "running"}
    assert rows["chat"].engine == "haproxy (llama.cpp)" and rows["chat"].port == port
    assert sorted(r.name for r in status(path, services=["chat"])) == ["chat", "chat-1", "chat-2"]
    assert [r.name for r in status(path, services=["chat-2"])] == ["chat-2"]
    lines = list(logs(path, "chat"))
    assert {n for n, _ in lines} == {"chat", "chat-1", "chat-2"}
    assert any("fake haproxy on" in ln for n, ln in lines if n == "chat")
    # up again, nothing changed: all kept.
    res2 = up(plan_of(path), UpOptions(timeout_s=30))
    assert {o.name: o.action for o in res2.services} == {"chat": "unchanged", "chat-1": "unchanged",
                                                         "chat-2": "unchanged"}
    pids = [st.pid for st in StateDir(path).load().services.values()]
    stopped = down(path, services=["chat"], grace_s=2)
    assert sorted(s.split(" ")[0] for s in stopped) == ["chat", "chat-1", "chat-2"]
    assert not any(_alive(p) for p in pids)
    assert status(path) == []
    assert not cfg.exists() and not cfg.parent.exists()  # the balancer's config goes with it


def test_an_instance_that_fails_stops_the_rest_and_is_named(fleet_stack, monkeypatch):
    path, port, tmp = fleet_stack
    plan = plan_of(path)
    bad_port = plan.services[0].capacity.ports[1]
    # Instance 2's port is held: the fake engine cannot bind it and exits.
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", bad_port))
    holder.listen(1)
    try:
        with pytest.raises(LaunchError) as err:
            up(plan, UpOptions(timeout_s=30))
    finally:
        holder.close()
    text = str(err.value)
    assert f"service chat-2: port {bad_port} is already in use" in text  # preflight: nothing started
    assert StateDir(path).load().services == {}

    # An instance that dies during start-up: named, and what had started is stopped.
    wrapper = tmp / "dies-on-second-port"
    engine = tmp / "fake-llama-server"
    wrapper.write_text(f"#!/bin/sh\ncase \"$*\" in *'--port {bad_port}'*) echo 'error: simulated failure'; "
                       f"exit 4;; esac\nexec {engine} \"$@\"\n")
    wrapper.chmod(0o755)
    path.write_text(path.read_text().replace(f"binary: {engine}", f"binary: {wrapper}"))
    with pytest.raises(LaunchError) as err:
        up(plan_of(path), UpOptions(timeout_s=30))
    text = str(err.value)
    assert "service chat-2 (instance 2 of chat): llama.cpp exited during start-up (exit status 4)" in text
    assert "simulated failure" in text
    assert "stopped what this `up` had started:" in text and "chat-1 (pid" in text
    assert StateDir(path).load().services == {}
    assert not _listening(plan.services[0].capacity.ports[0]) and not _listening(port)


def test_a_balancer_that_exits_is_named(fleet_stack, monkeypatch):
    path, port, _ = fleet_stack
    monkeypatch.setenv("FAKE_HAPROXY", "exit")
    with pytest.raises(LaunchError) as err:
        up(plan_of(path), UpOptions(timeout_s=30))
    text = str(err.value)
    assert "service chat (the balancer of its 2 instances): haproxy exited during start-up (exit status 1)" in text
    assert "cannot bind socket" in text
    assert StateDir(path).load().services == {}


def test_a_refused_config_starts_nothing(fleet_stack, monkeypatch):
    path, _, tmp = fleet_stack
    monkeypatch.setenv("FAKE_HAPROXY", "bad")
    with pytest.raises(LaunchError, match=r"service chat: .*haproxy -c refused .*chat-haproxy.cfg") as err:
        up(plan_of(path), UpOptions(timeout_s=30))
    assert "stopped what" not in str(err.value)  # refused before any instance started
    assert not (StateDir(path).logs_dir / "chat-1.log").exists()
    assert StateDir(path).load().services == {}


def test_no_haproxy_is_refused_before_anything_starts(fleet_stack, monkeypatch):
    path, _, tmp = fleet_stack
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("stackgen.run.fleet.HAPROXY", str(tmp / "no-haproxy"))
    with pytest.raises(LaunchError, match="HAProxy not found"):
        up(plan_of(path), UpOptions(timeout_s=30))
    assert StateDir(path).load().services == {}


def test_containers_refuse_a_fleet(fleet_stack):
    path, _, _ = fleet_stack
    with pytest.raises(LaunchError, match=r"services.chat.replicas: 2 separate instances .* --containers"):
        up(plan_of(path), UpOptions(containers=True, timeout_s=30))


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_names_of_instances_may_not_collide(fleet_stack):
    path, port, tmp = fleet_stack
    path.write_text(path.read_text() + f"  chat-2:\n    model: gemma-3-270m\n    engine: llama.cpp\n"
                    f"    binary: {tmp / 'fake-llama-server'}\n    port: {free_port()}\n")
    with pytest.raises(LaunchError, match="already has a service 'chat-2'"):
        up(plan_of(path), UpOptions(timeout_s=30))


def test_cli_up_status_logs_restart_down(fleet_stack):
    from typer.testing import CliRunner

    from stackgen.cli import app

    path, port, _ = fleet_stack
    r = CliRunner()
    res = r.invoke(app, ["up", str(path), "--timeout", "30"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "chat-1: started (llama.cpp, pid" in out and "chat-2: started (llama.cpp, pid" in out
    assert "chat: started (haproxy, least connections over chat-1 .. chat-2, pid" in out
    assert f"http://127.0.0.1:{port}/v1" in out
    res = r.invoke(app, ["status", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(row["name"] for row in json.loads(res.output)) == ["chat", "chat-1", "chat-2"]
    res = r.invoke(app, ["logs", str(path), "chat", "-n", "5"])
    assert res.exit_code == 0 and "chat-1" in res.output and "chat-2" in res.output, res.output
    before = {n: st.pid for n, st in StateDir(path).load().services.items()}
    res = r.invoke(app, ["restart", str(path), "chat", "--timeout", "30"])
    assert res.exit_code == 0, res.output
    after = {n: st.pid for n, st in StateDir(path).load().services.items()}
    assert set(after) == set(before) and all(after[n] != before[n] for n in after)
    res = r.invoke(app, ["down", str(path)])
    assert res.exit_code == 0, res.output
    assert StateDir(path).load().services == {}


def test_fewer_replicas_stop_the_instances_no_longer_planned(fleet_stack):
    path, port, _ = fleet_stack
    up(plan_of(path), UpOptions(timeout_s=30))
    old = StateDir(path).load().services
    path.write_text(path.read_text().replace("    replicas: 2\n", ""))  # one instance: the engine on the port
    res = up(plan_of(path), UpOptions(timeout_s=30, services=("chat",)))
    assert sorted(res.stopped) == ["chat-1", "chat-2"]
    assert [(o.name, o.action) for o in res.services] == [("chat", "restarted")]
    now = StateDir(path).load().services
    assert list(now) == ["chat"] and now["chat"].unit_role == "" and now["chat"].port == port
    assert not (StateDir(path).dir / "fleet" / "chat-haproxy.cfg").exists()  # no balancer, no config
    assert not any(_alive(old[n].pid) for n in ("chat", "chat-1", "chat-2"))


def test_restart_one_instance_keeps_the_rest(fleet_stack):
    """`stackgen restart chat-2`: that instance gets a new process; its sibling and the balancer keep theirs. An
    unknown process name is refused naming the fleet's processes, and nothing is restarted."""
    from typer.testing import CliRunner

    from stackgen.cli import app

    path, port, _ = fleet_stack
    r = CliRunner()
    res = r.invoke(app, ["up", str(path), "--timeout", "30"])
    assert res.exit_code == 0, res.output
    before = {n: st.pid for n, st in StateDir(path).load().services.items()}
    res = r.invoke(app, ["restart", str(path), "chat-2", "--timeout", "30"])
    assert res.exit_code == 0, res.output
    assert "chat-2: restarted" in res.output and "a restart was asked for" in res.output, res.output
    assert "chat-1: unchanged" in res.output and "chat: unchanged" in res.output, res.output
    after = {n: st.pid for n, st in StateDir(path).load().services.items()}
    assert after["chat-2"] != before["chat-2"]
    assert after["chat-1"] == before["chat-1"] and after["chat"] == before["chat"]
    assert _complete(port)["choices"]  # the balancer still answers through the fleet
    res = r.invoke(app, ["restart", str(path), "chat-3", "--timeout", "30"])
    assert res.exit_code != 0
    assert "no service 'chat-3'" in res.output and "chat-1, chat-2" in res.output, res.output
    assert {n: st.pid for n, st in StateDir(path).load().services.items()} == after
    res = r.invoke(app, ["down", str(path)])
    assert res.exit_code == 0, res.output
