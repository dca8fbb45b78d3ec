"""The state folder `.stackgen/` next to a stack file: what `up` started, its logs, and the lock.

Layout (one sub-folder per stack file, so two stack files in one folder never share state)::

    .stackgen/
      .gitignore                  "*": nothing in here belongs in git
      stacks/<stack file name>/   e.g. stacks/stack.yaml/ for ./stack.yaml
        lock                      fcntl.flock'ed by `up`/`down` while they run (holds the holder's pid as text)
        state.json                services started: pid/pgid + identity (start time, executable, marker) or
                                  container id, port, start time, config hash
        logs/<svc>.log            the engine's stdout+stderr (native); the previous run is kept as <svc>.log.1

Older stackgen versions kept one `state.json`, `lock` and `logs/` directly in `.stackgen/`. Such a state file is
still read, but only by the stack file it names (its "file" field); `up`/`down` move it into the stack's own
folder under the lock. Its log paths (`.stackgen/logs/...`) stay valid.

The state file is written atomically (temp file + rename) after every change, so a crash of `up` itself still
leaves enough on disk for `down` to stop what was started. It is checked field by field when read: a damaged or
hand-edited file gives a message, and paths in it are only trusted inside `.stackgen/` (`contained_log`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stackgen import datafile
from stackgen.errors import LaunchError

STATE_DIR = ".stackgen"
STATE_VERSION = 2
SERVICE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # spec.NAME_RE, max 63


def config_hash(argv: list[str] | tuple[str, ...], env: dict[str, str], extra: dict[str, Any] | None = None) -> str:
    """A stable hash of what makes a service what it is: its argv and environment (plus, for containers, the image,
    mounts and ports). A service whose hash is unchanged is left running by `up`."""
    doc = {"argv": list(argv), "env": dict(sorted(env.items())), **({"extra": extra} if extra else {})}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class ServiceState:
    name: str
    engine: str
    kind: str  # "process" | "container"
    host: str
    port: int
    config_hash: str
    started_at: float  # time.time() when started
    model_name: str = ""  # the name requests use (served model name / alias)
    pid: int | None = None
    pgid: int | None = None
    create_time: float | None = None  # psutil create_time of the leader: guards against pid reuse
    container_id: str | None = None
    container_name: str | None = None
    log: str | None = None
    argv: list[str] = field(default_factory=list)
    budget_s: float = 60.0
    ready_at: float | None = None
    tls: bool = False  # the engine serves HTTPS (serve.tls)
    # Identity of a native leader beyond its pid (stackgen.run.process checks all three before signalling anything):
    service_id: str | None = None  # the random STACKGEN_SERVICE_ID put in the engine's environment at start
    exe: str | None = None  # the leader's executable (/proc/PID/exe) once it is up
    start_ticks: int | None = None  # Linux: start time in clock ticks since boot (/proc/PID/stat field 22)
    # What `ps` shows beside the engine: the model's name, context per request and parallel slots.
    model: str = ""
    context_tokens: int | None = None
    slots: int | None = None
    # The native service's supervisor (stackgen.run.supervise): its identity, checked like the engine's before any
    # signal, and the restart policy it applies ("on-failure" or "no").
    sup_pid: int | None = None
    sup_create_time: float | None = None
    sup_start_ticks: int | None = None
    sup_exe: str | None = None
    sup_id: str | None = None
    restart: str = ""
    # One process of a fleet (stackgen.run.fleet): the stack service it belongs to, and "instance" or "balancer".
    unit_of: str = ""
    unit_role: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ServiceState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# What each field of a stored service may hold: (types, may be None). bool is refused where int is meant.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False), "engine": ((str,), False), "kind": ((str,), False), "host": ((str,), False),
    "port": ((int,), False), "config_hash": ((str,), False), "started_at": ((int, float), False),
    "model_name": ((str,), False), "pid": ((int,), True), "pgid": ((int,), True),
    "create_time": ((int, float), True), "container_id": ((str,), True), "container_name": ((str,), True),
    "log": ((str,), True), "argv": ((list,), False), "budget_s": ((int, float), False),
    "ready_at": ((int, float), True), "service_id": ((str,), True), "exe": ((str,), True),
    "start_ticks": ((int,), True), "model": ((str,), False), "context_tokens": ((int,), True),
    "slots": ((int,), True), "sup_pid": ((int,), True), "sup_create_time": ((int, float), True),
    "sup_start_ticks": ((int,), True), "sup_exe": ((str,), True), "sup_id": ((str,), True),
    "restart": ((str,), False), "unit_of": ((str,), False), "unit_role": ((str,), False),
}


def _check_service(name: str, data: Any) -> str | None:
    """Why a stored service entry cannot be trusted (None: it is well-formed)."""
    if not SERVICE_NAME_RE.match(str(name)):
        return f"services: {name!r} is not a service name"
    if not isinstance(data, dict):
        return f"services.{name}: a JSON {type(data).__name__}, not an object"
    for key in ("name", "engine", "kind", "host", "port", "config_hash", "started_at"):
        if key not in data:
            return f"services.{name}: `{key}` is missing"
    for key, (types, nullable) in _FIELD_TYPES.items():
        if key not in data:
            continue
        v = data[key]
        if v is None and nullable:
            continue
        if isinstance(v, bool) or not isinstance(v, types):
            return f"services.{name}.{key}: {v!r} is not a valid value"
    if data["name"] != name:
        return f"services.{name}.name: {data['name']!r} differs from the entry's name"
    if data["kind"] not in ("process", "container"):
        return f"services.{name}.kind: {data['kind']!r} is neither \"process\" nor \"container\""
    for key in ("pid", "pgid", "sup_pid"):
        v = data.get(key)
        if v is not None and not 1 <= v <= 2**22:
            return f"services.{name}.{key}: {v} is not a process id"
    if data["kind"] == "process" and data.get("pid") is None:
        return f"services.{name}.pid: missing for a native process"
    if not 0 < data["port"] < 65536:
        return f"services.{name}.port: {data['port']} is not a TCP port"
    if not all(isinstance(a, str) for a in data.get("argv") or []):
        return f"services.{name}.argv: not a list of strings"
    for key in ("create_time", "started_at", "budget_s", "ready_at", "sup_create_time"):
        v = data.get(key)
        if v is not None and not (v == v and abs(v) < 1e12):  # NaN, inf
            return f"services.{name}.{key}: {v!r} is not a time"
    return None


# The supervisor's record (StateDir.save_run): field -> accepted types.
_RUN_FIELDS: dict[str, Any] = {
    "state": str,  # starting | running | backoff | crashed | gave-up | exited | stopped
    "policy": str, "max_restarts": int, "window_s": (int, float), "restarts": int, "restart_times": list,
    "engine_pid": int, "supervisor_pid": int, "exit_code": int, "exit_signal": str, "exited_at": (int, float),
    "exit_text": str, "cause": str, "log_tail": list, "next_restart_at": (int, float), "updated_at": (int, float),
}


@dataclass
class StackState:
    stack: str
    file: str
    services: dict[str, ServiceState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "stack": self.stack, "file": self.file,
                "services": {n: asdict(s) for n, s in sorted(self.services.items())}}


class StateDir:
    """The state of one stack file: `.stackgen/stacks/<file name>/` (see the module docstring)."""

    def __init__(self, stack_file: str | Path):
        self.stack_file = Path(stack_file).resolve()
        self.root = self.stack_file.parent / STATE_DIR  # shared by the stack files of one folder
        self.dir = self.root / "stacks" / self.stack_file.name
        self._lock_fd: int | None = None
        self.copied_from: str = ""  # set by load(): the state here was copied from another stack file's folder

    def copy_note(self) -> str:
        """What to tell the user when load() found the state of another stack file here ('' when it did not)."""
        if not self.copied_from:
            return ""
        return (f"{self.state_file} records the services of {self.copied_from} (this folder is a copy of that "
                f"stack's, `.stackgen/` included); they are that stack's and are left alone here: nothing of them "
                f"is shown, stopped or restarted from {self.stack_file} (`stackgen status {self.copied_from}` "
                f"shows them)")

    # -- paths
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.dir / "lock"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def legacy_state_file(self) -> Path:
        """Where stackgen kept the state of every stack file of the folder before per-file state folders."""
        return self.root / "state.json"

    def run_path(self, service: str) -> Path:
        """The supervisor's record of a native service: how the engine last ended, restarts, what it does now."""
        if not SERVICE_NAME_RE.match(service):
            raise LaunchError(f"{service!r} is not a service name (lowercase letters, digits and '-')")
        return self.dir / "run" / f"{service}.json"

    def save_run(self, service: str, record: dict[str, Any]) -> None:
        path = self.run_path(service)
        path.parent.mkdir(exist_ok=True)  # never the folders above: a moved stack's old path is not made again
        write_new(path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def load_run(self, service: str) -> dict[str, Any] | None:
        """The supervisor's record, or None when there is none or it is not what a supervisor writes (read
        without following a symlink; only its known fields, type-checked, are returned)."""
        try:
            path = self.run_path(service)
            with open_read(path) as f:
                data = datafile.parse_json(f.read(256 * 1024).decode("utf-8"), path, "a run record", "")
        except (OSError, ValueError, LaunchError):
            return None
        if not isinstance(data, dict):
            return None
        out: dict[str, Any] = {}
        for k, v in data.items():
            types = _RUN_FIELDS.get(k)
            if types is not None and v is not None and isinstance(v, types) and not isinstance(v, bool):
                out[k] = v
        out["log_tail"] = [ln for ln in out.get("log_tail", []) if isinstance(ln, str)][-40:]
        out["restart_times"] = [t for t in out.get("restart_times", []) if isinstance(t, (int, float))]
        return out

    def drop_run(self, service: str) -> None:
        try:
            os.unlink(self.run_path(service))
        except (OSError, LaunchError):
            pass

    def log_path(self, service: str) -> Path:
        if not SERVICE_NAME_RE.match(service):
            raise LaunchError(f"{service!r} is not a service name (lowercase letters, digits and '-')")
        return self.logs_dir / f"{service}.log"

    def contained_log(self, recorded: str | None, service: str) -> Path | None:
        """The log file to read for a service: the path the state file records if it lies inside `.stackgen/`
        once symlinks are resolved, else the default place if that does; None if neither does. A hand-edited
        `log:` (or a planted symlink) cannot make `logs`/`status` read files outside the state folder."""
        root = Path(os.path.realpath(self.root))
        for cand in ([Path(recorded)] if recorded else []) + [self.log_path(service)]:
            real = Path(os.path.realpath(cand))
            if root in real.parents:
                return real
        return None

    def has_state(self) -> bool:
        return self.state_file.exists() or self._legacy() is not None

    def ensure(self) -> None:
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            gi = self.root / ".gitignore"
            if not os.path.lexists(gi):
                write_new(gi, "*\n")
        except NotADirectoryError:
            raise self._blocked(self.logs_dir) from None
        except OSError as exc:
            raise LaunchError(f"cannot create the state folder {self.dir}: {exc.strerror or exc}") from None

    # -- state
    def _read(self, path: Path) -> Any:
        try:
            return datafile.load_json(path, "the state file", f"delete {path}")
        except FileNotFoundError:
            return None
        except NotADirectoryError:  # not a damaged state file: a file is in the way of the state folder
            raise self._blocked(path) from None
        except datafile.DataFileError as exc:
            raise self._damaged(path, exc.message) from None
        except (OSError, ValueError) as exc:
            raise self._damaged(path, f"unreadable ({exc})") from None

    def _blocked(self, path: Path) -> LaunchError:
        blocker = next((p for p in reversed(path.parents) if os.path.lexists(p) and not p.is_dir()), path.parent)
        return LaunchError(f"{blocker} is a file, not the folder where stackgen keeps the state of "
                           f"{self.stack_file.name}, so no state can be read there. If that file is yours, move it "
                           f"aside (`mv {blocker} {blocker}.file`); `up` makes the folder again. If this stack's "
                           f"engines still run, stop them yourself (`ps -ef` shows them)")

    def _damaged(self, path: Path, why: str) -> LaunchError:
        return LaunchError(f"{path}: {why}. The state file is damaged or was edited by hand; stackgen will not "
                           f"signal processes it cannot identify. Stop this stack's engines yourself (look for "
                           f"them with `ps -ef`), then delete {path}")

    def _legacy(self) -> Any:
        """The pre-per-file state, if it belongs to this stack file."""
        if self.legacy_state_file == self.state_file:
            return None
        data = self._read(self.legacy_state_file)
        if isinstance(data, dict) and data.get("file") == str(self.stack_file):
            return data
        return None

    def load(self, stack_name: str = "") -> StackState:
        path = self.state_file
        data = self._read(path)
        if data is None:
            data = self._legacy()
            path = self.legacy_state_file
        if data is None:
            return StackState(stack_name, str(self.stack_file))
        if not isinstance(data, dict):
            raise self._damaged(path, f"it holds a JSON {type(data).__name__}, not the object stackgen writes")
        if self._copied(data.get("file")):  # a copy of another stack's folder: its services are not this stack's
            self.copied_from = data["file"]
            return StackState(stack_name, str(self.stack_file))
        raw = data.get("services")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self._damaged(path, f"`services` is a JSON {type(raw).__name__}, not an object")
        services = {}
        for name, s in raw.items():
            why = _check_service(name, s)
            if why:
                raise self._damaged(path, why)
            services[name] = ServiceState.from_json(s)
        stack = data.get("stack") if isinstance(data.get("stack"), str) else ""
        return StackState(stack or stack_name, str(self.stack_file), services)

    def _copied(self, recorded: Any) -> bool:
        """The state names another stack file that exists: this folder (with its `.stackgen/`) was copied from
        that one's (`cp -a`). A recorded file that no longer exists is this stack's, moved with its folder."""
        if not isinstance(recorded, str) or not recorded or recorded == str(self.stack_file):
            return False
        try:
            return os.path.isfile(recorded) and not os.path.samefile(recorded, self.stack_file)
        except OSError:  # this stack file is gone (`down` of a deleted file): the recorded one exists, it is not it
            return True

    def save(self, state: StackState) -> None:
        self._save(state)
        if state.services:
            register(self.stack_file)
        else:
            unregister(self.stack_file)

    def _save(self, state: StackState) -> None:
        self.ensure()
        text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
        write_new(self.state_file, text, durable=True)

    def _migrate(self) -> None:
        """Move a legacy `.stackgen/state.json` that names this stack file into its own folder (under the lock)."""
        if self.state_file.exists() or self._legacy() is None:
            return
        self.save(self.load())
        try:
            os.unlink(self.legacy_state_file)
        except OSError:
            pass

    # -- lock
    def acquire(self, what: str = "up") -> None:
        """Take the stack's lock or fail at once, naming the process that holds it. The lock file is never
        followed if it is a symlink (O_NOFOLLOW): a planted link cannot make stackgen truncate another file."""
        self.ensure()
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LaunchError(f"{self.lock_file} is a symbolic link; stackgen does not follow it (it would "
                                  f"write to {os.readlink(self.lock_file)}). Delete the link and run `{what}` "
                                  f"again") from None
            raise LaunchError(f"cannot open {self.lock_file}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" ({holder})" if holder else ""
                raise LaunchError(f"another stackgen command is working on {self.stack_file}{who}; wait for it "
                                  f"to finish or stop it (Ctrl-C) before running `{what}`") from None
            raise LaunchError(f"cannot lock {self.lock_file}: {exc.strerror or exc}") from None
        if not _is_regular(fd):
            os.close(fd)
            raise LaunchError(f"{self.lock_file} is not a regular file; delete it and run `{what}` again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`stackgen {what}`, pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        try:
            self._migrate()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "StateDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def write_new(path: Path, text: str, durable: bool = False, shared: bool = False) -> None:
    """Create `path` with `text`, replacing whatever is there without following a symlink (temp file + rename): the
    one way stackgen writes a file through a temporary name, since a fixed temp name (`x.tmp`) planted as a symlink
    makes a plain write truncate its target (audit a2 #8). `durable`: fsync before the rename (the state file must
    survive a crash whole). `shared`: the mode a plain open() would give (0666 less the umask) instead of mkstemp's
    0600, for files the user shares or commits (stack.yaml, stack.lock)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        if shared:
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_log(path: Path):
    """Open a service log for appending; a symlink planted in its place is not followed (OSError ELOOP)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "ab")


def open_read(path: str | Path):
    """Open a file for reading without following a symlink in its last component."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


def rotate_log(path: Path) -> None:
    """Keep the previous run's log as <name>.1; start the new one empty."""
    if os.path.lexists(path):
        try:
            os.replace(path, path.with_name(path.name + ".1"))
        except OSError:
            pass


def tail(path: str | Path, lines: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `lines` lines of a file (reads at most `max_bytes` from its end); none for `lines` <= 0 (a slice
    [-0:] would be the whole file)."""
    if lines <= 0:
        return []
    try:
        with open_read(path) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    out = [ln.rstrip() for ln in text.split("\n") if ln.strip()]
    return out[-lines:]


# ---------------------------------------------------------------------------------------------- registry
#
# `stackgen ps` lists the services of every stack of this user. Each stack file with running services has one
# entry, `<registry>/<sha256 of its path>.json` = {"file": "/abs/stack.yaml"}, written when its state is saved
# with services and removed when it has none. The registry only says where to look: what runs is always read
# from that stack's own state file (and every process is identified as before). Private to the user (0700).


def registry_dir() -> Path:
    """$STACKGEN_STATE_HOME, else $XDG_STATE_HOME/stackgen, else ~/.local/state/stackgen; then stacks/."""
    base = os.environ.get("STACKGEN_STATE_HOME")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = os.path.join(xdg, "stackgen")
    return Path(base) / "stacks"


def _registry_entry(stack_file: Path) -> Path:
    return registry_dir() / (hashlib.sha256(str(stack_file).encode()).hexdigest()[:24] + ".json")


def register(stack_file: Path) -> None:
    """Best effort: a registry that cannot be written never stops `up` (ps then misses the stack)."""
    path = _registry_entry(stack_file)
    try:
        if path.exists():
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_new(path, json.dumps({"file": str(stack_file)}) + "\n")
    except OSError:
        pass


def unregister(stack_file: Path) -> None:
    try:
        os.unlink(_registry_entry(stack_file))
    except OSError:
        pass


def registered_stacks() -> list[Path]:
    """The stack files with running services, by the registry; entries whose state has no services are dropped."""
    d = registry_dir()
    out = []
    try:
        entries = sorted(d.glob("*.json"))
    except OSError:
        return []
    for entry in entries:
        try:
            with open_read(entry) as f:
                data = datafile.parse_json(f.read(8192).decode("utf-8"), entry, "a registry entry", "")
            file = Path(data["file"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not file.is_absolute() or entry != _registry_entry(file):
            continue  # not an entry stackgen wrote
        sd = StateDir(file)
        try:
            live = sd.has_state() and bool(sd.load().services)
        except LaunchError:
            live = True  # a damaged state: keep it listed so `ps` says so
        if live:
            out.append(file)
        else:
            unregister(file)
    return out
