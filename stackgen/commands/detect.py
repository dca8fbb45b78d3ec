"""`stackgen detect` (this machine as an inline hardware profile) and `stackgen init` (a starter stack.yaml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from stackgen.cli import _host, app, run
from stackgen.errors import PlanError, StackgenError

SCHEMA_ID = "https://stackgen.dev/schema/stack-v1.json"
HEADROOM = 0.10  # the suggested model must leave >= 10 % of each memory pool free
# The slowest planned decode speed per stream (tokens/s) a suggested model may have, by what the workload optimizes.
# latency/setup: one person reads the answer as it streams; ~10 tokens/s is about reading speed (~7 words/s), and a
# 500-token dev-loop answer then takes under a minute. throughput: many streams at once; each still gets >= 5
# tokens/s so a 400-token team-api answer arrives within ~80 s.
USABLE_DECODE_TOKENS_PER_S = {"latency": 10.0, "setup": 10.0, "throughput": 5.0}


def hardware_yaml(host: Any) -> str:
    """The detected hardware as a YAML `hardware:` block (notes as comments), ready to paste into stack.yaml."""
    data = host.hardware.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump({"hardware": data}, sort_keys=False, default_flow_style=False, width=120)
    notes = "".join(f"# - {n}\n" for n in host.notes)
    return "# stackgen detect: this machine as an inline hardware profile\n" + (
        "# where each figure came from:\n" + notes if notes else "") + body


@app.command()
def detect(
    as_json: bool = typer.Option(False, "--json", help="HostFacts JSON (for `stackgen plan --host-facts FILE`)."),
    measure: bool = typer.Option(False, "--measure", help="Measure system RAM bandwidth (a few hundred ms)."),
) -> None:
    """Print this machine as an inline hardware profile (YAML), or as HostFacts JSON with --json."""

    def body() -> int:
        from stackgen.detect import detect_host

        host = detect_host(measure=measure)
        typer.echo(host.to_json() if as_json else hardware_yaml(host).rstrip("\n"))
        return 0

    run(body)


# ---------------------------------------------------------------------------------------------- init


def schema_ref(target_dir: Path) -> str:
    """Where editors find the schema: the committed schema/stack-v1.json relative to the new file, else the $id."""
    import stackgen

    pkg = Path(stackgen.__file__).resolve().parent
    for candidate in (pkg / "_data" / "schema" / "stack-v1.json", pkg.parent / "schema" / "stack-v1.json"):
        if candidate.is_file():
            try:
                return Path(os.path.relpath(candidate, target_dir.resolve())).as_posix()
            except ValueError:  # another drive on Windows
                return candidate.as_posix()
    return SCHEMA_ID


def stack_text(*, name: str, hardware: Any, workload: str, model: str, schema: str, notes: tuple[str, ...] = ()) -> str:
    """A starter stack.yaml. `hardware` is a profile name or a HardwareSpec (written inline)."""
    lines = [f"# yaml-language-server: $schema={schema}", "# Written by `stackgen init`; check it with "
             "`stackgen validate stack.yaml` and `stackgen plan stack.yaml`."]
    lines += [f"# detect: {n}" for n in notes]
    doc: dict[str, Any] = {"version": 1, "name": name}
    if isinstance(hardware, str):
        doc["hardware"] = hardware
    else:
        doc["hardware"] = hardware.model_dump(mode="json", exclude_none=True)
    doc["workload"] = workload
    doc["services"] = {"chat": {"model": model}}
    doc["targets"] = ["script"]
    return "\n".join(lines) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)


def _slug(folder: Path) -> str:
    import re

    slug = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")[:63].strip("-")
    return slug if slug and slug[0].isalnum() else "stack"


def _plan_in_memory(text: str, path: Path, profiles: Any, host: Any):
    from stackgen.resolve import resolve
    from stackgen.spec import bind, parse_document, validate_document

    doc = parse_document(text, str(path))
    spec = validate_document(doc, str(path))
    stack = bind(spec, doc, str(path), path, profiles)
    return resolve(stack, host)


def has_headroom(plan: Any, headroom: float = HEADROOM) -> bool:
    """All on the GPU when there is one, no context cut, and >= headroom of each budget left."""
    sp = plan.services[0]
    m = sp.memory
    if not m.fits or any("context reduced" in lever for lever in m.levers):
        return False
    if m.gpu_budget_bytes > 0 and (m.gpu_layers < m.total_layers or m.gpu_bytes > (1 - headroom) * m.gpu_budget_bytes):
        return False
    return m.host_bytes <= (1 - headroom) * m.host_budget_bytes


def usable_speed(plan: Any) -> float:
    return USABLE_DECODE_TOKENS_PER_S[plan.services[0].workload.optimize]


def suggest_model(*, name: str, hardware: Any, workload: str, host: Any, path: Path, profiles: Any,
                  schema: str = SCHEMA_ID) -> tuple[str, Any, list[str]]:
    """Walk the catalog from the largest model to the smallest; the first that plans with headroom and at a usable
    speed for the workload wins. Without one: the fastest that has headroom, else the first that fits."""
    catalog = sorted(profiles.models.items(), key=lambda kv: (kv[1].params, kv[0]), reverse=True)
    tried: list[str] = []
    roomy, fallback = [], None
    for model_name, _facts in catalog:
        text = stack_text(name=name, hardware=hardware, workload=workload, model=model_name, schema=schema)
        try:
            plan = _plan_in_memory(text, path, profiles, host)
        except PlanError:
            tried.append(f"{model_name}: does not fit")
            continue
        fallback = fallback or (model_name, plan)
        if not has_headroom(plan):
            tried.append(f"{model_name}: fits with less than {HEADROOM:.0%} headroom")
            continue
        speed, need = plan.services[0].predicted_decode_tokens_per_s, usable_speed(plan)
        if speed >= need:
            return model_name, plan, tried
        tried.append(f"{model_name}: planned {speed:g} tokens/s per stream, below the {need:g} a {workload} "
                     "workload needs")
        roomy.append((speed, model_name, plan))
    if roomy:
        speed, model_name, plan = max(roomy, key=lambda r: r[0])
        return model_name, plan, tried + [f"no model reaches a usable speed here; picked the fastest, {model_name} "
                                          f"({speed:g} tokens/s)"]
    if fallback is not None:
        return fallback[0], fallback[1], tried + [f"no model leaves {HEADROOM:.0%} headroom; picked {fallback[0]}"]
    raise StackgenError("no model in the catalog fits this machine with the chosen workload; "
                        "try `--workload quickstart` or describe a bigger machine with `--hardware`")


def _choose_workload(workload: Optional[str], names: list[str]) -> tuple[str, str | None]:
    if workload:
        return workload, None
    if not sys.stdin.isatty():
        return "dev-loop", "stdin is not a terminal: using workload dev-loop (pass --workload NAME to choose)"
    typer.echo("Workloads: " + ", ".join(names))
    # A plain text prompt checked here: typer's choice type moved between versions (typer.Choice is gone in 0.29).
    while True:
        chosen = typer.prompt("Workload", default="dev-loop").strip()
        if chosen in names:
            return chosen, None
        typer.echo(f"unknown workload {chosen!r}; pick one of: {', '.join(names)}", err=True)


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder for stack.yaml (created if missing).", show_default=True),
    hardware: Optional[str] = typer.Option(None, "--hardware", help="A built-in hardware profile instead of this machine."),
    workload: Optional[str] = typer.Option(None, "--workload", help="Workload profile (default: ask; dev-loop when not a TTY)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing stack.yaml."),
    host_facts: Optional[Path] = typer.Option(None, "--host-facts", help="Use a recorded host (JSON from `stackgen detect --json`)."),
    measure: bool = typer.Option(False, "--measure", help="Measure system RAM bandwidth while detecting."),
) -> None:
    """Write a starter stack.yaml for this machine: detected hardware, a workload and a model that fits."""

    def body() -> int:
        from stackgen.hardware import HostFacts
        from stackgen.profiles import load_profiles
        from stackgen.report import plan_text

        target = directory / "stack.yaml"
        if target.exists() and not force:
            raise StackgenError(f"{target} already exists; pass --force to overwrite it")
        profiles = load_profiles(directory if directory.is_dir() else None)
        wl, said = _choose_workload(workload, sorted(profiles.workloads))
        if wl not in profiles.workloads:
            raise StackgenError(f"unknown workload {wl!r} (known: {', '.join(sorted(profiles.workloads))})")
        if said:
            typer.echo(said, err=True)
        notes: tuple[str, ...] = ()
        if hardware is not None:
            if hardware not in profiles.hardware:
                raise StackgenError(f"unknown hardware profile {hardware!r} "
                                    f"(known: {', '.join(sorted(profiles.hardware))})")
            hw_ref: Any = hardware
            host = HostFacts(profiles.hardware[hardware])
        else:
            if host_facts is not None:
                host = _host(host_facts)
            else:
                from stackgen.detect import detect_host

                host = detect_host(measure=measure)
            hw_ref, notes = host.hardware, host.notes
        name = _slug(directory)
        schema = schema_ref(directory)
        model, plan, tried = suggest_model(name=name, hardware=hw_ref, workload=wl, host=host, path=target,
                                           profiles=profiles, schema=schema)
        text = stack_text(name=name, hardware=hw_ref, workload=wl, model=model, schema=schema, notes=notes)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(".stack.yaml.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
        typer.echo(f"wrote {target} (workload {wl}, model {model})")
        for t in tried:
            typer.echo(f"  skipped {t}")
        typer.echo("")
        typer.echo(plan_text(plan).rstrip("\n"))
        return 0

    run(body)


__all__ = ["detect", "init", "hardware_yaml", "stack_text", "suggest_model", "has_headroom", "schema_ref"]
