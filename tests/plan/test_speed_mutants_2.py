"""Edges of the speed model's newer code (stackgen/plan/speed.py) that the mutation run at 560105b (89.4%,
benchmarks/results/mutation-speed.md) found untested: the llama.cpp build term's fit (fit_backend_build), the
host link a partial offload copies over (host_link_gbs), the users spread over a fleet's instances
(fleet_forecast), the per-micro-batch copy of a partial offload (step_parts, StepParts, forecast) and the
partial offload's stated error. Each expected figure is derived from the model's formula (in the docstring), not
pasted from an output."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from stackgen.plan import capacity, speed

# --- fit_backend_build ------------------------------------------------------------------------------------------


def _pt(x: float, t: float, kind: str | None = "quantized", before: bool | None = None) -> tuple:
    """A point whose step at full bandwidth is x seconds (x GB at 1 GB/s) and whose measured step is t seconds;
    kind None: a bare (bytes, bandwidth, tokens/s) point, before None: no build-era field."""
    p = (x * 1e9, 1.0, 1 / t)
    if kind is None:
        return p
    return p + (kind,) if before is None else p + (kind, before)


def _line(sq, s16, t0, tb, spec):
    """Points exactly on t = x * s_kind + t0 + tb [older build] for spec = [(x, kind, before), ...]."""
    return [_pt(x, x * (s16 if k == "16bit" else sq) + t0 + (tb if o else 0.0), k, o) for x, k, o in spec]


def test_build_term_with_exactly_two_points_of_each_era_and_of_each_kind():
    """2 older-build points and 2 current ones (the least the term is fitted with, m >= 2 and n - m >= 2), 2 of
    them 16-bit and 2 quantized (the least for a 16-bit slope): points exactly on t = x / e_kind + t0 + t0_before
    (e 0.8, e_16bit 0.5, t0 5 ms, t0_before 3 ms) give those four back, in the order (e, t0_ms, e_16bit,
    t0_before_ms)."""
    pts = _line(1 / 0.8, 1 / 0.5, 0.005, 0.003,
                [(0.01, "quantized", True), (0.04, "quantized", False), (0.02, "16bit", True), (0.03, "16bit", False)])
    e, t0, e16, tb = speed.fit_backend_build(pts)
    assert (e, t0, e16, tb) == (pytest.approx(0.8, rel=1e-9), pytest.approx(5.0, rel=1e-9),
                                pytest.approx(0.5, rel=1e-9), pytest.approx(3.0, rel=1e-9))


def test_build_term_with_one_slope_and_points_without_kind():
    """No 16-bit points: one slope for every point (e_16bit 0, not 1 / some column), and the columns are
    [x, 1, older]; points without a kind or a build field (bare 3-tuples) are current quantized builds. On
    t = x / 0.8 + 4 ms + 6 ms [older]: (0.8, 4, 0, 6), with t0 and t0_before in their places."""
    pts = [_pt(0.01, 0.01 / 0.8 + 0.010, "quantized", True), _pt(0.05, 0.05 / 0.8 + 0.010, "quantized", True),
           _pt(0.02, 0.02 / 0.8 + 0.004, None), _pt(0.08, 0.08 / 0.8 + 0.004, None)]
    e, t0, e16, tb = speed.fit_backend_build(pts)
    assert e16 == 0.0
    assert (e, t0, tb) == (pytest.approx(0.8, rel=1e-9), pytest.approx(4.0, rel=1e-9), pytest.approx(6.0, rel=1e-9))


def test_three_16bit_points_and_one_quantized_are_one_slope():
    """Only 1 quantized point: no split (each kind needs 2 points, else one slope is that point's exact fit), so
    e_16bit is 0 and the one slope comes from every point: on t = x / 0.7 + 2 ms + 1 ms [older], (0.7, 2, 0, 1)."""
    pts = _line(1 / 0.7, 1 / 0.7, 0.002, 0.001,
                [(0.01, "16bit", True), (0.03, "16bit", False), (0.06, "16bit", False), (0.02, "quantized", True)])
    e, t0, e16, tb = speed.fit_backend_build(pts)
    assert e16 == 0.0
    assert (e, t0, tb) == (pytest.approx(0.7, rel=1e-9), pytest.approx(2.0, rel=1e-9), pytest.approx(1.0, rel=1e-9))


def test_one_older_point_or_one_current_point_fits_no_term():
    """1 point of an era: no term (it would be that point's exact fit); fit_backend's figures over all the points,
    with t0_before 0."""
    spec = [(0.01, "quantized", True), (0.02, "quantized", False), (0.04, "quantized", False), (0.08, "quantized", False)]
    pts = _line(1 / 0.8, 0, 0.005, 0.003, spec)
    assert speed.fit_backend_build(pts) == (*speed.fit_backend([p[:4] for p in pts]), 0.0)
    flipped = [p[:4] + (not p[4],) for p in pts]
    assert speed.fit_backend_build(flipped) == (*speed.fit_backend([p[:4] for p in pts]), 0.0)


def _falls_back(pts):
    """fit_backend_build's answer when its term fit is not physical: fit_backend over the points, no term."""
    return (*speed.fit_backend([p[:4] for p in pts]), 0.0)


def test_a_negative_overhead_drops_the_build_term():
    """Points on t = x / 0.8 - 2 ms + 3 ms [older] (t0 < 0, the term and the slope positive): not physical, so no
    term; the answer is fit_backend's over all the points, whose t0 is >= 0."""
    pts = _line(1 / 0.8, 0, -0.002, 0.003,
                [(0.01, "quantized", True), (0.05, "quantized", True), (0.02, "quantized", False),
                 (0.08, "quantized", False)])
    got = speed.fit_backend_build(pts)
    assert got == _falls_back(pts)
    assert got[3] == 0.0 and got[1] >= 0.0


def test_a_negative_16bit_slope_drops_the_build_term():
    """Split points on t = x * s_kind + 20 ms + 5 ms [older] with the quantized slope 1.25 (e 0.8) but the 16-bit
    slope -0.5 (16-bit steps faster for more bytes): a slope <= 0 is not physical, so no term."""
    pts = _line(1.25, -0.5, 0.02, 0.005,
                [(0.01, "quantized", True), (0.02, "quantized", False), (0.01, "16bit", True), (0.02, "16bit", False)])
    got = speed.fit_backend_build(pts)
    assert got == _falls_back(pts) and got[3] == 0.0


def test_a_flat_line_has_no_efficiency_and_drops_the_build_term():
    """Times that do not grow with the bytes (t = 0.5 s, + 0.5 s for older builds; dyadic values, so the fit's
    slope comes out exactly 0): an efficiency of 1 / 0 is not physical, so no term (and no division by zero)."""
    pts = [_pt(0.5, 0.5, "quantized", False), _pt(2.0, 0.5, "quantized", False),
           _pt(0.5, 1.0, "quantized", True), _pt(2.0, 1.0, "quantized", True)]
    assert speed._relative_lsq([[p[0] / 1e9, 1.0, 1.0 if p[4] else 0.0] for p in pts],
                               [1 / p[2] for p in pts])[0] == 0.0
    assert speed.fit_backend_build(pts) == _falls_back(pts)


def test_a_zero_overhead_keeps_the_build_term():
    """t0 = 0 is physical (t0 >= 0): points on t = x + 0.5 s [older] with dyadic values (every sum exact, the fitted
    t0 exactly 0) keep the term: (1, 0, 0, 500 ms)."""
    pts = [_pt(0.5, 0.5, "quantized", False), _pt(1.0, 1.0, "quantized", False),
           _pt(0.5, 1.0, "quantized", True), _pt(1.5, 2.0, "quantized", True)]
    assert speed.fit_backend_build(pts) == (1.0, 0.0, 0.0, 500.0)


def test_an_efficiency_above_one_is_kept():
    """The fits do not cap the efficiency at 1 (a slope under 1 s per full-bandwidth second is still positive):
    points on t = x / 2 + 1 ms (+ 2 ms [older]) give e = 2 back, with the term and without it."""
    spec = [(0.01, "quantized", True), (0.05, "quantized", True), (0.02, "quantized", False), (0.08, "quantized", False)]
    e, t0, _, tb = speed.fit_backend_build(_line(0.5, 0, 0.001, 0.002, spec))
    assert (e, t0, tb) == (pytest.approx(2.0, rel=1e-9), pytest.approx(1.0, rel=1e-9), pytest.approx(2.0, rel=1e-9))
    e, t0, _ = speed.fit_backend([_pt(x, x / 2 + 0.001) for x in (0.01, 0.02, 0.05)])
    assert (e, t0) == (pytest.approx(2.0, rel=1e-9), pytest.approx(1.0, rel=1e-9))


# --- host_link_gbs ---------------------------------------------------------------------------------------------


def _hw(*gpus):
    return SimpleNamespace(gpus=list(gpus))


def test_host_link_is_the_first_gpus_interconnect_up_to_pcie5_x16():
    """The first GPU's interconnect_gbs (as a float) when at most MAX_HOST_LINK_GBS (64: PCIe 5.0 x16, the cap
    included); above it an NVLink figure, no GPU, a GPU without the field or with None: DEFAULT_HOST_LINK_GBS."""
    assert speed.host_link_gbs(_hw(SimpleNamespace(interconnect_gbs=16), SimpleNamespace(interconnect_gbs=32))) == 16.0
    assert isinstance(speed.host_link_gbs(_hw(SimpleNamespace(interconnect_gbs=16))), float)
    assert speed.host_link_gbs(_hw(SimpleNamespace(interconnect_gbs=speed.MAX_HOST_LINK_GBS))) == speed.MAX_HOST_LINK_GBS
    assert speed.host_link_gbs(_hw(SimpleNamespace(interconnect_gbs=600))) == speed.DEFAULT_HOST_LINK_GBS
    assert speed.host_link_gbs(_hw()) == speed.DEFAULT_HOST_LINK_GBS
    assert speed.host_link_gbs(_hw(SimpleNamespace(name="no link field"))) == speed.DEFAULT_HOST_LINK_GBS
    assert speed.host_link_gbs(_hw(SimpleNamespace(interconnect_gbs=None))) == speed.DEFAULT_HOST_LINK_GBS
    assert speed.DEFAULT_HOST_LINK_GBS not in (16.0, speed.MAX_HOST_LINK_GBS)


# --- fleet_forecast ---------------------------------------------------------------------------------------------


def _fake_one(u: int) -> speed.Forecast:
    """An instance's forecast at u users whose aggregate (10.37 u) and queueing point (0.0123456 u) have more
    digits than the fleet rounds to, so the rounding shows."""
    return speed.Forecast(backend="cuda", streams=u, per_user_tokens_per_s=10.37, aggregate_tokens_per_s=10.37 * u,
                          single_stream_tokens_per_s=12.0, ttft_s=0.5, ttft_all_s=0.5 * u, bound="memory bandwidth",
                          error=0.2, fitted_on=3, slots=8, queue_requests_per_s=0.0123456 * u)


@pytest.fixture
def fleet(monkeypatch):
    """fleet_forecast over a fake instance (capacity.instance_of) whose service_forecast is _fake_one; returns
    (run(users, count, sp=...), calls) with every service_forecast call's arguments."""
    calls = []
    mem = SimpleNamespace(context_per_request=8192)
    hw_inst = SimpleNamespace(name="one instance's share")

    def fake_service_forecast(engine, model, m, hw, **kw):
        calls.append(dict(engine=engine, model=model, mem=m, hw=hw, **kw))
        return _fake_one(kw["users"])

    monkeypatch.setattr(speed, "service_forecast", fake_service_forecast)
    state = {}
    monkeypatch.setattr(capacity, "instance_of",
                        lambda sp, hw: SimpleNamespace(memory=mem, hardware=hw_inst, threads=6, count=state["count"]))
    wl = SimpleNamespace(prompt_tokens=1000, output_tokens=201)
    base_sp = SimpleNamespace(engine="llama.cpp", model="m", workload=wl, calibration=None)

    def run(users, count, sp=base_sp):
        state["count"] = count
        calls.clear()
        return speed.fleet_forecast(sp, SimpleNamespace(), users)

    return run, calls, mem, hw_inst, base_sp


def test_fleet_spreads_the_remainder_one_more_on_some_instances(fleet):
    """7 users on 3 instances: 2 each and 1 more on one (7 = 3 x 2 + 1). The figures are the busiest instance's
    (3 users); the aggregate is 1 x A(3) + 2 x A(2), rounded to 0.1; the queueing point 3 x the busiest's, to 4
    places; all 3 instances busy."""
    run, calls, *_ = fleet
    fc = run(7, 3)
    assert fc.streams == 3 and fc.per_user_tokens_per_s == 10.37
    assert fc.aggregate_tokens_per_s == round(1 * 10.37 * 3 + 2 * 10.37 * 2, 1)
    assert fc.aggregate_tokens_per_s != round(10.37 * 7, 2)  # the rounding to 0.1 shows
    assert fc.queue_requests_per_s == round(0.0123456 * 3 * 3, 4)
    assert (fc.instances, fc.instances_busy) == (3, 3)
    assert sorted(c["users"] for c in calls) == [2, 3]


def test_fleet_with_users_on_every_instance_evenly(fleet):
    """6 users on 3 instances: 2 each, no remainder: the aggregate is 3 x A(2); one instance's forecast is made."""
    run, calls, *_ = fleet
    fc = run(6, 3)
    assert fc.streams == 2
    assert fc.aggregate_tokens_per_s == round(3 * 10.37 * 2, 1)
    assert (fc.instances, fc.instances_busy) == (3, 3)
    assert [c["users"] for c in calls] == [2]


def test_fleet_with_fewer_users_than_instances_leaves_some_idle(fleet):
    """2 users on 3 instances: one each on 2, the third idle (no aggregate from it): aggregate 2 x A(1), 2 of 3
    busy."""
    run, calls, *_ = fleet
    fc = run(2, 3)
    assert fc.streams == 1
    assert fc.aggregate_tokens_per_s == round(2 * 10.37, 1)
    assert (fc.instances, fc.instances_busy) == (3, 2)
    assert fc.queue_requests_per_s == round(0.0123456 * 3, 4)


def test_one_instance_is_its_own_forecast(fleet):
    run, calls, *_ = fleet
    assert run(5, 1) == _fake_one(5)


def test_fleet_passes_the_instance_the_workload_and_the_build(fleet):
    """Each instance's forecast gets the instance's memory plan, hardware and threads, the workload's lengths, the
    plan's calibration, the plan's engine_build (None when the plan has none) and the average context
    min(context per request, prompt + output // 2) = 1000 + 201 // 2 = 1100 tokens (an int)."""
    run, calls, mem, hw_inst, sp = fleet
    run(4, 2)
    c = calls[0]
    assert (c["engine"], c["model"], c["mem"], c["hw"]) == ("llama.cpp", "m", mem, hw_inst)
    assert (c["threads"], c["prompt_tokens"], c["output_tokens"], c["calibration"]) == (6, 1000, 201, None)
    assert c["build"] is None  # sp has no engine_build attribute at all
    assert c["avg_context"] == 1100 and isinstance(c["avg_context"], int)
    run(4, 2, sp=SimpleNamespace(**vars(sp), engine_build=4000))
    assert calls[0]["build"] == 4000
    mem.context_per_request = 1024
    run(4, 2)
    assert calls[0]["avg_context"] == 1024


# --- step_parts: the partial offload's copy -------------------------------------------------------------------

CUDA, CPU = speed.backend_params("cuda"), speed.backend_params("cpu")
SP = dict(weights_bytes=4e9, kv_bytes_per_stream=1e6, gpu_fraction=0.5, gpu_bandwidth_gbs=1000.0,
          host_bandwidth_gbs=50.0, active_params=8e9, peak_flops=100e12)


def _ram_read(cpu=CPU, kind="quantized"):
    """The RAM layers' read of one token: (1 - f) x bytes / (cpu efficiency_for(kind) x host bandwidth)."""
    return 0.5 * 4e9 / (cpu.efficiency_for(kind) * 50e9)


def _copy(link):
    """One copy of the RAM layers over the host link: (1 - f) x bytes / (HOST_LINK_EFFICIENCY x link)."""
    return 0.5 * 4e9 / (speed.HOST_LINK_EFFICIENCY * link * 1e9)


def test_a_partial_offload_with_link_and_micro_batch_copies():
    """With a host link and a micro-batch, the parts carry the RAM layers' read, one copy's seconds and the
    micro-batch; a micro-batch of 1 token and a link of 0.5 GB/s (PCIe 1.0 x2) are still a copy."""
    p = speed.step_parts(CUDA, CPU, **SP, host_link_gbs=16.0, ubatch=512)
    assert (p.ram_weights_s, p.ubatch_copy_s, p.ubatch) == (pytest.approx(_ram_read()), pytest.approx(_copy(16.0)),
                                                            512)
    p = speed.step_parts(CUDA, CPU, **SP, host_link_gbs=16.0, ubatch=1)
    assert (p.ubatch_copy_s, p.ubatch) == (pytest.approx(_copy(16.0)), 1)
    p = speed.step_parts(CUDA, CPU, **SP, host_link_gbs=0.5, ubatch=512)
    assert p.ubatch_copy_s == pytest.approx(_copy(0.5))


@pytest.mark.parametrize("kw", [dict(ubatch=512), dict(host_link_gbs=16.0), dict(host_link_gbs=16.0, ubatch=0), {}])
def test_no_copy_without_both_a_link_and_a_micro_batch(kw):
    """A link without a micro-batch, or a micro-batch without a link (the defaults are 0, no copy): no copy, and the
    parts carry no RAM read apart nor a micro-batch (0, 0, 0); the RAM layers stay in weights_s."""
    p = speed.step_parts(CUDA, CPU, **SP, **kw)
    assert (p.ram_weights_s, p.ubatch_copy_s, p.ubatch) == (0.0, 0.0, 0)
    gpu = 0.5 * 4e9 / (CUDA.efficiency * CUDA.read_gbs(1000) * 1e9)
    assert p.weights_s == pytest.approx(gpu + _ram_read())
    fc = speed.forecast("cuda", **SP, streams=1, prompt_tokens=1000, **kw)
    assert fc.prefill_tokens_per_s == float(f"{1 / p.prompt_token_s:.6g}")  # no copy in the prompt's rate


def test_16bit_ram_layers_read_at_the_cpus_16bit_figures():
    """A CPU backend with its own 16-bit efficiency and batch MFU: a partial offload's RAM share of 16-bit weights
    reads at efficiency_16bit; a CPU-only step of 16-bit weights computes at batch_mfu_16bit x peak."""
    cpu = speed.Backend(0.6, 0.0, prefill_mfu=1.0, efficiency_16bit=0.3, batch_mfu=0.5, batch_mfu_16bit=0.2)
    p = speed.step_parts(CUDA, cpu, **SP, weights="16bit", host_link_gbs=16.0, ubatch=512)
    assert p.ram_weights_s == pytest.approx(_ram_read(cpu, "16bit")) and cpu.efficiency_for("16bit") == 0.3
    p = speed.step_parts(CUDA, cpu, **{**SP, "gpu_fraction": 0.0}, weights="16bit")
    assert p.batch_token_s == pytest.approx(speed.batch_compute_seconds(8e9, 2, 0.2 * 100e12, 1.0))


def test_a_partial_offload_without_the_host_flops_computes_at_the_gpus_batch_peak():
    """Without host_flops (default 0) a partial offload's decoding tokens past the first all compute at the GPU
    backend's batch MFU of the peak: 2 x active / (batch_mfu x peak), no CPU share."""
    p = speed.step_parts(CUDA, CPU, **SP)
    assert p.batch_token_s == pytest.approx(speed.batch_compute_seconds(8e9, 2, CUDA.batch_mfu * 100e12, 1.0))


# --- StepParts: offloads, copy_s, memory_s, step's ties --------------------------------------------------------

MOE = speed.ExpertRouting(8, 2, 0.9)


def test_offloads_needs_a_copy_a_micro_batch_and_32_tokens():
    p = speed.StepParts(0.01, 0.001, 0.002, 1e-4, 1e-4, ram_weights_s=0.004, ubatch_copy_s=0.02, ubatch=1)
    assert p.offloads(speed.OP_OFFLOAD_MIN_BATCH) and not p.offloads(speed.OP_OFFLOAD_MIN_BATCH - 1)
    assert not replace(p, ubatch_copy_s=0.0).offloads(100)
    assert not replace(p, ubatch=0).offloads(100)


def test_copy_s_is_the_union_of_experts_per_micro_batch():
    """An MoE model's copy of a batch of 1100 tokens in micro-batches of 512: 2 full ones, each the experts 512
    tokens route to (step_weights_bytes(copy, 512, experts)), and one of 76 tokens; a batch under 32 tokens copies
    nothing (0, also in its prefill)."""
    c = 0.02
    p = speed.StepParts(0.01, 0.001, 0.002, 1e-4, 1e-4, experts=MOE, ram_weights_s=0.004, ubatch_copy_s=c,
                        ubatch=512)
    want = 2 * c * MOE.read_factor(512) + c * MOE.read_factor(76)
    assert p.copy_s(1100) == pytest.approx(want)
    assert MOE.read_factor(76) != MOE.read_factor(512)  # the last micro-batch is its own
    assert p.copy_s(16) == 0.0 and p.prefill_s(16) == pytest.approx(16 * 1e-4)
    assert p.prefill_s(1100) == pytest.approx(1100 * 1e-4 + want)


def test_memory_s_swaps_the_moe_ram_read_for_the_copy():
    """memory_s(tokens, decoding) with a copy: t0 + weights_s x read_factor(tokens) + copy_s(tokens) - the RAM
    layers' read x read_factor(tokens) + decoding x kv."""
    p = speed.StepParts(0.01, 0.001, 0.002, 1e-4, 1e-4, experts=MOE, ram_weights_s=0.004, ubatch_copy_s=0.02,
                        ubatch=512)
    want = 0.002 + 0.01 * MOE.read_factor(64) + p.copy_s(64) - 0.004 * MOE.read_factor(64) + 3 * 0.001
    assert p.memory_s(64, 3) == pytest.approx(want)


def test_a_tie_between_compute_and_memory_is_memory_bound():
    """compute-bound means the compute exceeds the memory time; at a tie the step is memory-bound. Additive: 2
    streams, memory t0 + w + 2 kv = 0.5 + 0.25 + 0.5 = 1.25 s, compute 1 x 1.25 s. Tiled (4): memory of a tile
    0.5 + 0.25 + 4 x 0.25 = 1.75 s, compute 4 x 0.4375 = 1.75 s (dyadic values: exact)."""
    p = speed.StepParts(0.25, 0.25, 0.5, 0.0, 1.25)
    assert p.step(2) == (2.5, False)
    tiled = speed.StepParts(0.25, 0.25, 0.5, 0.0, 0.4375, decode_tile=4)
    assert tiled.step(4) == (1.75, False)


# --- forecast: the offload branch and the split's error -------------------------------------------------------


def test_a_partial_offload_without_a_prefill_rate_has_no_ttft():
    """No peak FLOP/s (prefill unknown): the copies of a long prompt alone are no prefill rate, so TTFT (alone and
    all together) is infinite and the prefill rate 0."""
    fc = speed.forecast("cuda", **{**SP, "peak_flops": 0.0}, streams=2, prompt_tokens=1000, host_link_gbs=16.0,
                        ubatch=512)
    assert fc.ttft_s == fc.ttft_all_s == float("inf") and fc.prefill_tokens_per_s == 0.0


def test_a_long_partial_prompt_pays_its_copies_in_both_ttfts():
    """A 1000-token prompt (>= OP_OFFLOAD_MIN_BATCH) in micro-batches of 512: its prefill is 1000 x the compute
    per token + 2 copies (divmod(1000, 512) = (1, 488)); the rate r = 1000 / that; TTFT alone = 1000 / r + one
    stream's step, all 2 together = 2 x 1000 / r + the 2-stream step."""
    fc = speed.forecast("cuda", **SP, streams=2, prompt_tokens=1000, host_link_gbs=16.0, ubatch=512)
    p = speed.step_parts(CUDA, CPU, **SP, host_link_gbs=16.0, ubatch=512)
    rate = 1000 / (1000 * 2 * 8e9 / (CUDA.prefill_mfu * 100e12) + 2 * _copy(16.0))
    assert fc.prefill_tokens_per_s == pytest.approx(rate, rel=1e-5)
    assert fc.ttft_s == pytest.approx(1000 / rate + p.single_s(), abs=1e-3)
    assert fc.ttft_all_s == pytest.approx(2 * 1000 / rate + p.step_s(2), abs=1e-3)


def test_a_split_states_the_largest_of_its_parts_errors(monkeypatch):
    """Layers split between GPU and RAM: max(GPU backend's error, CPU backend's, PARTIAL_OFFLOAD_ERROR); with a
    CPU backend whose error (0.6) is the largest, that one. All layers on the GPU: the GPU backend's alone."""
    assert speed.forecast("cuda", **SP, streams=1, prompt_tokens=100).error == max(CUDA.error, CPU.error,
                                                                                   speed.PARTIAL_OFFLOAD_ERROR)
    assert speed.forecast("cuda", **{**SP, "gpu_fraction": 1.0}, streams=1, prompt_tokens=100).error == CUDA.error
    monkeypatch.setitem(speed.BACKENDS, "cpu", replace(CPU, error=0.6))
    assert speed.forecast("cuda", **SP, streams=1, prompt_tokens=100).error == 0.6


# --- Forecast.text: a fleet of 2 and the queueing rate's unit ----------------------------------------------------


def _fc(**kw):
    return replace(_fake_one(4), **kw)


def test_two_instances_are_a_fleet_in_the_sentence():
    text = _fc(instances=2, instances_busy=2).text()
    assert "per instance on each of 2 instances" in text
    assert "when all 4 of an instance arrive together" in text
    assert "2 x 8 slots" in text


@pytest.mark.parametrize("rate, shown", [(2.5, "2.5 requests/s"), (1.0, "1 requests/s"),
                                         (0.5, "30 requests/min"), (0.0123, "0.738 requests/min")])
def test_the_queueing_rate_is_per_second_from_one_else_per_minute(rate, shown):
    """requests/s at 1 and above, else x 60 per minute (3 significant figures)."""
    assert f"requests queue past {shown} (all 8 slots busy)" in _fc(queue_requests_per_s=rate).text()


# --- service_forecast: the queueing point and the calibration's batch -------------------------------------------

from stackgen.host.facts import HostFacts  # noqa: E402
from stackgen.plan import resolve  # noqa: E402
from stackgen.spec.profiles import load_profiles  # noqa: E402
from stackgen.spec.stack import load_stack  # noqa: E402

HW = load_profiles().hardware


def _plan(write_stack, hardware, engine, model="llama-3.1-8b-instruct", users=1):
    path = write_stack(f"version: 1\nhardware: {hardware}\n"
                       f"workload: {{concurrent_users: {users}, context_tokens: 4096, prompt_tokens: 1000, "
                       f"output_tokens: 200}}\nservices:\n  s: {{model: {model}, engine: {engine}}}\n")
    return resolve.resolve(load_stack(path), HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]


@pytest.fixture
def gpu4(write_stack):
    """llama.cpp on an RTX 4090 planned for 4 users (4 slots), and service_forecast of it at `users`."""
    sp = _plan(write_stack, "rtx-4090", "llama.cpp", users=4)
    assert sp.memory.parallel == 4

    def run(users, **kw):
        return speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["rtx-4090"], users=users,
                                      prompt_tokens=1000, avg_context=1100, threads=8, **kw)
    return run


def test_no_output_length_no_queueing_point(gpu4):
    """Without the workload's output length (the default, 0 or below) there is no queueing point (0, no slots) and no
    sustained-load rate (0: unknown)."""
    for fc in (gpu4(1), gpu4(1, output_tokens=0), gpu4(1, output_tokens=-5)):
        assert (fc.queue_requests_per_s, fc.slots, fc.sustained_per_user_tokens_per_s) == (0.0, 0, 0.0)


@pytest.mark.parametrize("out", [1, 300])
def test_the_queueing_point_is_the_prefill_plus_the_decode_at_all_slots(gpu4, out):
    """1 user of 4 slots: each request costs prompt / prefill rate + output / the aggregate at all 4 slots (not at
    the 1 stream decoding now); the queueing point is 1 / that, to 4 places. An output of 1 token has one too."""
    fc, full = gpu4(1, output_tokens=out), gpu4(4, output_tokens=out)
    assert full.streams == 4 and fc.streams == 1 and fc.aggregate_tokens_per_s != full.aggregate_tokens_per_s
    per_request = 1000 / fc.prefill_tokens_per_s + out / full.aggregate_tokens_per_s
    assert (fc.slots, fc.queue_requests_per_s) == (4, round(1 / per_request, 4))
    assert round(1 / per_request, 4) != round(1 / per_request, 5)


def test_a_full_engine_with_no_aggregate_has_no_queueing_point(gpu4, monkeypatch):
    """If the aggregate at all slots rounds to 0 tokens/s (a step of over 10 s a stream), no request finishes in a
    known time: the queueing point is 0 (unknown), not a division by zero nor 1 request/s."""
    real = speed.forecast
    monkeypatch.setattr(speed, "forecast", lambda *a, **kw: replace(real(*a, **kw), aggregate_tokens_per_s=0.0))
    fc = gpu4(4, output_tokens=200)
    assert fc.single_stream_tokens_per_s > 0 and fc.ttft_s < float("inf")
    assert (fc.slots, fc.queue_requests_per_s) == (4, 0.0)


def test_no_prefill_rate_no_queueing_point(gpu4, monkeypatch):
    """An unbounded TTFT (no prefill rate) gives no queueing point even with a decode speed: the forecast as is."""
    real = speed.forecast
    monkeypatch.setattr(speed, "forecast", lambda *a, **kw: replace(real(*a, **kw), ttft_s=float("inf"),
                                                                      prefill_tokens_per_s=0.0))
    fc = gpu4(1, output_tokens=200)
    assert fc.single_stream_tokens_per_s > 0
    assert (fc.slots, fc.queue_requests_per_s) == (0, 0.0)


def test_a_calibration_without_a_batch_point_uses_the_fits_batch_mfu(write_stack):
    """A calibration object with no batch_flops_per_thread (an older stackgen's, or one without a batch run)
    decodes its batches like one whose figure is 0: at the CPU fit's batch MFU of the nominal peak
    (CPU_FLOPS_PER_THREAD x threads), not at 1 FLOP/s per thread."""
    sp = _plan(write_stack, "cpu-server-64gb", "llama.cpp", model="llama-3.2-3b-instruct", users=4)
    cal = dict(engine="llama.cpp", efficiency=0.5, t0_ms=2.0, prefill_flops_per_thread=5e10)
    kw = dict(users=4, prompt_tokens=1000, avg_context=1100, threads=2, output_tokens=200)
    bare = speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["cpu-server-64gb"],
                                  calibration=SimpleNamespace(**cal), **kw)
    zero = speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["cpu-server-64gb"],
                                  calibration=SimpleNamespace(**cal, batch_flops_per_thread=0.0), **kw)
    assert bare == zero
    one = speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["cpu-server-64gb"],
                                 calibration=SimpleNamespace(**cal, batch_flops_per_thread=1.0), **kw)
    assert one.per_user_tokens_per_s < bare.per_user_tokens_per_s  # 1 FLOP/s per thread would be another plan


def test_a_model_of_unknown_parameter_count_reads_all_its_bytes(write_stack):
    """model.params 0 (unknown): the step reads the planned weights whole (no active / params share, no division
    by zero), as a dense model whose active parameters are all of them does."""
    sp = _plan(write_stack, "rtx-4090", "llama.cpp")
    kw = dict(users=1, prompt_tokens=1000, avg_context=1100, threads=8)
    dense = replace(sp.model, active_params=sp.model.params)
    unknown = replace(sp.model, params=0, active_params=0)
    a = speed.service_forecast("llama.cpp", dense, sp.memory, HW["rtx-4090"], **kw)
    b = speed.service_forecast("llama.cpp", unknown, sp.memory, HW["rtx-4090"], **kw)
    assert b.single_stream_tokens_per_s == a.single_stream_tokens_per_s > 0


def test_a_memory_plan_without_layers_counts_none_on_the_gpu(write_stack):
    """A llama.cpp memory plan on a GPU host with no layer count (total_layers 0): its GPU share is 0 (the CPU's
    figures), as a plan with every layer in RAM (gpu_layers 0 of L), not 1 nor a division by zero."""
    sp = _plan(write_stack, "rtx-4090", "llama.cpp")
    assert sp.memory.total_layers > 0
    kw = dict(users=1, prompt_tokens=1000, avg_context=1100, threads=8, output_tokens=200)
    none = speed.service_forecast("llama.cpp", sp.model, replace(sp.memory, total_layers=0, gpu_layers=0),
                                  HW["rtx-4090"], **kw)
    ram = speed.service_forecast("llama.cpp", sp.model, replace(sp.memory, gpu_layers=0), HW["rtx-4090"], **kw)
    full = speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["rtx-4090"], **kw)
    assert none == ram and none.single_stream_tokens_per_s < full.single_stream_tokens_per_s


def test_a_split_of_no_bytes_is_no_partial_read(monkeypatch):
    """partial_offload_read: a split that reads 0 bytes on both sides gives no partial read (None), not a GPU share
    of 0 / 0; a real split gives (gpu + ram bytes, gpu / (gpu + ram), DEFAULT_UBATCH)."""
    from stackgen.plan import memory
    monkeypatch.setattr(memory, "llamacpp_step_read", lambda model, mem: (0, 0))
    assert speed.partial_offload_read(None, None) is None
    monkeypatch.setattr(memory, "llamacpp_step_read", lambda model, mem: (3_000, 1_000))
    assert speed.partial_offload_read(None, None) == (4000.0, 0.75, memory.DEFAULT_UBATCH)


# --- StepParts.sustained_step_s and the forecast's sustained rate -----------------------------------------------

DENSE = speed.StepParts(0.01, 0.001, 0.002, 1e-4, 2e-3)


def test_sustained_step_mixes_the_steps_with_the_other_users_prompts():
    """k = (streams - 1) / output_tokens prompts in a step on average, j = floor(k): a share 1 - (k - j) of the
    steps is step(streams - j, j x prompt), the rest step(streams - j - 1, (j + 1) x prompt). 2 streams, 200 out:
    k = 1/200; 4 streams, 2 out: k = 1.5; 3 streams, 1 out: k = 2 (every other stream prefilling); 3 streams with
    1-token prompts: k = 1/100."""
    p = DENSE
    assert p.sustained_step_s(2, 1000, 200) == pytest.approx(
        (1 - 1 / 200) * p.step_s(2) + 1 / 200 * p.step_s(1, 1000), rel=1e-12)
    assert p.sustained_step_s(4, 1000, 2) == pytest.approx(0.5 * p.step_s(3, 1000) + 0.5 * p.step_s(2, 2000),
                                                           rel=1e-12)
    assert p.sustained_step_s(3, 1000, 1) == pytest.approx(p.step_s(1, 2000), rel=1e-12)
    assert p.sustained_step_s(3, 1, 200) == pytest.approx(
        (1 - 2 / 200) * p.step_s(3) + 2 / 200 * p.step_s(2, 1), rel=1e-12)
    assert p.sustained_step_s(3, 1, 200) != pytest.approx(p.step_s(3), rel=1e-12)
    assert p.sustained_step_s(1, 1000, 200) == p.step_s(1)  # one stream: its own prefill is its TTFT


def test_the_forecasts_sustained_rate_needs_an_output_length_and_a_prefill_rate():
    """forecast's sustained per-user rate: 1 / sustained_step_s(streams, prompt, output), to 0.1 token/s, for any
    output of 1 token or more; 0 (unknown) without a prefill rate (no peak FLOP/s: prompts of unknown cost)."""
    kw = dict(**{**SP, "gpu_fraction": 1.0}, streams=3, prompt_tokens=1000)
    p = speed.step_parts(CUDA, CPU, **{**SP, "gpu_fraction": 1.0})
    fc = speed.forecast("cuda", **kw, output_tokens=1)
    assert fc.sustained_per_user_tokens_per_s == round(1 / p.sustained_step_s(3, 1000, 1), 1) > 0
    assert speed.forecast("cuda", **{**kw, "peak_flops": 0.0}, output_tokens=200).sustained_per_user_tokens_per_s \
        == 0.0
