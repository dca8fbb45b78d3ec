"""Does this host match what the stack says it runs on? Used by `up` (an error unless --force) and printed by
`stackgen doctor`.

Checks, per service where it applies:
- binary: the engine binary exists, by the rule run.sh also follows (stackgen.host.binaries);
- flags: its `--help` lists every flag the plan passes (stackgen.engines.flagcheck's parser);
- gpus: the GPUs the stack names are visible: vendor, count, memory per GPU within GPU_MEMORY_TOLERANCE;
- cpu: the plan's threads against the host's cores (a warning: the plan still runs, slower);
- memory: the RAM the plan needs is free now;
- port: each service's port is free.
Hardware facts come from a HostFacts (stackgen.host.facts.detect() or a recorded host), never probed here; binaries
and ports are looked at through injectable functions so tests can fake them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stackgen import engines
from stackgen.errors import LaunchError, StackgenError
from stackgen.host.facts import HostFacts
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.spec.stack import GPUSpec, HardwareSpec

GPU_MEMORY_TOLERANCE = 0.05  # drivers report a few % less than the marketing size (24 GB card: 23.99 GiB usable)
GIB = 2**30


@dataclass(frozen=True)
class Finding:
    subject: str  # "host" or "service <name>"
    check: str  # binary | flags | gpus | cpu | memory | port
    ok: bool
    detail: str
    severity: str = "error"  # what a failed check is: error (stops `up`) or warning

    @property
    def is_error(self) -> bool:
        return not self.ok and self.severity == "error"

    def line(self) -> str:
        mark = "ok   " if self.ok else ("ERROR" if self.severity == "error" else "warn ")
        return f"{mark} {self.subject}: {self.check}: {self.detail}"


@dataclass(frozen=True)
class HostReport:
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]

    def text(self) -> str:
        return "\n".join(f.line() for f in self.findings)


class HostMismatch(LaunchError):
    """The host does not match the stack (binary, flags, GPUs, memory or ports); `up --force` starts anyway."""


@dataclass(frozen=True)
class Probes:
    """What the check asks the machine besides HostFacts; tests replace them."""

    find_binary: Callable[[ServicePlan, Path], str]  # raises StackgenError when missing
    help_flags: Callable[[str, str], set[str]]  # (binary, engine) -> flags its --help lists
    port_in_use: Callable[[str, int], bool]


def default_probes() -> Probes:
    from stackgen.host.binaries import find
    from stackgen.engines.flagcheck import probe_help
    from stackgen.run.preflight import port_in_use

    return Probes(lambda sp, d: find(sp.engine, sp.spec.binary, d),
                  lambda binary, engine: probe_help(binary, engines.get(engine).flags.help_args), port_in_use)


def check_host(plan: Plan, host: HostFacts, stack_dir: Path, stated: HardwareSpec | None, *,
               containers: bool = False, memory: bool = True, ports: bool = True,
               probes: Probes | None = None, own_ports: dict[int, str] | None = None) -> HostReport:
    """Every finding for `plan` on `host`. `stated`: the hardware the stack names (None for `hardware: detect`,
    whose plan is made for this host already). `own_ports`: ports this stack's running services hold (port ->
    service), which are no mismatch."""
    probes = probes or default_probes()
    out: list[Finding] = []
    if stated is not None:
        out += check_gpus(stated, host.hardware)
        out += check_cpu(plan, host.hardware)
    if memory:
        out += check_memory(plan, host)
    for sp in plan.services:
        if not containers:
            out += check_binary(sp, stack_dir, probes)
        if ports:
            out += check_port(sp, probes, own_ports or {})
    return HostReport(tuple(out))


# ---------------------------------------------------------------------------------------------- hardware


def _gpu_text(g: GPUSpec, count: int | None = None) -> str:
    n = g.count if count is None else count
    return f"{n}x {g.vendor} {g.name} ({g.memory_gib:g} GiB)"


def _gpus_text(gpus: tuple[GPUSpec, ...]) -> str:
    return ", ".join(_gpu_text(g) for g in gpus) if gpus else "no GPU"


def check_gpus(stated: HardwareSpec, found: HardwareSpec) -> list[Finding]:
    """The stack's GPUs must be visible: per vendor the count, and each stated GPU's memory within tolerance."""
    want, have = stated.gpus, found.gpus
    if not want:
        extra = f"; this host also has {_gpus_text(have)}, which the stack does not use" if have else ""
        return [Finding("host", "gpus", True, f"the stack names no GPU{extra}")]
    problems = []
    want_count = Counter()
    have_count = Counter()
    for g in want:
        want_count[g.vendor] += g.count
    for g in have:
        have_count[g.vendor] += g.count
    for vendor, n in sorted(want_count.items()):
        if have_count[vendor] < n:
            problems.append(f"{n} {vendor} GPU(s) named, {have_count[vendor]} visible")
    for g in want:
        same = [h for h in have if h.vendor == g.vendor]
        if same and not any(_close(h.memory_gib, g.memory_gib) for h in same):
            nearest = min(same, key=lambda h: abs(h.memory_gib - g.memory_gib))
            diff = (nearest.memory_gib - g.memory_gib) / g.memory_gib
            problems.append(f"{g.name}: {g.memory_gib:g} GiB per GPU named, {nearest.name} has "
                            f"{nearest.memory_gib:g} GiB ({diff:+.0%}, more than {GPU_MEMORY_TOLERANCE:.0%} off)")
    stated_text = f"stack: {_gpus_text(want)}; host: {_gpus_text(have)}"
    if problems:
        return [Finding("host", "gpus", False, f"{'; '.join(problems)} ({stated_text})")]
    return [Finding("host", "gpus", True, stated_text)]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= GPU_MEMORY_TOLERANCE * b


def check_cpu(plan: Plan, found: HardwareSpec) -> list[Finding]:
    threads = max((sp.threads for sp in plan.services), default=0)
    cores = found.cpu.cores
    if threads > cores:
        return [Finding("host", "cpu", False, f"the plan runs {threads} threads (stack: {plan.hardware.cpu.cores} "
                        f"cores), this host has {cores} cores: expect it slower than planned", "warning")]
    return [Finding("host", "cpu", True, f"{threads} threads planned, {cores} cores here")]


def check_memory(plan: Plan, host: HostFacts) -> list[Finding]:
    need = sum(sp.memory.host_bytes for sp in plan.services)
    free = host.available_memory_bytes
    if free is None:
        return [Finding("host", "memory", True, f"the plan needs {need / GIB:.2f} GiB of RAM; free memory unknown "
                        "(a recorded host without it)", "warning")]
    if need > free:
        return [Finding("host", "memory", False, f"the plan needs {need / GIB:.2f} GiB of RAM, {free / GIB:.2f} GiB "
                        f"is free ({(need - free) / GIB:.2f} GiB short)")]
    return [Finding("host", "memory", True, f"the plan needs {need / GIB:.2f} GiB of RAM, {free / GIB:.2f} GiB free")]


# ---------------------------------------------------------------------------------------------- per service


def check_binary(sp: ServicePlan, stack_dir: Path, probes: Probes) -> list[Finding]:
    subject = f"service {sp.name}"
    try:
        binary = probes.find_binary(sp, stack_dir)
    except StackgenError as exc:
        return [Finding(subject, "binary", False, str(exc))]
    out = [Finding(subject, "binary", True, binary)]
    engine = engines.get(sp.engine)
    if engine.flags is None:
        return out + [Finding(subject, "flags", True, f"{engine.short} takes no flags (its settings are checked by "
                                                      "`render`)")]
    return out + [_check_flags(sp, binary, probes, subject)]


def _check_flags(sp: ServicePlan, binary: str, probes: Probes, subject: str) -> Finding:
    from stackgen.engines.flagcheck import argv_flags, table

    try:
        listed = probes.help_flags(binary, sp.engine)
    except StackgenError as exc:
        return Finding(subject, "flags", False, str(exc))
    if "--port" not in listed:
        return Finding(subject, "flags", False, f"{binary} --help lists no --port: not {sp.engine}'s server "
                       "(a wrapper?); flags not compared", "warning")
    try:
        flags = argv_flags(sp.engine, list(sp.command), table(sp.engine, sp.spec.engine_version))
    except StackgenError as exc:
        return Finding(subject, "flags", False, str(exc))
    missing = [f for f in flags if f.startswith("-") and f not in listed]  # a removed flag's value is no flag
    if missing:
        return Finding(subject, "flags", False, f"{binary} --help does not list {', '.join(missing)} (the plan "
                       "passes them): an older or forked build? set `binary:` to another build or override them")
    return Finding(subject, "flags", True, f"all {len(flags)} planned flags are in --help")


def check_port(sp: ServicePlan, probes: Probes, own_ports: dict[int, str] | None = None) -> list[Finding]:
    subject = f"service {sp.name}"
    if probes.port_in_use(sp.host, sp.port):
        if own := (own_ports or {}).get(sp.port):
            return [Finding(subject, "port", True, f"{sp.host}:{sp.port} is in use by this stack's {own}, which "
                            "is up (`stackgen status`)")]
        return [Finding(subject, "port", False, f"{sp.host}:{sp.port} is in use (by this stack if it is up: "
                        "`stackgen status`)")]
    return [Finding(subject, "port", True, f"{sp.host}:{sp.port} is free")]


def mismatch_error(report: HostReport) -> HostMismatch:
    lines = [f.line() for f in report.errors]
    return HostMismatch(f"this host does not match the stack ({len(lines)} problem(s)); fix them, or pass --force "
                        "to start anyway:\n" + "\n".join(lines))
