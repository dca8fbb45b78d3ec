"""Checks before `up` starts anything: ports free (or held by the stack itself), model files present, memory."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Mapping

from stackgen.plan.plan import ServicePlan
from stackgen.render.paths import weight_files


def port_in_use(host: str, port: int) -> bool:
    """True when nothing could bind host:port now (a listener holds it). SO_REUSEADDR ignores TIME_WAIT leftovers."""
    from stackgen.run.client import connect_host

    addr = connect_host(host) if host not in ("0.0.0.0", "::") else host
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's pick of an ephemeral one), for a server started
    right after: `stackgen calibrate`'s engine runs and the benchmarks' llama-servers. Another process may still take
    it before the server binds; good enough for a short-lived local run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        field = (f"services.{sp.unit_of}.port (its instances take the next ports)" if getattr(sp, "unit_of", "")
                 else f"services.{sp.name}.port")
        problems.append(f"service {sp.name}: port {sp.port} is already in use by {who}; stop it or set "
                        f"{field} to a free port")
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
        elif path:  # a split GGUF's other parts, which llama.cpp opens beside the first (render/paths.py)
            missing = [p for p in weight_files(path)[1:] if not Path(p).exists()]
            if missing:
                problems.append(f"service {sp.name}: model {path} is part 1 of {len(weight_files(path))}; "
                                f"{', '.join(missing)} does not exist (put every part in the same folder)")
    return problems


def check_url_pins(sps: list[ServicePlan], stack_file: Path, env: Mapping[str, str], native: bool = True,
                   client=None) -> tuple[list[str], list[str]]:
    """A model named by URL is pinned in the stack's lock by its size and the server's ETag or Last-Modified
    (hub.url_pin), but the engine downloads whatever the URL serves when it starts: before it does, one range request
    per locked URL (lock.check_url_pin, as `lock --check` asks). Returns (problems: the file changed since it was
    locked, or the engine's cached copy differs from the pin while the server cannot be asked; warnings: the server
    could not be asked and no cached copy holds the engine to the pin). Without a lock there is no pin: the plan
    read the file the server serves now."""
    from stackgen import engines
    from stackgen.models.lock import check_url_pin, lock_path_for, read_lock
    from stackgen.models.remote import HttpClient

    urls: dict[str, ServicePlan] = {}
    for sp in sps:
        if sp.model.url:
            urls.setdefault(sp.model.url, sp)
    lock = lock_path_for(Path(stack_file))
    if not urls or not lock.is_file():
        return [], []
    client = client or HttpClient(env=dict(env), timeout_s=10.0, deadline_s=15.0, retries=1)
    fix = (f"run `stackgen lock --upgrade {stack_file}` to re-pin it and plan for the new file (or restore the file "
           "the lock pinned)")
    problems, warnings = [], []
    for entry in read_lock(lock, str(stack_file)).values():
        sp = urls.get(entry.resolved.get("url"))
        check = check_url_pin(entry, client) if sp is not None else None
        if check is None:
            continue
        engine = engines.get(sp.engine)
        what = f"service {sp.name}: {check.url}"
        if check.change:
            problems.append(f"{what} changed since {lock.name} pinned it ({check.change}): {engine.display} would "
                            f"download a file the plan did not size; {fix}")
            continue
        if not check.unchecked:
            continue
        cached = engine.url_download(check.url, env) if native else None
        size = Path(cached).stat().st_size if cached and Path(cached).is_file() else None
        if size is None:
            pin = entry.resolved.get("revision") or "the size only"
            warnings.append(f"{what}: {check.unchecked}; {engine.display} downloads what the URL serves when it "
                            f"starts, which may not be the file {lock.name} pinned ({check.locked_size} bytes, {pin})")
        elif size != check.locked_size:
            problems.append(f"{what}: {check.unchecked}, and the copy {engine.display} would load, {cached}, is {size} "
                            f"bytes where {lock.name} pinned {check.locked_size}: the file changed since it was "
                            f"locked; {fix}")
    return problems, warnings


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


