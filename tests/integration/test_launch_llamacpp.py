"""`stackgen up/status/logs/down` on a real llama-server with the real Gemma 3 270M GGUF (127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from stackgen.run.readiness import Endpoint, complete
from stackgen.run.state import StateDir

REPO = Path(__file__).resolve().parents[2]


def write_stack(tmp_path: Path, llama_server: Path, gguf: Path, port: int, extra: str = "", users: int = 2) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: it-llama
        hardware: detect
        workload: {{concurrent_users: {users}, context_tokens: 2048, prompt_tokens: 64, output_tokens: 32}}
        services:
          gemma:
            model: {gguf}
            engine: llama.cpp
            binary: {llama_server}
            port: {port}
        """) + extra, encoding="utf-8")
    return path


def group_pids(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return out


def test_up_complete_status_logs_down(tmp_path, llama_server, gguf_path, free_port, stack_cleanup, wait_gone, run_stackgen):
    stackgen = run_stackgen
    port = free_port()
    path = write_stack(tmp_path, llama_server, gguf_path, port)
    stack_cleanup.append(path)
    t0 = time.monotonic()
    r = stackgen("up", path, "--verify", timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gemma: started (llama.cpp" in r.stdout and "ready in" in r.stdout
    assert "verify gemma: 2/2 streams ok" in r.stdout, r.stdout
    print(f"\nup --verify took {took:.1f}s\n{r.stdout}")
    # measured beside the plan's own forecast at the 2 users verify ran: the figures `plan` prints
    speed = json.loads(stackgen("plan", path, "--json").stdout)["services"][0]["speed"]
    assert speed["streams"] == 2
    assert "measured at 2 users: " in r.stdout and "tokens/s aggregate over all 2 streams" in r.stdout, r.stdout
    # the streams' decode rates added up, what the forecast's aggregate predicts, beside tokens / wall time
    assert re.search(r"tokens/s per stream \(decode\), [0-9.]+ decode aggregate; [0-9.]+ tokens/s aggregate over all 2 "
                     r"streams \(prefill and HTTP included\)", r.stdout), r.stdout
    assert (f"plan forecast at 2 users: {speed['per_user_tokens_per_s']:g} tokens/s per user, "
            f"{speed['aggregate_tokens_per_s']:g} aggregate") in r.stdout, r.stdout
    st = StateDir(path).load().services["gemma"]
    assert st.pid and psutil.pid_exists(st.pid)
    assert (path.parent / ".stackgen" / ".gitignore").read_text() == "*\n"

    # a real completion: greedy, token count as asked
    c = complete(Endpoint("127.0.0.1", port, "llama.cpp", "gemma"), "The capital of France is", max_tokens=8)
    assert c.completion_tokens == 8 and c.text.strip(), c
    print(f"completion: {c.text!r} ({c.completion_tokens} tokens in {c.seconds:.2f}s)")

    r = stackgen("status", path, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads(r.stdout)[0]
    assert row["state"] == "running" and row["port"] == port and row["rss_bytes"] > 100 * 2**20
    assert row["where"] == f"pid {st.pid}"

    r = stackgen("logs", path, "gemma")
    assert r.returncode == 0 and "llama" in r.stdout.lower()

    # nothing changed: up keeps it
    r = stackgen("up", path)
    assert r.returncode == 0 and "gemma: unchanged" in r.stdout, r.stdout + r.stderr
    assert StateDir(path).load().services["gemma"].pid == st.pid

    members = group_pids(st.pgid)
    assert st.pid in members
    r = stackgen("down", path)
    assert r.returncode == 0 and "stopped gemma" in r.stdout, r.stdout + r.stderr
    for pid in members:
        assert wait_gone(pid, 5), f"pid {pid} survived down"
    assert group_pids(st.pgid) == []
    r = stackgen("down", path)
    assert r.returncode == 0 and "nothing running" in r.stdout


def test_status_notices_a_killed_engine(tmp_path, llama_server, gguf_path, free_port, stack_cleanup, wait_gone, run_stackgen):
    stackgen = run_stackgen
    port = free_port()
    path = write_stack(tmp_path, llama_server, gguf_path, port)
    stack_cleanup.append(path)
    r = stackgen("up", path, "--restart", "no")
    assert r.returncode == 0, r.stderr
    pid = StateDir(path).load().services["gemma"].pid
    os.kill(pid, 9)
    assert wait_gone(pid, 5)
    for _ in range(50):  # the supervisor records how it ended a moment after reaping it
        r = stackgen("status", path)
        if "SIGKILL" in r.stdout:
            break
        time.sleep(0.1)
    assert r.returncode == 1 and "crashed" in r.stdout, r.stdout
    assert "gemma: crashed: killed by signal SIGKILL at" in r.stdout and "  | " in r.stdout, r.stdout
    r = stackgen("up", path)
    assert r.returncode == 0 and "gemma: restarted" in r.stdout, r.stdout + r.stderr
    assert "restarted because it had crashed: killed by signal SIGKILL" in r.stdout and "stopped (" not in r.stdout


def _wait(fn, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_sigkilled_llama_server_comes_back_and_a_crash_loop_stops(tmp_path, llama_server, gguf_path, free_port,
                                                                  stack_cleanup, wait_gone):
    """The restart policy on the real engine: SIGKILL -> its supervisor starts it again after the backoff and it
    answers completions; killed again and again, it is given up after the bounded restarts and shows crashed."""
    from stackgen.host.facts import detect
    from stackgen.run.lifecycle import status
    from stackgen.run.results import UpOptions
    from stackgen.run.up import up
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack
    from stackgen.run.supervise import RestartPolicy

    port = free_port()
    path = write_stack(tmp_path, llama_server, gguf_path, port)
    stack_cleanup.append(path)
    up(resolve(load_stack(path), detect()), UpOptions(timeout_s=120, policy=RestartPolicy(max_restarts=2, backoff_s=0.5)))
    pids = [StateDir(path).load().services["gemma"].pid]
    sup = StateDir(path).load().services["gemma"].sup_pid
    t0 = time.monotonic()
    for n in (1, 2):
        os.kill(pids[-1], 9)
        assert wait_gone(pids[-1], 5)
        row = _wait(lambda: [r for r in status(path) if r.state == "running" and r.restarts == n], 120)
        assert row, status(path)
        assert "killed by signal SIGKILL" in row[0].last_exit and row[0].restart == f"on-failure {n}/2"
        pids.append(StateDir(path).load().services["gemma"].pid)
        assert pids[-1] != pids[-2]
        if n == 1:
            print(f"\nSIGKILL -> answering again in {time.monotonic() - t0:.1f} s")
            c = complete(Endpoint("127.0.0.1", port, "llama.cpp", "gemma"), "The capital of France is", max_tokens=4)
            assert c.completion_tokens == 4, c
    os.kill(pids[-1], 9)  # the third crash within the window: the policy's bound
    row = _wait(lambda: [r for r in status(path) if "gave up" in r.last_exit], 30)
    assert row and row[0].state == "crashed" and row[0].restarts == 2, status(path)
    assert wait_gone(sup, 5), "the supervisor kept running after giving up"
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


def test_port_held_by_another_process(tmp_path, llama_server, gguf_path, free_port, stack_cleanup, pid_cleanup, run_stackgen):
    stackgen = run_stackgen
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-c", "import socket,time\ns=socket.socket()\n"
                               f"s.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(120)"])
    pid_cleanup.append(holder.pid)
    for _ in range(50):
        if psutil.Process(holder.pid).net_connections():
            break
        time.sleep(0.1)
    path = write_stack(tmp_path, llama_server, gguf_path, port)
    stack_cleanup.append(path)
    r = stackgen("up", path, timeout=60)
    assert r.returncode == 1
    assert f"port {port} is already in use by pid {holder.pid}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("case, cause", [("missing-file", "missing file"), ("unknown-flag", "unknown argument")])
def test_engine_that_exits_at_once_names_the_cause(tmp_path, llama_server, gguf_path, free_port, stack_cleanup,
                                                   case, cause, run_stackgen):
    """The real llama-server exits during start-up; the cause is read from its log. An unknown flag no longer
    reaches the engine from a stack (validate refuses it, test_an_unknown_flag_is_refused_before_anything_starts),
    so a wrapper binary appends one the way a local patch or a mismatched build would."""
    stackgen = run_stackgen
    binary = llama_server
    if case == "unknown-flag":
        binary = tmp_path / "llama-server-wrapped"
        binary.write_text(f'#!/bin/sh\nexec "{llama_server}" "$@" --bogus-flag\n', encoding="utf-8")
        binary.chmod(0o755)
    path = write_stack(tmp_path, binary, gguf_path, free_port())
    if case == "missing-file":
        path.write_text(path.read_text() + "    overrides: {model: /nonexistent/model.gguf}\n")
    stack_cleanup.append(path)
    # --force: past the host check (which reads the binary's --help), so the engine's own exit is diagnosed
    r = stackgen("up", path, "--timeout", "60", "--force", timeout=120)
    assert r.returncode == 1, r.stdout
    assert "exited during start-up" in r.stderr and f"likely cause: {cause}" in r.stderr, r.stderr
    assert "last log lines" in r.stderr and "Traceback" not in r.stderr
    assert StateDir(path).load().services == {}


@pytest.mark.parametrize("override, said", [
    ("{draft-max: 4}", "has no flag --draft-max (removed; use --spec-draft-n-max"),
    ("{bogus-flag: true}", "has no flag --bogus-flag (remove it, or write the flag as the engine's --help spells it)"),
])
def test_an_unknown_flag_is_refused_before_anything_starts(tmp_path, llama_server, gguf_path, free_port,
                                                          stack_cleanup, override, said, run_stackgen):
    path = write_stack(tmp_path, llama_server, gguf_path, free_port())
    path.write_text(path.read_text() + f"    overrides: {override}\n")
    stack_cleanup.append(path)
    for force in ((), ("--force",)):
        r = run_stackgen("up", path, "--timeout", "60", *force, timeout=120)
        assert r.returncode == 1 and re.search(r"stack\.yaml:\d+:\d+: services\.gemma\.overrides\.", r.stderr), r.stderr
        assert said in r.stderr and "Traceback" not in r.stderr
        assert StateDir(path).load().services == {}


def test_sigint_while_loading_stops_the_engine(tmp_path, llama_server, gguf_path, free_port, stack_cleanup,
                                               pid_cleanup, wait_gone):
    import signal

    path = write_stack(tmp_path, llama_server, gguf_path, free_port())
    stack_cleanup.append(path)
    proc = subprocess.Popen([sys.executable, "-m", "stackgen", "up", str(path)], cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid_cleanup.append(proc.pid)
    pid = None
    for _ in range(200):
        sd = StateDir(path)
        if sd.state_file.exists():
            st = sd.load().services.get("gemma")
            if st and st.pid:
                pid = st.pid
                break
        time.sleep(0.05)
    assert pid, "up never recorded the engine"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "stopped gemma" in err, err
    assert wait_gone(pid, 5)
    assert StateDir(path).load().services == {}


def test_a_wrapper_that_works_before_exec_stays_the_service(tmp_path, llama_server, gguf_path, free_port,
                                                            stack_cleanup, wait_gone, run_stackgen):
    """A `binary:` wrapper that does set-up work before exec'ing the engine (`sleep 2; exec llama-server`): once
    the engine answers, the process is llama-server, not the shell stackgen started. It is still the service:
    status says running (rc 0), a second up keeps it unchanged, down stops it without a "not the process" warning."""
    stackgen = run_stackgen
    port = free_port()
    wrapper = tmp_path / "slow-llama-server"
    wrapper.write_text(f"#!/bin/bash\ncase \"$1\" in --help|--version) exec {llama_server} \"$@\";; esac\n"
                       f"sleep 2\nexec {llama_server} \"$@\"\n")
    wrapper.chmod(0o755)
    path = write_stack(tmp_path, wrapper, gguf_path, port)
    stack_cleanup.append(path)
    r = stackgen("up", path)
    assert r.returncode == 0 and "gemma: started" in r.stdout, r.stdout + r.stderr
    st = StateDir(path).load().services["gemma"]
    assert st.exe == os.path.realpath(llama_server), st.exe  # re-recorded once it answered: the wrapper exec'd
    r = stackgen("status", path)
    assert r.returncode == 0 and "running" in r.stdout and "not the process" not in r.stdout, r.stdout + r.stderr
    r = stackgen("up", path)
    assert r.returncode == 0 and "gemma: unchanged" in r.stdout, r.stdout + r.stderr
    r = stackgen("down", path)
    assert r.returncode == 0 and "stopped gemma" in r.stdout, r.stdout + r.stderr
    assert "not the process" not in r.stdout + r.stderr and "warning" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert wait_gone(st.pid, 5)
