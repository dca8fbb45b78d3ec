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


# ---------------------------------------------------------------------------------------------- engine point


def test_derive_decode_splits_a_point_into_efficiency_and_t0():
    """246.6 MB at 10 GB/s and the CPU fit's 0.606: streaming takes 40.7 ms; a 50 ms token leaves t0 = 9.3 ms; a
    25 ms token is faster than the fit allows, so t0 = 0 and the efficiency is 246.6e6 / (10e9 x 0.025) = 0.986."""
    e, t0 = cal.derive_decode(246.6e6, 20.0, 10.0, 0.606)
    assert e == 0.606 and t0 == pytest.approx(50 - 246.6e6 / (0.606 * 10e9) * 1000, abs=1e-9)
    assert t0 == pytest.approx(9.307, abs=0.001)
    e, t0 = cal.derive_decode(246.6e6, 40.0, 10.0, 0.606)
    assert t0 == 0.0 and e == pytest.approx(0.9864)


def _point(**kw):
    base = dict(engine="llama.cpp", build=11434, model="g.gguf", model_bytes=246_587_904, model_params=268_098_176,
                threads=2, decode_tokens_per_s=20.0, prefill_tokens_per_s=400.0, rss_bytes=367_000_000,
                planned_bytes=360_000_000, efficiency=0.606, t0_ms=9.3)
    base.update(kw)
    return cal.EnginePoint(**base)


def test_engine_point_round_trips_and_old_files_still_load(cpu_host):
    m = cal.measure(cal.machine_key(cpu_host.hardware), _probe(10.0), today=dt.date(2026, 11, 29),
                    engine=lambda bw: _point())
    cal.save(m)
    data = json.loads(cal.calibration_path().read_text())
    assert data["engine"]["rss_above_plan_bytes"] == 7_000_000
    assert data["engine"]["prefill_flops_per_thread"] == pytest.approx(400 * 2 * 268_098_176 / 2, abs=0.1)
    assert cal.load() == m
    old = {"format": 1, "machine": "x", "date": "d", "memory_bandwidth_gbs": 5.0, "probe": "p"}
    assert cal.Calibration.from_json(old).engine is None  # a bandwidth-only file of an earlier stackgen


def test_measure_gives_the_engine_run_the_measured_bandwidth(cpu_host):
    seen = []
    cal.measure(cal.machine_key(cpu_host.hardware), _probe(12.34), engine=lambda bw: seen.append(bw) or _point())
    assert seen == [12.3]


def test_detected_cpu_plan_decodes_and_prefills_by_the_engine_point(write_stack, detected):
    """A CPU plan of the calibrated engine: a step is active bytes (+ KV) / (e x BW) + t0, and prefill is the
    measured FLOP/s per thread x threads / (2 x active params); the reason quotes the run."""
    from stackgen.plan import speed
    before = _plan(write_stack)
    point = _point(t0_ms=30.0, efficiency=0.5)
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(40.0), today=dt.date(2026, 11, 29),
                         engine=lambda bw: point))
    sp = _plan(write_stack)
    m = sp.memory
    from stackgen.plan.memory import _kv_bytes_read
    assert any("CPU decode and prefill from a real run: llama.cpp build 11434" in r for r in sp.reasons)
    avg = min(m.context_per_request, sp.workload.prompt_tokens + sp.workload.output_tokens // 2)
    stream = (m.weights_bytes + _kv_bytes_read(sp.model, m, avg)) / 40e9  # seconds at the full 40 GB/s
    expected = 1 / (stream / 0.5 + 0.030)
    assert sp.speed.single_stream_tokens_per_s == pytest.approx(expected, abs=0.06)  # the forecast rounds to 0.1
    fit = speed.backend_params("cpu")
    assert before.speed.single_stream_tokens_per_s == pytest.approx(1 / (stream / fit.efficiency + fit.t0_ms / 1000),
                                                                    abs=0.06)
    prefill = point.prefill_flops_per_thread * sp.threads / (2 * sp.model.active_params)
    assert sp.speed.ttft_s == pytest.approx(sp.workload.prompt_tokens / prefill + 1 / expected, rel=0.01, abs=0.002)
    assert m.weights_bytes == before.memory.weights_bytes


def test_an_engine_point_of_another_engine_is_not_applied(write_stack, detected):
    before = _plan(write_stack)
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(40.0), engine=lambda bw: _point(engine="other")))
    assert _plan(write_stack).speed == before.speed


# ---------------------------------------------------------------------------------------------- batched decode


def test_old_engine_points_load_without_the_batched_figure(cpu_host):
    """A file written before the batched point (no batch_* keys) loads, with the figure 0 (not measured)."""
    cal.save(cal.measure(cal.machine_key(cpu_host.hardware), _probe(10.0), engine=lambda bw: _point()))
    data = json.loads(cal.calibration_path().read_text())
    for key in ("batch_streams", "batch_decode_tokens_per_s", "batch_flops_per_thread"):
        del data["engine"][key]
    e = cal.Calibration.from_json(data).engine
    assert e.batch_streams == 0 and e.batch_decode_tokens_per_s == 0.0 and e.batch_flops_per_thread == 0.0
    assert "batched" not in e.text()
    data["engine"]["batch_streams"] = 4  # a count without its rate is not a calibration
    with pytest.raises(ValueError, match="batch_streams"):
        cal.Calibration.from_json(data)


def test_batched_point_round_trips_as_flops_per_thread(cpu_host):
    p = _point(batch_streams=4, batch_decode_tokens_per_s=110.0)
    assert p.batch_flops_per_thread == pytest.approx(110 * 2 * 268_098_176 / 2)
    cal.save(cal.measure(cal.machine_key(cpu_host.hardware), _probe(10.0), engine=lambda bw: p))
    data = json.loads(cal.calibration_path().read_text())
    assert data["engine"]["batch_flops_per_thread"] == pytest.approx(p.batch_flops_per_thread, abs=0.1)
    assert cal.load().engine == p
    assert "batched decode 110.0 tokens/s at 4 streams (29.5 GFLOP/s per thread)" in p.text()


def test_measure_engine_runs_a_batched_server_on_the_fake_engine(tmp_path):
    """The calibration's two servers on the fake engine (tests/fakes: /completion with llama-server's timings, one
    token per `delay`): one slot for the single-stream point, then 4 slots and 4 decodes at once, summed."""
    from fakes.openai_server import write_engine
    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]], BASIC_TENSORS)[0])
    binary = write_engine(tmp_path / "llama-server", load_s=0.0, delay=0.01)
    p = cal.measure_engine("llama.cpp", str(binary), str(gguf), bandwidth_gbs=10.0, threads=2, batch_tokens=8)
    assert p.decode_tokens_per_s == pytest.approx(100.0)  # 16 tokens at 10 ms each
    assert p.batch_streams == 4 and p.batch_decode_tokens_per_s == pytest.approx(400.0)  # 4 x 8 tokens at 10 ms
    assert p.batch_flops_per_thread == pytest.approx(400 * 2 * p.model_params / 2) and p.batch_flops_per_thread > 0
    assert cal.measure_engine("llama.cpp", str(binary), str(gguf), bandwidth_gbs=10.0, threads=2,
                              batch_streams=1).batch_streams == 0  # no batched run asked: not measured


def test_detected_cpu_plan_turns_compute_bound_at_the_batched_point(write_stack, detected):
    """With the batched point, a CPU plan's knee is its FLOP/s x threads (not the prefill rate); at any user count
    (forecast_at, as bench --sweep and a capped verify ask); an older calibration without it keeps the uncalibrated
    CPU knee (batch_mfu x nominal FLOP/s), never the prefill rate."""
    from stackgen.plan import speed
    from stackgen.plan.capacity import CPU_FLOPS_PER_THREAD
    from stackgen.plan.speed import forecast_at

    fast = dict(efficiency=0.9, t0_ms=0.0, decode_tokens_per_s=200.0)  # memory never binds below 4 users here
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(400.0), engine=lambda bw: _point(
        batch_streams=4, batch_decode_tokens_per_s=30.0, **fast)))
    from stackgen.pipeline import plan_stack
    stack = write_stack(STACK.format(hardware="detect").replace("concurrent_users: 1", "concurrent_users: 4"))
    plan = plan_stack(stack)[1]
    sp = plan.services[0]
    params = sp.model.active_params or sp.model.params
    knee = 30.0 * 268_098_176 / params  # the 270M point's FLOP/s, in this model's tokens/s
    assert sp.speed.bound == "compute" and sp.speed.aggregate_tokens_per_s == pytest.approx(knee, abs=0.06)
    assert sp.calibration is not None and sp.calibration.batch_decode_tokens_per_s == 30.0
    # 2 users (bench --sweep, a capped verify): the calibration's single-stream step, once per stream (below ggml's
    # 4-column tile each sequence is a pass of its own)
    at2 = forecast_at(sp, plan.hardware, 2)
    assert at2.single_stream_tokens_per_s == sp.speed.single_stream_tokens_per_s
    assert at2.aggregate_tokens_per_s == pytest.approx(sp.speed.single_stream_tokens_per_s, abs=0.1)
    uncal = plan_stack(stack, calibration=False)[1]
    assert forecast_at(uncal.services[0], uncal.hardware, 2).single_stream_tokens_per_s != \
        at2.single_stream_tokens_per_s
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(400.0), engine=lambda bw: _point(**fast)))
    old = plan_stack(stack)[1].services[0]
    nominal = speed.CPU_BATCH_MFU * CPU_FLOPS_PER_THREAD * old.threads / (2 * params)
    assert old.speed.aggregate_tokens_per_s == pytest.approx(nominal, abs=0.06)


def test_cli_calibrate_if_missing_keeps_a_calibration_of_this_machine(cli, detected, monkeypatch, tmp_path):
    """--if-missing (the quickstart's call): a calibration of this machine with the batched point is kept; one
    without it, or of another machine, is measured again."""
    model = tmp_path / "m.gguf"
    model.write_bytes(_tiny_gguf())
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(10.0), today=dt.date(2026, 11, 29),
                         engine=lambda bw: _point(batch_streams=4, batch_decode_tokens_per_s=100.0)))
    res = cli("calibrate", "--model", model, "--if-missing")
    assert res.exit_code == 0 and "calibrated on 2026-11-29; kept" in res.output, res.output
    cal.save(cal.measure(cal.machine_key(detected.hardware), _probe(10.0), engine=lambda bw: _point()))
    measured = []
    monkeypatch.setattr(cal, "measure", lambda *a, **k: measured.append(1) or (_ for _ in ()).throw(
        StackgenError("measuring")))
    monkeypatch.setattr("stackgen.host.binaries.find", lambda *a, **k: "/bin/true")
    res = cli("calibrate", "--model", model, "--if-missing")
    assert measured and "measuring" in res.output  # no batched point: measured again


def _tiny_gguf() -> bytes:
    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf
    return make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]], BASIC_TENSORS)[0]


@pytest.mark.parametrize("content", [b"# yaml, not a model\nversion: 1\n", bytes(range(100))], ids=["yaml", "junk"])
def test_cli_calibrate_with_a_model_that_is_not_a_gguf_is_one_line_before_measuring(cli, detected, monkeypatch,
                                                                                    tmp_path, content):
    """audit a4 #5: `calibrate --model stack.yaml` (or 100 junk bytes) was an internal error (ModelRefError
    uncaught) after the bandwidth was measured; it is the user's error, exit 1, and nothing is measured."""
    import stackgen.commands.calibrate as command
    monkeypatch.setattr(command, "_host", lambda host_facts: detected)
    monkeypatch.setattr(cal, "measure", lambda *a, **k: pytest.fail("measured a run that cannot happen"))
    model = tmp_path / "junk.gguf"
    model.write_bytes(content)
    res = cli("calibrate", "--model", model, "--binary", "/bin/false")
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model junk.gguf: not a readable GGUF file"), lines
    assert "(give --model a small .gguf" in lines[0] and "model:`" not in lines[0]


def test_cli_calibrate_without_an_engine_names_its_own_option(cli, detected, monkeypatch, tmp_path):
    """calibrate has no stack: its hint names --binary, not the stack's `binary:` (audit a4 #5)."""
    import stackgen.commands.calibrate as command
    monkeypatch.setattr(command, "_host", lambda host_facts: detected)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(_tiny_gguf())
    res = cli("calibrate", "--model", model)
    assert res.exit_code == 1 and "is not installed" in res.output and "or give --binary PATH" in res.output
    assert "binary:` in the stack" not in res.output
    res = cli("calibrate", "--model", model, "--binary", str(tmp_path / "nope"))
    assert res.exit_code == 1 and f"--binary {tmp_path / 'nope'} is not an executable file" in res.output


# --- a calibration measured on a busy machine says so ---------------------------------------------------------

REAL_BUSY_SHARE = cal.busy_share
REAL_METER = cal.other_work_meter


@pytest.fixture(autouse=True)
def _quiet_cpu(monkeypatch):
    """calibrate's CPU-busy probe (one second of psutil.cpu_percent) reads the machine the tests run on: here it
    is a quiet machine unless a test says otherwise (test_busy_share_reads_psutil checks the probe itself)."""
    monkeypatch.setattr(cal, "busy_share", lambda seconds=1.0: 0.0)
    monkeypatch.setattr(cal, "other_work_meter", lambda: (lambda: 0.0))


@pytest.mark.parametrize("busy, cores, warns", [(0.1, 2, False), (0.25, 2, False), (0.26, 2, True), (0.497, 2, True),
                                                (0.97, 2, True), (0.9, 0, True), (None, 2, False)])
def test_busy_note_above_a_quarter_of_the_cpu(busy, cores, warns):
    note = cal.busy_note(busy, cores)
    assert (note is not None) == warns
    if warns:
        assert f"({busy:.0%}" in note and "when the machine is quiet" in note
        assert (f"of {cores} cores" in note) == (cores > 0)


def test_the_cpu_use_is_measured_kept_and_read_back(cpu_host):
    """measure() records how busy the CPU was just before it, with the cores; the file keeps it; a busy calibration
    warns through Calibration.busy() and the plan's reason; a file without it (older) loads as unknown."""
    m = cal.measure(cal.machine_key(cpu_host.hardware), _probe(40.0), cores=2, busy=lambda: 0.93)
    assert (m.cpu_busy, m.cores) == (0.93, 2) and "(93% of 2 cores in use by other work)" in m.busy()
    assert "93% of 2 cores" in m.reason()
    cal.save(m)
    assert cal.load() == m
    quiet = cal.measure(cal.machine_key(cpu_host.hardware), _probe(40.0), cores=2, busy=lambda: 0.2)
    assert quiet.busy() is None and "busy" not in quiet.reason()
    data = m.to_json()
    del data["cpu_busy"], data["cores"]
    old = cal.Calibration.from_json(data)
    assert (old.cpu_busy, old.cores, old.busy()) == (None, 0, None)
    assert cal.measure(cal.machine_key(cpu_host.hardware), _probe(40.0)).cpu_busy == 0.0  # the default probe


def test_measure_keeps_the_larger_of_before_and_during(cpu_host):
    """Other work that starts with the measurement (a `pip install` beside the quickstart) is not in the second
    before it: the share measured over the run is kept when it is the larger, and either one alone when the other is
    unknown."""
    key = cal.machine_key(cpu_host.hardware)
    during = cal.measure(key, _probe(40.0), cores=2, busy=lambda: 0.1, meter=lambda: (lambda: 0.6))
    assert during.cpu_busy == 0.6 and "(60% of 2 cores" in during.busy()
    before = cal.measure(key, _probe(40.0), cores=2, busy=lambda: 0.7, meter=lambda: (lambda: 0.2))
    assert before.cpu_busy == 0.7
    assert cal.measure(key, _probe(40.0), cores=2, busy=lambda: None, meter=lambda: (lambda: 0.4)).cpu_busy == 0.4
    assert cal.measure(key, _probe(40.0), cores=2, busy=lambda: None, meter=lambda: (lambda: None)).cpu_busy is None


def test_other_work_meter_subtracts_stackgens_own_cpu():
    """The meter's share is the host's busy time less this process's and its waited children's, over the host's
    elapsed CPU time; a clock that did not advance or cannot be read is unknown, not 0."""
    host = iter([(100.0, 400.0), (160.0, 500.0)])  # 60 busy of 100 CPU seconds
    own = iter([10.0, 30.0])  # 20 of them stackgen's
    assert REAL_METER(lambda: next(host), lambda: next(own))() == 0.4
    host = iter([(100.0, 400.0), (100.0, 400.0)])
    assert REAL_METER(lambda: next(host), lambda: 0.0)() is None
    host = iter([None, (1.0, 2.0)])
    assert REAL_METER(lambda: next(host), lambda: 0.0)() is None
    host = iter([(0.0, 100.0), (10.0, 200.0)])
    own = iter([0.0, 50.0])  # more own time than the host's busy time (clock granularity): 0, not negative
    assert REAL_METER(lambda: next(host), lambda: next(own))() == 0.0


def test_other_work_meter_on_this_machine():
    """The real meter: a busy loop in a process stackgen did not wait for counts as other work; the same loop in
    this process does not. Each side is compared with the CPU time the loop really got (psutil), so a loaded machine
    that gives the loop less than a core does not fail it."""
    import subprocess
    import sys
    import time

    import psutil

    h0 = cal._host_cpu_seconds()
    meter = REAL_METER()
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        loop_cpu = sum(psutil.Process(loop.pid).cpu_times()[:2])
        others = meter()
        h1 = cal._host_cpu_seconds()
    finally:
        loop.kill()
        loop.wait()
    assert loop_cpu > 0.1 and others is not None
    assert others >= 0.8 * loop_cpu / (h1[1] - h0[1]), (others, loop_cpu)

    h0, own0 = cal._host_cpu_seconds(), cal._own_cpu_seconds()
    meter = REAL_METER()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass
    others = meter()
    h1, own1 = cal._host_cpu_seconds(), cal._own_cpu_seconds()
    host_share, own_share = (h1[0] - h0[0]) / (h1[1] - h0[1]), (own1 - own0) / (h1[1] - h0[1])
    assert own1 - own0 > 0.1 and others is not None
    assert others <= host_share - 0.8 * own_share, (host_share, own_share, others)


def test_busy_share_reads_psutil(monkeypatch):
    import psutil
    real = REAL_BUSY_SHARE  # the module's own, not the fixture's stand-in
    seen = {}

    def cpu_percent(interval):
        seen["interval"] = interval
        return 87.5
    monkeypatch.setattr(psutil, "cpu_percent", cpu_percent)
    assert real(0.25) == 0.875 and seen["interval"] == 0.25

    def broken(interval):
        raise OSError("no /proc/stat")
    monkeypatch.setattr(psutil, "cpu_percent", broken)
    assert real() is None


def test_cli_calibrate_on_a_busy_machine_warns_and_still_writes(cli, detected, monkeypatch):
    import stackgen.commands.calibrate as command
    import stackgen.host.detect as detect
    monkeypatch.setattr(command, "_host", lambda host_facts: detected)
    monkeypatch.setattr(detect, "measure_memory_bandwidth", lambda: 120.0)
    monkeypatch.setattr(cal, "busy_share", lambda seconds=1.0: 0.99)
    res = cli("calibrate")
    cores = detected.hardware.cpu.cores
    assert res.exit_code == 0
    assert f"warning: the machine was busy when it was measured (99% of {cores} cores in use" in res.output
    assert cal.load().cpu_busy == 0.99
    assert "warning: the machine was busy" in cli("calibrate", "--show").output
    monkeypatch.setattr(cal, "busy_share", lambda seconds=1.0: 0.0)
    assert "warning" not in cli("calibrate").output


def test_rate_reads_the_engines_timings():
    assert cal._rate({"predicted_n": 16, "predicted_ms": 160.0}, "predicted") == pytest.approx(100.0)
    assert cal._rate({"prompt_n": 64, "prompt_ms": 0.0}, "prompt") == 0.0
    assert cal._rate({}, "prompt") == 0.0


@pytest.mark.parametrize("command", ["up", "bench", "restart"])
def test_a_damaged_file_names_fixes_that_every_planning_command_accepts(cli, write_stack, detected, command):
    """up / restart / bench plan a `hardware: detect` stack too: the advice used to be "plan with --no-calibration",
    a flag they reject (exit 64). It names what works for them: calibrate again, or remove the file."""
    path = cal.calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    res = cli(command, write_stack(STACK.format(hardware="detect")))
    assert res.exit_code == 1, res.output
    assert "not a stackgen calibration" in res.output and f"rm {path}" in res.output, res.output
    assert "plan with --no-calibration" not in res.output, res.output
    path.unlink()  # the advice works: without the file nothing is read
    assert cal.load() is None
