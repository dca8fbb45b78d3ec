"""Render targets: each is a function (Plan, RenderContext) -> list[Artifact]."""

from __future__ import annotations

from stackgen.render import TargetFn

TARGETS: dict[str, TargetFn] = {}


def register(name: str):
    def deco(fn: TargetFn) -> TargetFn:
        TARGETS[name] = fn
        return fn

    return deco


def _load() -> None:
    # Explicit composition (no plugin discovery): each target module registers itself on import.
    import importlib

    for mod in ("script", "systemd", "compose", "kubernetes"):
        try:
            importlib.import_module(f"stackgen.targets.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"stackgen.targets.{mod}":
                raise


_load()
