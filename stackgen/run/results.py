"""What running a plan returns and takes: `up`'s options and results, a service's status row, the `Runner`
protocol (a native process group or a container), and `Interrupted`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from stackgen.errors import LaunchError
from stackgen.plan.plan import ServicePlan
from stackgen.run.process import GRACE_S
from stackgen.run.state import ServiceState, StateDir

if TYPE_CHECKING:
    from stackgen.run.supervise import RestartPolicy


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
    predicted_tokens_per_s: float  # the plan's single-stream roofline (one user alone), not a figure at `concurrency`
    sample: str = ""
    errors: list[str] = field(default_factory=list)
    # The plan's speed forecast at the concurrency verify ran (plan/speed.py: what `stackgen plan` prints as
    # "predicted for users" when that is the workload's concurrency); None for a multi-node service.
    predicted_per_user_tokens_per_s: float | None = None
    predicted_aggregate_tokens_per_s: float | None = None
    predicted_streams: int | None = None  # streams decoding together in the forecast: min(users, the engine's slots)
    predicted_error: float | None = None  # the speed model's stated error for the backend (+-share)
    # The streams' decode rates added up: what the forecast's aggregate predicts (aggregate_tokens_per_s also spends
    # the run's wall time on prefill, queueing and HTTP). None when no stream decoded.
    decode_aggregate_tokens_per_s: float | None = None


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

