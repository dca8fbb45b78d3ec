"""Property tests: any text gives a Stack or stackgen's own error; resolve never picks an engine it rejected."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackgen.errors import PlanError, SpecError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

PROFILES = load_profiles()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.text(max_size=300))
def test_any_text_is_a_stack_or_our_error(tmp_path, text):
    f = tmp_path / "stack.yaml"
    f.write_text(text, encoding="utf-8")
    try:
        load_stack(f)
    except SpecError as exc:
        assert all(p.line >= 1 and p.col >= 1 for p in exc.problems)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(["version", "name", "hardware", "workload", "services", "targets", "serve", "extra"])


@FAST
@given(st.dictionaries(keys, yaml_values, max_size=6))
def test_any_yaml_mapping_is_a_stack_or_our_error(tmp_path, data):
    f = tmp_path / "stack.yaml"
    f.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        load_stack(f)
    except SpecError as exc:
        assert str(exc).startswith(str(f))


stacks = st.fixed_dictionaries({
    "hardware": st.sampled_from(sorted(PROFILES.hardware)) | st.sampled_from(["2x rtx-4090", "8x h100-80gb"]),
    "workload": st.sampled_from(sorted(PROFILES.workloads)),
    "model": st.sampled_from(sorted(PROFILES.models)),
    "quant": st.sampled_from([None, "Q4_K_M", "Q8_0", "F16", "bf16", "fp8", "awq", "4bit"]),
    "users": st.integers(1, 64),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stacks)
def test_resolve_never_picks_a_rejected_engine(tmp_path, s):
    quant = f"    quant: {s['quant']}\n" if s["quant"] else ""
    text = (f"version: 1\nhardware: {s['hardware']}\nworkload: {s['workload']}\nservices:\n  svc:\n"
            f"    model: {s['model']}\n{quant}    workload: {{concurrent_users: {s['users']}}}\n")
    f = tmp_path / "stack.yaml"
    f.write_text(text)
    try:
        plan = resolve(load_stack(f), HostFacts(hardware=None))  # type: ignore[arg-type]
    except PlanError as exc:
        assert "GB" in str(exc)
        return
    sp = plan.services[0]
    assert sp.engine not in sp.rejected
    assert sp.memory.fits
    assert sp.memory.gpu_bytes <= max(sp.memory.gpu_budget_bytes, 0) or sp.memory.gpu_budget_bytes == 0 or sp.engine == "mlx"
    assert sp.command and sp.port


@pytest.mark.parametrize("bad", ["\x00", "a: b\x00", "\ufeffversion: 1\n", "a: 'x\n"])
def test_control_and_broken_input(tmp_path, bad):
    f = tmp_path / "stack.yaml"
    f.write_text(bad, encoding="utf-8")
    with pytest.raises(SpecError):
        load_stack(f)
