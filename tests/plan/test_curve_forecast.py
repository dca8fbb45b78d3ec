"""One decode model for the plan's forecast and the fleet simulator (issues 13 and 20): on a GPU, one instance's
service curve (capacity.service_curve, what replica sizing and `stackgen simulate` step with) takes speed.py's step
for the backend the engine runs as, so at the same stream count and no prompt tokens in the step it gives the
aggregate `plan` forecasts (speed.service_forecast)."""

from __future__ import annotations

import pytest

from stackgen.plan import speed
from stackgen.plan.capacity import gpu_peak_flops, service_curve
from tools.stacks import plan_for

STACK = """
version: 1
hardware: {hw}
workload: {{concurrent_users: {users}, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}}
serve: {{api_key_env: STACK_KEY}}
services:
  chat: {{{service}}}
"""

PLANS = {
    # dense, block-quantized weights on llama.cpp CUDA (consumer line: MMVQ's efficiency, batch MFU 0.212)
    "llama.cpp-cuda-q4km": ("rtx-4090", 8, "model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M",
                            "cuda", "quantized"),
    # dense, 16-bit weights on llama.cpp CUDA: efficiency_16bit and batch_mfu_16bit
    "llama.cpp-cuda-f16": ("rtx-4090", 4, "model: llama-3.2-3b-instruct, engine: llama.cpp, quant: F16", "cuda",
                           "16bit"),
    # vLLM's own kernels on a datacenter GPU
    "vllm-h100": ("h100-80gb", 16, "model: llama-3.1-8b-instruct, engine: vllm", "vllm", "16bit"),
    # an AWQ checkpoint on SGLang: its own AWQ slope (efficiency_int4_awq, awq_marlin on the H20 fit)
    "sglang-awq": ("h100-80gb", 8, "model: qwen2.5-7b-instruct, engine: sglang, quant: awq", "sglang", "int4-awq"),
    # MoE: a step of b tokens reads the union of the experts they route to
    "moe-llama.cpp-cuda": ("rtx-4090", 8, "model: qwen3-30b-a3b, engine: llama.cpp, quant: Q4_K_M", "cuda",
                           "quantized"),
}


@pytest.fixture(scope="module", params=sorted(PLANS))
def planned(request, tmp_path_factory):
    hw, users, service, backend, kind = PLANS[request.param]
    plan = plan_for(tmp_path_factory.mktemp(request.param), STACK.format(hw=hw, users=users, service=service))
    sp = plan.services[0]
    assert sp.memory.gpu_layers == sp.memory.total_layers  # every layer on the GPU: one backend's step
    assert sp.speed.backend == backend
    assert speed.weight_kind(sp.memory.weights_format or sp.model.quant) == kind
    return request.param, sp, plan.hardware


def test_one_instance_curve_gives_the_forecast_aggregate(planned):
    from stackgen.plan.speed import forecast_at

    name, sp, hw = planned
    curve = service_curve(sp, hw)
    assert curve.backend == sp.speed.backend
    for users in sorted({1, 2, sp.speed.streams}):
        fc = forecast_at(sp, hw, users)
        n = fc.streams
        assert n / curve.step_s(n, 0) == pytest.approx(fc.aggregate_tokens_per_s, rel=0.01), (name, n)
        assert 1 / curve.step_s(1, 0) == pytest.approx(fc.single_stream_tokens_per_s, rel=0.01), name


def test_the_curve_is_speed_py_step_by_hand(planned):
    """The curve's parts, re-derived from the backend's fitted parameters (not the old 0.7 / 0.5 constants)."""
    name, sp, hw = planned
    c = service_curve(sp, hw)
    b = speed.backend_params(c.backend)
    kind = speed.weight_kind(sp.memory.weights_format or sp.model.quant)
    g = hw.gpus[0]
    tp = max(1, sp.memory.tensor_parallel)
    bw, peak = b.read_gbs(g.bandwidth_gbs) * 1e9 * tp, gpu_peak_flops(g.name, g.bandwidth_gbs) * tp
    m = sp.model
    active = sp.memory.weights_bytes * m.active_params / m.params
    two_p = 2 * m.active_params
    assert c.weights_read_s == pytest.approx(active / (b.efficiency_for(kind) * bw))
    assert c.t0_s == pytest.approx(b.t0_ms / 1000)
    assert c.flop_s_per_token == pytest.approx(two_p / (b.prefill_mfu * peak))
    assert c.batch_token_s == pytest.approx(two_p / (b.batch_mfu_for(kind) * peak))
    assert (c.experts is not None) == bool(m.experts_total)
    # additive: a step of 4 decoding and 100 prompt tokens
    read = speed.step_weights_bytes(c.weights_read_s, 104, c.experts)
    assert c.step_s(4, 100) == pytest.approx(c.t0_s + read + 4 * c.kv_read_s_per_seq + 100 * c.flop_s_per_token
                                             + 3 * c.batch_token_s)


def test_an_moe_step_reads_more_experts_as_tokens_join(tmp_path):
    hw, users, service, *_ = PLANS["moe-llama.cpp-cuda"]
    plan = plan_for(tmp_path, STACK.format(hw=hw, users=users, service=service))
    c = service_curve(plan.services[0], plan.hardware)
    # one token reads its active experts; a 512-token prompt step nearly all of them (128 experts, 8 per token)
    assert c.step_s(0, 1) == pytest.approx(c.t0_s + c.weights_read_s + c.flop_s_per_token)
    full = c.weights_read_s * c.experts.read_factor(10**6)
    assert c.step_s(0, 512) - 512 * c.flop_s_per_token - c.t0_s == pytest.approx(full, rel=0.01)
    assert full > 5 * c.weights_read_s


def test_one_user_in_the_simulator_sees_the_forecast(planned):
    """One user alone on one instance: the simulator's decode rate is the forecast's single stream, and its TTFT
    (the prompt's step, plus half the request overhead on the way in) the forecast's prompt at the prefill rate plus
    one step; except that an MoE's prompt step reads the union of its tokens' experts where the forecast's TTFT
    charges one token's."""
    from stackgen.plan.simulate import simulate
    from stackgen.plan.speed import forecast_at

    name, sp, hw = planned
    c = service_curve(sp, hw)
    fc = forecast_at(sp, hw, 1)
    r = simulate([c], users=1, prompt_tokens=1000, output_tokens=300)
    assert r.tokens_per_s_per_user == pytest.approx(fc.per_user_tokens_per_s, rel=0.01)
    ttft = r.ttft_p50_s - c.overhead_s / 2
    if c.experts is None:
        assert ttft == pytest.approx(fc.ttft_s, rel=0.02)
    else:
        union = speed.step_weights_bytes(c.weights_read_s, 1000, c.experts) - c.weights_read_s
        assert ttft == pytest.approx(fc.ttft_s + union, rel=0.02)


def test_partial_offload_curve_gives_the_forecast_aggregate(tmp_path):
    """The seed article's case (Llama 3.1 70B Q4_K_M on one RTX 4090, layers left in RAM): the curve and the forecast
    read the RAM layers at the CPU backend's efficiency of the RAM bandwidth and compute their extra decoding tokens
    at its batch MFU of the threads' FLOP/s, the GPU layers at the CUDA line; so they agree at 1 and 3 streams."""
    from stackgen.plan.speed import forecast_at

    plan = plan_for(tmp_path, STACK.format(hw="rtx-4090", users=3,
                                           service="model: llama-3.1-70b-instruct, engine: llama.cpp, quant: Q4_K_M"))
    sp, hw = plan.services[0], plan.hardware
    assert 0 < sp.memory.gpu_layers < sp.memory.total_layers
    curve = service_curve(sp, hw)
    for users in (1, 2, 3):
        fc = forecast_at(sp, hw, users)
        assert fc.streams == users
        # the forecast rounds to 0.1 tokens/s: at ~2.5 tokens/s that is up to 2%
        assert users / curve.step_s(users, 0) == pytest.approx(fc.aggregate_tokens_per_s, rel=0.01, abs=0.05), users
    # the RAM layers' extra tokens cost CPU compute: a second stream adds more than the GPU's share alone would
    one, two = forecast_at(sp, hw, 1), forecast_at(sp, hw, 2)
    frac = sp.memory.gpu_layers / sp.memory.total_layers
    gpu_only = frac * 2 * sp.model.active_params / (speed.BACKENDS["cuda"].batch_mfu * gpu_peak_flops("RTX 4090", 1008))
    assert 2 / two.aggregate_tokens_per_s - 1 / one.aggregate_tokens_per_s > gpu_only


# Mixed GPUs (inline profiles: figures as profiles/hardware.yaml's rtx-4090 and rtx-3090, an A100 80GB's datasheet
# 2039 GB/s): speed.step_inputs takes the slowest GPU's vendor and tier (the line) and peak for the whole step, and
# its bandwidth, except llama.cpp's layer split, which reads each GPU's layers (by its memory) at its own bandwidth.
# Before, the forecast took the first GPU's tier and peak with the slowest one's bandwidth and the curve the slowest
# GPU for all: A100 + RTX 4090 forecast 15.2 tokens/s single stream (the datacenter line's t0) where the simulator's
# one user saw 17.2 (+13%), and RTX 4090 + RTX 3090 a TTFT of 0.113 s (the 4090's peak) against the simulator's
# 0.252 s (the 3090's).
RTX4090 = ("{vendor: nvidia, name: GeForce RTX 4090, memory_gib: 24, bandwidth_gbs: 1008, tier: consumer, "
           "interconnect_gbs: 32}")
RTX3090 = ("{vendor: nvidia, name: GeForce RTX 3090, memory_gib: 24, bandwidth_gbs: 936, tier: consumer, "
           "interconnect_gbs: 32}")
A100 = ("{vendor: nvidia, name: A100 80GB, memory_gib: 80, bandwidth_gbs: 2039, tier: datacenter, "
        "interconnect_gbs: 32}")
MIXED = {
    "4090+3090": ((RTX4090, RTX3090), "model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M", 4),
    "3090+4090": ((RTX3090, RTX4090), "model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M", 4),
    "a100+4090": ((A100, RTX4090), "model: llama-3.1-70b-instruct, engine: llama.cpp, quant: Q4_K_M", 1),
    "4090+3090-vllm": ((RTX4090, RTX3090), "model: llama-3.1-8b-instruct, engine: vllm", 4),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_gpus_the_forecast_and_the_simulator_agree(name, tmp_path):
    from stackgen.plan.simulate import simulate
    from stackgen.plan.speed import forecast_at

    gpus, service, users = MIXED[name]
    hw_text = ("{gpus: [" + ", ".join(gpus) + "], memory_gib: 128, memory_bandwidth_gbs: 51.2, "
               "cpu: {cores: 16, threads: 32, arch: x86_64}}")
    plan = plan_for(tmp_path, STACK.format(hw=hw_text, users=users, service=service))
    sp, hw = plan.services[0], plan.hardware
    assert len({g.name for g in hw.gpus}) == 2 and sp.memory.gpu_layers == sp.memory.total_layers
    slow = min(hw.gpus, key=lambda g: g.bandwidth_gbs)
    curve = service_curve(sp, hw)
    # the rule: the slowest GPU's backend line and peak (x tensor parallel) for the whole step, its bandwidth but for
    # llama.cpp's layer split, whose GPUs read their layers (split by memory) one after another
    b = speed.backend_params(speed.backend_for(None if sp.engine == "llama.cpp" else "vllm", slow.vendor, slow.tier))
    read = b.read_gbs(slow.bandwidth_gbs)
    if sp.engine == "llama.cpp":
        total = sum(g.memory_gib for g in hw.gpus)
        read = 1 / sum(g.memory_gib / total / b.read_gbs(g.bandwidth_gbs) for g in hw.gpus)
        assert read > slow.bandwidth_gbs
    assert sp.speed.backend == curve.backend == ("cuda" if sp.engine == "llama.cpp" else "vllm")
    tp = max(1, sp.memory.tensor_parallel)
    m = sp.model
    assert curve.t0_s == pytest.approx(b.t0_ms / 1000)
    assert curve.flop_s_per_token == pytest.approx(
        2 * m.active_params / (b.prefill_mfu * gpu_peak_flops(slow.name, slow.bandwidth_gbs) * tp))
    kind = speed.weight_kind(sp.memory.weights_format or m.quant)
    assert curve.weights_read_s == pytest.approx(
        sp.memory.weights_bytes * m.active_params / m.params / (b.efficiency_for(kind) * read * 1e9 * tp))
    # the forecast's single stream and TTFT are the simulator's one user's, its aggregate the curve's
    fc = forecast_at(sp, hw, 1)
    r = simulate([curve], users=1, prompt_tokens=1000, output_tokens=300)
    assert r.tokens_per_s_per_user == pytest.approx(fc.single_stream_tokens_per_s, rel=0.02), name
    assert r.ttft_p50_s - curve.overhead_s / 2 == pytest.approx(fc.ttft_s, rel=0.02), name
    n = sp.speed.streams
    assert n / curve.step_s(n, 0) == pytest.approx(forecast_at(sp, hw, n).aggregate_tokens_per_s, rel=0.01), name


RTX3060 = ("{vendor: nvidia, name: GeForce RTX 3060, memory_gib: 12, bandwidth_gbs: 360, tier: consumer, "
           "interconnect_gbs: 32}")


@pytest.mark.parametrize("engine", ["llama.cpp", "ollama"])
def test_a_layer_split_reads_each_gpus_layers_at_its_own_bandwidth(engine, tmp_path):
    """llama.cpp splits its layers by GPU memory (-ts 24,12) and runs them one GPU after another: a step reads 2/3 of
    the bytes at the RTX 4090's 1008 GB/s and 1/3 at the RTX 3060's 360, 630 GB/s in all (the slowest GPU for all
    said 360, 1.75x slow: 13 tokens/s for a Qwen2.5 32B Q4_K_M where this says 22.6). Ollama places layers itself
    (not modelled per GPU): it keeps the slowest GPU's bandwidth. The forecast and the plan's roofline read the same."""
    from stackgen.plan.memory import predict_decode_tokens_per_s
    from stackgen.plan.speed import decode_gpu, forecast_at, mean_context

    hw_text = ("{gpus: [" + RTX4090 + ", " + RTX3060 + "], memory_gib: 128, memory_bandwidth_gbs: 51.2, "
               "cpu: {cores: 16, threads: 32, arch: x86_64}}")
    plan = plan_for(tmp_path, STACK.format(hw=hw_text, users=1,
                                           service=f"model: qwen2.5-32b-instruct, engine: {engine}, quant: Q4_K_M"))
    sp, hw = plan.services[0], plan.hardware
    assert sp.memory.gpu_layers == sp.memory.total_layers
    d = decode_gpu(sp.engine, hw)
    assert d.gpu.name == "GeForce RTX 3060" and d.backend == "cuda"
    if engine == "llama.cpp":
        assert "-ts 24,12" in " ".join(sp.command)
        assert d.read_gbs == pytest.approx(1 / (2 / 3 / 1008 + 1 / 3 / 360))  # 630
    else:
        assert d.read_gbs == pytest.approx(360)
    slow = hw.model_copy(update={"gpus": tuple(g.model_copy(update={"count": 2}) for g in hw.gpus
                                               if g.bandwidth_gbs == 360)})
    # the same plan on two RTX 3060s reads at 360: llama.cpp's step reads 630/360 faster, Ollama's the same
    si, si_slow = (speed.step_inputs(sp.engine, sp.model, sp.memory, h, avg_context=1000, threads=16)
                   for h in (hw, slow))
    ratio = si.gpu_bandwidth_gbs / si_slow.gpu_bandwidth_gbs
    assert ratio == pytest.approx(1.75 if engine == "llama.cpp" else 1.0)
    assert forecast_at(sp, hw, 1).single_stream_tokens_per_s == sp.speed.single_stream_tokens_per_s
    roof, _ = predict_decode_tokens_per_s(sp.model, sp.memory, hw, mean_context(sp.memory, sp.workload),
                                          gpu_read_gbs=d.read_gbs)
    assert sp.predicted_decode_tokens_per_s == roof


def test_the_curve_steps_the_forecasts_inputs(planned):
    """service_curve's GPU step is speed.step_inputs' StepParts for the instance the forecast takes (one function
    decides every input for both)."""
    from stackgen.plan.capacity import instance_of

    name, sp, hw = planned
    inst = instance_of(sp, hw)
    wl = sp.workload
    si = speed.step_inputs(sp.engine, sp.model, inst.memory, inst.hardware, threads=inst.threads,
                           avg_context=min(inst.memory.context_per_request, wl.prompt_tokens + wl.output_tokens // 2),
                           build=sp.engine_build)
    c = service_curve(sp, hw)
    assert (si.backend, si.gpu_fraction) == (c.backend, 1.0)
    p = si.parts()
    assert (c.weights_read_s, c.kv_read_s_per_seq, c.t0_s, c.flop_s_per_token, c.batch_token_s) == \
        (p.weights_s, p.kv_s, p.t0_s, p.prompt_token_s, p.batch_token_s), name
    fc = speed.forecast(si.backend, streams=1, prompt_tokens=wl.prompt_tokens, **si.forecast_kwargs())
    assert fc.single_stream_tokens_per_s == round(1 / p.single_s(), 1) == \
        speed.forecast_at(sp, hw, 1).single_stream_tokens_per_s, name
