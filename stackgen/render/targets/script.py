"""The `script` target: a POSIX sh launcher `<service>/run.sh` and the engine's env file `<service>/<service>.env`.

The launcher changes to the stack's folder (relative model paths mean what they mean in stack.yaml), loads the env
file and execs the engine's argv, every word quoted with shlex.quote. The API key is read at run time from the
variable serve.api_key_env names; its value never lands in a file stackgen writes.
"""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path, PurePosixPath

from stackgen import engines
from stackgen.host.binaries import shell_lookup
from stackgen.plan.plan import RAY_PORT, RPC_PORT, Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext, render_template
from stackgen.render.quoting import check_value
from stackgen.render.targets import fleet, register
from stackgen.render.paths import local_weights, output_folder

RAY_UNAUTHENTICATED = ("Ray runs without authentication here: whoever reaches its ports can run code on this machine; "
                       "allow them only between the nodes (firewall).")
KEY_FD = engines.KEY_FD  # llama-server reads the key from an unlinked private file held open on fd 3


@register("script")
def script_target(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    out: list[Artifact] = []
    for sp in plan.services:
        if fleet.separate(sp):  # fleet hook: N instances + HAProxy (stackgen/render/targets/fleet.py)
            out += fleet.script(plan, sp, ctx) + _engine_files(plan, sp, ctx)
            continue
        out.append(Artifact(f"{sp.name}/run.sh", launcher(plan, sp, ctx), mode=0o755))
        out.append(Artifact(f"{sp.name}/{sp.name}.env", env_file(sp, ctx)))
        out += _engine_files(plan, sp, ctx)
        out += node_scripts(sp, ctx)
    return out


def node_scripts(sp: ServicePlan, ctx: RenderContext) -> list[Artifact]:
    """Multi-node pieces (docs/multinode.md): a Ray head and one Ray worker per other node for vLLM, or one
    ggml-rpc-server per worker node for llama.cpp. Each script runs on the machine whose address it names; run.sh
    runs on the head once the others are up."""
    topo = sp.topology
    if topo is None:
        return []
    out = []
    if topo.kind == "vllm-ray":
        head = topo.head.address
        ray = ray_binary(sp)
        ray_head = [ray, "start", "--head", f"--port={RAY_PORT}", f"--node-ip-address={head}", "--block"]
        out.append(Artifact(f"{sp.name}/ray-head.sh", _node_script(
            ctx, f"Ray head for {sp.name} on {head}; start it first, then the workers, then run.sh on this machine. "
                 + RAY_UNAUTHENTICATED,
            {"VLLM_HOST_IP": head}, ray_head), mode=0o755))
        for w in topo.workers:
            argv = [ray, "start", f"--address={head}:{RAY_PORT}", f"--node-ip-address={w.address}", "--block"]
            out.append(Artifact(f"{sp.name}/ray-worker-{w.index}.sh", _node_script(
                ctx, f"Ray worker {w.index} for {sp.name}: run it on {w.address} ({w.label}, {w.gpus} GPUs, "
                     f"pipeline stage {w.index}: {w.layers} layers). " + RAY_UNAUTHENTICATED,
                {"VLLM_HOST_IP": w.address}, argv),
                mode=0o755))
    else:
        from stackgen.engines.llamacpp import rpc_server_argv
        for w in topo.workers:
            argv = rpc_server_argv("ggml-rpc-server", w.address, RPC_PORT)
            out.append(Artifact(f"{sp.name}/rpc-server-{w.index}.sh", _node_script(
                ctx, f"llama.cpp RPC worker {w.index} for {sp.name}: run it on {w.address} ({w.label}, planned "
                     f"{w.layers} layers); start every worker before run.sh on the head. It listens unauthenticated: "
                     "keep the port on a private network.", {}, argv), mode=0o755))
    return out


def ray_binary(sp: ServicePlan) -> str:
    """`ray` from vLLM's own environment: beside the stack's `binary:` when that is an absolute path (a venv's
    bin/vllm), else from PATH. vLLM's Ray executor imports ray inside vLLM's interpreter, so the cluster must run
    the same Ray version; a `ray` found first on PATH may belong to another environment (or be missing)."""
    b = sp.spec.binary
    if b and b.startswith("/"):
        return str(PurePosixPath(b).parent / "ray")
    return "ray"


def _node_script(ctx: RenderContext, what: str, env: dict[str, str], argv: list[str]) -> str:
    lines = ["#!/bin/sh\n", ctx.header(), f"# {what}\n", "set -eu\n"]
    for k, v in sorted(env.items()):
        lines.append(f"{k}={shlex.quote(_checked(v))}\nexport {k}\n")
    lines.append("exec " + _command_lines([_checked(a) for a in argv]) + "\n")
    return "".join(lines)


def launcher(plan: Plan, sp: ServicePlan, ctx: RenderContext, env_name: str | None = None) -> str:
    engine = engines.get(sp.engine)
    cmd = engines.command(engine, sp, binary=sp.spec.binary or engine.binary, model_ref=script_model_ref(sp),
                          host=sp.host, port=sp.port, key_file=KEY_FD)
    argv = [_checked(a) for a in cmd.argv]
    # Without `binary:`, run.sh looks for the engine where `up` does (stackgen.host.binaries), at run time.
    lookup = None if sp.spec.binary else shell_lookup(sp.engine)
    which = pinned_which(argv[0]) if sp.spec.binary else ""
    return render_template(
        "script/run.sh.j2", header=ctx.header(), service=sp.name, engine=engine.display,
        stack_dir=shlex.quote(_stack_dir_from_service(plan, sp, ctx)), env_file=shlex.quote(env_name or f"{sp.name}.env"),
        key_mode=cmd.key_mode, key_var=cmd.key_var or "", key_env=cmd.key_env or "", lookup=lookup,
        which=which,
        key_comment=engine.api_key.file_comment if engine.api_key else "",
        command=_command_lines(argv, first='"$engine"' if lookup else None),
        ollama_tag=engine.model_tag(sp) or "", drop_env=list(cmd.drop_env),
    )


def pinned_which(binary: str) -> str:
    """sh printing the `binary:` run.sh execs, as `up` finds it (stackgen.host.binaries._explicit): an absolute
    path as is, a relative one from the stack's folder (run.sh's cwd), a bare name on PATH (exit 127 when absent)."""
    q = shlex.quote(binary)
    if binary.startswith("/"):
        return f"printf '%s\\n' {q}"
    if "/" in binary:
        return f"printf '%s\\n' \"$(pwd)\"/{q}"
    return f"command -v {q} || {{ echo {shlex.quote(f'{binary} is not on PATH')} >&2; exit 127; }}"


def script_model_ref(sp: ServicePlan) -> str:
    """run.sh runs in the stack's folder: local weights keep the path the stack gave (never this checkout's)."""
    return local_weights(sp) or sp.model_ref


def env_file(sp: ServicePlan, ctx: RenderContext) -> str:
    """KEY=value lines in sh syntax (run.sh sources it with `set -a`); the engine env only, never a secret."""
    lines = [ctx.header()]
    lines += [f"{k}={shlex.quote(_checked(v))}\n" for k, v in sorted(sp.env.items())]
    return "".join(lines)


def _command_lines(argv: list[str], first: str | None = None) -> str:
    """One flag (with its value) per line, so a diff of run.sh shows which flag changed. `first` replaces the
    quoted binary (a shell expansion such as "$engine")."""
    words = [shlex.quote(a) for a in argv]
    out = first or words[0]
    for raw, word in zip(argv[1:], words[1:]):
        out += (" \\\n    " if raw.startswith("-") else " ") + word
    return out


def _checked(value: str) -> str:
    return check_value(value, "argument")


def _stack_dir_from_service(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> str:
    """The stack's folder relative to deploy/<service>/, so the rendered tree can be committed and moved."""
    stack_dir = os.path.dirname(os.path.abspath(plan.stack_path))
    return Path(os.path.relpath(stack_dir, output_folder(plan.stack_path, ctx.out_dir, sp.name))).as_posix()


def _engine_files(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> list[Artifact]:
    """Per-service extra files (Ollama Modelfile, ...) from stackgen.render.engine_files, when that module exists."""
    try:
        mod = importlib.import_module("stackgen.render.engine_files")
    except ModuleNotFoundError as exc:
        if exc.name != "stackgen.render.engine_files":
            raise
        return []
    return list(mod.files_for(sp, ctx, stack_dir=Path(plan.stack_path).parent))
