"""Ray artifacts (issue 17): what running the rendered Ray cluster found (tests/integration/test_ray_real.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stackgen.cli import load_and_plan
from stackgen.render.artifact import RenderContext, render_plan

GOLDEN = Path(__file__).parent.parent / "golden" / "multinode-vllm-405b"


def _render(binary: str | None = None) -> dict[str, str]:
    _, plan = load_and_plan(GOLDEN / "stack.yaml", GOLDEN / "host.json")
    sp = plan.service("chat")
    if binary:
        sp = replace(sp, spec=sp.spec.model_copy(update={"binary": binary}))
    plan = replace(plan, services=(sp,))
    return {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), ["script", "systemd"])}


def _unit(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_vllm_unit_shares_tmp_and_user_with_the_ray_head_unit():
    out = _render()
    main = _unit(out["systemd/stackgen-big-api-chat.service"])
    head = _unit(out["systemd/stackgen-big-api-chat-ray-head.service"])
    worker = _unit(out["systemd/stackgen-big-api-chat-ray-worker-1.service"])
    h = "stackgen-big-api-chat-ray-head.service"
    assert f"JoinsNamespaceOf={h}" in main and "PrivateTmp=yes" in main and "PrivateTmp=yes" in head
    assert f"Requires={h}" in main and f"PartOf={h}" in main and any(ln.startswith("After=") and h in ln for ln in main)
    assert "User=stackgen-big-api-chat" in main and "User=stackgen-big-api-chat" in head
    assert not any(ln.startswith(("User=", "JoinsNamespaceOf=")) for ln in worker)


def test_ray_comes_from_the_venv_of_an_absolute_binary():
    out = _render("/opt/vllm/bin/vllm")
    assert "exec /opt/vllm/bin/ray start" in out["chat/ray-head.sh"]
    assert "exec /opt/vllm/bin/ray start" in out["chat/ray-worker-1.sh"]
    assert 'ExecStart="/opt/vllm/bin/ray" "start" "--head"' in out["systemd/stackgen-big-api-chat-ray-head.service"]
    assert "exec ray start" in _render()["chat/ray-head.sh"]
