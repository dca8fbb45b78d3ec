"""The state folder `.stackgen/` next to a stack file: what `up` started, its logs, and the lock.

Layout::

    .stackgen/
      .gitignore        "*": nothing in here belongs in git
      lock              fcntl.flock'ed by `up`/`down` while they run (holds the holder's pid as text)
      state.json        services started: pid/pgid or container id, port, start time, config hash
      logs/<svc>.log    the engine's stdout+stderr (native); the previous run is kept as <svc>.log.1

The state file is written atomically (temp file + rename) after every change, so a crash of `up` itself still
leaves enough on disk for `down` to stop what was started.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stackgen.errors import LaunchError

STATE_DIR = ".stackgen"
STATE_VERSION = 1


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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ServiceState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class StackState:
    stack: str
    file: str
    services: dict[str, ServiceState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "stack": self.stack, "file": self.file,
                "services": {n: asdict(s) for n, s in sorted(self.services.items())}}


class StateDir:
    """The `.stackgen/` folder of one stack file."""

    def __init__(self, stack_file: str | Path):
        self.stack_file = Path(stack_file).resolve()
        self.root = self.stack_file.parent / STATE_DIR
        self._lock_fd: int | None = None

    # -- paths
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_path(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"

    def ensure(self) -> None:
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            gi = self.root / ".gitignore"
            if not gi.exists():
                gi.write_text("*\n", encoding="utf-8")
        except OSError as exc:
            raise LaunchError(f"cannot create the state folder {self.root}: {exc.strerror or exc}") from None

    # -- state
    def load(self, stack_name: str = "") -> StackState:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return StackState(stack_name, str(self.stack_file))
        except (OSError, ValueError) as exc:
            raise LaunchError(f"{self.state_file}: unreadable state file ({exc}); stop the services by hand "
                              f"and delete it") from None
        services = {}
        for name, s in (data.get("services") or {}).items():
            try:
                services[name] = ServiceState.from_json(s)
            except TypeError:
                continue
        return StackState(data.get("stack") or stack_name, data.get("file") or str(self.stack_file), services)

    def save(self, state: StackState) -> None:
        self.ensure()
        text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # -- lock
    def acquire(self, what: str = "up") -> None:
        """Take the stack's lock or fail at once, naming the process that holds it."""
        self.ensure()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`stackgen {what}`, pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

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


def rotate_log(path: Path) -> None:
    """Keep the previous run's log as <name>.1; start the new one empty."""
    if path.exists():
        try:
            os.replace(path, path.with_name(path.name + ".1"))
        except OSError:
            pass


def tail(path: str | Path, lines: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `lines` lines of a file (reads at most `max_bytes` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    out = [ln.rstrip() for ln in text.split("\n") if ln.strip()]
    return out[-lines:]
