"""Partial offload (llama.cpp -ngl N < layers): what a decode step reads and what a prompt costs.

Each expected figure is computed here from the formulas and the public constants (speed.BACKENDS, memory.LayerSplit,
the host link), not from the code under test's own output: the step reads memory.py's GPU bytes at the GPU backend's
efficiency and memory.py's RAM bytes less the token embedding (a step gathers one row of it) at the CPU backend's;
a prompt of >= 32 tokens also copies the RAM layers to the GPU once per micro-batch over the host link."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from stackgen.plan import speed
from stackgen.plan.memory import DEFAULT_UBATCH, llamacpp_layer_split

SEED_70B = """
version: 1
hardware: rtx-4090
workload: {concurrent_users: 1, context_tokens: 8192, prompt_tokens: 1500, output_tokens: 400}
services:
  chat: {model: llama-3.1-70b-instruct, engine: llama.cpp, quant: Q4_K_M}
"""


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    from tools.stacks import plan_for
    plan = plan_for(tmp_path_factory.mktemp("seed"), SEED_70B)
    sp = plan.services[0]
    assert 0 < sp.memory.gpu_layers < sp.memory.total_layers  # the seed's 70B spills to RAM on one RTX 4090
    return sp, plan.hardware


def _again(sp, hw, users=1, prompt_tokens=None):
    wl = sp.workload
    return speed.service_forecast(sp.engine, sp.model, sp.memory, hw, users=users,
                                  prompt_tokens=wl.prompt_tokens if prompt_tokens is None else prompt_tokens,
                                  threads=sp.threads, output_tokens=wl.output_tokens,
                                  avg_context=min(sp.memory.context_per_request,
                                                  wl.prompt_tokens + wl.output_tokens // 2))


def _split(sp):
    m = sp.memory
    s = llamacpp_layer_split(sp.model, m.weights_bytes, m.weights_format)
    gpu = s.gpu_weights(m.gpu_layers, m.total_layers)
    ram = s.host_weights(m.gpu_layers, m.total_layers, m.weights_bytes) - s.input
    return s, gpu, ram


def test_a_partial_step_reads_memorys_bytes_without_the_embedding(seed, monkeypatch):
    """One stream's step: t0 + GPU bytes / (e_cuda x GPU GB/s) + RAM bytes less the embedding / (e_cpu x RAM GB/s)
    + the KV cache (split by the same share). The old forecast charged the whole file split by gpu_layers / layers."""
    from stackgen.plan.memory import _kv_bytes_read
    sp, hw = seed
    seen = []
    real = speed.step_parts
    monkeypatch.setattr(speed, "step_parts", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    _again(sp, hw)
    monkeypatch.undo()
    s, gpu, ram = _split(sp)
    assert seen[0]["weights_bytes"] == pytest.approx(gpu + ram)  # a dense model: active = all
    assert seen[0]["gpu_fraction"] == pytest.approx(gpu / (gpu + ram))
    s, gpu, ram = _split(sp)
    assert s.input > 0 and ram > 0
    cuda, cpu = speed.BACKENDS["cuda"], speed.BACKENDS["cpu"]
    share = gpu / (gpu + ram)
    wl = sp.workload
    kv = _kv_bytes_read(sp.model, sp.memory, min(sp.memory.context_per_request,
                                                  wl.prompt_tokens + wl.output_tokens // 2))
    g, h = hw.gpus[0].bandwidth_gbs * 1e9, hw.memory_bandwidth_gbs * 1e9
    step = (cuda.t0_ms / 1000 + gpu / (cuda.efficiency * g) + ram / (cpu.efficiency * h)
            + share * kv / (cuda.efficiency * g) + (1 - share) * kv / (cpu.efficiency * h))
    fc = _again(sp, hw)
    assert fc == sp.speed
    assert fc.single_stream_tokens_per_s == round(1 / step, 1)
    # the share is memory.py's byte split, not the layer count
    read = speed.partial_offload_read(sp.model, sp.memory)
    assert read[:2] == (pytest.approx(gpu + ram), pytest.approx(share))
    assert abs(read[1] - sp.memory.gpu_layers / sp.memory.total_layers) > 0.005


def test_full_and_cpu_only_plans_keep_reading_the_whole_file(seed):
    """The public decode fits were made with bytes = file size: only a partial offload leaves the embedding out."""
    sp, _ = seed
    m = sp.memory
    assert speed.partial_offload_read(sp.model, replace(m, gpu_layers=m.total_layers)) is None
    assert speed.partial_offload_read(sp.model, replace(m, gpu_layers=0)) is None


def test_a_partial_prompt_copies_the_ram_layers_once_per_micro_batch(seed):
    """TTFT alone = prompt x 2 x active params / (prefill_mfu x peak) + ceil(prompt / ubatch) x RAM bytes /
    (0.8 x the host link) + one decode step. The RTX 4090 profile's link: PCIe 4.0 x16, 32 GB/s."""
    from stackgen.plan.capacity import gpu_peak_flops
    sp, hw = seed
    _, gpu, ram = _split(sp)
    g = hw.gpus[0]
    assert g.interconnect_gbs == 32
    prompt = sp.workload.prompt_tokens
    compute = prompt * 2 * sp.model.active_params / (speed.BACKENDS["cuda"].prefill_mfu
                                                    * gpu_peak_flops(g.name, g.bandwidth_gbs))
    copies = math.ceil(prompt / DEFAULT_UBATCH) * ram / (0.8 * 32e9)
    fc = _again(sp, hw)
    assert fc.prefill_tokens_per_s == pytest.approx(prompt / (compute + copies), rel=1e-5)
    assert fc.ttft_s == pytest.approx(compute + copies + 1 / fc.single_stream_tokens_per_s, abs=0.06)
    # the copies are most of it: ~400 prompt tokens/s where the GPU's compute alone allows ~1000+
    assert copies > compute and fc.prefill_tokens_per_s < 0.5 * prompt / compute


def test_a_prompt_under_32_tokens_is_not_copied(seed):
    """ggml offloads an op on host weights to the GPU only from 32 tokens (ggml_backend_cuda_device_offload_op)."""
    sp, hw = seed
    short, offloaded = _again(sp, hw, prompt_tokens=31), _again(sp, hw, prompt_tokens=32)
    _, _, ram = _split(sp)
    copy = ram / (0.8 * 32e9)
    assert offloaded.ttft_s - short.ttft_s == pytest.approx(copy, abs=0.01)


def test_the_host_link_comes_from_the_profile_else_pcie4_x16():
    from stackgen.spec.profiles import load_profiles
    hws = load_profiles().hardware
    assert speed.host_link_gbs(hws["rtx-3090"]) == hws["rtx-3090"].gpus[0].interconnect_gbs
    hw = hws["rtx-3090"]
    no_link = hw.model_copy(update={"gpus": (hw.gpus[0].model_copy(update={"interconnect_gbs": None}),)})
    assert speed.host_link_gbs(no_link) == speed.DEFAULT_HOST_LINK_GBS == 32.0
    nvlink = hw.model_copy(update={"gpus": (hw.gpus[0].model_copy(update={"interconnect_gbs": 450}),)})
    assert speed.host_link_gbs(nvlink) == 32.0  # NVLink's figure is not the host link


def test_simulator_steps_the_same_copies_as_the_plan(seed):
    """capacity.service_curve (the fleet simulator's step) takes the same bytes, share and copies: one stream's step
    matches the forecast, and a step with a 1500-token prompt chunk costs its compute plus ceil(1500 / 512) copies
    of the RAM layers in place of their CPU read."""
    from stackgen.plan.capacity import service_curve
    sp, hw = seed
    c = service_curve(sp, hw)
    assert round(1 / c.step_s(1, 0), 1) == sp.speed.single_stream_tokens_per_s
    _, _, ram = _split(sp)
    active = sp.model.active_params / sp.model.params
    copy = ram * active / (0.8 * 32e9)
    p = c.step
    no_prompt = p.memory_s(1, 1)
    with_prompt = c.step_s(1, 1500)
    expected = (no_prompt - p.ram_weights_s + math.ceil(1501 / DEFAULT_UBATCH) * copy + 1500 * c.flop_s_per_token)
    assert with_prompt == pytest.approx(expected, rel=1e-9)
    assert with_prompt > no_prompt + 1500 * c.flop_s_per_token  # the old step: compute only
