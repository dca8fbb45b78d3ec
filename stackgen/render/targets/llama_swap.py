"""The `llama-swap` target: llama-swap/config.yaml, one llama-swap model per service, started on demand.

- `cmd` is the service's planned command line (stackgen.engines.command), one flag per line; llama-swap splits it
  with POSIX shell rules (internal/config/commands.go SanitizeCommand), so every word is shlex-quoted. Each engine
  listens on loopback at its planned port (`proxy`); llama-swap is the one front door. Start it with
  `llama-swap --config config.yaml --listen <serve.host>:<port>` (its default, `:8080`, is every interface).
- `ttl` from the workload: a shared API (more than one concurrent user) keeps its model loaded (0: never unload;
  every user would wait for a reload); one user's model is unloaded after max(300 s, 10 x its load time) idle, so a
  reload costs at most a tenth of the idle time it frees the memory for. Load time as the systemd target estimates it.
- `groups`: services whose planned memory fits the machine together (GPU and host RAM, filled in file order) form a
  group with `swap: false` (they run side by side) and `exclusive: true`; a service that fits with no other stays
  out of every group, so llama-swap's default group swaps it (one at a time, unloading the others).
- The API key (serve.api_key_env) is llama-swap's `apiKeys: ["${env.VAR}"]`, read from the environment when
  llama-swap loads the config; the engines behind it take none. Values are refused if they contain `${` (llama-swap
  substitutes macros there).
Checked in tests against llama-swap's published config-schema.json (tests/tools/vendor/llama-swap, MIT).
"""

from __future__ import annotations

import shlex
from dataclasses import replace

import yaml

from stackgen import engines
from stackgen.render.paths import installed_path, local_weights, weight_files
from stackgen.errors import RenderError
from stackgen.plan.memory import initial_budget
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext
from stackgen.render.targets import fleet, installed_binary, refuse_multinode, refuse_chat_template, refuse_tls, register
from stackgen.plan.plan import startup_budget_s

MIN_TTL_S, TTL_LOADS = 300, 10
HEALTH_TIMEOUT_MIN_S = 15  # llama-swap's schema minimum for healthCheckTimeout
DEFAULT_LISTEN_PORT = 8080


@register("llama-swap")
def llama_swap_target(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    fleet.refuse(plan, "llama-swap")  # fleet hook: separate instances need a balancer (targets/fleet.py)
    refuse_tls(plan, "llama-swap", "llama-swap's own --tls-cert-file/--tls-key-file")
    refuse_chat_template(plan, "llama-swap")
    for sp in plan.services:
        engine = engines.get(sp.engine)
        if engine.swaps_models:
            raise RenderError(f"services.{sp.name}: llama-swap starts servers that load one model each; "
                              f"{engine.short} {engine.swaps_models}: use the script or systemd target")
        installed_binary(sp, "llama-swap", engine.binary)
    refuse_multinode(plan, "llama-swap")
    doc: dict = {"healthCheckTimeout": max(HEALTH_TIMEOUT_MIN_S, max(_load_s(sp) for sp in plan.services))}
    keys = sorted({sp.api_key_env for sp in plan.services if sp.api_key_env})
    if keys:
        doc["apiKeys"] = [f"${{env.{k}}}" for k in keys]
    doc["models"] = {sp.name: _model(sp, ctx) for sp in plan.services}
    groups = fit_groups(plan)
    if groups:
        doc["groups"] = {f"fit-{i}": {"swap": False, "exclusive": True, "members": members}
                         for i, members in enumerate(groups, 1)}
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return [Artifact("llama-swap/config.yaml", _header(plan, ctx, groups) + body)]


class _Dumper(yaml.SafeDumper):
    """safe_dump, with multi-line strings (cmd) as literal blocks: each flag on its own line, as written."""


def _literal(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _literal)




def _model(sp: ServicePlan, ctx: RenderContext) -> dict:
    engine = engines.get(sp.engine)
    weights = local_weights(sp)
    model_ref = installed_path(weights, ctx.model_dir) if weights else sp.model_ref
    behind = replace(sp, host="127.0.0.1", api_key_env=None)  # llama-swap is the front door and checks the key
    cmd = engines.command(engine, behind, binary=sp.spec.binary or engine.binary, model_ref=model_ref,
                          host="127.0.0.1", port=sp.port, key_file=None)
    out: dict = {"name": f"{sp.name}: {sp.model.name}", "cmd": _cmd_text(sp, list(cmd.argv)),
                 "proxy": f"http://127.0.0.1:{sp.port}", "checkEndpoint": "/health", "ttl": ttl_s(sp)}
    env = [_no_macro(sp, f"{k}={v}") for k, v in sorted(cmd.env.items())]
    if env:
        out["env"] = env
    return out


def _cmd_text(sp: ServicePlan, argv: list[str]) -> str:
    """One flag (and its value) per line ending in a backslash, as llama-swap's examples write it."""
    words = [shlex.quote(_no_macro(sp, a)) for a in argv]
    lines = [words[0]]
    for raw, word in zip(argv[1:], words[1:]):
        if raw.startswith("-"):
            lines.append(word)
        else:
            lines[-1] += " " + word
    return " \\\n".join(lines) + "\n"


def _no_macro(sp: ServicePlan, value: str) -> str:
    if "${" in value or "\n" in value or "\x00" in value:
        raise RenderError(f"services.{sp.name}: {value!r} holds `${{`, a line break or NUL; llama-swap would "
                          "substitute a macro there or split the command")
    return value


def _load_s(sp: ServicePlan) -> int:
    return sp.startup_budget_s


def ttl_s(sp: ServicePlan) -> int:
    """A reload reads the weights from disk (a fetched model is in the engine's cache after its first start)."""
    if sp.workload.concurrent_users > 1:
        return 0
    reload_s = startup_budget_s(sp.memory.weights_bytes, engines.get(sp.engine).startup_extra_s, fetched=False)
    return max(MIN_TTL_S, TTL_LOADS * reload_s)


def fit_groups(plan: Plan) -> list[list[str]]:
    """Services that fit the machine together, in file order (first fit); groups of one are left out."""
    budget = initial_budget(plan.hardware)
    groups: list[tuple[list[str], int, int]] = []  # members, GPU bytes, host bytes (as the planner counts them)
    for sp in plan.services:
        gpu, host = sp.memory.gpu_bytes, sp.memory.host_bytes + (sp.memory.gpu_bytes if budget.unified else 0)
        for i, (members, g, h) in enumerate(groups):
            if g + gpu <= budget.gpu_bytes and h + host <= budget.host_bytes:
                groups[i] = (members + [sp.name], g + gpu, h + host)
                break
        else:
            groups.append(([sp.name], gpu, host))
    return [members for members, _, _ in groups if len(members) > 1]


def listen_port(plan: Plan) -> int:
    used = {sp.port for sp in plan.services}
    port = DEFAULT_LISTEN_PORT
    while port in used:
        port += 1
    return port


def listen_host(plan: Plan) -> str:
    """llama-swap listens where the stack serves (serve.host: loopback unless a key guards it, apiKeys above); the
    engines behind it stay on loopback."""
    host = plan.services[0].host if plan.services else "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _header(plan: Plan, ctx: RenderContext, groups: list[list[str]]) -> str:
    port = listen_port(plan)
    grouped = {m for g in groups for m in g}
    alone = [sp.name for sp in plan.services if sp.name not in grouped]
    lines = [ctx.header().rstrip("\n"),
             f"# Stack {plan.stack_name} behind llama-swap: llama-swap --config config.yaml --listen "
             f"{listen_host(plan)}:{port}",
             "# (llama-swap's default listen address, :8080, is every interface.)"]
    for sp in plan.services:
        weights = local_weights(sp)
        if weights and installed_path(weights, ctx.model_dir) != weights:
            for f in weight_files(weights):  # every part of a split GGUF (paths.py)
                lines.append(f"# {sp.name}: install {f} (relative to the stack's folder) at "
                             f"{installed_path(f, ctx.model_dir)} (serve.model_dir).")
    for k in sorted({sp.api_key_env for sp in plan.services if sp.api_key_env}):
        lines.append(f"# API key: llama-swap reads it from ${k} when it loads this file; the engines behind it "
                     "listen on loopback without one.")
    if groups:
        lines.append("# groups: " + "; ".join(", ".join(g) for g in groups) + " fit in memory together (run side by "
                     "side).")
    if alone:
        lines.append(f"# Swapped one at a time (llama-swap's default group): {', '.join(alone)}.")
    return "\n".join(lines) + "\n"
