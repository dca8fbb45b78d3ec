"""SIGINT/SIGTERM while `up` runs: raised, deferred to the end of a block, or ignored."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

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


