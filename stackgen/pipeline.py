"""The library API: the stages chained for a caller (the CLI's commands, tests, other programs). Nothing here prints
or reads CLI arguments; each function raises StackgenError subclasses.

- `load_host(host_facts)`: a recorded host.json, or this machine (hardware.detect, the only host probe).
- `plan_stack(file, host_facts)`: load the stack, pin its remote models in stack.lock, plan it -> (Stack, Plan).
- `render_stack(file, out_dir, host_facts)`: everything `render` writes, as artifacts (nothing touches the disk).
- `suggest_model(...)`: the catalog model `init` proposes for a machine and workload.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from stackgen.errors import PlanError, Problem, StackgenError


def load_host(host_facts: Optional[Path]):
    """A recorded host (`--host-facts FILE`), or this machine detected."""
    from stackgen.host.facts import HostFacts, detect

    if host_facts is not None:
        try:
            return HostFacts.load(host_facts)
        except (OSError, ValueError, KeyError) as exc:
            raise StackgenError(f"{host_facts}: not a recorded host: {exc}") from None
    return detect()


def _recorded_or_none(host_facts: Optional[Path]):
    """A host is only needed for `hardware: detect`; skip probing otherwise."""
    from stackgen.host.facts import HostFacts

    if host_facts is not None:
        return load_host(host_facts)
    return HostFacts(hardware=None)  # type: ignore[arg-type]


def plan_stack(file: Path, host_facts: Optional[Path] = None, write_lock: bool = True,
               on_lock: Callable[[Path], None] | None = None, calibration: bool = True):
    """(Stack, Plan) for a stack file. `write_lock`: a stack whose remote models were just resolved over the network
    (no lock file yet) gets its stack.lock, so the next plan needs no network (`render --check` passes False: it
    writes nothing); `on_lock` is told the lock file's path when one is written. `calibration`: a detected host
    (`hardware: detect`, no --host-facts) uses the stored `stackgen calibrate` measurement of this machine."""
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack

    stack = load_stack(file)
    if write_lock and stack.remote is not None and stack.remote.should_write():
        stack.remote.write()
        if on_lock is not None:
            on_lock(stack.remote.lock_path)
    host = load_host(host_facts) if stack.hardware is None else _recorded_or_none(host_facts)
    reason = None
    if calibration and stack.hardware is None and host_facts is None:
        from stackgen.host import calibration as cal

        host, reason = cal.apply(host, cal.load())
    if stack.hardware is None and host_facts is None and not host.engine_builds:
        host = with_engine_builds(host, stack)
    with located(file):
        plan = resolve(stack, host)
    if reason:
        from dataclasses import replace

        plan = replace(plan, services=tuple(replace(s, reasons=s.reasons + (reason,)) for s in plan.services))
    return stack, plan


def with_engine_builds(host, stack):
    """A detected host with the builds of the engine binaries its services would run (host.binaries.engine_build),
    found by stackgen's binary rule from the stack's folder: the llama.cpp logits rule follows the installed build.
    STACKGEN_ENGINE_PROBE=0 skips the probe (the test suite sets it, so plans do not depend on what is installed)."""
    from dataclasses import replace as _replace

    if os.environ.get("STACKGEN_ENGINE_PROBE") == "0":
        return host
    from stackgen.host.binaries import probe_engine_builds

    used = {s.spec.engine for s in stack.services}
    builds = probe_engine_builds(used, Path(stack.path).parent)
    return _replace(host, engine_builds=builds) if builds else host


def stack_display(stack_file: Path, out_dir: Path) -> str:
    """The stack file as artifact headers and the output folder's manifest name it: relative to the output folder's
    parent, so it does not depend on the caller's working directory (nor on how the folder is written: `-o .` from
    inside it names the folder above, which Path('.').parent does not)."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    return Path(os.path.relpath(os.path.abspath(stack_file), parent)).as_posix()


def render_stack(stack_file: Path, out_dir: Path, host_facts: Optional[Path] = None, write_lock: bool = True,
                 probe: bool = False, on_lock: Callable[[Path], None] | None = None):
    """Everything `render` would write, without touching the disk (invalid input raises before any write).
    `probe`: also ask the installed engine binary's --help (a host probe, so off by default: what render writes must
    not depend on PATH; `up` and `doctor` check the binary)."""
    from stackgen.engines.flagcheck import check_plan
    from stackgen.render.artifact import RenderContext, render_plan

    stack, plan = plan_stack(stack_file, host_facts, write_lock=write_lock, on_lock=on_lock)
    # A renamed or removed flag must fail here, not as a service that will not start.
    with located(stack_file):
        check_plan(plan, probe=probe)
    display = stack_display(stack_file, out_dir)
    # The output folder as seen from the stack's folder: targets place paths from it, whatever the cwd was.
    out_rel = Path(os.path.relpath(os.path.abspath(out_dir), os.path.abspath(stack_file.parent))).as_posix()
    ctx = RenderContext(stack_display=display, out_dir=out_rel, model_dir=stack.spec.serve.model_dir)
    with located(stack_file):
        return render_plan(plan, ctx, stack.targets)


# A message that starts with the stack field it is about (`services.coder.binary: ...`), after the stack file's
# name (`m1.yaml: services.coder: ...`), as plan and render stages word them.
_FIELD = re.compile(r"((?:services|serve|workload|hardware|targets|nodes|cluster)(?:\.[\w-]+)*): (.+)", re.S)


@contextmanager
def located(file: Path):
    """Errors of the stages after validation (plan, flag check, render) that name a stack field get its position in
    the file (`StackgenError.problem`), so they print as `file:line:col: field: message` like validate's: they said
    `services.coder.binary: ...` with no file or line (audit a4 #7)."""
    try:
        yield
    except StackgenError as exc:
        if exc.problem is None:
            exc.problem = locate(str(exc), file)
        raise


def locate(message: str, file: Path) -> Problem | None:
    from stackgen.spec.stack import parse_document, read_stack_text

    display = str(file)
    body = message[len(display) + 2:] if message.startswith(f"{display}: ") else message
    m = _FIELD.fullmatch(body)
    if m is None:
        return None
    try:
        doc = parse_document(read_stack_text(Path(file)), display)
    except StackgenError:
        return None
    path = tuple(int(p) if p.isdigit() else p for p in m[1].split("."))
    if path[:2] not in doc.marks and path[:1] not in doc.marks:
        return None  # not a field this file writes (a profile's, a default's): no position to give
    mark = doc.mark_for(path)
    return Problem(display, mark.line, mark.col, m[1], m[2])


# ---------------------------------------------------------------------------------------------- suggesting a model

SCHEMA_ID = "https://stackgen.dev/schema/stack-v1.json"
HEADROOM = 0.10  # the suggested model must leave >= 10 % of each memory pool free
# The slowest planned decode speed per stream (tokens/s) a suggested model may have, by what the workload optimizes.
# latency/setup: one person reads the answer as it streams; ~10 tokens/s is about reading speed (~7 words/s), and a
# 500-token dev-loop answer then takes under a minute. throughput: many streams at once; each still gets >= 5
# tokens/s so a 400-token team-api answer arrives within ~80 s.
USABLE_DECODE_TOKENS_PER_S = {"latency": 10.0, "setup": 10.0, "throughput": 5.0}


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


def plan_text(text: str, path: Path, profiles: Any, host: Any):
    """The plan of a stack given as text (not on disk), with `path` naming it in messages."""
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import bind, parse_document, validate_document

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


def planned_speed(plan: Any) -> tuple[float, str]:
    """The decode rate each user of the plan's first service should see, and how to say it: the speed model's
    forecast at the workload's concurrent users (speed.Forecast.per_user_tokens_per_s: the fitted per-backend line
    with its per-token overhead, the streams sharing the steps), else the single-stream bandwidth roofline."""
    sp = plan.services[0]
    if sp.speed is not None:
        users = sp.workload.concurrent_users
        return sp.speed.per_user_tokens_per_s, (f"tokens/s per user at {users} users" if users > 1
                                                else "tokens/s for its one user")
    return sp.predicted_decode_tokens_per_s, "tokens/s per stream"


def _ttft_note(model_name: str, plan: Any, seen: list[tuple[float, str]], smaller: list, name: str, hardware: Any,
               workload: str, host: Any, path: Path, profiles: Any, schema: str) -> list[str]:
    """The pick decodes fast enough; when its first token alone takes longer than the workload's TTFT target (a
    2,000-token prompt prefilled on 2 CPU cores), say so, and name the model with headroom quickest to first token
    (the smaller ones are planned for it). A note, not a different pick: the workload's own optimize decides that."""
    sp = plan.services[0]
    target = sp.workload.ttft_p95_ms / 1000
    if sp.speed is None or sp.speed.ttft_s <= target:
        return []
    times = list(seen)
    for other, _facts in smaller:
        text = stack_text(name=name, hardware=hardware, workload=workload, model=other, schema=schema)
        try:
            p = plan_text(text, path, profiles, host)
        except PlanError:
            continue
        if has_headroom(p) and p.services[0].speed is not None:
            times.append((p.services[0].speed.ttft_s, other))
    best_s, best = min(times)
    alt = (f"; the quickest to first token here is {best} ({best_s:.1f} s)" if best != model_name else "")
    return [f"note: {model_name}'s first token takes {sp.speed.ttft_s:.1f} s alone for a {workload} prompt "
            f"({sp.workload.prompt_tokens} tokens) here, past the workload's {target:g} s target{alt}"]


def suggest_model(*, name: str, hardware: Any, workload: str, host: Any, path: Path, profiles: Any,
                  schema: str = SCHEMA_ID) -> tuple[str, Any, list[str]]:
    """Walk the catalog from the largest model to the smallest; the first that plans with headroom and at a usable
    speed for the workload wins. Without one: the fastest that has headroom, else the first that fits."""
    catalog = sorted(profiles.models.items(), key=lambda kv: (kv[1].params, kv[0]), reverse=True)
    tried: list[str] = []
    roomy, fallback = [], None
    first_token: list[tuple[float, str]] = []  # (TTFT alone, model) of each model with headroom
    for i, (model_name, _facts) in enumerate(catalog):
        text = stack_text(name=name, hardware=hardware, workload=workload, model=model_name, schema=schema)
        try:
            plan = plan_text(text, path, profiles, host)
        except PlanError:
            tried.append(f"{model_name}: does not fit")
            continue
        fallback = fallback or (model_name, plan)
        if not has_headroom(plan):
            tried.append(f"{model_name}: fits with less than {HEADROOM:.0%} headroom")
            continue
        (speed, unit), need = planned_speed(plan), usable_speed(plan)
        sp = plan.services[0]
        if sp.speed is not None:
            first_token.append((sp.speed.ttft_s, model_name))
        if speed >= need:
            return model_name, plan, tried + _ttft_note(model_name, plan, first_token, catalog[i + 1:], name,
                                                        hardware, workload, host, path, profiles, schema)
        tried.append(f"{model_name}: planned {speed:.1f} {unit}, below the {need:g} a {workload} workload needs")
        roomy.append((speed, model_name, plan))
    if roomy:
        speed, model_name, plan = max(roomy, key=lambda r: r[0])
        return model_name, plan, tried + [f"no model reaches a usable speed here; picked the fastest, {model_name} "
                                          f"({speed:g} tokens/s)"]
    if fallback is not None:
        return fallback[0], fallback[1], tried + [f"no model leaves {HEADROOM:.0%} headroom; picked {fallback[0]}"]
    raise StackgenError("no model in the catalog fits this machine with the chosen workload; "
                        "try `--workload quickstart` or describe a bigger machine with `--hardware`")


__all__ = ["load_host", "plan_stack", "render_stack", "suggest_model", "stack_text", "plan_text", "has_headroom",
           "usable_speed", "planned_speed", "HEADROOM", "SCHEMA_ID", "USABLE_DECODE_TOKENS_PER_S"]
