"""Running a plan: `up` (start, wait until each model really answers, optionally verify), `down`, `status`, `logs`.

Native services run the same argv the `script` target execs, each in its own session/process group, with stdout and
stderr in `.stackgen/stacks/<stack file>/logs/<service>.log`. Containers go through the Docker Engine API
(stackgen.containers). What was started is recorded in that folder's `state.json` (stackgen.state) before waiting,
so `down` can stop it even after `up` itself crashed. A process is only ever signalled once it is identified as the
service's (exact start time, executable, and the STACKGEN_SERVICE_ID marker in its environment: `_foreign`).
Library code: raises LaunchError, reports progress through a callback, never prints.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from stackgen import engines
from stackgen.errors import LaunchError
from stackgen.health import DOWN, LOADING, READY, Endpoint, Probe, api_key_from_env, probe, stream_completion
from stackgen.plan import Plan, ServicePlan
from stackgen.state import ServiceState, StackState, StateDir, config_hash, open_log, open_read, rotate_log, tail

if TYPE_CHECKING:
    from stackgen.supervise import RestartPolicy

GRACE_S = 10.0  # SIGTERM -> SIGKILL
KILL_WAIT_S = 5.0
POLL_S = 0.25


class Interrupted(LaunchError):
    """`up` got SIGINT/SIGTERM; what it had started is stopped."""

    exit_code = 130


# ---------------------------------------------------------------------------------------------- options / results


@dataclass(frozen=True)
class UpOptions:
    containers: bool = False
    verify: bool = False
    timeout_s: float | None = None  # overrides the per-service startup budget
    grace_s: float = GRACE_S
    memory_check: bool = True
    verify_max_tokens: int = 32
    services: tuple[str, ...] = ()  # only these (default: all); others are neither started nor stopped
    restart: tuple[str, ...] = ()  # restart these even when they run unchanged (`stackgen restart`)
    policy: "RestartPolicy | None" = None  # native services' restart policy (default: on-failure, bounded)


@dataclass(frozen=True)
class Progress:
    service: str
    waiting_for: str
    elapsed_s: float
    budget_s: float
    last_log: str = ""


ProgressFn = Callable[[Progress], None]


@dataclass
class ServiceOutcome:
    name: str
    action: str  # started | restarted | unchanged
    where: str  # "pid 123" | "container abc"
    port: int
    ready_s: float | None = None
    reason: str = ""  # why a service was restarted (changed, exited, stopped, not answering)


@dataclass
class VerifyResult:
    service: str
    concurrency: int
    ok: int
    failed: int
    ttft_p50_s: float | None
    ttft_max_s: float | None
    decode_tokens_per_s_p50: float | None  # per stream
    aggregate_tokens_per_s: float
    predicted_tokens_per_s: float
    sample: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class UpResult:
    services: list[ServiceOutcome]
    stopped: list[str]
    verify: list[VerifyResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a recorded pid that now belongs to another process


@dataclass
class ServiceStatus:
    name: str
    engine: str
    state: str  # running | loading | dead | unhealthy
    where: str
    host: str
    port: int
    uptime_s: float | None
    rss_bytes: int | None
    detail: str = ""
    # running | loading | unhealthy | restarting (the supervisor waits out its backoff) | crashed | exited
    restart: str = ""  # the restart policy and how much of it is used: "on-failure 1/5", "no"
    restarts: int = 0
    last_exit: str = ""  # how the engine last ended: "killed by signal SIGKILL at 17:50:03; likely cause: ..."
    log_tail: list[str] = field(default_factory=list)  # the log's last lines when it has ended
    model: str = ""
    context_tokens: int | None = None
    slots: int | None = None


# ---------------------------------------------------------------------------------------------- runners


class Runner(Protocol):
    """How a service is started, watched and stopped: a native process group or a container."""

    kind: str

    def desired_hash(self, sp: ServicePlan) -> str: ...

    def start(self, sp: ServicePlan, sd: StateDir, budget_s: float) -> tuple[ServiceState, object]: ...

    def exited(self, st: ServiceState, handle: object | None) -> int | str | None:
        """None while running; else the exit code or a description."""

    def is_alive(self, st: ServiceState) -> bool: ...

    def log_tail(self, st: ServiceState, lines: int) -> list[str]: ...

    def stop(self, st: ServiceState, grace_s: float) -> str | None:
        """Stop the service; returns a note for the user (e.g. its pid is not the process `up` started)."""

    def owned_pids(self, st: ServiceState) -> set[int]: ...

    def rss(self, st: ServiceState) -> int | None: ...

    def where(self, st: ServiceState) -> str: ...


def budget_for(sp: ServicePlan, containers: bool = False) -> float:
    """The plan's one start-up budget (ServicePlan.startup_budget_s), the same natively and in a container."""
    return float(sp.startup_budget_s)


def request_model_name(sp: ServicePlan) -> str:
    """The model name requests carry (`Engine.served_model`)."""
    return engines.get(sp.engine).served_model(sp)


def endpoint_for(sp: ServicePlan) -> Endpoint:
    return Endpoint(sp.host, sp.port, sp.engine, request_model_name(sp), api_key_from_env(sp.api_key_env),
                    tls=sp.tls is not None)


def endpoint_from_state(st: ServiceState) -> Endpoint:
    return Endpoint(st.host, st.port, st.engine, st.model_name, tls=st.tls)


# ---------------------------------------------------------------------------------------------- binaries


def resolve_binary(sp: ServicePlan, stack_dir: Path) -> str:
    """The engine binary by the one rule run.sh also follows (stackgen.binaries)."""
    from stackgen.binaries import find

    try:
        return find(sp.engine, sp.spec.binary, stack_dir)
    except LaunchError as exc:
        raise LaunchError(f"service {sp.name}: {exc}") from None


def native_command(sp: ServicePlan, stack_dir: Path) -> engines.Command:
    """The service's command exactly as run.sh builds it (engines.command), with the binary found on this host."""
    if not sp.command:
        raise LaunchError(f"service {sp.name}: the plan has no command line")
    engine = engines.get(sp.engine)
    return engines.command(engine, sp, binary=resolve_binary(sp, stack_dir), model_ref=sp.model_ref, host=sp.host,
                           port=sp.port, key_file=engines.KEY_FD)


def check_keys(sps: list[ServicePlan]) -> list[str]:
    """run.sh refuses to start when serve.api_key_env is unset or empty (`${VAR:?}`); so does `up`."""
    problems = []
    for sp in sps:
        if sp.api_key_env and not os.environ.get(sp.api_key_env):
            problems.append(f"service {sp.name}: serve.api_key_env names {sp.api_key_env}, which is "
                            f"{'empty' if sp.api_key_env in os.environ else 'not set'}; export {sp.api_key_env}=<key> "
                            "before `stackgen up` (the key is handed to the engine, never written to a file)")
    return problems


def _key_fd(key: str) -> int:
    """A private, unlinked file holding the key, open for reading (memfd where the OS has it)."""
    data = (key + "\n").encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stackgen-api-key")  # close-on-exec; Popen(pass_fds=) hands it to the engine alone
    else:  # pragma: no cover - macOS
        import tempfile

        fd, path = tempfile.mkstemp(prefix="stackgen-key-")
        os.unlink(path)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ---------------------------------------------------------------------------------------------- native processes


class NativeRunner:
    kind = "process"

    def __init__(self, stack_dir: Path, stack_file: Path | None = None, policy: "RestartPolicy | None" = None):
        self.stack_dir = stack_dir
        self.stack_file = stack_file
        self.policy = policy
        self._cmd: dict[str, engines.Command] = {}

    def command(self, sp: ServicePlan) -> engines.Command:
        if sp.name not in self._cmd:
            self._cmd[sp.name] = native_command(sp, self.stack_dir)
        return self._cmd[sp.name]

    def argv(self, sp: ServicePlan) -> list[str]:
        return list(self.command(sp).argv)

    def desired_hash(self, sp: ServicePlan) -> str:
        cmd = self.command(sp)
        # The key's value is part of the configuration (a new key means a restart), kept only as a digest.
        key = os.environ.get(cmd.key_var, "") if cmd.key_var else ""
        key_id = hashlib.sha256(f"stackgen-key:{key}".encode()).hexdigest()[:16] if key else ""
        return config_hash(list(cmd.argv), dict(cmd.env), {"kind": self.kind, "key": key_id})

    def launch_spec(self, sp: ServicePlan, budget_s: float) -> "EngineLaunch":
        """What the supervisor needs to start (and restart) the engine: the command of engines.command, no key."""
        cmd = self.command(sp)
        return EngineLaunch(
            name=sp.name, engine=sp.engine, host=sp.host, port=sp.port, model_name=request_model_name(sp),
            tls=sp.tls is not None, argv=list(cmd.argv), env=dict(cmd.env), key_mode=cmd.key_mode,
            key_var=cmd.key_var, key_env=cmd.key_env, config_hash=self.desired_hash(sp), budget_s=budget_s,
            stack_dir=str(self.stack_dir), model=sp.model.name, context_tokens=sp.memory.context_per_request,
            slots=sp.memory.parallel)

    def start(self, sp: ServicePlan, sd: StateDir, budget_s: float) -> tuple[ServiceState, object]:
        """Start the service's supervisor (stackgen.supervise), which starts the engine as its child: the
        supervisor sees how it ends and applies the restart policy after `up` has returned."""
        cmd = self.command(sp)
        key = None
        if cmd.key_mode is not None:
            key = os.environ.get(cmd.key_var or "", "")
            if not key:  # up's preflight checked this; never start a keyed service without its key
                raise LaunchError(check_keys([sp])[0])
        from stackgen.supervise import spawn

        return spawn(self.launch_spec(sp, budget_s), sd, key, self.policy)

    def exited(self, st: ServiceState, handle: object | None) -> int | str | None:
        """During `up`: the engine's exit status once its supervisor (the handle) reported it and exited."""
        if isinstance(handle, subprocess.Popen):
            if handle.poll() is None:
                return None
            rec = self.record(st) or {}
            from stackgen.supervise import exit_code_of

            code = exit_code_of(rec)
            return code if code is not None else f"its supervisor exited (status {handle.returncode})"
        return None if self.is_alive(st) else "exited"

    def record(self, st: ServiceState) -> dict | None:
        """The supervisor's record of the service (how the engine last ended, restarts), if it has one."""
        if not st.sup_id or self.stack_file is None:
            return None
        return StateDir(self.stack_file).load_run(st.name)

    def is_alive(self, st: ServiceState) -> bool:
        return _leader(st) is not None

    def trouble(self, st: ServiceState) -> str:
        """Why a recorded service cannot be kept as it is ('' when its process runs and is not stopped)."""
        import psutil

        leader, foreign = _identify(st)
        if leader is None:
            if foreign:
                return foreign
            crash = crash_text(self.record(st))
            return f"it had crashed: {crash}" if crash else "its process had exited"
        try:
            if leader.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                return f"its process (pid {st.pid}) was stopped (SIGSTOP)"
        except psutil.Error:
            return "its process had exited"
        return ""

    def on_ready(self, st: ServiceState) -> None:
        """The engine answers: record its executable now (a wrapper `binary:` may have exec'd the engine)."""
        leader = _leader(st)
        if leader is not None:
            st.exe = _exe(leader) or st.exe

    def log_file(self, st: ServiceState) -> Path | None:
        root = self.stack_dir / ".stackgen"
        if not st.log:
            return None
        real = Path(os.path.realpath(st.log))
        return real if Path(os.path.realpath(root)) in real.parents else None

    def log_tail(self, st: ServiceState, lines: int) -> list[str]:
        path = self.log_file(st)
        return tail(path, lines) if path else []

    def stop(self, st: ServiceState, grace_s: float) -> str:
        """The supervisor first (so it restarts nothing), then the engine's processes."""
        notes = [stop_supervisor(st, grace_s), stop_process_group(st, grace_s)]
        return "; ".join(n for n in notes if n)

    def owned_pids(self, st: ServiceState) -> set[int]:
        return {p.pid for p in _members(st)}

    def rss(self, st: ServiceState) -> int | None:
        total = 0
        for p in _members(st):
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - psutil.Error and races
                continue
        return total or None

    def where(self, st: ServiceState) -> str:
        return f"pid {st.pid}"


@dataclass(frozen=True)
class EngineLaunch:
    """How to start one native engine, as plain data (it crosses to the supervisor process as JSON)."""

    name: str
    engine: str
    host: str
    port: int
    model_name: str
    tls: bool
    argv: list[str]
    env: dict[str, str]
    key_mode: str | None
    key_var: str | None
    key_env: str | None
    config_hash: str
    budget_s: float
    stack_dir: str
    model: str = ""
    context_tokens: int | None = None
    slots: int | None = None


def launch_engine(spec: EngineLaunch, sd: StateDir, key: str | None, rotate: bool = True
                  ) -> tuple[ServiceState, subprocess.Popen]:
    """Spawn the engine in its own session with the service marker; the API key goes to it alone (an unlinked
    memfd for --api-key-file, or its environment variable), never to a file or its command line."""
    argv = list(spec.argv)
    log_path = sd.log_path(spec.name)
    if rotate:
        rotate_log(log_path)
    service_id = secrets.token_hex(16)  # the marker `down` checks before signalling (children inherit it)
    env = {**os.environ, **spec.env, MARKER_ENV: service_id}
    pass_fds: tuple[int, ...] = ()
    if spec.key_mode is not None:
        if not key:
            raise LaunchError(f"service {spec.name}: no API key to start it with ({spec.key_var} is empty)")
        if spec.key_mode == "env":
            env[spec.key_env or ""] = key
        else:
            fd = _key_fd(key)
            pass_fds = (fd,)
            argv = [f"/dev/fd/{fd}" if a == engines.KEY_FD else a for a in argv]
    try:
        with open_log(log_path) as log:
            what = "up" if rotate else "supervisor restart"
            log.write(f"# stackgen {what}: {' '.join(spec.argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, env=env, cwd=spec.stack_dir, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        close_fds=True, pass_fds=pass_fds)
            except FileNotFoundError:
                raise LaunchError(f"service {spec.name}: {argv[0]} not found "
                                  f"(to install it: {engines.get(spec.engine).install_hint})") from None
            except PermissionError:
                raise LaunchError(f"service {spec.name}: {argv[0]} is not executable") from None
            except OSError as exc:
                raise LaunchError(f"service {spec.name}: cannot start {argv[0]}: {exc.strerror or exc}") from None
    finally:
        for fd in pass_fds:  # the child has its own copy; the key leaves this process's descriptors
            os.close(fd)
    create_time, start_ticks, exe = _identity_now(proc.pid)
    st = ServiceState(name=spec.name, engine=spec.engine, kind="process", host=spec.host, port=spec.port,
                      config_hash=spec.config_hash, started_at=time.time(), model_name=spec.model_name,
                      pid=proc.pid, pgid=proc.pid, create_time=create_time, log=str(log_path), argv=list(spec.argv),
                      budget_s=spec.budget_s, service_id=service_id, exe=exe, start_ticks=start_ticks, tls=spec.tls,
                      model=spec.model, context_tokens=spec.context_tokens, slots=spec.slots)
    return st, proc


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


def _members(st: ServiceState, leader=None) -> list:
    """Every live process of the service: the verified leader and its descendants, plus processes that carry the
    service's marker (members of its process group, or strays that left it with setsid after the leader died).
    Nothing is taken on the pid or the process group alone."""
    import psutil

    found: dict[int, object] = {}
    leader = leader if leader is not None else _leader(st)
    if leader is not None:
        found[leader.pid] = leader
        try:
            for c in leader.children(recursive=True):
                found[c.pid] = c
        except psutil.Error:
            pass
    if st.service_id:
        uid = os.getuid()
        for p in psutil.process_iter():
            if p.pid in found:
                continue
            try:
                if p.uids().real != uid:
                    continue
                if p.environ().get(MARKER_ENV) == st.service_id:
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
    try:
        proc.send_signal(signal.SIGTERM)  # psutil refuses if the pid was reused since it was identified
    except Exception:  # noqa: BLE001 - gone meanwhile
        return ""
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


def _signal_all(st: ServiceState, leader, procs: list, sig: int) -> None:
    """killpg only for the group of a verified leader that leads it (its own session: only its descendants can
    be in it); every identified process individually (psutil refuses a pid reused since it was listed).
    SIGTERM is followed by SIGCONT, so a stopped (SIGSTOP) engine handles it at once."""
    if leader is not None and st.pgid and st.pgid == leader.pid:
        try:
            if os.getpgid(leader.pid) == st.pgid:
                os.killpg(st.pgid, sig)
                if sig == signal.SIGTERM:
                    os.killpg(st.pgid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        for s in (sig, signal.SIGCONT) if sig == signal.SIGTERM else (sig,):
            try:
                p.send_signal(s)
            except Exception:  # noqa: BLE001 - already gone
                pass


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


def port_in_use(host: str, port: int) -> bool:
    """True when nothing could bind host:port now (a listener holds it). SO_REUSEADDR ignores TIME_WAIT leftovers."""
    from stackgen.health import connect_host

    addr = connect_host(host) if host not in ("0.0.0.0", "::") else host
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            return True
    return False


def port_holder(port: int) -> tuple[int | None, str]:
    """(pid, process name) of whoever listens on `port`; (None, '') when unknown."""
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid:
                try:
                    return c.pid, psutil.Process(c.pid).name()
                except psutil.Error:
                    return c.pid, "?"
    return None, ""


def check_ports(sps: list[ServicePlan], exempt_pids: set[int]) -> list[str]:
    problems = []
    for sp in sps:
        if not port_in_use(sp.host, sp.port):
            continue
        pid, name = port_holder(sp.port)
        if pid is not None and pid in exempt_pids:
            continue
        who = f"pid {pid} ({name})" if pid else "another process (its pid is not visible to this user)"
        problems.append(f"service {sp.name}: port {sp.port} is already in use by {who}; stop it or set "
                        f"services.{sp.name}.port to a free port")
    return problems


def _wait_ports_free(sps: list[ServicePlan], timeout_s: float) -> None:
    """A multi-threaded engine whose main thread has exited looks like a zombie while its other threads still
    close their sockets: give its ports a moment to be released before calling them taken."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(port_in_use(sp.host, sp.port) for sp in sps):
        time.sleep(0.1)


def check_models(sps: list[ServicePlan]) -> list[str]:
    problems = []
    for sp in sps:
        path = sp.model.path
        if path and not Path(path).exists():
            problems.append(f"service {sp.name}: model {path} does not exist")
    return problems


def check_memory(sps: list[ServicePlan], freed_bytes: int = 0) -> list[str]:
    import psutil

    need = sum(sp.memory.host_bytes for sp in sps)
    if not need:
        return []
    avail = psutil.virtual_memory().available + freed_bytes
    if need <= avail:
        return []
    names = ", ".join(sp.name for sp in sps)
    return [f"not enough free memory: {names} need {need / 2**30:.2f} GiB of RAM by the plan, this machine has "
            f"{avail / 2**30:.2f} GiB available now; stop other programs, lower concurrent_users or "
            f"context_tokens, or pass --no-memory-check"]


# ---------------------------------------------------------------------------------------------- diagnosis


_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("port in use: another process holds the port", re.compile(
        r"address already in use|couldn'?t bind|errno 98|failed to bind|bind\(\) failed", re.I)),
    ("unknown argument: the engine rejected a flag (check `overrides:` and the engine version)", re.compile(
        r"unknown argument|unrecognized argument|invalid argument|unrecognized option|invalid option|"
        r"error: argument|no such option|invalid value for|error while handling argument|argument has been removed",
        re.I)),
    ("missing file: the model (or another file the engine needs) was not found", re.compile(
        r"no such file|failed to open|does not exist|not found|filenotfounderror|cannot open|unable to open|"
        r"failed to load model|repository not found|is not a valid|couldn't find|can't load", re.I)),
    ("out of memory", re.compile(
        r"out of memory|std::bad_alloc|cannot allocate memory|failed to allocate|outofmemory|memoryerror|"
        r"\boom\b|unable to allocate", re.I)),
)


def likely_cause(lines: list[str], returncode: int | str | None) -> str:
    """A best guess at why an engine stopped, from its exit status and log."""
    if isinstance(returncode, int) and returncode in (-signal.SIGKILL, 137):
        return "killed (SIGKILL): most likely out of memory (the kernel's OOM killer) or killed by another process"
    text = "\n".join(lines[-60:])
    for cause, pattern in _CAUSES:
        m = pattern.search(text)
        if m:
            line = next((ln for ln in reversed(lines) if pattern.search(ln)), "")
            return f"{cause} (log: {line.strip()[:200]})" if line else cause
    if isinstance(returncode, int) and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return ""


def _failure(sp_name: str, what: str, lines: list[str], returncode: int | str | None, log: str | None) -> LaunchError:
    cause = likely_cause(lines, returncode)
    parts = [f"service {sp_name}: {what}"]
    if cause:
        parts.append(f"likely cause: {cause}")
    if lines:
        parts.append("last log lines" + (f" ({log})" if log else "") + ":")
        parts += [f"  | {ln[:300]}" for ln in lines[-20:]]
    elif log:
        parts.append(f"log: {log} (empty)")
    return LaunchError("\n".join(parts))


# ---------------------------------------------------------------------------------------------- up


_critical = threading.local()


@contextmanager
def _interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in `up`, so its cleanup runs (main thread only). Inside a
    `_deferred_interrupts()` block the signal is remembered and raised when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        name = signal.Signals(signum).name
        if getattr(_critical, "depth", 0):
            _critical.pending = name
            return
        raise KeyboardInterrupt(name)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """A signal arriving inside the block is raised when it ends (a Ctrl-C between spawning a process and
    recording it would leak the process). Signal masks are not used: children would inherit them."""
    _critical.depth = getattr(_critical, "depth", 0) + 1
    try:
        yield
    finally:
        _critical.depth -= 1
        pending = getattr(_critical, "pending", None)
        if pending and _critical.depth == 0:
            _critical.pending = None
            raise KeyboardInterrupt(pending)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Cleanup must finish: ignore SIGINT/SIGTERM while stopping what was started (bounded by the grace period)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _runner_for(kind: str, stack_file: Path, stack_name: str = "", policy: "RestartPolicy | None" = None) -> Runner:
    stack_file = stack_file.resolve()
    if kind == "container":
        from stackgen.containers import ContainerRunner

        return ContainerRunner(stack_file.parent, stack_name, stack_file)
    return NativeRunner(stack_file.parent, stack_file, policy)


def select_services(names: list[str], wanted: tuple[str, ...] | list[str], where: str) -> list[str]:
    """`wanted` checked against `names` (all of them when empty); an unknown name is an error naming the others."""
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise LaunchError(f"no service {', '.join(repr(u) for u in unknown)} in {where} "
                          f"(services: {', '.join(names) or 'none'})")
    return [n for n in names if not wanted or n in wanted]


def up(plan: Plan, opts: UpOptions = UpOptions(), progress: ProgressFn | None = None) -> UpResult:
    """Start every service of `plan` that is not already running unchanged; wait until each answers."""
    stack_file = Path(plan.stack_path)
    stack_dir = stack_file.resolve().parent
    sd = StateDir(stack_file)
    sd.acquire("up")
    try:
        with _interrupts():
            return _up_locked(plan, opts, progress, sd, stack_dir)
    finally:
        sd.release()


def _up_locked(plan: Plan, opts: UpOptions, progress: ProgressFn | None, sd: StateDir, stack_dir: Path) -> UpResult:
    state = sd.load(plan.stack_name)
    state.stack = plan.stack_name
    kind = "container" if opts.containers else "process"
    runner = _runner_for(kind, sd.stack_file, plan.stack_name, opts.policy)
    runners = {kind: runner}

    def runner_of(st: ServiceState) -> Runner:
        if st.kind not in runners:
            runners[st.kind] = _runner_for(st.kind, sd.stack_file, plan.stack_name)
        return runners[st.kind]

    chosen = select_services([sp.name for sp in plan.services], opts.services + opts.restart, str(sd.stack_file))
    services = [sp for sp in plan.services if sp.name in chosen]
    # What should run (resolving binaries/images first: a missing engine fails before anything changes).
    problems: list[str] = check_keys(services)
    # Fleet hook (issue 20): separate instances behind a balancer are rendered, not yet run by `up`.
    problems += [f"services.{sp.name}.replicas: {sp.replicas} separate instances behind a load balancer are planned "
                 f"and `stackgen up` starts one process per service; run the rendered fleet instead (`stackgen render`, "
                 f"then deploy/{sp.name}/run.sh from the script target, or the systemd, compose or kubernetes "
                 "target), or remove `replicas:`" for sp in services if sp.capacity is not None and sp.capacity.separate]
    wanted: dict[str, str] = {}
    for sp in services:
        try:
            wanted[sp.name] = runner.desired_hash(sp)
        except LaunchError as exc:
            problems.append(str(exc))
    if problems:
        raise LaunchError("\n".join(problems))

    keep, start, to_stop = [], [], []
    reasons: dict[str, str] = {}
    for sp in services:
        cur = state.services.get(sp.name)
        if cur is not None:
            if sp.name in opts.restart:
                reasons[sp.name] = "a restart was asked for"
            elif cur.kind != kind or cur.config_hash != wanted[sp.name]:
                reasons[sp.name] = "its configuration changed"
            else:
                reasons[sp.name] = _trouble(runner_of(cur), cur, sp)
                if not reasons[sp.name] and kind == "process" and cur.sup_id and cur.restart != _policy_mode(opts):
                    reasons[sp.name] = f"its restart policy changed ({cur.restart} -> {_policy_mode(opts)})"
                if not reasons[sp.name]:
                    keep.append(sp)
                    continue
        start.append(sp)
        if cur is not None:
            to_stop.append(cur)
    planned = {sp.name for sp in plan.services}
    if not opts.services and not opts.restart:  # like compose, `up SERVICE` leaves the other services alone
        to_stop += [st for n, st in state.services.items() if n not in planned]

    # Preflight: everything that can be known before spawning.
    exempt_pids: set[int] = set()
    exempt_ports: set[int] = set()  # a container's published port may be held by the engine's proxy process
    freed = 0
    for st in to_stop:
        exempt_pids |= runner_of(st).owned_pids(st)
        if st.kind == "container":
            exempt_ports.add(st.port)
        freed += runner_of(st).rss(st) or 0
    problems = check_models(start) + check_ports([sp for sp in start if sp.port not in exempt_ports], exempt_pids)
    if opts.memory_check:
        problems += check_memory(start, freed)
    if problems:
        raise LaunchError("\n".join(problems))

    stopped, notes = [], []
    for st in to_stop:
        note = runner_of(st).stop(st, opts.grace_s)
        if note:
            notes.append(f"{note}; left it running and started a new one")
        state.services.pop(st.name, None)
        sd.save(state)
        if st.name not in reasons:  # removed from the stack (a restarted one is reported with its reason)
            stopped.append(st.name)
    if to_stop:  # what the old services held must be free now
        _wait_ports_free(start, KILL_WAIT_S)
        problems = check_ports(start, set())
        if problems:
            raise LaunchError("\n".join(problems))

    outcomes = [ServiceOutcome(sp.name, "unchanged", runner_of(state.services[sp.name]).where(state.services[sp.name]),
                               sp.port) for sp in keep]
    started: list[ServiceState] = []
    handles: dict[str, object] = {}
    ok = False
    try:
        for sp in start:
            budget = opts.timeout_s if opts.timeout_s is not None else budget_for(sp, kind == "container")
            with _deferred_interrupts():  # a Ctrl-C between spawn and record would leak the process
                st, handle = runner.start(sp, sd, budget)
                started.append(st)
                handles[sp.name] = handle
                state.services[sp.name] = st
                sd.save(state)  # before waiting: `down` can stop it even if this process dies now
        ready = _wait_ready(plan, start, state, handles, runner, progress, sd)
        restarted = {st.name for st in to_stop}
        for sp in start:
            st = state.services[sp.name]
            st.ready_at = time.time()
            on_ready = getattr(runner, "on_ready", None)
            if on_ready is not None:
                on_ready(st)
            outcomes.append(ServiceOutcome(sp.name, "restarted" if sp.name in restarted else "started",
                                           runner.where(st), sp.port, ready.get(sp.name),
                                           reasons.get(sp.name, "") if sp.name in restarted else ""))
        sd.save(state)
        ok = True
    except KeyboardInterrupt as exc:
        names = _cleanup(started, runner, state, sd, opts.grace_s)
        raise Interrupted(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'}): stopped "
                          f"{', '.join(names) if names else 'nothing (nothing had started)'}") from None
    finally:
        if not ok:  # a failure (or an interrupt, already cleaned): stop what this run started
            _cleanup(started, runner, state, sd, opts.grace_s)

    result = UpResult(sorted(outcomes, key=lambda o: [s.name for s in plan.services].index(o.name)), stopped,
                      notes=notes)
    if opts.verify:
        result.verify = [verify_service(sp, opts.verify_max_tokens) for sp in services]
    return result


def _policy_mode(opts: UpOptions) -> str:
    from stackgen.supervise import RestartPolicy

    return (opts.policy or RestartPolicy()).mode


def _trouble(runner: Runner, st: ServiceState, sp: ServicePlan) -> str:
    """Why a running, unchanged service must be restarted ('' to keep it): its process is gone, is not the one
    `up` started, is stopped (SIGSTOP), or the model does not answer a health probe now."""
    trouble = getattr(runner, "trouble", None)
    why = trouble(st) if trouble is not None else ("" if runner.is_alive(st) else "it was not running")
    if why:
        return why
    slow = engines.get(st.engine).readiness.slow  # the probe is a 1-token completion
    res = probe(endpoint_for(sp), 30.0 if slow else 3.0)
    if res.state != READY:
        return f"it did not answer its health check ({res.detail or res.state})"
    return ""


def _cleanup(started: list[ServiceState], runner: Runner, state: StackState, sd: StateDir, grace_s: float) -> list[str]:
    names = []
    with _no_interrupts():
        for st in reversed(started):
            try:
                runner.stop(st, grace_s)
            except LaunchError:
                continue  # left in the state file: `down` retries
            state.services.pop(st.name, None)
            names.append(f"{st.name} ({runner.where(st)})")
        sd.save(state)
    started.clear()
    return names


class _Prober:
    """Runs one probe at a time per service in a daemon thread, so a slow answer never blocks the wait loop."""

    def __init__(self, ep: Endpoint):
        self.ep = ep
        self.result: Probe | None = None
        self._thread: threading.Thread | None = None
        self._next = 0.0

    def poll(self, remaining_s: float) -> Probe | None:
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        now = time.monotonic()
        if self._thread is None and now >= self._next:
            slow = engines.get(self.ep.engine).readiness.slow  # the probe itself loads the model
            timeout = max(2.0, min(60.0 if slow else 3.0, remaining_s))
            self._thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
            self._next = now + 0.5
            self._thread.start()
        return self.result

    def _run(self, timeout: float) -> None:
        self.result = probe(self.ep, timeout)


def _wait_ready(plan: Plan, start: list[ServicePlan], state: StackState, handles: dict[str, object], runner: Runner,
                progress: ProgressFn | None, sd: StateDir) -> dict[str, float]:
    t0 = time.monotonic()
    pending = {sp.name: sp for sp in start}
    probers = {sp.name: _Prober(endpoint_for(sp)) for sp in start}
    prepared: set[str] = set()
    ready: dict[str, float] = {}
    longest = max((state.services[n].budget_s for n in pending), default=0.0)
    last_report = 0.0
    for _ in range(int((longest + 5) / POLL_S) + 10):
        if not pending:
            break
        now = time.monotonic()
        elapsed = now - t0
        for name, sp in list(pending.items()):
            st = state.services[name]
            code = runner.exited(st, handles.get(name))
            if code is not None:
                time.sleep(0.2)  # let the last log lines land
                raise _failure(name, f"{sp.engine} exited during start-up (exit status {code})",
                               runner.log_tail(st, 40), code, st.log)
            result = probers[name].poll(st.budget_s - elapsed)
            if result is not None and result.state == READY:
                ready[name] = round(elapsed, 2)
                del pending[name]
                continue
            if name not in prepared and result is not None and result.state != DOWN:
                prepared.add(name)
                _prepare_model(plan, sp, st, sd, st.budget_s - elapsed)
            if elapsed > st.budget_s:
                what = result.detail if result else "no answer yet"
                raise _failure(name, f"not ready after {st.budget_s:.0f} s (last probe: {what}); raise the budget "
                               f"with --timeout if the machine is just slow", runner.log_tail(st, 40), None, st.log)
        if progress and pending and now - last_report >= 0.5:
            last_report = now
            name = next(iter(pending))
            st = state.services[name]
            res = probers[name].result
            progress(Progress(name, _waiting_for(pending[name].engine, res), elapsed, st.budget_s,
                              (runner.log_tail(st, 1) or [""])[-1]))
        if pending:
            time.sleep(POLL_S)
    if pending:
        names = ", ".join(pending)
        raise LaunchError(f"services {names}: not ready in time")
    return ready


def _waiting_for(engine: str, res: Probe | None) -> str:
    what = engines.get(engine).readiness.describe
    return f"{what} ({res.detail})" if res and res.detail else what


def _prepare_model(plan: Plan, sp: ServicePlan, st: ServiceState, sd: StateDir, budget_s: float) -> None:
    """The daemon is up: run the engine's model set-up steps (Ollama: pull, then create the tuned model
    `stackgen-<service>` from the Modelfile `render` writes too)."""
    engine = engines.get(sp.engine)
    binary = st.argv[0] if st.argv else engine.binary
    steps = engine.setup_steps(sp, binary, sd.root, Path(plan.stack_path))
    if not steps:
        return
    env = {**os.environ, **sp.env}
    deadline = max(5.0, budget_s)
    with open(st.log or os.devnull, "ab") as log:
        for argv in steps:
            _run_tool(argv, env, log, deadline, sp.name)


def _run_tool(argv: list[str], env: dict[str, str], log, timeout: float, name: str) -> None:
    try:
        r = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"service {name}: `{' '.join(argv[1:3])}` did not finish in {timeout:.0f} s") from None
    if r.returncode != 0:
        raise LaunchError(f"service {name}: `{' '.join(argv)}` failed (exit {r.returncode}); see the service log")


# ---------------------------------------------------------------------------------------------- verify


VERIFY_PROMPT = "The capital of France is"


def verify_service(sp: ServicePlan, max_tokens: int = 32, concurrency: int | None = None) -> VerifyResult:
    """Short streaming requests at the declared concurrency: time to first token and decode speed vs the plan."""
    ep = endpoint_for(sp)
    n = max(1, min(concurrency or sp.workload.concurrent_users, 64))
    results = [None] * n
    barrier = threading.Barrier(n)

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        results[i] = stream_completion(ep, VERIFY_PROMPT, max_tokens, timeout=120.0)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=130)
    wall = time.monotonic() - t0
    done = [r for r in results if r is not None and not r.error and r.tokens > 0]
    errors = [r.error or "no tokens" for r in results if r is None or r.error or r.tokens == 0]
    ttfts = sorted(r.ttft_s for r in done if r.ttft_s is not None)
    rates = sorted(x for x in (r.decode_tokens_per_s for r in done) if x)
    total_tokens = sum(r.tokens for r in done)
    return VerifyResult(
        service=sp.name, concurrency=n, ok=len(done), failed=n - len(done),
        ttft_p50_s=_median(ttfts), ttft_max_s=ttfts[-1] if ttfts else None,
        decode_tokens_per_s_p50=_median(rates), aggregate_tokens_per_s=total_tokens / wall if wall > 0 else 0.0,
        predicted_tokens_per_s=sp.predicted_decode_tokens_per_s,
        sample=(done[0].text if done else "")[:200], errors=[e[:200] for e in errors[:3]],
    )


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


# ---------------------------------------------------------------------------------------------- down / status / logs


def down(stack_file: str | Path, grace_s: float = GRACE_S, notes: list[str] | None = None,
         services: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Stop every service `up` started for this stack (by the state file, plus labelled containers), or only
    `services`. A recorded pid that now belongs to another process is left alone: the entry is dropped and a note
    added to `notes`."""
    sd = StateDir(stack_file)
    if not sd.root.exists():
        return []
    sd.acquire("down")
    try:
        state = sd.load()
        names = select_services(sorted(state.services), services, f"what runs for {sd.stack_file}") if services else None
        had_containers = not services and any(st.kind == "container" for st in state.services.values())
        runners: dict[str, Runner] = {}
        stopped, failures = [], []
        for name, st in sorted(state.services.items()):
            if names is not None and name not in names:
                continue
            if st.kind not in runners:
                runners[st.kind] = _runner_for(st.kind, sd.stack_file, state.stack)
            runner = runners[st.kind]
            try:
                note = runner.stop(st, grace_s)
            except LaunchError as exc:
                failures.append(str(exc))
                continue
            state.services.pop(name, None)
            sd.save(state)
            sd.drop_run(name)
            if note:
                if notes is not None:
                    notes.append(f"{note}; left it running and forgot the entry (if that process is yours, stop "
                                 f"it yourself: kill {st.pid})")
                continue
            stopped.append(f"{name} ({runner.where(st)})")
        if had_containers:
            stopped += _down_stray_containers(sd, grace_s)
        if failures:
            raise LaunchError("\n".join(failures))
        return stopped
    finally:
        sd.release()


def _down_stray_containers(sd: StateDir, grace_s: float) -> list[str]:
    """Containers labelled for this stack file but missing from the state (e.g. `up` was killed mid-create)."""
    try:
        from stackgen.containers import remove_labelled
    except ImportError:
        return []
    try:
        return remove_labelled(str(sd.stack_file), grace_s)
    except LaunchError:
        return []


def status(stack_file: str | Path, probe_timeout_s: float = 3.0, services: list[str] | tuple[str, ...] = ()
           ) -> list[ServiceStatus]:
    """Each recorded service: running / loading / unhealthy / restarting / crashed / exited, where, port, uptime,
    RSS (health is probed), its restart policy and how the engine last ended."""
    sd = StateDir(stack_file)
    if not sd.has_state():
        return []
    state = sd.load()
    names = (select_services(sorted(state.services), services, f"what runs for {sd.stack_file}") if services
             else sorted(state.services))
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
    row = ServiceStatus(st.name, st.engine, "", runner.where(st), st.host, st.port, None, None,
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
    if stuck:  # e.g. stopped with SIGSTOP: a probe would only time out
        row.state, row.detail = "unhealthy", stuck
        return row
    slow = engines.get(st.engine).readiness.slow
    res = probe(endpoint_from_state(st), 30.0 if slow else probe_timeout_s)
    if res.state == READY:
        row.state = "running"
    elif res.state in (LOADING, DOWN) and st.ready_at is None and uptime < st.budget_s:
        row.state = "loading"
    else:
        row.state = "unhealthy"
    row.detail = res.detail
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
    row.state = "exited" if rec is not None and rec.get("exit_code") == 0 and not rec.get("exit_signal") else "crashed"
    if row.last_exit:
        row.detail = foreign or row.last_exit
    else:  # no supervisor saw it end (an older stackgen, a container): what the log says
        cause = foreign or likely_cause(lines, None)
        row.detail = cause or (lines or [""])[-1][:160]
    if rec is not None and not supervisor_alive(st) and rec.get("state") not in ("gave-up", "crashed", "exited"):
        row.detail += " (its supervisor is gone: nothing will restart it)"
    return row


def ps(probe_timeout_s: float = 2.0) -> list[tuple[Path, ServiceStatus]]:
    """Every service stackgen runs for this user, from every stack file in the registry (stackgen.state), as
    (stack file, status). A stack whose state file cannot be read is listed with the reason."""
    from stackgen.state import registered_stacks

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


def _zombie_status(pid: int) -> int | None:
    """Linux: the wait status of a zombie that its parent has not collected yet (/proc/PID/stat field 52)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
        return int(fields[49]) if fields[0] == "Z" else None
    except (OSError, IndexError, ValueError):
        return None


__all__ = ["UpOptions", "UpResult", "up", "down", "status", "logs", "verify_service", "budget_for", "likely_cause",
           "resolve_binary", "Progress", "Interrupted", "stop_process_group", "port_holder", "port_in_use"]
