"""`down` on stopped (SIGSTOP / suspended) engines, with real processes: every process of the service's group gets
SIGCONT before SIGTERM and before the SIGKILL escalation, so a stopped one acts on the signal at once."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import psutil
import pytest

from stackgen.run import process
from stackgen.run.process import MARKER_ENV, _identity_now, stop_process_group, stop_supervisor
from stackgen.run.state import ServiceState

# A stand-in for an engine that handles SIGTERM (llama-server shuts down on it): the handler exits with status 7, so
# an exit by SIGKILL (the escalation) tells apart a process that never got to act on SIGTERM. With CHILD=1 it first
# starts a second process in its group (an engine's worker), which handles SIGTERM the same way.
SLEEPER = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, (lambda *a: os._exit(7)) if os.environ.get("IGNORE_TERM") != "1" else signal.SIG_IGN)
if os.environ.get("CHILD") == "1":
    env = dict(os.environ, CHILD="0")
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[1]], env=env)
    with open(os.environ["CHILD_PID_FILE"], "w") as f:
        f.write(str(child.pid))
print("ready", flush=True)
for _ in range(6000):
    time.sleep(0.1)
"""


def _start(tmp_path, **env) -> tuple[subprocess.Popen, ServiceState]:
    service_id = secrets.token_hex(8)
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, SLEEPER], start_new_session=True, stdout=subprocess.PIPE,
                            env={**os.environ, MARKER_ENV: service_id, "CHILD_PID_FILE": str(tmp_path / "child"),
                                 **env})
    assert proc.stdout.readline().strip() == b"ready"
    create_time, ticks, exe = _identity_now(proc.pid)
    st = ServiceState(name="chat", engine="llama.cpp", kind="process", host="127.0.0.1", port=1, config_hash="",
                      started_at=time.time(), pid=proc.pid, pgid=proc.pid, create_time=create_time, start_ticks=ticks,
                      exe=exe, service_id=service_id)
    return proc, st


def _stopped(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
            return True
        time.sleep(0.02)
    return False


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@pytest.fixture
def cleanup():
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_a_stopped_engine_acts_on_sigterm_at_once(tmp_path, cleanup):
    proc, st = _start(tmp_path)
    cleanup.append(proc.pid)
    os.kill(proc.pid, signal.SIGSTOP)
    assert _stopped(proc.pid)
    t0 = time.monotonic()
    assert stop_process_group(st, grace_s=30) == ""
    assert time.monotonic() - t0 < 10  # not the 30 s grace: it acted on SIGTERM
    assert _gone(proc.pid)
    status = process._exit_status.get(proc.pid)  # stop_process_group reaped its own child and kept the status
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7  # its handler ran


def test_every_stopped_process_of_the_group_gets_sigcont(tmp_path, cleanup):
    """Leader and worker suspended together (a Ctrl-Z'd job: the whole group stopped): both end by their handler."""
    proc, st = _start(tmp_path, CHILD="1")
    child = int((tmp_path / "child").read_text())
    cleanup += [proc.pid, child]
    assert os.getpgid(child) == proc.pid
    os.killpg(proc.pid, signal.SIGSTOP)
    assert _stopped(proc.pid) and _stopped(child)
    t0 = time.monotonic()
    stop_process_group(st, grace_s=30)
    assert time.monotonic() - t0 < 10
    assert _gone(proc.pid) and _gone(child)
    assert os.WEXITSTATUS(process._exit_status[proc.pid]) == 7


def test_a_stopped_engine_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, cleanup):
    proc, st = _start(tmp_path, IGNORE_TERM="1")
    cleanup.append(proc.pid)
    os.kill(proc.pid, signal.SIGSTOP)
    assert _stopped(proc.pid)
    t0 = time.monotonic()
    stop_process_group(st, grace_s=1)
    assert 1 <= time.monotonic() - t0 < 10
    assert _gone(proc.pid)
    status = process._exit_status[proc.pid]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_sigcont_goes_before_sigterm_and_before_sigkill(tmp_path, cleanup, monkeypatch):
    """The order the signals leave in, recorded around the real calls (the processes really get them)."""
    proc, st = _start(tmp_path, IGNORE_TERM="1")
    cleanup.append(proc.pid)
    os.kill(proc.pid, signal.SIGSTOP)
    assert _stopped(proc.pid)
    sent: list[tuple[str, int]] = []
    real_killpg, real_send = os.killpg, psutil.Process.send_signal

    def killpg(pgid, sig):
        sent.append(("group", sig))
        return real_killpg(pgid, sig)

    def send_signal(self, sig):
        sent.append(("pid", sig))
        return real_send(self, sig)

    monkeypatch.setattr(process.os, "killpg", killpg)
    monkeypatch.setattr(psutil.Process, "send_signal", send_signal)
    stop_process_group(st, grace_s=0.5)
    assert _gone(proc.pid)
    cont, term, kill = signal.SIGCONT, signal.SIGTERM, signal.SIGKILL
    group = [s for who, s in sent if who == "group"]
    single = [s for who, s in sent if who == "pid"]
    assert group == [cont, term, cont, cont, kill]
    assert single == []  # the group's signals reached it: nothing is sent twice


# An engine whose clean shutdown takes a moment (llama-server: a second SIGTERM meanwhile means "terminate
# immediately"): it exits with the number of SIGTERMs it got.
COUNTER = r"""
import os, signal, time
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(1))
print("ready", flush=True)
for _ in range(6000):
    if got:
        time.sleep(0.5)
        os._exit(len(got))
    time.sleep(0.05)
"""


def test_down_sends_sigterm_once(tmp_path, cleanup):
    """`down` (and `restart`) signalled the group and then every process again, so llama-server got two SIGTERMs
    ("Received second interrupt, terminating immediately.") and the grace period never applied."""
    service_id = secrets.token_hex(8)
    proc = subprocess.Popen([sys.executable, "-c", COUNTER], start_new_session=True, stdout=subprocess.PIPE,
                            env={**os.environ, MARKER_ENV: service_id})
    cleanup.append(proc.pid)
    assert proc.stdout.readline().strip() == b"ready"
    create_time, ticks, exe = _identity_now(proc.pid)
    st = ServiceState(name="chat", engine="llama.cpp", kind="process", host="127.0.0.1", port=1, config_hash="",
                      started_at=time.time(), pid=proc.pid, pgid=proc.pid, create_time=create_time, start_ticks=ticks,
                      exe=exe, service_id=service_id)
    stop_process_group(st, grace_s=10)
    status = process._exit_status[proc.pid]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1  # one SIGTERM, a clean exit within the grace


def test_a_stopped_supervisor_stops_at_once(tmp_path, cleanup):
    """`down` SIGTERMs the supervisor first and waits for it: a suspended one is woken, not waited out and killed."""
    proc, sst = _start(tmp_path)
    cleanup.append(proc.pid)
    st = ServiceState(name="chat", engine="llama.cpp", kind="process", host="127.0.0.1", port=1, config_hash="",
                      started_at=time.time(), sup_pid=sst.pid, sup_create_time=sst.create_time,
                      sup_start_ticks=sst.start_ticks, sup_exe=sst.exe, sup_id=sst.service_id)
    os.kill(proc.pid, signal.SIGSTOP)
    assert _stopped(proc.pid)
    t0 = time.monotonic()
    assert stop_supervisor(st, grace_s=10) == ""
    assert time.monotonic() - t0 < 2  # the wait before SIGKILL is at least 2 s
    assert _gone(proc.pid)
    assert os.WEXITSTATUS(process._exit_status[proc.pid]) == 7
