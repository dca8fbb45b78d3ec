"""The `launchd` target: one LaunchAgent plist per service under launchd/, for MLX and llama.cpp on a Mac.

Each agent runs the engine's argv (stackgen.engines.command) with the engine's environment, restarts it whenever it
exits (KeepAlive=true, at most once per ThrottleInterval: a server that exits, even with status 0, has stopped serving,
as the systemd units' RestartForceExitStatus=0 and the native supervisor say too), writes stdout and stderr to
/Library/Logs/stackgen/<stack>-<service>.log (admin-writable, shown by Console.app) and creates files with umask 077.
ProcessType=Interactive: launchd.plist(5) says jobs without a ProcessType get "light resource limits ... throttling
its CPU usage and I/O bandwidth", which an inference server someone is waiting on should not get.

Raising the GPU wired-memory limit (`sysctl iogpu.wired_limit_mb`, mlx-lm README "Large Models") needs root and
resets at reboot, so it is its own one-time action: a LaunchDaemon `<prefix>.wired-limit.plist` that runs the sysctl
at every boot, rendered only when the plan needs more than macOS's default limit. The plists are written with
plistlib (every value escaped by the library); keys are those of launchd.plist(5), checked in tests/test_launchd.py.
"""

from __future__ import annotations

import math
import plistlib
import posixpath
import shlex
from pathlib import PurePosixPath

from stackgen import engines
from stackgen.render.paths import installed_path, local_weights, weight_files
from stackgen.render.engine_files import WIRED_WARN_FRACTION
from stackgen.errors import RenderError
from stackgen.plan.memory import MIB, initial_budget
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext
from stackgen.render.targets import fleet, installed_binary, refuse_chat_template, register

HOMEBREW_BIN = "/opt/homebrew/bin"  # Homebrew's prefix on Apple silicon (`brew install llama.cpp` puts llama-server here)
LOG_DIR = "/Library/Logs/stackgen"  # root:admin 0775 on macOS: an admin user creates the folder without sudo
THROTTLE_S = 10  # launchd's default respawn interval, written out (the systemd target's RestartSec=10s)
EXIT_TIMEOUT_S = 30  # SIGTERM -> SIGKILL (launchd's default is 20 s; the systemd units give 30 s)
UMASK_077 = 0o077  # plists have no octal: plistlib writes the integer 63


@register("launchd")
def launchd_target(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    fleet.refuse(plan, "launchd")  # fleet hook: separate instances need a balancer (targets/fleet.py)
    refuse_chat_template(plan, "launchd")
    if plan.hardware.os != "macos":
        raise RenderError(f"the launchd target needs a Mac; this stack's hardware runs {plan.hardware.os} "
                          "(use the systemd or quadlet target on Linux)")
    out = [_agent(plan, sp, ctx) for sp in plan.services]
    wired = _wired_limit(plan, ctx)
    return out + ([wired] if wired else [])


def label(plan: Plan, sp: ServicePlan | None = None, suffix: str = "") -> str:
    return f"local.stackgen.{plan.stack_name}" + (f".{sp.name}" if sp else "") + suffix


# ---------------------------------------------------------------------------------------------- the agent


def _agent(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> Artifact:
    engine = engines.get(sp.engine)
    if not engine.launchd:
        runs = " and ".join(sorted(e.short for e in engines.ENGINES.values() if e.launchd))
        raise RenderError(f"services.{sp.name}: the launchd target runs {runs}; {sp.engine} on a Mac is "
                          "better served by its own app or `brew services` (use the script target for it)")
    weights = local_weights(sp)
    model_ref = installed_path(weights, ctx.model_dir) if weights else sp.model_ref
    key_file = f"/etc/stackgen/{plan.stack_name}/api-key"
    cmd = engines.command(engine, sp, binary=_binary(sp, engine.binary), model_ref=model_ref, host=sp.host,
                          port=sp.port, key_file=key_file)
    log = f"{LOG_DIR}/{plan.stack_name}-{sp.name}.log"
    job = {
        "Label": label(plan, sp),
        "ProgramArguments": list(cmd.argv),
        "EnvironmentVariables": dict(sorted(cmd.env.items())),
        "RunAtLoad": True,
        "KeepAlive": True,  # launchd.plist(5): "set to true to unconditionally keep the job alive"; bootout stops it
        "ThrottleInterval": THROTTLE_S,
        "ExitTimeOut": EXIT_TIMEOUT_S,
        "ProcessType": "Interactive",
        "Umask": UMASK_077,
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    if not job["EnvironmentVariables"]:
        del job["EnvironmentVariables"]
    path = f"launchd/{label(plan, sp)}.plist"
    notes = [f"{plan.stack_name}/{sp.name}: {engine.display} serving {sp.model.name} on {sp.host}:{sp.port}.",
             "Install (as you, no sudo): mkdir -p " + LOG_DIR + " ~/Library/LaunchAgents",
             f"  cp {PurePosixPath(path).name} ~/Library/LaunchAgents/ && launchctl bootstrap gui/$(id -u) "
             f"~/Library/LaunchAgents/{PurePosixPath(path).name}",
             f"Stop: launchctl bootout gui/$(id -u)/{label(plan, sp)}   Logs: tail -f {log}",
             "Restarted whenever it exits (with an error, a signal or status 0), at most once every "
             f"{THROTTLE_S} s (launchd has no restart limit: a crash loop goes on until bootout)."]
    notes += _weights_notes(sp, weights, model_ref)
    notes += _key_notes(plan, sp, cmd, key_file)
    return Artifact(path, _plist(ctx, notes, job))


def _binary(sp: ServicePlan, default: str) -> str:
    """launchd starts ProgramArguments with its own PATH (/usr/bin:/bin:/usr/sbin:/sbin), never the user's shell's:
    the engine is named absolutely."""
    b = sp.spec.binary
    if b is None:
        return posixpath.join(HOMEBREW_BIN, default)
    installed_binary(sp, "launchd", default)
    return b


def _weights_notes(sp: ServicePlan, weights: str | None, model_ref: str) -> list[str]:
    if weights is None:
        return [f"Weights: {sp.model_ref} is fetched at start into the engine's cache under your home folder."]
    files = weight_files(weights)  # a split GGUF's other parts: llama.cpp opens them beside the first (paths.py)
    split = f" and the {len(files) - 1} other parts of the split file beside it" if len(files) > 1 else ""
    if weights == model_ref:
        return [f"Weights: read from {model_ref}{split}."]
    parent = shlex.quote(posixpath.dirname(model_ref))
    copy = "cp -R" if sp.model.source == "hf" else "cp"
    if len(files) > 1:
        srcs = " ".join(shlex.quote(f) for f in files)
        return [f"Weights: install {weights} (relative to the stack's folder) at {model_ref} (serve.model_dir),"
                f"{split}:",
                f"  sudo mkdir -p {parent} && sudo {copy} {srcs} {parent}/ && sudo chmod a+r "
                + " ".join(shlex.quote(installed_path(f, posixpath.dirname(model_ref))) for f in files)]
    src, dest = shlex.quote(weights), shlex.quote(model_ref)
    return [f"Weights: install {weights} (relative to the stack's folder) at {model_ref} (serve.model_dir):",
            f"  sudo mkdir -p {parent} && sudo {copy} {src} {dest} && sudo chmod -R a+rX {dest}"]


def _key_notes(plan: Plan, sp: ServicePlan, cmd: engines.Command, key_file: str) -> list[str]:
    if not sp.api_key_env:
        return []
    if cmd.key_mode == "file":
        folder = posixpath.dirname(key_file)
        return [f"API key: put it in {key_file}, owned by you and mode 0600 (sudo mkdir -p {folder}; then",
                f"  sudo install -o $(id -un) -m 0600 /dev/null {key_file} and write the key into it). It never "
                "appears in this file or the process list."]
    return [f"{engines.get(sp.engine).display} has no API key option: keep it on loopback behind a proxy."]


# ---------------------------------------------------------------------------------------------- wired limit


def _wired_limit(plan: Plan, ctx: RenderContext) -> Artifact | None:
    """One LaunchDaemon per stack (the limit is one machine-wide setting), sized to every service's memory."""
    reason = wired_limit_reason(plan)
    if reason is None:
        return None
    limit_mb = math.ceil(sum(sp.memory.total_bytes for sp in plan.services) / MIB)
    name = f"{label(plan, suffix='.wired-limit')}.plist"
    job = {"Label": label(plan, suffix=".wired-limit"),
           "ProgramArguments": ["/usr/sbin/sysctl", f"iogpu.wired_limit_mb={limit_mb}"],
           "RunAtLoad": True}
    notes = [reason,
             f"One-time action, separate from the agents: raises the GPU wired-memory limit to {limit_mb} MB",
             "(every service of this stack) at each boot; macOS resets it at reboot and only root may set it",
             "(mlx-lm README, \"Large Models\"). Install once:",
             f"  sudo cp {name} /Library/LaunchDaemons/ && sudo launchctl bootstrap system "
             f"/Library/LaunchDaemons/{name}",
             "Undo: sudo launchctl bootout system/" + job["Label"] + " and delete the file; a reboot restores "
             "macOS's default."]
    return Artifact(f"launchd/{name}", _plist(ctx, notes, job))


def wired_limit_reason(plan: Plan) -> str | None:
    """Why the stack needs a higher wired limit, or None: the planner pulled the wired lever for a service, or the
    services together come near macOS's default GPU working set (mlx-lm warns above 0.9 x of it; llama.cpp's
    Metal backend allocates within the same recommendedMaxWorkingSetSize)."""
    if not plan.hardware.is_apple:
        return None
    for sp in plan.services:
        if any("wired" in lever for lever in sp.memory.levers):
            return f"{sp.name}: the memory plan needs more than macOS's default GPU wired limit."
    working_set = initial_budget(plan.hardware).gpu_bytes
    total = sum(sp.memory.total_bytes for sp in plan.services)
    if total > WIRED_WARN_FRACTION * working_set:
        return (f"The services need {total // MIB} MB together, more than {WIRED_WARN_FRACTION:g} x the GPU's "
                f"default working set ({working_set // MIB} MB).")
    return None


# ---------------------------------------------------------------------------------------------- plist


def _plist(ctx: RenderContext, notes: list[str], job: dict) -> str:
    """plistlib's XML with the header and notes as a comment after the DOCTYPE (plist readers skip comments)."""
    try:
        text = plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")
    except ValueError as exc:  # XML 1.0 cannot carry control characters
        raise RenderError(f"launchd: {job['Label']}: {exc}") from None
    lines = [ctx.header().rstrip("\n")] + notes
    comment = "<!--\n" + "\n".join(_comment_safe(line) for line in lines) + "\n-->\n"
    head, sep, rest = text.partition("<plist ")
    if not sep:
        raise RenderError("plistlib wrote no <plist> element")  # pragma: no cover - plistlib's own format
    return head + comment + sep + rest


def _comment_safe(line: str) -> str:
    """XML forbids `--` inside a comment; a stack path or model name could carry one."""
    while "--" in line:
        line = line.replace("--", "- -")
    return line
