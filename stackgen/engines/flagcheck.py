"""Flag checking: every flag stackgen emits, and every override a stack names, must exist in the engine version the
artifacts target.

Engines rename and remove flags often (llama.cpp dropped --mlock for --load-mode; vLLM 0.33 dropped --swap-space),
and a rejected flag only shows up when the service fails to start. The known flag sets per version live in
profiles/engines/<engine>.yaml (each says where it was read from); `engine_version` in the stack picks one, the
version engines.md documents is the default. `probe=True` also asks the installed binary's `--help`.
An engine without flags (`Engine.flags` None: Ollama) checks its own settings (`Engine.check_settings`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stackgen import datafile, engines
from stackgen._resources import data_dir
from stackgen.host.binaries import find_or_none
from stackgen.engines.base import FlagSource
from stackgen.errors import RenderError
from stackgen.plan.plan import Plan, ServicePlan


def _source(engine: str) -> FlagSource:
    src = engines.get(engine).flags
    if src is None:
        raise RenderError(f"{engines.get(engine).display} has no flag table (it takes no flags)")
    return src


@dataclass(frozen=True)
class FlagTable:
    engine: str
    version: str  # as the stack named it (an alias stays an alias in messages)
    flags: dict  # flag -> number of values, or "?", "*", "+" (argparse nargs)
    removed: dict  # flag -> "removed; use ..." for flags older builds had

    def problem(self, flag: str) -> str | None:
        """Why `flag` is not accepted, or None."""
        if flag in self.flags:
            return None
        why = f" ({self.removed[flag]})" if flag in self.removed else ""
        return f"{self.engine} {self.version} has no flag {flag}{why}"


# ---------------------------------------------------------------------------------------------- tables


@lru_cache(maxsize=None)
def _profile(engine: str) -> dict:
    path = data_dir("profiles") / "engines" / _source(engine).profile
    try:
        data = datafile.load_yaml(path, f"the {engine} flag table", "reinstall stackgen").data
    except (OSError, ValueError) as exc:  # ValueError: YamlError, DataFileError, not UTF-8
        raise RenderError(f"{path}: cannot read the {engine} flag table: {exc}") from None
    return data


def known_versions(engine: str) -> list[str]:
    prof = _profile(engine)
    return sorted(set(prof["versions"]) | set(prof.get("aliases") or {}))


def table_version(engine: str, version: str | None = None, prof: dict | None = None) -> str:
    """The version a stack's engine_version names in `engine`'s flag-table profile: none given -> the documented
    default; an alias -> the version it stands for; anything else as given (it may name no table)."""
    prof = prof if prof is not None else _profile(engine)
    asked = version or str(prof["default"])
    return (prof.get("aliases") or {}).get(asked, asked)


def table(engine: str, version: str | None = None) -> FlagTable:
    """The flag table for `engine` at `version` (default: the documented one); RenderError for unknown versions."""
    prof = _profile(engine)
    asked = version or str(prof["default"])
    real = table_version(engine, version, prof)
    if real not in prof["versions"]:
        raise RenderError(f"stackgen has no {engine} flag table for version {asked!r}; known: "
                          f"{', '.join(known_versions(engine))} (leave engine_version out for {prof['default']})")
    entry = prof["versions"][real]
    return FlagTable(engine, asked, dict(entry.get("flags") or {}), dict(entry.get("removed") or {}))


# ---------------------------------------------------------------------------------------------- checking


def check_plan(plan: Plan, probe: bool = False) -> None:
    """Raise RenderError naming the field whose flag the targeted engine version would reject. With `probe`, also
    each service's installed binary; a service whose binary could not be asked fails the probe too (a CI guard that
    checked nothing must not pass), all of them named in one error, with why."""
    unprobed = []
    for sp in plan.services:
        why = check_service(sp, probe, Path(plan.stack_path).parent)
        if why:
            unprobed.append(f"  services.{sp.name} ({engines.get(sp.engine).short}): {why}")
    if unprobed:
        n = len(unprobed)
        raise RenderError(f"render --probe: {n} service{'s were' if n > 1 else ' was'} not probed, so "
                          f"{'their' if n > 1 else 'its'} flags were checked against stackgen's tables only:\n" + "\n".join(unprobed) + "\n  fix: install the "
                          "engine where render runs (or point `binary:` at it), or render without --probe")


def check_service(sp: ServicePlan, probe: bool = False, stack_dir: Path = Path(".")) -> str | None:
    """Raise RenderError for a flag the engine would reject. With `probe`: None when the installed binary's --help
    was compared (or the engine takes no flags), else why it could not be."""
    engine = engines.get(sp.engine)
    if engine.flags is None:  # no flag table (Ollama): with --probe, at least its binary must be there (review L3)
        engine.check_settings(sp)
        return _missing_binary(sp, stack_dir)[1] if probe else None
    try:
        flags = table(sp.engine, sp.spec.engine_version)
    except RenderError as exc:
        raise RenderError(f"services.{sp.name}.engine_version: {exc}") from None
    _check_overrides(sp, flags)
    for flag in argv_flags(sp.engine, list(sp.command), flags):
        why = flags.problem(flag)
        if why:
            raise RenderError(f"services.{sp.name}: {why}; stackgen emits it for this plan "
                              "(set engine_version to a build that has it, or override the flag)")
    return _check_probe(sp, stack_dir) if probe else None


def _check_overrides(sp: ServicePlan, flags: FlagTable) -> None:
    where = f"services.{sp.name}.overrides"
    for key, value in sorted(sp.spec.overrides.items()):
        why = flag_problem(flags, key, value)
        if why:
            raise RenderError(f"{where}: {why}")


def _flag(key: str) -> str:
    """An override key as the flag it names (`temp` and `--temp` are both --temp)."""
    return key if key.startswith("-") else f"--{key}"


def _table_or_none(engine: str, version: str | None) -> FlagTable | None:
    """The flag table, or None for a version stackgen has none for (check_service names that, not these checks)."""
    try:
        return table(engine, version)
    except RenderError:
        return None


def flag_problem(flags: FlagTable, key: str, value) -> str | None:
    """Why the flag table refuses override `key: value` (an unknown or removed flag, a value where it takes none or
    none where it needs one), or None."""
    flag = _flag(key)
    why = flags.problem(flag)
    if why:
        return why
    arity = flags.flags[flag]
    if value is True and arity not in (0, "?", "*"):
        return f"{flag} needs a value (write `{key}: VALUE`)"
    if not isinstance(value, bool) and value is not None and arity == 0:  # 1 == True, so no `in (True, ...)`
        return f"{flag} takes no value (write `{key}: true`)"
    return None


def override_problem(engine: str, version: str | None, key: str, value) -> str | None:
    """Why `engine` (at `version`; None: its default) cannot take override `key: value`, or None: its flag table's
    verdict, or for an engine without one (Ollama) its own settings check. A version stackgen has no table for is
    not judged here (check_service names it)."""
    e = engines.get(engine)
    if e.flags is None:
        return e.setting_problem(key, value)
    flags = _table_or_none(engine, version)
    return flag_problem(flags, key, value) if flags is not None else None


def knows(engine: str, version: str | None, key: str) -> bool:
    """Whether `key` is one of `engine`'s flags (at `version`) or settings, whatever its value."""
    e = engines.get(engine)
    if e.flags is None:
        return e.knows_setting(key)
    flags = _table_or_none(engine, version)
    return flags is None or _flag(key) in flags.flags  # no table for that version: not judged here


def removed(engine: str, version: str | None, key: str) -> bool:
    """Whether `key` is a flag older builds of `engine` had (its table names the replacement)."""
    flags = _table_or_none(engine, version) if engines.get(engine).flags is not None else None
    return flags is not None and _flag(key) in flags.removed


def close_flags(engine: str, version: str | None, key: str) -> list[str]:
    """The engine's flags spelled like `key` (a typo's likely meaning)."""
    import difflib

    flags = _table_or_none(engine, version) if engines.get(engine).flags is not None else None
    if flags is None:
        return []
    return difflib.get_close_matches(_flag(key), list(flags.flags), n=1, cutoff=0.75)


def argv_flags(engine: str, argv: list[str], flags: FlagTable) -> list[str]:
    """The flags in an argv, skipping each flag's values as the engine's parser would."""
    out, i = [], 1 + _source(engine).leading_positionals
    while i < len(argv):
        tok = argv[i]
        name, eq, _ = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        out.append(name)
        i += 1 + _values_after(argv, i + 1, flags.flags.get(name, 0), bool(eq))
    return out


def _values_after(argv: list[str], start: int, arity, inline: bool) -> int:
    if isinstance(arity, int):
        return max(0, arity - inline)
    if inline:
        return 0
    n = 0
    while start + n < len(argv) and not _is_flag(argv[start + n]) and (arity != "?" or n == 0):
        n += 1
    return n


def _is_flag(tok: str) -> bool:
    return tok.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", tok)


# ---------------------------------------------------------------------------------------------- probing


def _check_probe(sp: ServicePlan, stack_dir: Path) -> str | None:
    """None once the binary's --help is compared with the planned argv; else why there was nothing to compare."""
    binary, why = _missing_binary(sp, stack_dir)
    if binary is None:
        return why
    help_args = _source(sp.engine).help_args
    listed = probe_help(binary, help_args)
    if "--port" not in listed:  # not an engine's --help (a wrapper script or stub): nothing to compare against
        return f"`{binary} {' '.join(help_args)}` lists no --port: not the engine's help (a wrapper or a stub?)"
    flags = table(sp.engine, sp.spec.engine_version)
    for flag in argv_flags(sp.engine, list(sp.command), flags):
        if flag not in listed:
            raise RenderError(f"services.{sp.name}: the installed {binary} does not list {flag} in its --help "
                              "(an older or forked build?); set `binary:` to another build or override the flag")
    return None


def _missing_binary(sp: ServicePlan, stack_dir: Path) -> tuple[str | None, str | None]:
    """(the installed binary, None), or (None, why it was not found)."""
    tried: list[str] = []
    binary = find_or_none(sp.engine, sp.spec.binary, stack_dir, tried=tried)
    if binary is not None:
        return binary, None
    if sp.spec.binary:
        return None, f"binary: {sp.spec.binary} is not an executable file (looked at {tried[0]})"
    return None, f"no {engines.get(sp.engine).binary} found (looked for {'; '.join(tried)})"


def probe_help(binary: str, help_args: tuple[str, ...] = ("--help",)) -> set[str]:
    """Every flag-like word in `binary --help` (cached per binary path and mtime, so an upgrade is noticed)."""
    st = os.stat(binary)
    return set(_probe_cached(os.path.realpath(binary), st.st_mtime_ns, tuple(help_args)))


@lru_cache(maxsize=32)
def _probe_cached(binary: str, mtime_ns: int, help_args: tuple[str, ...]) -> frozenset[str]:
    try:
        proc = subprocess.run([binary, *help_args], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"cannot run {binary} {' '.join(help_args)}: {exc}") from None
    return frozenset(parse_help(proc.stdout + proc.stderr))


def parse_help(text: str) -> set[str]:
    words = re.findall(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9_.-]*)", text)
    return {w.rstrip(".") for w in words}
