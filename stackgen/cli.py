"""The command line. Thin: parse arguments, call the library, print. This is the one place that prints errors and
picks exit codes (EXIT_CODES; README "Exit codes"); tracebacks only with --debug."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer.core import TyperGroup

from stackgen import __version__
from stackgen.errors import StackgenError

EX_OK, EX_ERROR, EX_DRIFT, EX_USAGE, EX_INTERRUPTED = 0, 1, 2, 64, 130
EXIT_CODES = {
    EX_OK: "ok (`render --check`: the committed artifacts match)",
    EX_ERROR: "invalid stack or input file, a plan that does not fit, a failed start or stop",
    EX_DRIFT: "`render --check` only: the committed artifacts differ from what the stack renders to",
    EX_USAGE: "wrong command line: unknown command or option, missing argument, bad option value, no FILE given and "
              "no ./stack.yaml (EX_USAGE)",
    EX_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM during `up`)",
}

# The argument parser's usage errors (typer 0.12-0.2x: click.UsageError; typer >= 0.29: its vendored copy). Both
# default to exit code 2, which is `render --check`'s drift code, so they are re-coded EX_USAGE here.
_USAGE_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _Group(TyperGroup):
    """The root command: usage errors from parsing (here or in a subcommand) exit EX_USAGE, not 2."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except _USAGE_ERRORS as exc:
            exc.exit_code = EX_USAGE
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _USAGE_ERRORS as exc:
            exc.exit_code = EX_USAGE
            raise


app = typer.Typer(
    cls=_Group,
    name="stackgen",
    help="Turn a declarative stack.yaml into a running, tuned local LLM inference service.\n\n"
    "Pick the bottleneck, not the benchmark.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell; typer + shellingham)
    pretty_exceptions_enable=False,
)

_state = {"debug": False}

DEFAULT_STACK = "stack.yaml"
FileArg = typer.Argument(None, help="Path to stack.yaml (default: ./stack.yaml, like compose's compose.yaml).",
                         show_default=False)
FileOpt = typer.Option(None, "-f", "--file", help="The stack file (instead of the FILE argument).", show_default=False)
# [FILE] [SERVICE]...: the first word is the stack file when it names one (ends in .yaml/.yml, has a '/', or is a
# file here); else every word is a service of ./stack.yaml.
StackArgs = typer.Argument(None, metavar="[FILE] [SERVICE]...", show_default=False,
                           help="The stack file (default ./stack.yaml or -f FILE), then service names (default: all).")
HostOpt = typer.Option(None, "--host-facts", help="Use a recorded host (JSON from `stackgen detect --json`) instead of probing.")


class UsageError(StackgenError):
    """A command line that names no usable stack file."""

    exit_code = EX_USAGE


def stack_path(file: Optional[Path], file_opt: Optional[Path] = None) -> Path:
    """The stack file a command works on: FILE, -f FILE, or ./stack.yaml (said on stderr, so the user knows)."""
    if file is not None and file_opt is not None and file != file_opt:
        raise UsageError(f"give the stack file once: FILE ({file}) or -f ({file_opt}), not both")
    chosen = file if file is not None else file_opt
    if chosen is not None:
        return chosen
    default = Path(DEFAULT_STACK)
    if not default.is_file():
        raise UsageError(f"no {DEFAULT_STACK} in {Path.cwd()}: give the stack file (stackgen COMMAND FILE or -f FILE), "
                         f"or write one with `stackgen init`")
    typer.echo(f"using ./{DEFAULT_STACK}", err=True)
    return default


def looks_like_stack_file(word: str) -> bool:
    return word.endswith((".yaml", ".yml")) or "/" in word or Path(word).is_file()


def stack_and_services(words: Optional[list[str]], file_opt: Optional[Path]) -> tuple[Path, list[str]]:
    """[FILE] [SERVICE]... -> (stack file, services); see StackArgs."""
    words = list(words or [])
    if file_opt is None and words and looks_like_stack_file(words[0]):
        return Path(words[0]), words[1:]
    return stack_path(None, file_opt), words


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stackgen {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def run(fn: Callable[[], int | None]) -> None:
    """Run a command body; map stackgen errors to messages and exit codes."""
    try:
        code = fn() or 0
    except StackgenError as exc:
        if _state["debug"]:
            raise
        typer.echo(_error_text(exc), err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EX_INTERRUPTED) from None
    raise typer.Exit(code)


def guarded(fn: Callable[..., int | None]) -> Callable[..., None]:
    """A command whose function returns its exit code, run through `run` (errors to messages and exit codes).
    functools.wraps keeps the signature typer reads the options from."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> None:
        run(lambda: fn(*args, **kwargs))

    return command


def _error_text(exc: StackgenError) -> str:
    text = exc.render()
    if "\n" in text or text.startswith(("/", ".")) or ":" in text.split(" ")[0]:
        return text if text.startswith("error") else text
    return f"error: {text}"


def _host(host_facts: Optional[Path]):
    from stackgen.pipeline import load_host

    return load_host(host_facts)


def load_and_plan(file: Path, host_facts: Optional[Path], write_lock: bool = True, calibration: bool = True):
    """pipeline.plan_stack, saying on stderr when it wrote the stack's lock file."""
    from stackgen.pipeline import plan_stack

    return plan_stack(file, host_facts, write_lock=write_lock, on_lock=_said_lock, calibration=calibration)


def _said_lock(path: Path) -> None:
    typer.echo(f"wrote {path} (the remote models, pinned)", err=True)


# ---------------------------------------------------------------------------------------------- commands


@app.command()
@guarded
def validate(file: Optional[Path] = FileArg, file_opt: Optional[Path] = FileOpt) -> int:
    """Check a stack file; print FILE:LINE:COL: field: message for every problem."""
    from stackgen.spec.stack import load_stack

    path = stack_path(file, file_opt)
    stack = load_stack(path)
    typer.echo(f"{path}: ok ({len(stack.services)} service{'s' if len(stack.services) != 1 else ''})")
    return 0


@app.command()
@guarded
def plan(
    file: Optional[Path] = FileArg,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    host_facts: Optional[Path] = HostOpt,
    file_opt: Optional[Path] = FileOpt,
    no_calibration: bool = typer.Option(False, "--no-calibration",
                                        help="Ignore this host's `stackgen calibrate` measurement."),
) -> int:
    """Resolve each service to an engine with a memory plan, and say why."""
    from stackgen.errors import PlanError

    try:
        _, p = load_and_plan(stack_path(file, file_opt), host_facts, calibration=not no_calibration)
    except PlanError as exc:  # nothing fits: tools still get the numbers (with "fits": false); exit 1 stays
        if as_json and exc.plan_json is not None:
            typer.echo(json.dumps(exc.plan_json, indent=2))
        raise
    if as_json:
        typer.echo(json.dumps(p.to_json(), indent=2))
    else:
        from stackgen.plan.report import plan_text

        typer.echo(plan_text(p))
    return 0


@app.command()
@guarded
def schema() -> int:
    """Print the JSON Schema of stack.yaml (for editors: `# yaml-language-server: $schema=...`)."""
    from stackgen.spec.stack import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
    return 0


def _register_commands() -> None:
    """Each module in stackgen.commands adds its commands to `app` (render, up/down/status/logs, detect, ...)."""
    import importlib
    import pkgutil

    import stackgen.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        importlib.import_module(f"stackgen.commands.{info.name}")


_register_commands()


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # last resort: a bug in stackgen itself
        if _state["debug"] or "--debug" in sys.argv:
            raise
        typer.echo("stackgen: internal error (run again with --debug for the traceback, and please report it)", err=True)
        sys.exit(EX_ERROR)


if __name__ == "__main__":
    # Run through the imported module so commands registered on `stackgen.cli.app` are the ones dispatched.
    from stackgen.cli import main as _main

    _main()
