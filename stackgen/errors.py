"""One error tree for stackgen.

Every stage raises a subclass of :class:`StackgenError`; only ``stackgen.cli`` prints them and picks the exit
code, so library callers get typed exceptions and users get one-line messages (never a traceback without --debug).
"""

from __future__ import annotations

from dataclasses import dataclass


class StackgenError(Exception):
    """Root of every error stackgen reports to a user. `problem`: where in the stack file the field it names is,
    when a stage found it (pipeline.locate); it is then printed as `file:line:col: field: message`."""

    exit_code = 1
    problem: "Problem | None" = None

    def render(self) -> str:
        return str(self.problem) if self.problem is not None else str(self)


@dataclass(frozen=True)
class Problem:
    """One finding in a stack file: where it is, which field, what is wrong, what to write instead."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted field path, e.g. services.chat.port
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        field = f" {self.path}:" if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{field} {self.message}{hint}"


class SpecError(StackgenError):
    """The stack file is invalid; carries every problem found, each with its position."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class ModelRefError(Exception):
    """A service's `model:` (or `quant:`) cannot be turned into model facts: load_stack reports it as a Problem at
    the field named by `field`, with `hint`."""

    def __init__(self, message: str, hint: str = "", field: str = "model"):
        super().__init__(message)
        self.message, self.hint, self.field = message, hint, field


class ProfileError(StackgenError):
    """A built-in or user profile file is unreadable or malformed."""


class ModelError(StackgenError):
    """A model reference cannot be turned into model facts (missing file, bad header)."""


class PlanError(StackgenError):
    """No engine can serve a service on this hardware; the message says what is missing, in GB.

    `plan_json` (when set) is the plan as far as it got, with the service that does not fit as `"fits": false` and
    each engine's numbers and shortfall, so `plan --json` can print it before exiting 1."""

    plan_json: dict | None = None


class RenderError(StackgenError):
    """Artifacts could not be rendered or written."""


class DriftError(StackgenError):
    """Committed artifacts differ from what the stack renders to (``render --check``)."""

    exit_code = 2


class LaunchError(StackgenError):
    """A service could not be started, did not become ready, or could not be stopped."""
