"""Render targets: each is a function (Plan, RenderContext) -> list[Artifact]."""

from __future__ import annotations

from stackgen.errors import RenderError
from stackgen.render.artifact import TargetFn

TARGETS: dict[str, TargetFn] = {}


def refuse_tls(plan, target: str, instead: str) -> None:
    """serve.tls names certificate paths on one host; containers and pods would need them mounted (not generated)."""
    if plan.services and plan.services[0].tls is not None:
        raise RenderError(f"serve.tls: the {target} target does not serve TLS from the engine (the certificate is a "
                          f"host path); drop {target} from targets for this stack, or drop serve.tls and use {instead}")


def refuse_chat_template(plan, target: str) -> None:
    """A target that does not ship the chat template file to the engine refuses it rather than drop it (validate
    says so first for an engine the stack names: spec.stack.CHAT_TEMPLATE_TARGETS)."""
    from stackgen.render.container_spec import chat_template_file
    from stackgen.spec.stack import chat_template_target_problem

    for sp in plan.services:
        if chat_template_file(sp):
            message, hint = chat_template_target_problem(target)
            raise RenderError(f"services.{sp.name}.chat_template: {message} ({hint})")


def refuse_multinode(plan, target: str) -> None:
    """A service split over several machines (vLLM over Ray, llama.cpp RPC) needs one process per node; a target that
    writes one host's containers would render one container that cannot start (16 GPUs' ranks on 8)."""
    for sp in plan.services:
        if sp.topology is not None:
            raise RenderError(f"services.{sp.name}: a multi-node service ({len(sp.topology.nodes)} machines) cannot "
                              f"be started by the {target} target on one host; use the script or systemd target "
                              "(kubernetes for vLLM over Ray)")


def installed_binary(sp, target: str, default: str) -> None:
    """Refuse a `binary:` the target cannot run as written. A path relative to the stack's folder is found by run.sh
    and `up`, which run from that folder (README, "Finding the engine"); a systemd unit, a llama-swap cmd or a launchd
    job runs from elsewhere (systemd refuses such an ExecStart= outright), and writing the checkout's absolute path
    instead would make the artifact differ per clone. validate says the same (spec.stack.binary_problem)."""
    from stackgen.spec.stack import binary_problem

    found = binary_problem(sp.spec.binary, target, default)
    if found:
        raise RenderError(f"services.{sp.name}.binary: {found[0]}: {found[1]}")


def register(name: str):
    def deco(fn: TargetFn) -> TargetFn:
        TARGETS[name] = fn
        return fn

    return deco


def _load() -> None:
    # Explicit composition (no plugin discovery): each target module registers itself on import.
    import importlib

    for mod in ("script", "systemd", "compose", "kubernetes", "launchd", "quadlet", "llama_swap"):
        try:
            importlib.import_module(f"stackgen.render.targets.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"stackgen.render.targets.{mod}":
                raise


_load()
