"""`down`, `status`, `ps`, `logs` of a stack that `up` started, read from its `.stackgen/` state."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

from stackgen import engines
from stackgen.errors import LaunchError
from stackgen.run.diagnose import likely_cause
from stackgen.run.fleet import BALANCER, drop_config
from stackgen.run.native import NativeRunner, _runner_for, endpoint_from_state, select_services
from stackgen.run.process import (GRACE_S, _exit_status, _zombie_status, crash_text, end_unseen, recorded_end,
                                  supervisor_alive, unrecorded_end)
from stackgen.run.readiness import DOWN, LOADING, READY, probe
from stackgen.run.results import Runner, ServiceStatus
from stackgen.run.state import ServiceState, StateDir, open_read, tail


def down(stack_file: str | Path, grace_s: float = GRACE_S, notes: list[str] | None = None,
         services: list[str] | tuple[str, ...] = (), ended: list[str] | None = None) -> list[str]:
    """Stop every service `up` started for this stack (by the state file, plus labelled containers), or only
    `services`. A recorded pid that now belongs to another process is left alone: the entry is dropped and a note
    added to `notes`. A service that had already ended (nothing of it ran, no supervisor) is only removed from the
    state: it goes to `ended` when given (`down` says "removed"), else with the stopped ones."""
    sd = StateDir(stack_file)
    if not sd.root.exists():
        return []
    try:
        sd.acquire("down")
        writable = True
    except LaunchError:
        if not read_only(sd.root):
            raise
        # a read-only stack folder (a remount, a snapshot): stop the services anyway, as `status` still reads them;
        # nothing can write the state there (not `up` either, so no lock is needed), which is said
        writable = False
        if notes is not None:
            notes.append(f"{sd.root} is on a read-only file system: stopped what runs without the stack's lock, and "
                         f"its state could not be updated (`status` shows the services as ended until the folder "
                         f"is writable and `down` runs again)")
    try:
        state = sd.load()
        if sd.copied_from and writable:  # said once: the copy's state is rewritten as this stack file's own state
            if notes is not None:
                notes.append(sd.copy_note())
            sd.save(state)
        names = _named(state, services, f"what runs for {sd.stack_file}") if services else None
        had_containers = not services and any(st.kind == "container" for st in state.services.values())
        runners: dict[str, Runner] = {}
        stopped, failures = [], []
        for name, st in sorted(state.services.items()):
            if names is not None and name not in names:
                continue
            if st.kind not in runners:
                runners[st.kind] = _runner_for(st.kind, sd.stack_file, state.stack)
            runner = runners[st.kind]
            was_running = _running(runner, st)
            try:
                note = runner.stop(st, grace_s)
            except LaunchError as exc:
                failures.append(str(exc))
                continue
            state.services.pop(name, None)
            if writable:
                sd.save(state)
                sd.drop_run(name)
                if st.unit_role == BALANCER:  # its config, written by `up` (run/fleet.py), goes with it
                    drop_config(sd.dir, name)
            if note:
                if notes is not None:
                    notes.append(f"{note}; left it running and forgot the entry (if that process is yours, stop "
                                 f"it yourself: kill {st.pid})")
                continue
            (stopped if was_running or ended is None else ended).append(f"{name} ({runner.where(st)})")
        if had_containers:
            stopped += _down_stray_containers(sd, grace_s)
        if failures:
            raise LaunchError("\n".join(failures))
        return stopped
    finally:
        sd.release()


def read_only(path: Path) -> bool:
    """The file system holding `path` is mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _running(runner: Runner, st: ServiceState) -> bool:
    """Anything of the service runs: its engine (or a container), a process of its session, or its supervisor."""
    try:
        if runner.is_alive(st):
            return True
        if isinstance(runner, NativeRunner):
            return bool(runner.owned_pids(st)) or supervisor_alive(st)
    except LaunchError:
        return True  # cannot tell: say what stop does
    return False


def _groups(state) -> dict[str, list[str]]:
    """Stack service -> its entries in the state: itself, or a fleet's balancer and instances (run/fleet.py)."""
    groups: dict[str, list[str]] = {}
    for n, st in sorted(state.services.items()):
        groups.setdefault(st.unit_of or n, []).append(n)
    return groups


def running_names(stack_file: str | Path) -> list[str]:
    """The state's entries and fleet names for this stack ([] when `up` left nothing)."""
    sd = StateDir(stack_file)
    if not sd.has_state():
        return []
    state = sd.load()
    return sorted(set(state.services) | set(_groups(state)))


def serving_ports(stack_file: str | Path) -> dict[int, str]:
    """port -> the state entry of this stack whose process is alive on it ({} when nothing runs): the ports that
    are in use because this stack is up (doctor's port check)."""
    sd = StateDir(stack_file)
    if not sd.has_state():
        return {}
    state = sd.load()
    runners: dict[str, Runner] = {}
    out = {}
    for name, st in sorted(state.services.items()):
        if st.kind not in runners:
            runners[st.kind] = _runner_for(st.kind, sd.stack_file, state.stack)
        if runners[st.kind].is_alive(st):
            out[st.port] = name
    return out


def processes_of(stack_file: str | Path, service: str) -> list[str]:
    """The state's entries for one name: a fleet's balancer and instances, else the name itself."""
    sd = StateDir(stack_file)
    if not sd.has_state():
        return [service]
    return _groups(sd.load()).get(service, [service])


def _named(state, wanted, where: str) -> list[str]:
    """The state entries `wanted` names: a service's own, or every process of a fleet (its name), or one of them."""
    groups = _groups(state)
    chosen = select_services(sorted(set(state.services) | set(groups)), wanted, where)
    return sorted({m for c in chosen for m in groups.get(c, [c])})


def _down_stray_containers(sd: StateDir, grace_s: float) -> list[str]:
    """Containers labelled for this stack file but missing from the state (e.g. `up` was killed mid-create)."""
    try:
        from stackgen.run.containers import remove_labelled
    except ImportError:
        return []
    try:
        return remove_labelled(str(sd.stack_file), grace_s)
    except LaunchError:
        return []


def status(stack_file: str | Path, probe_timeout_s: float = 3.0, services: list[str] | tuple[str, ...] = (),
           notes: list[str] | None = None) -> list[ServiceStatus]:
    """Each recorded service: running / loading / unhealthy / restarting / crashed / exited, where, port, uptime,
    RSS (health is probed), its restart policy and how the engine last ended."""
    sd = StateDir(stack_file)
    if not sd.has_state():
        return []
    state = sd.load()
    if sd.copied_from and notes is not None:
        notes.append(sd.copy_note())
    names = _named(state, services, f"what runs for {sd.stack_file}") if services else sorted(state.services)
    runners: dict[str, Runner] = {}
    out = []
    for name in names:
        st = state.services[name]
        if st.kind not in runners:
            runners[st.kind] = _runner_for(st.kind, sd.stack_file, state.stack)
        out.append(_status_of(runners[st.kind], st, probe_timeout_s))
    return out


def _status_of(runner: Runner, st: ServiceState, probe_timeout_s: float) -> ServiceStatus:
    rec = runner.record(st) if isinstance(runner, NativeRunner) else None
    engine = f"haproxy ({st.engine})" if st.unit_role == BALANCER else st.engine
    row = ServiceStatus(st.name, engine, "", runner.where(st), st.host, st.port, None, None,
                        model=st.model, context_tokens=st.context_tokens, slots=st.slots)
    if rec is not None:
        row.restarts = rec.get("restarts", 0)
        row.restart = "no" if st.restart == "no" else f"{st.restart} {row.restarts}/{rec.get('max_restarts', '?')}"
        row.last_exit = crash_text(rec)
    if not runner.is_alive(st):
        return _ended(runner, st, rec, row)
    uptime = time.time() - st.started_at
    row.uptime_s, row.rss_bytes = uptime, runner.rss(st)
    trouble = getattr(runner, "trouble", None)
    stuck = trouble(st) if trouble is not None else ""
    orphan = rec is not None and not supervisor_alive(st)  # the engine runs, but nothing would restart it
    if orphan:
        row.restart = f"{row.restart} (no supervisor)" if st.restart != "no" else row.restart
    gone = "its supervisor is gone: nothing will restart it; " if orphan else ""  # the important part first
    if stuck:  # e.g. stopped with SIGSTOP: a probe would only time out
        row.state, row.detail = "unhealthy", gone + stuck
        return row
    slow = engines.get(st.engine).readiness.slow
    res = probe(endpoint_from_state(st), 30.0 if slow else probe_timeout_s)
    if res.state == READY:
        row.state = "running"
    elif res.state in (LOADING, DOWN) and st.ready_at is None and uptime < st.budget_s:
        row.state = "loading"
    else:
        row.state = "unhealthy"
    row.detail = gone + res.detail
    return row


def _ended(runner: Runner, st: ServiceState, rec: dict | None, row: ServiceStatus) -> ServiceStatus:
    """A service whose engine is not running: restarting (its supervisor waits out the backoff), crashed, exited."""
    trouble = getattr(runner, "trouble", None)
    foreign = trouble(st) if trouble is not None else ""
    foreign = foreign if foreign.startswith("pid ") else ""
    lines = (rec or {}).get("log_tail") or runner.log_tail(st, 30)
    row.log_tail = lines[-10:]
    if rec is not None and rec.get("state") in ("backoff", "starting") and supervisor_alive(st):
        left = max(0.0, (rec.get("next_restart_at") or 0) - time.time())
        row.state = "restarting"
        row.detail = f"{row.last_exit}; restart {row.restarts + 1} in {left:.0f} s"
        return row
    if rec is not None and not recorded_end(rec, st) and supervisor_alive(st):
        row.last_exit = ""  # its supervisor is writing down this end now: not an earlier engine's
    elif end_unseen(rec, st):
        # its supervisor was killed before this engine ended: the record's exit is an earlier engine's (before a
        # restart), not this one's, which nobody saw end
        row.state = "crashed"
        row.last_exit = foreign or unrecorded_end(st, str(runner.log_file(st) or "") or None)
        lines = runner.log_tail(st, 30)
        row.log_tail = lines[-10:]
        # the cause from this engine's own lines: those after the supervisor's last line (an earlier end, a restart)
        own = [i for i, ln in enumerate(lines) if ln.startswith("[stackgen ")]
        cause = likely_cause(lines[own[-1] + 1:] if own else lines, None)
        row.detail = row.last_exit + (f"; likely cause: {cause}" if cause else "")
        return row
    row.state = "exited" if rec is not None and rec.get("exit_code") == 0 and not rec.get("exit_signal") else "crashed"
    if row.last_exit:
        row.detail = foreign or row.last_exit
    else:  # no supervisor saw it end (an older stackgen, a container): the container's end, what the log says
        row.last_exit = _container_end(runner, st) if st.kind == "container" else ""
        cause = foreign or likely_cause(lines, None)
        said = cause or (lines or [""])[-1][:160]
        row.detail = "; ".join(x for x in (row.last_exit, said) if x) or (
            "its process ended; how and when are unknown (no supervisor recorded it: started by an older stackgen?)")
    if rec is not None and not supervisor_alive(st) and rec.get("state") not in ("gave-up", "crashed", "exited"):
        row.detail = "its supervisor is gone: nothing will restart it; " + row.detail  # the important part first
    return row


def _container_end(runner: Runner, st: ServiceState) -> str:
    """How a container ended, from the engine's record of it: 'exited with status 137 (SIGKILL: ...)', or that it
    was removed (its exit status went with it)."""
    try:
        code = runner.exited(st, None)
    except LaunchError:
        return ""
    if code is None:
        return ""
    if code == "container removed":
        return "its container was removed (docker/podman rm?): its exit status went with it"
    if isinstance(code, int) and code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            return f"exited with status {code}"
        why = ": killed (docker/podman kill, or out of memory)" if name == "SIGKILL" else ""
        return f"exited with status {code} ({name}{why})"
    return f"exited with status {code}" if isinstance(code, int) else str(code)


def ps(probe_timeout_s: float = 2.0) -> list[tuple[Path, ServiceStatus]]:
    """Every service stackgen runs for this user, from every stack file in the registry (stackgen.run.state), as
    (stack file, status). A stack whose state file cannot be read is listed with the reason."""
    from stackgen.run.state import registered_stacks

    rows: list[tuple[Path, ServiceStatus]] = []
    for file in registered_stacks():
        try:
            rows += [(file, r) for r in status(file, probe_timeout_s)]
        except LaunchError as exc:
            rows.append((file, ServiceStatus("?", "?", "unknown", "-", "-", 0, None, None,
                                             str(exc).splitlines()[0][:200])))
    return rows


def logs(stack_file: str | Path, service: str | list[str] | None = None, follow: bool = False, lines: int = 200,
         max_seconds: float = 86400.0) -> Iterator[tuple[str, str]]:
    """(service, line) pairs: the last `lines` of each service's log, then new lines while `follow`. Following
    ends for a service when its process (or container) is gone, with a last line saying how it ended; it ends
    when no followed service is left. Only log files inside `.stackgen/` are read."""
    sd = StateDir(stack_file)
    state = sd.load()
    wanted = [service] if isinstance(service, str) else list(service or [])
    groups = _groups(state)
    wanted = [m for w in wanted for m in (groups.get(w) or [w])]  # a fleet's name: all of its processes
    names = sorted(state.services) if not wanted else wanted
    for w in wanted:
        if w not in state.services and not sd.log_path(w).exists():
            known = ", ".join(sorted(state.services)) or "none are running"
            raise LaunchError(f"no service {w!r} in {sd.stack_file} ({known})")
    if not names:
        names = sorted(p.stem for p in sd.logs_dir.glob("*.log")) if sd.logs_dir.exists() else []
    runners: dict[str, Runner] = {}
    sources = {}
    for n in names:
        st = state.services.get(n)
        kind = st.kind if st is not None else "process"
        if kind not in runners:
            runners[kind] = _runner_for(kind, sd.stack_file, state.stack)
        runner = runners[kind]
        if kind == "container":
            sources[n] = ("container", runner, st)
        else:
            path = sd.contained_log(st.log if st else None, n)
            if st is not None and st.log and path != Path(os.path.realpath(st.log)):
                yield n, (f"[stackgen] the state file names the log {st.log}, which is not inside {sd.root}: "
                          f"not read" + (f"; showing {path}" if path else ""))
            sources[n] = ("file", path, st)
    offsets: dict[str, int] = {}
    for n, (kind, src, st) in sources.items():
        if kind == "file":
            if src is None:
                continue
            if st is not None and not os.path.lexists(src):  # `logs` printed nothing at all (audit L6)
                yield n, (f"[stackgen] the log file {src} is missing (deleted?): nothing of {n}'s output can be "
                          f"shown; a running engine keeps writing to the deleted file (`stackgen restart {n}` "
                          f"starts a new log)")
                offsets[n] = 0  # `logs -f` shows a new log from its start
                continue
            for ln in tail(src, lines, max_bytes=4 * 1024 * 1024):
                yield n, ln
            try:
                offsets[n] = os.path.getsize(src)
            except OSError:
                offsets[n] = 0
        else:
            yield from ((n, ln) for ln in src.log_tail(st, lines))
    if not follow:
        return
    deadline = time.monotonic() + max_seconds
    since = {n: time.time() for n in sources}
    buf: dict[str, bytes] = {n: b"" for n in sources}
    following = dict(sources)
    for n, (kind, src, st) in sources.items():  # nothing runs: nothing to follow
        if st is None or src is None:
            del following[n]
            yield n, f"[stackgen] {n} is not running (start it with `stackgen up {sd.stack_file}`)"
    last_check = 0.0
    while following and time.monotonic() <= deadline:
        check = time.monotonic() - last_check >= 1.0
        if check:
            last_check = time.monotonic()
        for n, (kind, src, st) in list(following.items()):
            runner = runners[st.kind]
            ended = check and not runner.is_alive(st)  # looked at before the last read: no line is lost
            if ended and kind == "file" and supervisor_alive(st):
                # its supervisor restarts it (the log is appended to): follow the new engine once recorded
                newer = _reload(sd, n)
                if newer is not None and newer.sup_id == st.sup_id:
                    following[n] = (kind, src, newer)
                ended = False
            if kind == "file":
                yield from ((n, ln) for ln in _read_new(src, offsets, buf, n, final=ended))
            else:
                now = time.time()
                for ln in src.logs_since(st, since[n]):
                    yield n, ln
                since[n] = now
            if ended:
                del following[n]
                yield n, f"[stackgen] {n} ended: {how_it_ended(runner, st)}"
        if following:
            time.sleep(0.25)


def _read_new(src: Path, offsets: dict[str, int], buf: dict[str, bytes], n: str, final: bool) -> list[str]:
    try:
        with open_read(src) as f:
            size = os.fstat(f.fileno()).st_size
            if size < offsets[n]:
                offsets[n] = 0  # rotated by a restart
            f.seek(offsets[n])
            data = f.read(1024 * 1024 if not final else -1)
    except OSError:
        data = b""
    offsets[n] += len(data)
    buf[n] += data
    *complete, buf[n] = buf[n].split(b"\n")
    if final and buf[n]:
        complete.append(buf[n])
        buf[n] = b""
    return [ln.decode("utf-8", "replace").rstrip("\r") for ln in complete]


def _reload(sd: StateDir, name: str) -> ServiceState | None:
    try:
        return sd.load().services.get(name)
    except LaunchError:
        return None


def how_it_ended(runner: Runner, st: ServiceState) -> str:
    """How a service's process ended: exit code or signal when this process can know it, else what the log says."""
    if st.kind == "container":
        code = runner.exited(st, None)
        return f"the container exited (exit status {code})" if code is not None else "the container is gone"
    if isinstance(runner, NativeRunner) and st.sup_id:
        for _ in range(20):  # its supervisor writes how it ended a moment after reaping it
            rec = runner.record(st) or {}
            if rec.get("exited_at", 0) >= st.started_at and rec.get("engine_pid") == st.pid:
                return f"pid {st.pid} {crash_text(rec)}"
            time.sleep(0.1)
    status = _exit_status.get(st.pid or 0)
    if status is None and st.pid:
        status = _zombie_status(st.pid)
    if status is not None:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"pid {st.pid} was killed by signal {name}" + (
                " (out of memory, or killed by another process)" if sig == signal.SIGKILL else "")
        return f"pid {st.pid} exited with status {os.WEXITSTATUS(status)}"
    trouble = getattr(runner, "trouble", None)
    foreign = trouble(st) if trouble is not None else ""
    if foreign.startswith("pid "):
        return foreign
    cause = likely_cause(runner.log_tail(st, 60), None)
    return (f"pid {st.pid} is gone (its exit status went to its parent, not to stackgen)"
            + (f"; likely cause: {cause}" if cause else ""))
