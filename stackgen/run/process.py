"""Process groups of native services: a process is only ever signalled once it is identified as the service's
(exact start time, executable, and the STACKGEN_SERVICE_ID marker in its environment: `_foreign`); the process tree
of a service; stopping a group and a supervisor."""

from __future__ import annotations

import os
import signal
import time

from stackgen.errors import LaunchError
from stackgen.run.state import ServiceState

GRACE_S = 10.0  # SIGTERM -> SIGKILL
KILL_WAIT_S = 5.0
POLL_S = 0.25

MARKER_ENV = "STACKGEN_SERVICE_ID"  # set in each native engine's environment; children inherit it
_exit_status: dict[int, int] = {}  # wait statuses of engines this process started and reaped


def _identity_now(pid: int) -> tuple[float | None, int | None, str | None]:
    """(create_time, start_ticks, exe) of a running process, what `start` records."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time(), _start_ticks(pid), _exe(p)
    except psutil.Error:
        return None, None, None


def _start_ticks(pid: int) -> int | None:
    """Linux: the process's start time in clock ticks since boot (/proc/PID/stat field 22). Unlike psutil's
    create_time it does not move when the system clock (and so the computed boot time) is adjusted."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _exe(p) -> str | None:
    try:
        exe = p.exe()
    except Exception:  # noqa: BLE001 - psutil.Error, and races
        return None
    return exe[: -len(" (deleted)")] if exe.endswith(" (deleted)") else exe or None


def _gone(p) -> bool:
    import psutil

    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _reap(pid: int) -> None:
    """Collect a child of this process that has exited (keeping its wait status for `logs -f`)."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return
    if got == pid:
        _exit_status[pid] = status


def _foreign(st: ServiceState, p) -> str:
    """Why process `p` (alive at st.pid) is not the process `up` started for `st`; '' when it is.
    Checked: the start time exactly as recorded, the executable, and the STACKGEN_SERVICE_ID marker in its
    environment (state from before markers: the exact command line instead)."""
    import psutil

    try:
        ticks = _start_ticks(p.pid) if st.start_ticks is not None else None
        if ticks is not None:
            if ticks != st.start_ticks:
                return "it started at a different time than the recorded service (its pid was reused)"
        elif st.create_time is None or abs(p.create_time() - st.create_time) > 0.01:
            return "it started at a different time than the recorded service (its pid was reused)"
        if st.exe is not None:
            exe = _exe(p)
            if exe != st.exe:
                return f"it runs {exe or 'an executable this user cannot see'}, not {st.exe}"
        if st.service_id is not None:
            try:
                marker = p.environ().get(MARKER_ENV)
            except psutil.AccessDenied:
                return "its environment is not readable (another user's process)"
            if marker != st.service_id:
                return f"it does not carry this service's {MARKER_ENV}"
        else:  # recorded by a stackgen without markers: the command line must be exactly the recorded one
            cmd = p.cmdline()
            if not st.argv or len(cmd) < len(st.argv) or cmd[len(cmd) - len(st.argv) + 1:] != st.argv[1:] \
                    or not any(os.path.basename(c) == os.path.basename(st.argv[0]) for c in cmd[:2]):
                return "its command line is not the recorded one"
    except psutil.AccessDenied:
        return "it belongs to another user"
    except psutil.Error:
        return ""  # gone meanwhile
    return ""


def _identify(st: ServiceState):
    """(the service's main process, '') while it runs; (None, '') when it is gone; (None, why) when its pid now
    belongs to a process that is not the one `up` started."""
    import psutil

    if not st.pid or st.pid < 1:
        return None, ""
    _reap(st.pid)
    try:
        p = psutil.Process(st.pid)
    except psutil.Error:
        return None, ""
    if _gone(p):
        return None, ""
    why = _foreign(st, p)
    if why and _gone(p):  # it died while being checked: a zombie's exe and environment are unreadable
        return None, ""
    if why:
        return None, f"pid {st.pid} is not the process stackgen started for service {st.name}: {why}"
    return p, ""


def _leader(st: ServiceState):
    """The service's main process if it still runs and is the one `up` started (see _foreign)."""
    return _identify(st)[0]


def process_tree(root) -> list:
    """A process (a pid or a psutil.Process) and all its descendants, root first: the one reader of a process tree
    (the service's members, bench's RSS). psutil.Error if `root` is gone."""
    import psutil

    p = root if isinstance(root, psutil.Process) else psutil.Process(root)
    return [p, *p.children(recursive=True)]


def rss_sum(procs: list) -> int:
    """Resident memory of `procs`, skipping one that exited between listing and reading."""
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001 - psutil.Error and races
            continue
    return total


def rss_tree(pid: int) -> int:
    """Resident memory of a process and all its children (an engine may fork workers); psutil.Error if gone."""
    root, *children = process_tree(pid)
    return root.memory_info().rss + rss_sum(children)


def _session_is_ours(st: ServiceState, leader) -> bool:
    """Whether the session the engine was started in (its id is the engine's pid: start_new_session) can only hold
    the engine's own descendants now: its leader is the verified engine, or the engine has died and its pid is not
    a running process. A session id cannot be taken by a new process while any member of the session (or the
    leader's zombie) is left, so the members of a live session whose id is a dead pid are the engine's leftovers:
    children that outlived it, such as vLLM's EngineCore and Worker, whose setproctitle overwrites the environment
    /proc shows and so the marker. A pid that runs another process now means the id was reused: nothing is taken."""
    import psutil

    if not (st.service_id and st.pid and st.pgid == st.pid):  # a state from before markers, or not its own session
        return False
    if leader is not None:
        return True
    try:
        return _gone(psutil.Process(st.pid))
    except psutil.Error:
        return True


def _session_member(st: ServiceState, p) -> bool:
    """`p` is in the engine's session, started no earlier than the engine, and carries no other marker."""
    try:
        if os.getsid(p.pid) != st.pgid:
            return False
        if st.start_ticks is not None:
            ticks = _start_ticks(p.pid)
            if ticks is None or ticks < st.start_ticks:
                return False
        elif st.create_time is None or p.create_time() < st.create_time - 0.01:
            return False
        return p.environ().get(MARKER_ENV) in (None, st.service_id)
    except Exception:  # noqa: BLE001 - OSError, psutil.Error: gone, or not readable
        return False


def _members(st: ServiceState, leader=None, identify: bool = True) -> list:
    """Every live process of the service: the verified leader and its descendants, processes that carry the
    service's marker (members of its process group, or strays that left it with setsid after the leader died), and
    the members of the engine's own session while that session can only be the engine's (_session_is_ours: after
    the leader died, its children that lost the marker). Nothing is taken on the pid or the process group alone."""
    import psutil

    found: dict[int, object] = {}
    leader = leader if leader is not None or not identify else _leader(st)
    if leader is not None:
        found[leader.pid] = leader
        try:
            for c in process_tree(leader)[1:]:
                found[c.pid] = c
        except psutil.Error:
            pass
    if st.service_id:
        uid = os.getuid()
        session = _session_is_ours(st, leader)
        for p in psutil.process_iter():
            if p.pid in found:
                continue
            try:
                if p.uids().real != uid:
                    continue
                if p.environ().get(MARKER_ENV) == st.service_id or (session and _session_member(st, p)):
                    found[p.pid] = p
            except (OSError, psutil.Error):
                continue
    elif leader is not None and st.pgid == st.pid:  # old state: the group of a verified leader is its session
        for p in psutil.process_iter():
            try:
                if p.pid not in found and os.getpgid(p.pid) == st.pgid:
                    found[p.pid] = p
            except (OSError, psutil.Error):
                continue
    return [p for p in found.values() if not _gone(p)]


def stop_process_group(st: ServiceState, grace_s: float = GRACE_S) -> str:
    """SIGTERM the group (and strays), wait up to `grace_s`, SIGKILL what is left, verify nothing survives.
    Only processes identified as the service's are signalled; returns a note ('' if none) when the recorded pid
    now belongs to another process, which is left alone."""
    leader, foreign = _identify(st)
    procs = _members(st, leader)
    if not procs:
        if st.pid:
            _reap(st.pid)
        return foreign
    _signal_all(st, leader, procs, signal.SIGTERM)
    remaining = _wait_gone(procs, grace_s)
    # Processes forked while we waited join the group: look again before the hard kill.
    remaining = list({p.pid: p for p in remaining + _members(st)}.values())
    if remaining:
        _signal_all(st, _leader(st), remaining, signal.SIGKILL)
        remaining = _wait_gone(remaining, KILL_WAIT_S)
    if remaining:
        pids = ", ".join(str(p.pid) for p in remaining)
        raise LaunchError(f"service {st.name}: processes {pids} survived SIGKILL (uninterruptible I/O?); "
                          f"check `ps -o pid,stat,cmd -p {pids}`")
    if st.pid:
        _reap(st.pid)
    return foreign


def stop_leftovers(st: ServiceState, grace_s: float = GRACE_S) -> list[int]:
    """The engine (the caller's child) has exited and is not reaped yet: its zombie keeps its pid, so its session
    cannot have been taken by another process. SIGTERM what is left in that session (children that outlived it),
    SIGKILL what survives `grace_s`; the pids it stopped. The zombie is left for the caller to reap."""
    procs = [p for p in _members(st, identify=False) if p.pid != st.pid]  # identifying would reap the zombie
    if not procs:
        return []
    _signal_all(st, None, procs, signal.SIGTERM)
    remaining = _wait_gone(procs, grace_s)
    if remaining:
        _signal_all(st, None, remaining, signal.SIGKILL)
        _wait_gone(remaining, KILL_WAIT_S)
    return [p.pid for p in procs]


def supervisor_state(st: ServiceState) -> ServiceState | None:
    """The supervisor's identity as a ServiceState, checked by the same rules as an engine's (_foreign)."""
    if not st.sup_pid:
        return None
    return ServiceState(name=st.name, engine="supervisor", kind="process", host=st.host, port=st.port,
                        config_hash="", started_at=st.started_at, pid=st.sup_pid, pgid=st.sup_pid,
                        create_time=st.sup_create_time, start_ticks=st.sup_start_ticks, exe=st.sup_exe,
                        service_id=st.sup_id)


def supervisor_alive(st: ServiceState) -> bool:
    sst = supervisor_state(st)
    return sst is not None and _leader(sst) is not None


def stop_supervisor(st: ServiceState, grace_s: float = GRACE_S) -> str:
    """SIGTERM the service's supervisor alone (once identified), wait for it to exit, SIGKILL it if it does not.
    Its engine is left for stop_process_group. Returns a note when the recorded pid is another process."""
    sst = supervisor_state(st)
    if sst is None:
        return ""
    proc, foreign = _identify(sst)
    if proc is None:
        _reap(sst.pid or 0)
        return foreign.replace(f"service {st.name}", f"the supervisor of service {st.name}") if foreign else ""
    try:  # psutil refuses if the pid was reused since it was identified; SIGCONT: a stopped supervisor acts at once
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    except Exception:  # noqa: BLE001 - gone meanwhile
        return ""
    try:
        proc.send_signal(signal.SIGCONT)
    except Exception:  # noqa: BLE001 - gone already
        pass
    if _wait_gone([proc], max(2.0, min(grace_s, 5.0))):
        try:
            proc.send_signal(signal.SIGKILL)
        except Exception:  # noqa: BLE001
            pass
        _wait_gone([proc], KILL_WAIT_S)
    return ""


def crash_text(rec: dict | None) -> str:
    """'killed by signal SIGKILL at 17:50:03 (restarted 2 times; gave up); likely cause: ...' from a supervisor's
    record, '' when it has no exit recorded."""
    if not rec or not rec.get("exit_text"):
        return ""
    when = time.strftime("%H:%M:%S", time.localtime(rec["exited_at"])) if rec.get("exited_at") else "?"
    text = f"{rec['exit_text']} at {when}"
    if rec.get("state") == "gave-up":
        text += f" (gave up after {rec.get('restarts', 0)} restarts)"
    if rec.get("cause"):
        text += f"; likely cause: {rec['cause']}"
    return text


def recorded_end(rec: dict | None, st: ServiceState) -> bool:
    """Whether the supervisor's record says how *this* engine (st) ended: its exit is at or after the engine's
    start. A record whose exit is older describes an engine before a restart: when the supervisor itself was
    killed, the current engine's end was never recorded."""
    return bool(rec and rec.get("exit_text") and (rec.get("exited_at") or 0) >= (st.started_at or 0))


def end_unseen(rec: dict | None, st: ServiceState) -> bool:
    """This engine ended after its supervisor was killed: the record (if any) describes an earlier engine, and
    nobody saw this one end (unrecorded_end says so)."""
    return rec is not None and not recorded_end(rec, st) and not supervisor_alive(st)


def unrecorded_end(st: ServiceState, log: str | None) -> str:
    """How an engine that ended with no supervisor to see it ended: unknown, and since when it is silent."""
    try:
        last = time.strftime("%H:%M:%S", time.localtime(os.path.getmtime(log))) if log else ""
    except OSError:
        last = ""
    return (f"pid {st.pid} ended, how and when unknown: its supervisor was gone and recorded nothing"
            + (f" (the log's last line is from {last})" if last else ""))


def _signal_all(st: ServiceState, leader, procs: list, sig: int) -> None:
    """killpg only for the group of a verified leader that leads it (its own session: only its descendants can
    be in it); every identified process individually (psutil refuses a pid reused since it was listed).
    Each signal goes between two SIGCONTs: a stopped (SIGSTOP, SIGTSTP: suspended) engine is running again when
    SIGTERM arrives, so it acts on it at once instead of after the grace period, and one stopped again meanwhile is
    woken to handle what is pending. The SIGKILL escalation is preceded by SIGCONT too (the kernel kills a stopped
    process anyway; the wake-up costs nothing and keeps one rule).
    A process the group's signal reached is not signalled again: a second SIGTERM means "terminate immediately" to
    llama-server (and Ctrl-C-twice to most servers), which would skip its clean shutdown and the grace period."""
    order = (signal.SIGCONT, sig, signal.SIGCONT) if sig != signal.SIGKILL else (signal.SIGCONT, sig)
    grouped = False
    if leader is not None and st.pgid and st.pgid == leader.pid:
        try:
            if os.getpgid(leader.pid) == st.pgid:
                for s in order:
                    os.killpg(st.pgid, s)
                grouped = True
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        if grouped and _pgid(p.pid) == st.pgid:
            continue  # it had the group's signal
        for s in order:
            try:
                p.send_signal(s)
            except Exception:  # noqa: BLE001 - already gone
                break


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _wait_gone(procs: list, timeout_s: float) -> list:
    deadline = time.monotonic() + max(0.0, timeout_s)
    remaining = list(procs)
    for _ in range(int(timeout_s / 0.05) + 2):
        for p in remaining:
            _reap(p.pid)
        remaining = [p for p in remaining if not _gone(p)]
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return remaining


# ---------------------------------------------------------------------------------------------- preflight


def _zombie_status(pid: int) -> int | None:
    """Linux: the wait status of a zombie that its parent has not collected yet (/proc/PID/stat field 52)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
        return int(fields[49]) if fields[0] == "Z" else None
    except (OSError, IndexError, ValueError):
        return None

