"""The `script` target: a POSIX sh launcher `<service>/run.sh` and the engine's env file `<service>/<service>.env`.

The launcher changes to the stack's folder (relative model paths mean what they mean in stack.yaml), loads the env
file and execs the engine's argv, every word quoted with shlex.quote. The API key is read at run time from the
variable serve.api_key_env names; its value never lands in a file stackgen writes.
"""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path

from stackgen import engines
from stackgen.engines.base import LaunchContext
from stackgen.plan import Plan, ServicePlan
from stackgen.render import Artifact, RenderContext, render_template
from stackgen.systemd_quote import check_value
from stackgen.targets import register

KEY_FD = "/dev/fd/3"  # llama-server reads the key from an unlinked private file held open on fd 3


@register("script")
def script_target(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    out: list[Artifact] = []
    for sp in plan.services:
        out.append(Artifact(f"{sp.name}/run.sh", launcher(plan, sp, ctx), mode=0o755))
        out.append(Artifact(f"{sp.name}/{sp.name}.env", env_file(sp, ctx)))
        out += _engine_files(plan, sp, ctx)
    return out


def launcher(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> str:
    engine = engines.get(sp.engine)
    key_mode = {"llama.cpp": "file", "vllm": "env"}.get(sp.engine) if sp.api_key_env else None
    launch = LaunchContext(binary=sp.spec.binary or engine.binary, model_ref=sp.model_ref, host=sp.host,
                           port=sp.port, api_key_file=KEY_FD if key_mode == "file" else None)
    argv = [_checked(a) for a in engine.argv(sp, launch)]
    return render_template(
        "script/run.sh.j2", header=ctx.header(), service=sp.name, engine=engine.display,
        stack_dir=shlex.quote(_stack_dir_from_service(plan, sp, ctx)), env_file=shlex.quote(f"{sp.name}.env"),
        key_mode=key_mode, key_var=sp.api_key_env or "", command=_command_lines(argv),
        ollama_tag=engine.model_tag(sp) if sp.engine == "ollama" else "",
    )


def env_file(sp: ServicePlan, ctx: RenderContext) -> str:
    """KEY=value lines in sh syntax (run.sh sources it with `set -a`); the engine env only, never a secret."""
    lines = [ctx.header()]
    lines += [f"{k}={shlex.quote(_checked(v))}\n" for k, v in sorted(sp.env.items())]
    return "".join(lines)


def _command_lines(argv: list[str]) -> str:
    """One flag (with its value) per line, so a diff of run.sh shows which flag changed."""
    words = [shlex.quote(a) for a in argv]
    out = words[0]
    for raw, word in zip(argv[1:], words[1:]):
        out += (" \\\n    " if raw.startswith("-") else " ") + word
    return out


def _checked(value: str) -> str:
    return check_value(value, "argument")


def _stack_dir_from_service(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> str:
    """The stack's folder relative to deploy/<service>/, so the rendered tree can be committed and moved."""
    stack_dir = Path(os.path.abspath(plan.stack_path)).parent
    service_dir = Path(os.path.abspath(ctx.out_dir)) / sp.name
    return Path(os.path.relpath(stack_dir, service_dir)).as_posix()


def _engine_files(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> list[Artifact]:
    """Per-service extra files (Ollama Modelfile, ...) from stackgen.engine_files, when that module exists."""
    try:
        mod = importlib.import_module("stackgen.engine_files")
    except ModuleNotFoundError as exc:
        if exc.name != "stackgen.engine_files":
            raise
        return []
    return list(mod.files_for(sp, ctx, stack_dir=Path(plan.stack_path).parent))
