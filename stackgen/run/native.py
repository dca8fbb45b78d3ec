"""Native services: the engine's binary and argv, how the key reaches it, `NativeRunner` (the supervisor starts
the engine as its child: `launch_engine`), and which runner a service kind uses."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stackgen import engines
from stackgen.errors import LaunchError
from stackgen.plan.plan import ServicePlan
from stackgen.run.client import Endpoint, api_key_from_env
from stackgen.run.process import (
    MARKER_ENV,
    _exe,
    _identify,
    _identity_now,
    _leader,
    _members,
    crash_text,
    end_unseen,
    rss_sum,
    stop_process_group,
    stop_supervisor,
    unrecorded_end,
)
from stackgen.run.results import Runner
from stackgen.run.state import ServiceState, StateDir, config_hash, open_log, rotate_log, tail

if TYPE_CHECKING:
    from stackgen.run.supervise import RestartPolicy


def budget_for(sp: ServicePlan, containers: bool = False) -> float:
    """The plan's one start-up budget (ServicePlan.startup_budget_s), the same natively and in a container."""
    return float(sp.startup_budget_s)


def request_model_name(sp: ServicePlan) -> str:
    """The model name requests carry (`Engine.served_model`; a fleet's instance serves as its service)."""
    from stackgen.run.fleet import served

    return engines.get(sp.engine).served_model(served(sp))


def endpoint_for(sp: ServicePlan) -> Endpoint:
    return Endpoint(sp.host, sp.port, sp.engine, request_model_name(sp), api_key_from_env(sp.api_key_env),
                    tls=sp.tls is not None)


def endpoint_from_state(st: ServiceState) -> Endpoint:
    return Endpoint(st.host, st.port, st.engine, st.model_name, tls=st.tls)


# ---------------------------------------------------------------------------------------------- binaries


def resolve_binary(sp: ServicePlan, stack_dir: Path) -> str:
    """The engine binary by the one rule run.sh also follows (stackgen.host.binaries)."""
    from stackgen.host.binaries import find

    try:
        return find(sp.engine, sp.spec.binary, stack_dir)
    except LaunchError as exc:
        raise LaunchError(f"service {sp.name}: {exc}") from None


def native_command(sp: ServicePlan, stack_dir: Path) -> engines.Command:
    """The service's command exactly as run.sh builds it (engines.command), with the binary found on this host."""
    from stackgen.run.fleet import served

    if not sp.command:
        raise LaunchError(f"service {sp.name}: the plan has no command line")
    engine = engines.get(sp.engine)
    return engines.command(engine, served(sp), binary=resolve_binary(sp, stack_dir), model_ref=sp.model_ref,
                           host=sp.host, port=sp.port, key_file=engines.KEY_FD)


def check_keys(sps: list[ServicePlan], containers: bool = False) -> list[str]:
    """run.sh refuses to start when serve.api_key_env is unset or empty (`${VAR:?}`); so does `up`. A value the
    engine would misread is refused too: in a key file (native) or in its variable (`containers`)."""
    problems = []
    for sp in sps:
        if sp.api_key_env and not os.environ.get(sp.api_key_env):
            problems.append(f"service {sp.name}: serve.api_key_env names {sp.api_key_env}, which is "
                            f"{'empty' if sp.api_key_env in os.environ else 'not set'}; export {sp.api_key_env}=<key> "
                            "before `stackgen up` (the key is handed to the engine, never written to a file)")
            continue
        key = engines.get(sp.engine).api_key
        if not sp.api_key_env or key is None:
            continue
        # natively `up` hands llama-server its key in a file (_key_fd), as run.sh and the systemd credential do; a
        # container gets it in the engine's variable, as compose, quadlet and kubernetes do
        why = key_value_problem(sp, os.environ[sp.api_key_env], by_env=containers or not key.file_flag)
        if why:
            problems.append(why)
    return problems


def key_value_problem(sp: ServicePlan, value: str, by_env: bool) -> str | None:
    """The refusal of a key value the engine would misread (None: none), in one wording for check_keys and the
    container runner (`up --containers` printed it twice, once each way: review L1)."""
    key = engines.get(sp.engine).api_key
    why = key.value_problem(value, by_env=by_env) if key is not None else None
    if not why:
        return None
    return f"service {sp.name}: the key in {sp.api_key_env} {why}; " + (
        f"use a key without {key.env_list!r}" if by_env else
        "use a key that does not start with it and has no line break")


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
            from stackgen.run import fleet

            if sp.unit_role == fleet.BALANCER:
                self._cmd[sp.name] = fleet.balancer_command(sp, self._state_root())
            else:
                self._cmd[sp.name] = native_command(sp, self.stack_dir)
        return self._cmd[sp.name]

    def _state_root(self) -> Path:
        if self.stack_file is None:
            raise LaunchError("a balancer needs the stack's state folder")
        return StateDir(self.stack_file).dir  # this stack file's own folder

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
            slots=sp.memory.parallel, unit_of=sp.unit_of, unit_role=sp.unit_role, drop_env=list(cmd.drop_env))

    def start(self, sp: ServicePlan, sd: StateDir, budget_s: float) -> tuple[ServiceState, object]:
        """Start the service's supervisor (stackgen.run.supervise), which starts the engine as its child: the
        supervisor sees how it ends and applies the restart policy after `up` has returned."""
        cmd = self.command(sp)
        key = None
        if cmd.key_mode is not None:
            key = os.environ.get(cmd.key_var or "", "")
            if not key:  # up's preflight checked this; never start a keyed service without its key
                raise LaunchError(check_keys([sp])[0])
        from stackgen.run import fleet
        from stackgen.run.supervise import spawn

        if sp.unit_role == fleet.BALANCER:
            fleet.write_config(sp, self._state_root(), cmd.argv[0])

        return spawn(self.launch_spec(sp, budget_s), sd, key, self.policy)

    def exited(self, st: ServiceState, handle: object | None) -> int | str | None:
        """During `up`: the engine's exit status once its supervisor (the handle) reported it and exited."""
        if isinstance(handle, subprocess.Popen):
            if handle.poll() is None:
                return None
            rec = self.record(st) or {}
            from stackgen.run.supervise import exit_code_of

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
            rec = self.record(st)
            if end_unseen(rec, st):
                # its supervisor was killed before it: the record's exit is an earlier engine's, not this one's
                return f"it had crashed: {unrecorded_end(st, str(self.log_file(st) or '') or None)}"
            crash = crash_text(rec)
            return f"it had crashed: {crash}" if crash else "its process had exited"
        try:
            if leader.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                return f"its process (pid {st.pid}) was stopped (SIGSTOP)"
        except psutil.Error:
            return "its process had exited"
        return ""

    def on_ready(self, st: ServiceState) -> None:
        """The engine answers: record its executable now (a wrapper `binary:` may have exec'd the engine). The
        process is identified by its start time and its marker only: its executable is what is being re-recorded
        (checking it against the wrapper's would reject the engine the wrapper became)."""
        from dataclasses import replace

        leader = _leader(replace(st, exe=None)) if st.service_id else _leader(st)
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
        return rss_sum(_members(st)) or None

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
    unit_of: str = ""
    unit_role: str = ""
    drop_env: list[str] = field(default_factory=list)  # Command.drop_env: not inherited from `up`'s environment


def launch_engine(spec: EngineLaunch, sd: StateDir, key: str | None, rotate: bool = True
                  ) -> tuple[ServiceState, subprocess.Popen]:
    """Spawn the engine in its own session with the service marker; the API key goes to it alone (an unlinked
    memfd for --api-key-file, or its environment variable), never to a file or its command line."""
    argv = list(spec.argv)
    log_path = sd.log_path(spec.name)
    if rotate:
        rotate_log(log_path)
    service_id = secrets.token_hex(16)  # the marker `down` checks before signalling (children inherit it)
    env = {**{k: v for k, v in os.environ.items() if k not in spec.drop_env}, **spec.env, MARKER_ENV: service_id}
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
                      model=spec.model, context_tokens=spec.context_tokens, slots=spec.slots,
                      unit_of=spec.unit_of, unit_role=spec.unit_role)
    return st, proc


def _runner_for(kind: str, stack_file: Path, stack_name: str = "", policy: "RestartPolicy | None" = None) -> Runner:
    stack_file = stack_file.resolve()
    if kind == "container":
        from stackgen.run.containers import ContainerRunner

        return ContainerRunner(stack_file.parent, stack_name, stack_file)
    return NativeRunner(stack_file.parent, stack_file, policy)


def select_services(names: list[str], wanted: tuple[str, ...] | list[str], where: str) -> list[str]:
    """`wanted` checked against `names` (all of them when empty); an unknown name is an error naming the others."""
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise LaunchError(f"no service {', '.join(repr(u) for u in unknown)} in {where} "
                          f"(services: {', '.join(names) or 'none'})")
    return [n for n in names if not wanted or n in wanted]


