"""Per-engine extra files a service needs besides its command line, under `<service>/`.

- Ollama: a Modelfile (the tuned model: num_ctx, num_gpu, ... pinned from the plan), the daemon's environment
  (`ollama.env`) and `create.sh`, which runs `ollama create` against that daemon.
- MLX: `wired-limit.sh`, the root-only sysctl that lets the GPU wire enough unified memory, when the plan needs it.
Every Modelfile is checked against Ollama's grammar (stackgen.engines.ollama_modelfile) before it is returned.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from stackgen import engines
from stackgen.render.paths import local_weights, output_folder, relative_to_folder
from stackgen.errors import RenderError
from stackgen.plan.memory import MIB
from stackgen.engines.ollama_modelfile import check_parameter, quote, validate
from stackgen.plan.plan import ServicePlan
from stackgen.render.artifact import Artifact, RenderContext, render_template

WIRED_WARN_FRACTION = 0.9  # mlx-lm warns when weights exceed 0.9 x the recommended working set


def files_for(sp: ServicePlan, ctx: RenderContext, stack_dir: Path | None = None) -> list[Artifact]:
    """Extra files for one service; `stack_dir` resolves the chat_template path (default: the stack's folder)."""
    base = stack_dir if stack_dir is not None else Path(ctx.stack_display).parent
    return engines.get(sp.engine).extra_files(sp, ctx, base)


# ---------------------------------------------------------------------------------------------- Ollama


def ollama_files(sp: ServicePlan, ctx: RenderContext, stack_dir: Path) -> list[Artifact]:
    # `ollama create -f Modelfile` reads a relative FROM path from the Modelfile's folder.
    weights = local_weights(sp)
    here = output_folder(stack_dir / "stack.yaml", ctx.out_dir, sp.name)
    ref = relative_to_folder(stack_dir, weights, here) if weights else sp.model_ref
    modelfile = render_modelfile(sp, ctx, ref, stack_dir)
    return [
        Artifact(f"{sp.name}/Modelfile", modelfile),
        Artifact(f"{sp.name}/ollama.env", env_file(sp, ctx)),
        Artifact(f"{sp.name}/create.sh", create_script(sp, ctx), mode=0o755),
    ]


def render_modelfile(sp: ServicePlan, ctx: RenderContext, model_ref: str, stack_dir: Path) -> str:
    """The Modelfile for `model_ref` as the daemon sees it (a host path, a container path or a registry tag)."""
    params = engines.get(sp.engine).modelfile_parameters(sp)
    for key, value in params:
        _check(sp, lambda: check_parameter(key, value), f"overrides.{key}")
    text = render_template(
        "ollama/Modelfile.j2", header=ctx.header(),
        from_=_quoted(sp, _from_ref(model_ref), "model"),
        parameters=[(k, _quoted(sp, v, f"overrides.{k}")) for k, v in params],
        template=_template(sp, stack_dir), system=_system(sp),
    )
    _check(sp, lambda: validate(text), "Modelfile")
    return text


def _from_ref(model_ref: str) -> str:
    return model_ref[len("ollama:"):] if model_ref.startswith("ollama:") else model_ref


def _template(sp: ServicePlan, stack_dir: Path) -> str | None:
    text = read_chat_template(sp, stack_dir)
    return None if text is None else _quoted(sp, text.rstrip("\n"), "chat_template")


def read_chat_template(sp: ServicePlan, stack_dir: Path) -> str | None:
    """The text of the service's chat template file (None: none), read only from inside the stack's folder."""
    if not sp.spec.chat_template:
        return None
    from stackgen.spec.stack import template_outside

    path = stack_dir / sp.spec.chat_template
    if template_outside(sp.spec.chat_template, stack_dir):  # load_stack refuses it too; a render never copies it
        raise RenderError(f"services.{sp.name}.chat_template: {sp.spec.chat_template!r} is outside the stack's "
                          "folder; copy the template next to stack.yaml and name it relatively")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"services.{sp.name}.chat_template: cannot read {path}: {exc}") from None
    return text


def _system(sp: ServicePlan) -> str | None:
    return None if sp.spec.system is None else _quoted(sp, sp.spec.system, "system")


def _quoted(sp: ServicePlan, value: str, field: str) -> str:
    return _check(sp, lambda: quote(value, f"services.{sp.name}.{field}"), field)


def _check(sp: ServicePlan, fn, field: str):
    try:
        return fn()
    except RenderError as exc:
        msg = str(exc)
        raise RenderError(msg if msg.startswith("services.") else f"services.{sp.name}.{field}: {msg}") from None


def env_file(sp: ServicePlan, ctx: RenderContext) -> str:
    env = engines.get(sp.engine).env(sp)
    for key, value in env.items():
        if any(c in value for c in "\r\n\x00"):
            raise RenderError(f"services.{sp.name}: environment value of {key} contains a line break or NUL")
    # sh syntax, each value shell-quoted as the script target's <svc>.env: the usual way to load it (`set -a;
    # . ./ollama.env`) ran `$(...)` and `;` in an unquoted override value (audit a2 #13)
    return ctx.header() + "".join(f"{k}={shlex.quote(env[k])}\n" for k in sorted(env))


def create_script(sp: ServicePlan, ctx: RenderContext) -> str:
    tag = engines.get(sp.engine).model_tag(sp)
    host = f"{sp.host}:{sp.port}"
    return render_template("ollama/create.sh.j2", header=ctx.header(), tag=tag, tag_q=shlex.quote(tag),
                           ollama_host=host, ollama_host_q=shlex.quote(host))


# ---------------------------------------------------------------------------------------------- MLX


def mlx_files(sp: ServicePlan, ctx: RenderContext) -> list[Artifact]:
    reason = wired_limit_reason(sp)
    if reason is None:
        return []
    limit_mb = math.ceil(sp.memory.total_bytes / MIB)
    text = render_template("mlx/wired-limit.sh.j2", header=ctx.header(), reason=reason, limit_mb=limit_mb)
    return [Artifact(f"{sp.name}/wired-limit.sh", text, mode=0o755)]


def wired_limit_reason(sp: ServicePlan) -> str | None:
    """Why the wired limit must be raised, or None: the plan pulled that lever, or weights crowd the working set."""
    if any("wired" in lever for lever in sp.memory.levers):
        return "The memory plan needs more than macOS's default GPU wired limit."
    # The planner's GPU budget on Apple silicon is the recommended working set (less what earlier services took).
    working_set = sp.memory.gpu_budget_bytes
    apple = any(g.vendor == "apple" for g in sp.gpus)
    if apple and sp.memory.weights_bytes > WIRED_WARN_FRACTION * working_set:
        return (f"The weights exceed {WIRED_WARN_FRACTION:g} x the GPU's recommended working set "
                f"({working_set // MIB} MB); mlx-lm would warn and run slowly.")
    return None
