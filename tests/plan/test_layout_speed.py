"""One speed for a service that runs as several instances (capacity's replica layout): vLLM data parallel in one server
(--data-parallel-size D, each engine core a full copy of the weights on its own T GPUs) and separate llama.cpp
instances behind HAProxy. The plan's forecast (sp.speed, what `plan` prints), forecast_at at other user counts and
the fleet simulator's per-instance curves (capacity.fleet_curves / service_curve) are all one instance's figures from
the same inputs (capacity.instance_of), with the users spread over the instances.

Before, tests/golden/fleet-vllm-dp-h100 had three single-stream speeds: 153.0 in the plan (computed before the
layout, one GPU), 102.8 from forecast_at(sp, hw, 1) (the data-parallel memory plan's 48 GB, all three copies, read
per token) and 306 per instance from the curve; tests/golden/fleet-llamacpp-4090's plan forecast 32 streams on one
instance (35.2 tokens/s per user) where it runs 4 instances of 8 slots."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from stackgen.pipeline import plan_stack
from stackgen.plan import speed
from stackgen.plan.capacity import engine_core, fleet_curves, instance_of, service_curve
from stackgen.plan.memory import _kv_bytes_read
from stackgen.plan.report import service_text
from tools.stacks import plan_for

GOLDEN = Path(__file__).parent.parent / "golden"
FLEETS = {"fleet-vllm-dp-h100": ("vllm", 3, 2), "fleet-llamacpp-4090": ("llama.cpp", 4, 1)}


@pytest.fixture(scope="module", params=sorted(FLEETS))
def fleet(request):
    case = GOLDEN / request.param
    _, plan = plan_stack(case / "stack.yaml", case / "host.json", write_lock=False, calibration=False)
    sp = plan.services[0]
    engine, instances, tp = FLEETS[request.param]
    assert (sp.engine, sp.capacity.replicas, sp.capacity.layout.gpus_per_instance) == (engine, instances, tp)
    return request.param, sp, plan.hardware


def test_the_plan_forecast_and_the_curves_give_one_single_stream_speed(fleet):
    name, sp, hw = fleet
    plan = sp.speed.single_stream_tokens_per_s
    assert speed.forecast_at(sp, hw, 1).single_stream_tokens_per_s == plan, name
    curves = fleet_curves(sp, hw)
    assert len(curves) == sp.capacity.replicas == sp.speed.instances
    for curve in (curves[0], sp.capacity.curve):  # what `simulate` steps and what chose the layout
        assert round(1 / curve.step_s(1, 0), 1) == pytest.approx(plan, abs=0.1), name


def test_one_stream_reads_one_copy_of_the_weights_at_one_instances_bandwidth(fleet):
    # From first principles, not through service_forecast: one copy of the weights (vLLM data parallel: the plan's
    # bytes over the data-parallel count) and one stream's KV cache at the backend's fitted shares of the instance's
    # T GPUs' bandwidth, plus t0 and, at T > 1, tensor parallel's 2 all-reduces per layer at the link's latency.
    name, sp, hw = fleet
    m = sp.memory
    one_copy = m.weights_bytes / max(1, m.data_parallel)
    b = speed.backend_params(sp.speed.backend)
    bw = b.read_gbs(hw.gpus[0].bandwidth_gbs) * 1e9 * sp.capacity.layout.gpus_per_instance
    kind = speed.weight_kind(m.weights_format or sp.model.quant)
    avg_ctx = min(m.context_per_request, sp.workload.prompt_tokens + sp.workload.output_tokens // 2)
    step = one_copy / (b.efficiency_for(kind) * bw) + _kv_bytes_read(sp.model, m, avg_ctx) / (b.efficiency * bw) \
        + b.t0_ms / 1000
    tp = max(1, m.tensor_parallel)
    if tp > 1:
        step += speed.TP_ALLREDUCES_PER_LAYER * sp.model.layers * speed.allreduce_seconds(speed.gpu_link(hw), tp)
    assert sp.speed.single_stream_tokens_per_s == pytest.approx(1 / step, rel=0.002), name


def test_forecast_at_the_declared_users_is_the_plans_forecast(fleet):
    # forecast_at returns sp.speed at the declared users; computed afresh (no sp.speed) it must be the same figure
    name, sp, hw = fleet
    users = sp.workload.concurrent_users
    assert speed.forecast_at(replace(sp, speed=None), hw, users) == sp.speed, name
    assert speed.fleet_forecast(sp, hw, users) == sp.speed


def test_the_users_spread_over_the_instances(fleet):
    name, sp, hw = fleet
    n, users = sp.capacity.replicas, sp.workload.concurrent_users
    inst = instance_of(sp, hw)
    mem = inst.memory
    one = speed.service_forecast(sp.engine, sp.model, mem, inst.hardware, users=-(-users // n),
                                 prompt_tokens=sp.workload.prompt_tokens, threads=inst.threads,
                                 calibration=sp.calibration, output_tokens=sp.workload.output_tokens,
                                 avg_context=min(mem.context_per_request,
                                                 sp.workload.prompt_tokens + sp.workload.output_tokens // 2))
    fc = sp.speed
    assert fc.streams == min(-(-users // n), mem.parallel)
    assert fc.per_user_tokens_per_s == one.per_user_tokens_per_s
    if users % n == 0:
        assert fc.aggregate_tokens_per_s == pytest.approx(n * one.aggregate_tokens_per_s, abs=0.1)
    assert fc.queue_requests_per_s == pytest.approx(n * one.queue_requests_per_s, rel=1e-3)
    # each user alone on an instance: the single stream each, all of them added up
    at_n = speed.forecast_at(sp, hw, n)
    assert at_n.streams == 1 and at_n.instances_busy == n
    assert at_n.per_user_tokens_per_s == fc.single_stream_tokens_per_s
    assert at_n.aggregate_tokens_per_s == pytest.approx(n * fc.single_stream_tokens_per_s, abs=0.1)
    # fewer users than instances: the idle ones add nothing
    alone = speed.forecast_at(sp, hw, 1)
    assert (alone.instances, alone.instances_busy) == (n, 1)
    assert alone.aggregate_tokens_per_s == alone.per_user_tokens_per_s == fc.single_stream_tokens_per_s


def test_the_forecast_says_it_is_per_instance(fleet):
    name, sp, hw = fleet
    n = sp.capacity.replicas
    text = sp.speed.text()
    assert f"per instance on each of {n} instances" in text and "aggregate over all instances" in text
    assert f"all {n} x {sp.speed.slots} slots busy" in text
    assert "on 1 of" in speed.forecast_at(sp, hw, 1).text()
    j = sp.to_json()["speed"]
    assert (j["instances"], j["instances_busy"]) == (n, n)
    # the plan's "predicted decode" line: the forecast's single stream, and the roofline for one instance too
    line = next(x for x in service_text(sp) if x.startswith("  predicted decode:"))
    assert f"{sp.speed.single_stream_tokens_per_s:g} tokens/s for one stream alone" in line
    # within 25%, not a factor of the instance count: the roofline is a flat 0.7 of the bandwidth with no per-step
    # cost, the forecast the fitted line with its t0 and all-reduces (vLLM TP 2 on H100s: 253.4 against the
    # roofline's 289.3, -12%, with the engine-era fit's t0 of 0.26 ms; 240.6, -17%, with vllm-now's refit, t0 0.69 ms
    # and 16-bit 0.834, which puts the gap just past 20% of the forecast; the bug this guards was 3x, 102.8 against 306)
    assert sp.predicted_decode_tokens_per_s == pytest.approx(sp.speed.single_stream_tokens_per_s, rel=0.25)


def test_a_single_instance_forecast_keeps_its_form(tmp_path):
    plan = plan_for(tmp_path, """
version: 1
hardware: rtx-4090
workload: {concurrent_users: 4, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}
""")
    sp = plan.services[0]
    assert sp.speed.instances == 1 and "instance" not in sp.speed.text()
    assert instance_of(sp, plan.hardware).memory is sp.memory
    assert speed.forecast_at(replace(sp, speed=None), plan.hardware, 4) == sp.speed


def test_pinned_data_parallel_is_one_engine_core_per_copy(tmp_path):
    # --data-parallel-size pinned in overrides, with no capacity layout behind it: still D cores, each one copy
    text = """
version: 1
hardware: 4x h100-80gb
workload: {{concurrent_users: 16, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}}
services:
  chat: {{model: llama-3.1-8b-instruct, engine: vllm, overrides: {{tensor-parallel-size: 2{dp}}}}}
"""
    dp = plan_for(tmp_path / "dp", text.format(dp=", data-parallel-size: 2"))
    tp = plan_for(tmp_path / "tp", text.format(dp=""))
    sdp, stp = dp.services[0], tp.services[0]
    assert (sdp.memory.data_parallel, stp.memory.data_parallel) == (2, 1)
    core = engine_core(sdp.memory)
    assert core.weights_bytes == sdp.memory.weights_bytes // 2 == stp.memory.weights_bytes
    assert sdp.speed.instances == 2 and sdp.speed.streams == 8
    assert sdp.speed.single_stream_tokens_per_s == stp.speed.single_stream_tokens_per_s
    assert len(fleet_curves(sdp, dp.hardware)) == 2
    assert 1 / service_curve(sdp, dp.hardware).step_s(1, 0) == pytest.approx(
        sdp.speed.single_stream_tokens_per_s, rel=0.002)
    # the capacity plan's prediction steps the same 2 cores with 8 users each, as `stackgen simulate` does (before:
    # one core with all 16 users, 221 tokens/s per user and p95 TTFT 0.25 s against the simulator's 271 and 0.13 s)
    from stackgen.plan.capacity import simulate_service
    p, sim = sdp.capacity.prediction, simulate_service(sdp, dp.hardware, [16])[0]
    assert sim.instances == 2 and p.users == sim.users == 16
    assert (p.tokens_per_s_per_user, p.ttft_p95_s, p.throughput_tokens_per_s) == \
        (sim.tokens_per_s_per_user, sim.ttft_p95_s, sim.throughput_tokens_per_s)
    # and each core is the tensor-parallel plan's single core at its share of the users
    assert p.tokens_per_s_per_user == pytest.approx(simulate_service(stp, tp.hardware, [8])[0].tokens_per_s_per_user,
                                                    rel=0.01)


def test_cpu_instances_share_the_ram_bandwidth_in_the_forecast_as_in_the_curves(tmp_path):
    # Separate CPU instances on one host: one instance's inputs are its threads and its share of the RAM bandwidth,
    # as capacity stepped them when it chose the layout (service_curve's `instances`).
    plan = plan_for(tmp_path, """
version: 1
hardware: cpu-server-64gb
workload: {concurrent_users: 4, context_tokens: 1024, prompt_tokens: 128, output_tokens: 64}
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: 2}
""")
    sp, hw = plan.services[0], plan.hardware
    inst = instance_of(sp, hw)
    assert inst.count == 2 and inst.threads == sp.capacity.layout.threads
    assert inst.hardware.memory_bandwidth_gbs == pytest.approx(hw.memory_bandwidth_gbs / 2)
    assert fleet_curves(sp, hw) == [sp.capacity.curve] * 2
    assert sp.speed.instances == 2 and sp.speed.streams == 2
    assert sp.speed == speed.forecast_at(replace(sp, speed=None), hw, 4)
    # one instance alone at full bandwidth would be faster: the forecast is for the instance's share
    whole = speed.service_forecast(sp.engine, sp.model, inst.memory, hw, users=1, prompt_tokens=128,
                                   threads=inst.threads, avg_context=192)
    assert sp.speed.single_stream_tokens_per_s < whole.single_stream_tokens_per_s


def test_verify_counts_the_streams_of_every_instance(fleet, monkeypatch):
    # `up --verify` says "N decoding at once" when the plan's slots hold fewer streams than it sent users: over the
    # whole service, not one instance's (Forecast.streams)
    from types import SimpleNamespace

    from stackgen.run import up

    name, sp, hw = fleet
    monkeypatch.setattr(up, "endpoint_for", lambda sp: SimpleNamespace(connect_host="127.0.0.1", port=1, model="m",
                                                                         api_key=None, tls=False))
    monkeypatch.setattr(up, "drive", lambda *a, **k: ([], 1.0, None))
    n = sp.capacity.replicas
    v = up.verify_service(sp, concurrency=n, hardware=hw)
    assert v.predicted_streams == n and speed.forecast_at(sp, hw, n).streams == 1
    assert v.predicted_aggregate_tokens_per_s == speed.forecast_at(sp, hw, n).aggregate_tokens_per_s
