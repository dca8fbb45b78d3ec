"""The supervisor of one native service: the engine's parent after `up` has returned.

`up` starts `python -m stackgen.run.supervise` (own session, its own STACKGEN_SERVICE_ID marker) and hands it the
engine's command as JSON on a pipe, with the API key when the service has one (the key never reaches a file, a
command line or the supervisor's environment). The supervisor starts the engine (run.native.launch_engine, the same code
and key delivery `up` used before), answers with the engine's identity, and then waits on it. Being the parent, it
knows how the engine ended (exit status or signal), which no other process can learn afterwards; it records that,
the likely cause and the last log lines in `.stackgen/stacks/<file>/run/<service>.json` (StateDir.save_run), which
`status`, `ps`, `logs -f` and the next `up` read.

Restart policy (`up --restart on-failure`, the default; `--restart no`), the systemd unit's rules for a native
process (systemd.service(5): Restart=on-failure with RestartForceExitStatus=0): an end by SIGTERM/SIGINT/SIGHUP/
SIGPIPE is clean and not restarted; any other end, an exit with status 0 included -- a server that exits by itself
has stopped serving: vLLM's API server exits 0 after its engine core dies --, starts the engine again after a backoff
(1 s, doubling, at most the unit's
RestartSec), at most StartLimitBurst times within StartLimitIntervalSec; then the supervisor gives up and the
service shows as crashed. An engine that fails before it has ever answered a health probe at the first start is
not restarted: `up` is still waiting and reports it.

A restart takes the stack's lock (never while `up`/`down` hold it), checks that the state file still names this
supervisor, and records the new engine's identity there, so `down` identifies it as before. `down` SIGTERMs the
supervisor (after identifying it like an engine), waits for it to exit, and only then stops the engine.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stackgen.errors import LaunchError
from stackgen.run.state import ServiceState, StateDir, open_log, register, tail
from stackgen.render.targets.systemd import RESTART_SEC, START_LIMIT_BURST, START_LIMIT_INTERVAL

HANDSHAKE_S = 60.0
CLEAN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)


@dataclass(frozen=True)
class RestartPolicy:
    mode: str = "on-failure"  # "on-failure" | "no"
    max_restarts: int = START_LIMIT_BURST
    window_s: float = float(START_LIMIT_INTERVAL)
    backoff_s: float = 1.0
    max_backoff_s: float = float(RESTART_SEC)

    def delay(self, recent: int) -> float:
        """Seconds before restart number recent+1: backoff_s doubling, at most max_backoff_s."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** recent)

    def text(self) -> str:
        return "no" if self.mode == "no" else f"on-failure (at most {self.max_restarts} in {self.window_s:g} s)"


def is_clean(code: int) -> bool:
    """systemd's clean exit: status 0 or one of the clean signals (the supervisor's own exit status follows it)."""
    return code == 0 or clean_signal(code)


def clean_signal(code: int) -> bool:
    """The engine ended by one of the clean signals: the only end the on-failure policy does not restart, as the
    rendered unit's Restart=on-failure with RestartForceExitStatus=0 (status 0 restarts: a server does not exit by
    itself while it serves)."""
    return code < 0 and -code in [int(s) for s in CLEAN_SIGNALS]


def exit_text(code: int) -> tuple[str, str | None]:
    """('killed by signal SIGKILL', 'SIGKILL') or ('exited with status 1', None) for a Popen returncode."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by signal {name}", name
    return f"exited with status {code}", None


def exit_code_of(record: dict) -> int | None:
    """The Popen-style returncode a record describes (negative for a signal)."""
    if record.get("exit_signal"):
        try:
            return -int(signal.Signals[record["exit_signal"]])
        except KeyError:
            return None
    return record.get("exit_code")


# ---------------------------------------------------------------------------------------------- up's side


def spawn(spec, sd: StateDir, key: str | None, policy: RestartPolicy | None) -> tuple[ServiceState, subprocess.Popen]:
    """Start the supervisor of `spec` (run.native.EngineLaunch); returns the engine's state (with the supervisor's
    identity) once the engine runs, and the supervisor's Popen."""
    from stackgen.run.process import MARKER_ENV, _identity_now

    policy = policy or RestartPolicy()
    sd.ensure()
    sup_id = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != spec.key_var}  # the key travels on the pipe only
    env[MARKER_ENV] = sup_id
    # the same stackgen as this process, installed or not (a checkout run with `python -m stackgen`)
    here = str(Path(__file__).resolve().parents[2])  # stackgen/run/supervise.py -> the folder above stackgen/
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # -P and a cwd inside .stackgen/: a `stackgen/` folder next to the stack cannot shadow the package.
    argv = [sys.executable] + (["-P"] if sys.version_info >= (3, 11) else []) + ["-m", "stackgen.run.supervise"]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=str(sd.dir), start_new_session=True, close_fds=True)
    except OSError as exc:
        raise LaunchError(f"service {spec.name}: cannot start its supervisor: {exc.strerror or exc}") from None
    create_time, start_ticks, exe = _identity_now(proc.pid)
    msg = {"spec": asdict(spec), "key": key, "policy": asdict(policy), "stack_file": str(sd.stack_file),
           "sup_id": sup_id, "pythonpath": os.environ.get("PYTHONPATH")}
    try:
        proc.stdin.write((json.dumps(msg) + "\n").encode())
        proc.stdin.close()
        reply = _read_line(proc, HANDSHAKE_S)
    except OSError:
        reply = b""
    if not reply:
        err = _stderr_tail(proc)
        raise LaunchError(f"service {spec.name}: its supervisor did not start the engine" + (f": {err}" if err else ""))
    try:
        data = json.loads(reply)
    except ValueError:
        data = {"error": f"service {spec.name}: its supervisor answered {reply[:200]!r}, not the engine's state"}
        proc.kill()
    if "error" in data:
        _stderr_tail(proc)
        raise LaunchError(data["error"])
    st = ServiceState.from_json(data["state"])
    st.sup_pid, st.sup_create_time, st.sup_start_ticks, st.sup_exe, st.sup_id = (
        proc.pid, create_time, start_ticks, exe, sup_id)
    st.restart = policy.mode
    proc.stdout.close()
    proc.stderr.close()
    return st, proc


def _read_line(proc: subprocess.Popen, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline and not buf.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf.strip()


def _stderr_tail(proc: subprocess.Popen) -> str:
    """The supervisor failed: make sure it is gone (it is this process's own child) and return its last words."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=10)
        err = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
    except (OSError, ValueError, subprocess.TimeoutExpired):
        err = []
    return err[-1][:300] if err else ""


# ---------------------------------------------------------------------------------------------- the supervisor


class Supervisor:
    def __init__(self, spec, sd: StateDir, key: str | None, policy: RestartPolicy, sup_id: str):
        self.spec, self.sd, self.key, self.policy, self.sup_id = spec, sd, key, policy, sup_id
        self.stopping = False
        self.record: dict = {"state": "starting", "policy": policy.mode, "max_restarts": policy.max_restarts,
                             "window_s": policy.window_s, "restarts": 0, "restart_times": [],
                             "supervisor_pid": os.getpid()}

    def _stop(self, signum, frame) -> None:  # noqa: ARG002
        self.stopping = True

    def follow(self) -> None:
        """The stack's folder was moved or renamed while up: this supervisor's working directory (its state folder,
        `.stackgen/stacks/<file>`) moved with it. From then on the state, the record, the log and the registry entry
        are where the folder is now, and the engine is restarted there (its working directory and the arguments that
        named a path inside the old folder follow). Without this a restart found no state at the old path, took that
        for `down`, and the service was never restarted (and the old folders were made again)."""
        if self.sd.dir.exists():
            return
        try:
            here = Path(os.getcwd())
        except OSError:  # the folder was deleted
            return
        if here.name != self.sd.dir.name or here.parent.name != "stacks":
            return
        moved = StateDir(here.parent.parent.parent / here.name)
        if moved.stack_file == self.sd.stack_file or not moved.state_file.exists():
            return
        old_dir, new_dir = str(self.sd.stack_file.parent), str(moved.stack_file.parent)
        self.say(f"the stack moved from {self.sd.stack_file} to {moved.stack_file}: following it")

        def moved_path(a: str) -> str:
            return new_dir + a[len(old_dir):] if a == old_dir or a.startswith(old_dir + os.sep) else a

        from dataclasses import replace

        self.spec = replace(self.spec, stack_dir=moved_path(self.spec.stack_dir),
                            argv=[moved_path(a) for a in self.spec.argv])
        self.sd = moved
        register(moved.stack_file)

    def save(self, **changes) -> None:
        self.follow()
        self.record.update(changes, updated_at=time.time())
        try:
            self.sd.save_run(self.spec.name, self.record)
        except OSError:
            pass

    def say(self, text: str) -> None:
        """A line in the service's log (the supervisor's stdout is that log once the engine runs)."""
        print(f"[stackgen {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def run(self) -> int:
        from stackgen.run.native import launch_engine

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._stop)
        try:
            st, proc = launch_engine(self.spec, self.sd, self.key)
        except LaunchError as exc:
            _reply({"error": str(exc)})
            return 1
        self.save(engine_pid=proc.pid)
        try:
            _reply({"state": asdict(st)})
        except OSError:  # `up` is gone before it could record the engine: leave nothing behind
            proc.kill()
            proc.wait()
            return 1
        _to_log(self.sd.log_path(self.spec.name))
        return self.watch(st, proc)

    def watch(self, st: ServiceState, proc: subprocess.Popen) -> int:
        ready = False
        next_probe = next_follow = 0.0
        while True:
            if self.stopping:  # `down` (or a restart by `up`) stops the engine itself, after this exits
                self.save(state="stopped")
                return 0
            code = self.poll(st, proc)
            if code is None:
                if not ready and time.monotonic() >= next_probe:
                    ready = self.answers(st)
                    next_probe = time.monotonic() + 1.0
                    if ready:
                        self.save(state="running", engine_pid=proc.pid)
                        if self.record["restarts"]:
                            self.mark_ready(st)
                if time.monotonic() >= next_follow:  # a moved folder: `ps` finds the stack where it is now
                    self.follow()
                    next_follow = time.monotonic() + 2.0
                time.sleep(0.2)
                continue
            if self.stopping:
                self.save(state="stopped")
                return 0
            nxt = self.after_exit(st, code, ready or self.marked_ready(st))
            if nxt is None:
                return 0 if is_clean(code) else 1
            st, proc = nxt
            ready = False

    def poll(self, st: ServiceState, proc: subprocess.Popen) -> int | None:
        """The engine's exit status once it ended, None while it runs. Before it is reaped (its zombie keeps its
        pid, so its session cannot be anyone else's), what it left in its session is stopped: children that
        outlive it (vLLM's EngineCore and Worker) would otherwise keep their memory beside a restarted engine, and
        nothing could identify them once the pid is free (their setproctitle hides the marker)."""
        import psutil

        from stackgen.run.process import stop_leftovers

        try:
            ended = psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            ended = True
        if not ended:
            return None
        if not self.stopping:  # `down` stops the whole service itself once this supervisor has exited
            left = stop_leftovers(st)
            if left:
                self.say(f"{self.spec.name} (pid {st.pid}) left {len(left)} processes behind in its session: "
                         f"stopped pids {', '.join(map(str, left))}")
        return proc.poll()

    def marked_ready(self, st: ServiceState) -> bool:
        """`up` recorded this engine as ready (it may have answered `up` before this supervisor's own probe)."""
        try:
            entry = self.sd.load().services.get(self.spec.name)
        except LaunchError:
            return False
        return entry is not None and entry.sup_id == self.sup_id and entry.pid == st.pid and entry.ready_at is not None

    def answers(self, st: ServiceState) -> bool:
        from stackgen.run.readiness import READY, Endpoint, probe

        ep = Endpoint(st.host, st.port, st.engine, st.model_name, self.key, tls=st.tls)
        return probe(ep, 5.0).state == READY

    def after_exit(self, st: ServiceState, code: int, was_ready: bool):
        """Record how the engine ended; restart it when the policy says so. Returns the new (state, Popen)."""
        from stackgen.run.diagnose import likely_cause

        text, sig = exit_text(code)
        lines = tail(self.sd.log_path(self.spec.name), 40)
        cause = likely_cause(lines, code)
        when = time.time()
        self.save(exit_code=None if sig else code, exit_signal=sig, exited_at=when, exit_text=text, cause=cause,
                  log_tail=lines[-20:])
        self.say(f"{self.spec.name} (pid {st.pid}) {text}" + (f"; likely cause: {cause}" if cause else ""))
        if not was_ready and self.record["restarts"] == 0:
            self.save(state="crashed")  # failed at the first start: `up` reports it, nothing is restarted
            return None
        if self.policy.mode == "no" or clean_signal(code):
            self.save(state="exited" if code == 0 else "crashed")
            self.say(f"not restarted (restart policy: {self.policy.mode}; "
                     f"{'a clean signal' if clean_signal(code) else 'a failure' if code else 'it exited by itself'})")
            return None
        recent = [t for t in self.record["restart_times"] if when - t < self.policy.window_s]
        if len(recent) >= self.policy.max_restarts:
            self.save(state="gave-up")
            self.say(f"gave up: {len(recent)} restarts within {self.policy.window_s:g} s (restart policy "
                     f"{self.policy.text()}); start it again with `stackgen up`")
            return None
        delay = self.policy.delay(len(recent))
        self.save(state="backoff", next_restart_at=when + delay)
        self.say(f"restarting in {delay:g} s (restart {len(recent) + 1} of at most {self.policy.max_restarts} "
                 f"within {self.policy.window_s:g} s)")
        end = time.monotonic() + delay
        while time.monotonic() < end and not self.stopping:
            time.sleep(0.1)
        if self.stopping:
            self.save(state="stopped")
            return None
        nxt = self.restart()
        if nxt is not None:
            self.record["restart_times"] = recent + [time.time()]
            self.save(state="starting", restarts=self.record["restarts"] + 1, engine_pid=nxt[1].pid)
        return nxt

    def restart(self):
        """Start the engine again under the stack's lock and record its identity in the state file."""
        from stackgen.run.native import launch_engine

        while True:
            if self.stopping:
                self.save(state="stopped")
                return None
            self.follow()
            try:
                self.sd.acquire(f"supervisor of {self.spec.name}: restart")
                break
            except LaunchError:
                time.sleep(0.5)  # `up` or `down` is working on the stack
        try:
            state = self.sd.load()
            entry = state.services.get(self.spec.name)
            if entry is None or entry.sup_id != self.sup_id:  # `down`, or a newer `up`, took the service over
                self.save(state="stopped")
                return None
            try:
                st, proc = launch_engine(self.spec, self.sd, self.key, rotate=False)
            except LaunchError as exc:
                self.say(f"cannot restart: {exc}")
                self.save(state="crashed", cause=str(exc)[:300])
                return None
            for f in ("sup_pid", "sup_create_time", "sup_start_ticks", "sup_exe", "sup_id", "restart", "budget_s"):
                setattr(st, f, getattr(entry, f))
            state.services[self.spec.name] = st
            self.sd.save(state)
            self.say(f"restarted {self.spec.name}: pid {proc.pid}")
            return st, proc
        finally:
            self.sd.release()

    def mark_ready(self, st: ServiceState) -> None:
        """After a restart: record when the engine answered, and its executable (a wrapper may have exec'd)."""
        import psutil

        from stackgen.run.process import _exe

        try:
            self.sd.acquire(f"supervisor of {self.spec.name}: ready")
        except LaunchError:
            return
        try:
            state = self.sd.load()
            entry = state.services.get(self.spec.name)
            if entry is not None and entry.sup_id == self.sup_id and entry.pid == st.pid:
                entry.ready_at = time.time()
                try:
                    entry.exe = _exe(psutil.Process(st.pid)) or entry.exe
                except psutil.Error:
                    pass
                self.sd.save(state)
        finally:
            self.sd.release()


def _reply(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _to_log(path: Path) -> None:
    """From now on the supervisor's stdout and stderr append to the service's log (not `up`'s pipes)."""
    with open_log(path) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def main() -> int:
    from stackgen.run.native import EngineLaunch

    line = sys.stdin.readline()
    sys.stdin.close()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    msg = json.loads(line)
    # the engine gets the environment `up` had: the PYTHONPATH that found stackgen must not reach a Python engine
    if msg.get("pythonpath") is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = msg["pythonpath"]
    spec = EngineLaunch(**msg["spec"])
    sup = Supervisor(spec, StateDir(msg["stack_file"]), msg.get("key"), RestartPolicy(**msg["policy"]), msg["sup_id"])
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
