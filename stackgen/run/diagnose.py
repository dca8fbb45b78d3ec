"""Reading an engine's log when it failed: the likely cause and the error `up` raises."""

from __future__ import annotations

import re
import signal

from stackgen.errors import LaunchError

_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("port in use: another process holds the port", re.compile(
        r"address already in use|couldn'?t bind|errno 98|failed to bind|bind\(\) failed", re.I)),
    ("unknown argument: the engine rejected a flag (check `overrides:` and the engine version)", re.compile(
        r"unknown argument|unrecognized argument|invalid argument|unrecognized option|invalid option|"
        r"error: argument|no such option|invalid value for|error while handling argument|argument has been removed",
        re.I)),
    ("damaged model: the model file is corrupted or incomplete (a truncated download or copy?); fetch it again",
     re.compile(r"model is corrupted or incomplete|not within the file bounds|invalid magic|unexpected end of file|"
                r"failed to read tensor|tensor data is not|file is truncated|corrupted", re.I)),
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
    # the engine's own lines: stackgen's (its command line, the supervisor's "... likely cause: out of memory" about
    # an earlier end) are not evidence of this end
    lines = [ln for ln in lines if not ln.startswith(("[stackgen ", "[stackgen]", "# stackgen "))]
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


