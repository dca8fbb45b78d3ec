"""`stackgen calibrate` (issue 13): a per-user measurement of this host that later `hardware: detect` plans use,
said in their reasons, and that --no-calibration, recorded hosts and named profiles ignore."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from stackgen.host import calibration as cal
from stackgen.errors import StackgenError

STACK = """
version: 1
hardware: {hardware}
workload: {{concurrent_users: 1, context_tokens: 4096}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}}
"""


def _probe(gbs):
    def probe() -> float:
        """injected test probe"""
        return gbs
    return probe


@pytest.fixture
def detected(monkeypatch, cpu_host):
    """`hardware: detect` plans see the conftest CPU host (40 GB/s RAM) instead of probing this machine."""
    import stackgen.pipeline as pipeline
    monkeypatch.setattr(pipeline, "load_host", lambda host_facts: cpu_host)
    return cpu_host


def _plan(write_stack, hardware="detect", **kw):
    from stackgen.pipeline import plan_stack
    return plan_stack(write_stack(STACK.format(hardware=hardware)), **kw)[1].services[0]


def test_the_file_lives_where_the_env_var_points(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKGEN_CONFIG_HOME", str(tmp_path / "cfg"))
    assert cal.calibration_path() == tmp_path / "cfg" / "calibration.json"
    monkeypatch.delenv("STACKGEN_CONFIG_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cal.calibration_path() == tmp_path / "xdg" / "stackgen" / "calibration.json"


def test_measure_save_load_round_trip(cpu_host):
    m = cal.measure(cal.machine_key(cpu_host.hardware), _probe(61.27), today=dt.date(2026, 11, 29))
    assert (m.memory_bandwidth_gbs, m.date, m.probe) == (61.3, "2026-11-29", "injected test probe")
    path = cal.save(m)
    assert path == cal.calibration_path() and json.loads(path.read_text())["memory_bandwidth_gbs"] == 61.3
    assert cal.load() == m


def test_a_failed_probe_writes_nothing(cpu_host):
    with pytest.raises(StackgenError, match="nothing was written"):
        cal.measure(cal.machine_key(cpu_host.hardware), _probe(0.0))
    assert cal.load() is None


def test_a_damaged_file_names_itself_and_the_fix():
    path = cal.calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"format": 1, "machine": "x", "date": "d", "memory_bandwidth_gbs": -3}')
    with pytest.raises(StackgenError, match="calibration.json: not a stackgen calibration.*stackgen calibrate"):
        cal.load()


def test_detected_plan_uses_the_calibration_and_says_so(write_stack, detected):
    before = _plan(write_stack)
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(80.0), today=dt.date(2026, 11, 29)))
    after = _plan(write_stack)
    assert any(r.startswith("speed: calibrated on this host on 2026-11-29") for r in after.reasons)
    assert not any("calibrated" in r for r in before.reasons)
    # a CPU plan decodes at system-RAM bandwidth: twice the bandwidth, about twice the speed
    assert after.speed.single_stream_tokens_per_s == pytest.approx(2 * before.speed.single_stream_tokens_per_s,
                                                                   rel=0.02)
    ignored = _plan(write_stack, calibration=False)
    assert ignored.speed == before.speed and not any("calibrated" in r for r in ignored.reasons)


def test_another_machines_calibration_is_not_used(write_stack, detected):
    cal.save(cal.Calibration(machine="RTX 4090 | 16 cores | 64 GiB RAM", date="2026-01-01",
                             memory_bandwidth_gbs=80.0, probe="elsewhere"))
    sp = _plan(write_stack)
    assert not any("calibrated" in r for r in sp.reasons)
    host, reason = cal.apply(detected, cal.load())
    assert reason is None and "run `stackgen calibrate` here" in host.notes[-1]
    assert host.hardware.memory_bandwidth_gbs == detected.hardware.memory_bandwidth_gbs


def test_named_profiles_and_recorded_hosts_never_read_it(write_stack, tmp_path, cpu_host):
    path = cal.calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not json")  # reading it would raise
    assert not any("calibrated" in r for r in _plan(write_stack, hardware="rtx-4090").reasons)
    facts = tmp_path / "host.json"
    facts.write_text(cpu_host.to_json())
    assert not any("calibrated" in r for r in _plan(write_stack, host_facts=facts).reasons)


def test_cli_calibrate_then_plan_and_no_calibration(cli, write_stack, detected, monkeypatch):
    import stackgen.commands.calibrate as command
    import stackgen.host.detect as detect
    monkeypatch.setattr(command, "_host", lambda host_facts: detected)
    monkeypatch.setattr(detect, "measure_memory_bandwidth", lambda: 120.0)
    res = cli("calibrate")
    assert res.exit_code == 0 and "120 GB/s" in res.output and str(cal.calibration_path()) in res.output
    assert "120 GB/s" in cli("calibrate", "--show").output
    stack = write_stack(STACK.format(hardware="detect"))
    assert "speed: calibrated on this host on" in cli("plan", stack).output
    assert "calibrated" not in cli("plan", stack, "--no-calibration").output


def test_cli_show_without_a_calibration_says_what_to_run(cli):
    res = cli("calibrate", "--show")
    assert res.exit_code == 1 and "run `stackgen calibrate`" in res.output
