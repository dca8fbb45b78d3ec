"""speed.step_parts: the one step model the plan's forecast (speed.forecast) and the fleet simulator's per-instance
curve (capacity.service_curve on a GPU or Apple silicon) are both built from; its two forms (additive on GPUs, ggml's
4-column tiles on a CPU); and the queueing point charging each prompt at the forecast's own prefill rate."""

from __future__ import annotations

import pytest

from stackgen.plan import speed
from stackgen.plan.capacity import CPU_FLOPS_PER_THREAD, gpu_peak_flops, service_curve
from test_curve_forecast import STACK  # the same one-service stack (prompt 1000, output 300 tokens)
from tools.stacks import plan_for


def test_the_additive_step_adds_its_parts():
    p = speed.StepParts(weights_s=0.010, kv_s=0.001, t0_s=0.002, prompt_token_s=1e-4, batch_token_s=5e-4)
    assert p.single_s() == pytest.approx(0.013)
    # 4 decoding + 100 prompt tokens: t0 + weights + 4 KV + 100 prompt tokens + 3 extra decoding tokens
    assert p.step_s(4, 100) == pytest.approx(0.002 + 0.010 + 0.004 + 0.010 + 0.0015)
    assert p.step(4) == (pytest.approx(0.0175), False)
    # an extra token's compute past the memory time: compute-bound
    heavy = speed.StepParts(0.010, 0.0, 0.0, 1e-4, 0.02)
    assert heavy.step(2) == (pytest.approx(0.030), True)
    assert p.prefill_tokens_per_s == pytest.approx(10_000)
    assert speed.StepParts(0.01, 0.0, 0.0, 0.0, 0.0).prefill_tokens_per_s == 0.0


def test_an_moe_step_reads_the_union_of_its_tokens_experts():
    r = speed.ExpertRouting(128, 8, 0.9)
    p = speed.StepParts(0.010, 0.0, 0.0, 0.0, 0.0, experts=r)
    assert p.step_s(1) == pytest.approx(0.010)
    assert p.step_s(4, 60) == pytest.approx(0.010 * r.read_factor(64))
    assert p.step_s(4, 60) > 3 * p.step_s(1)


def test_the_tiled_cpu_step_is_whole_tiles_at_the_roofline_and_the_rest_alone():
    """ggml's repacked 4-column tiles (GGML_CPU_DECODE_TILE): 6 streams are one pass of 4 (max of its memory time and
    4 tokens' compute) and 2 passes of a stream alone; 3 streams, 3 passes alone, never compute-bound."""
    single = 0.002 + 0.010 + 0.001
    mem4 = 0.002 + 0.010 + 4 * 0.001
    memory_bound = speed.StepParts(0.010, 0.001, 0.002, 1e-3, 0.003, decode_tile=4)
    assert memory_bound.step(6) == (pytest.approx(mem4 + 2 * single), False)
    assert memory_bound.step(3) == (pytest.approx(3 * single), False)
    compute_bound = speed.StepParts(0.010, 0.001, 0.002, 1e-3, 0.005, decode_tile=4)
    assert compute_bound.step(8) == (pytest.approx(2 * 4 * 0.005), True)
    # prompt tokens add their compute
    assert memory_bound.step_s(3, 10) == pytest.approx(3 * single + 10e-3)


def test_step_parts_splits_reads_and_compute_between_gpu_and_ram():
    b, cpu = speed.BACKENDS["cuda"], speed.BACKENDS["cpu"]
    w, kv, f = 40e9, 1e8, 0.4
    p = speed.step_parts(b, cpu, weights_bytes=w, kv_bytes_per_stream=kv, gpu_fraction=f, gpu_bandwidth_gbs=1000,
                         host_bandwidth_gbs=80, active_params=70e9, peak_flops=165e12, host_flops=960e9)
    bw = b.read_gbs(1000) * 1e9  # 1000 GB/s as the line reads it
    assert p.weights_s == pytest.approx(f * w / (b.efficiency * bw) + (1 - f) * w / (cpu.efficiency * 80e9))
    assert p.kv_s == pytest.approx(f * kv / (b.efficiency * bw) + (1 - f) * kv / (cpu.efficiency * 80e9))
    assert p.t0_s == pytest.approx(b.t0_ms / 1000)
    # the whole prompt on the GPU (ggml offloads matrix multiplications of >= 32 tokens), the RAM layers' extra
    # decoding tokens on the CPU at its batch MFU
    assert p.prompt_token_s == pytest.approx(2 * 70e9 / (b.prefill_mfu * 165e12))
    assert p.batch_token_s == pytest.approx(f * 2 * 70e9 / (b.batch_mfu * 165e12)
                                            + (1 - f) * 2 * 70e9 / (cpu.batch_mfu * 960e9))
    # 16-bit weights: their own efficiency and batch MFU; a calibrated batch FLOP/s replaces the MFU x peak
    p16 = speed.step_parts(b, cpu, weights_bytes=w, kv_bytes_per_stream=kv, gpu_fraction=1.0, gpu_bandwidth_gbs=1000,
                           host_bandwidth_gbs=80, active_params=70e9, peak_flops=165e12, weights="16bit")
    assert p16.weights_s == pytest.approx(w / (b.efficiency_16bit * b.read_gbs(1000) * 1e9))
    assert p16.batch_token_s == pytest.approx(2 * 70e9 / (b.batch_mfu_16bit * 165e12))
    cal = speed.step_parts(cpu, cpu, weights_bytes=w, kv_bytes_per_stream=kv, gpu_fraction=0.0, gpu_bandwidth_gbs=0,
                           host_bandwidth_gbs=80, active_params=70e9, peak_flops=960e9, batch_flops=500e9)
    assert cal.batch_token_s == pytest.approx(2 * 70e9 / 500e9)
    assert cal.prompt_token_s == pytest.approx(2 * 70e9 / (cpu.prefill_mfu * 960e9))


def test_the_forecast_is_the_step_parts_step():
    """forecast's figures are StepParts' step rounded: per user, aggregate, single stream, TTFT, the prefill rate."""
    b, cpu = speed.BACKENDS["cuda"], speed.BACKENDS["cpu"]
    kw = dict(weights_bytes=4.6e9, kv_bytes_per_stream=64e6, gpu_fraction=1.0, gpu_bandwidth_gbs=1008,
              host_bandwidth_gbs=60, active_params=8e9, peak_flops=165e12)
    p = speed.step_parts(b, cpu, **kw)
    fc = speed.forecast("cuda", streams=6, prompt_tokens=1000, **kw)
    assert fc.aggregate_tokens_per_s == round(6 / p.step_s(6), 1)
    assert fc.single_stream_tokens_per_s == round(1 / p.single_s(), 1)
    assert fc.ttft_s == round(1000 * p.prompt_token_s + p.single_s(), 3)
    assert fc.prefill_tokens_per_s == pytest.approx(p.prefill_tokens_per_s, rel=1e-4)
    assert fc.to_json()["prefill_tokens_per_s"] == fc.prefill_tokens_per_s
    # the CPU's tiled form through the same parts
    kw = dict(kw, gpu_fraction=0.0, gpu_bandwidth_gbs=0, peak_flops=120e9)
    tiled = speed.step_parts(cpu, cpu, decode_tile=4, **kw)
    fc = speed.forecast("cpu", streams=6, prompt_tokens=1000, decode_tile=4, **kw)
    assert fc.aggregate_tokens_per_s == round(6 / tiled.step_s(6), 1)
    assert tiled.step_s(6) != pytest.approx(speed.step_parts(cpu, cpu, **kw).step_s(6), rel=0.01)


def test_a_partial_offload_curve_prefills_at_the_forecast_rate(tmp_path):
    """Llama 3.1 70B Q4_K_M on one RTX 4090 with layers in RAM: the simulator's curve charges a prompt token what
    the forecast's TTFT does (the whole prompt at the CUDA prefill MFU: ggml-cuda runs a RAM-resident weight's matrix
    multiplication on the GPU for batches >= 32 tokens, plus the copies of those weights per micro-batch), not the
    RAM layers' share at the CPU threads' FLOP/s (the curve's old figure, ~76x slower here)."""
    plan = plan_for(tmp_path, STACK.format(hw="rtx-4090", users=3,
                                           service="model: llama-3.1-70b-instruct, engine: llama.cpp, quant: Q4_K_M"))
    sp, hw = plan.services[0], plan.hardware
    assert 0 < sp.memory.gpu_layers < sp.memory.total_layers
    c = service_curve(sp, hw)
    b = speed.backend_params(c.backend)
    assert c.flop_s_per_token == pytest.approx(2 * sp.model.active_params / (b.prefill_mfu * gpu_peak_flops(
        "RTX 4090", 1008)))
    # the forecast's prefill rate is the curve's compute plus its copies of the RAM layers per micro-batch
    # (StepParts.copy_s: ggml copies host weights to the GPU for each ubatch it runs there)
    prompt = sp.workload.prompt_tokens
    assert c.step.copy_s(prompt) > 0
    assert prompt / (prompt * c.flop_s_per_token + c.step.copy_s(prompt)) == pytest.approx(
        sp.speed.prefill_tokens_per_s, rel=1e-3)
    frac = sp.memory.gpu_layers / sp.memory.total_layers
    cpu_share = (1 - frac) * 2 * sp.model.active_params / (sp.threads * CPU_FLOPS_PER_THREAD)
    assert c.flop_s_per_token < cpu_share / 10
    # the curve's parts are the StepParts its fields describe, and its step theirs
    assert c.step.step_s(3, 0) == c.step_s(3, 0)


def test_the_queueing_point_charges_the_prompt_at_the_forecast_prefill_rate(tmp_path):
    """1 / queue_requests_per_s = prompt_tokens / the prefill rate + output_tokens / the aggregate at all slots, the
    prefill rate re-derived here from the backend's prefill MFU of the GPU's peak. The old derivation backed the
    prompt's time out of ttft_s (rounded to 1 ms) - 1 / single_stream_tokens_per_s (rounded to 0.1 tokens/s): on an
    H100 running vLLM's 8B at 1000-token prompts the prompt takes ~13 ms, and those roundings moved the rate by
    0.15%, past this check's 0.02%."""
    plan = plan_for(tmp_path, STACK.format(hw="h100-80gb", users=16,
                                           service="model: llama-3.1-8b-instruct, engine: vllm"))
    sp, hw = plan.services[0], plan.hardware
    fc = sp.speed
    assert fc.backend == "vllm" and fc.slots >= 16
    b = speed.backend_params("vllm")
    tp = max(1, sp.memory.tensor_parallel)
    prefill = b.prefill_mfu * gpu_peak_flops(hw.gpus[0].name, hw.gpus[0].bandwidth_gbs) * tp / (
        2 * sp.model.active_params)
    assert fc.prefill_tokens_per_s == pytest.approx(prefill, rel=1e-4)
    full = speed.forecast_at(sp, hw, fc.slots)
    assert 1 / fc.queue_requests_per_s == pytest.approx(1000 / prefill + 300 / full.aggregate_tokens_per_s, rel=2e-4)
