"""Tensor parallel's per-step communication (stackgen/plan/speed.py: tp_comm_seconds, allreduce_seconds, gpu_link, and
StepParts.comm_s through step_parts, forecast, service_forecast and capacity.service_curve). Each expected figure is
derived from the model's formula and the cited latencies in speed.ALLREDUCE_US / NCCL_RING_LATENCY_US (docstrings),
not pasted from an output."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stackgen.host.facts import HostFacts
from stackgen.plan import capacity, resolve, speed
from stackgen.spec.stack import load_stack

US = 1e-6


# --- allreduce_seconds and the ring scaling ------------------------------------------------------------------------


def test_two_all_reduces_per_layer():
    """Megatron-style TP: one all-reduce after the attention's output projection, one after the MLP."""
    assert speed.TP_ALLREDUCES_PER_LAYER == 2


@pytest.mark.parametrize("gpus, us", [(2, 8.7), (4, 9.2), (8, 11.8)])
def test_nvlink_is_vllms_custom_all_reduce_as_measured(gpus, us):
    """NVLink at 2/4/8 GPUs: the H100 figures of vLLM's custom all-reduce (SGLang PR 2904's table), as they are."""
    assert speed.allreduce_seconds("nvlink", gpus) == pytest.approx(us * US, rel=1e-12)


@pytest.mark.parametrize("gpus, listed", [(3, 4), (5, 8), (6, 8), (7, 8)])
def test_nvlink_between_measured_counts_takes_the_next_larger(gpus, listed):
    """A GPU count between the measured ones takes the next larger one's figure (one-shot kernel: hardly grows)."""
    want = speed.ALLREDUCE_US["nvlink"][listed] * US
    assert speed.allreduce_seconds("nvlink", gpus) == pytest.approx(want, rel=1e-12)


def test_nvlink_past_eight_scales_as_the_ring():
    """Past 8 GPUs: the 8-GPU figure x ring(16) / ring(8), ring extended by its last step (33.7 - 29.5 = 4.2 us per
    GPU): ring(16) = 33.7 + 8 x 4.2 = 67.3 us."""
    assert speed.ring_latency_us(16) == pytest.approx(33.7 + 8 * 4.2)
    assert speed.ring_latency_us(9) == pytest.approx(37.9)
    assert speed.allreduce_seconds("nvlink", 16) == pytest.approx(11.8 * 67.3 / 33.7 * US, rel=1e-9)


@pytest.mark.parametrize("gpus", [2, 3, 4, 5, 6, 7, 8])
def test_ring_latency_is_the_measured_table(gpus):
    assert speed.ring_latency_us(gpus) == speed.NCCL_RING_LATENCY_US[gpus]


@pytest.mark.parametrize("gpus", [2, 3, 4, 8, 12])
def test_pcie_without_p2p_scales_its_two_gpu_figure_by_the_ring(gpus):
    """PCIe without P2P: the 2-GPU figure (2 x RTX 2080 Ti, 16 KB, 17.11 us) x ring(gpus) / ring(2)."""
    want = 17.11 * speed.ring_latency_us(gpus) / 10.0 * US
    assert speed.allreduce_seconds("pcie", gpus) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("gpus", [2, 3, 4, 8])
def test_pcie_with_p2p_scales_its_four_gpu_figure_by_the_ring(gpus):
    """PCIe with P2P: the 4-GPU figure (4 x V100 PCIe, 16 KB, 19.15 us) x ring(gpus) / ring(4)."""
    want = 19.15 * speed.ring_latency_us(gpus) / 16.88 * US
    assert speed.allreduce_seconds("pcie-p2p", gpus) == pytest.approx(want, rel=1e-12)


def test_an_unknown_link_is_plain_pcie():
    for link in ("", "infiniband", "PCIe"):
        assert speed.allreduce_seconds(link, 4) == speed.allreduce_seconds("pcie", 4)


def test_the_links_order_nvlink_fastest_then_p2p_then_host_memory():
    for gpus in (2, 4, 8):
        nv, p2p, host = (speed.allreduce_seconds(k, gpus) for k in ("nvlink", "pcie-p2p", "pcie"))
        assert nv < p2p < host


# --- tp_comm_seconds -----------------------------------------------------------------------------------------------


def test_comm_is_two_all_reduces_per_layer_at_the_links_latency():
    """The 4 x RTX 3090 point's term: 2 x 64 layers x 17.11 x 16.88 / 10 us = 3.697 ms."""
    assert speed.tp_comm_seconds(64, 4, "pcie") == pytest.approx(2 * 64 * 17.11 * 1.688 * US, rel=1e-12)
    assert speed.tp_comm_seconds(80, 2, "nvlink") == pytest.approx(2 * 80 * 8.7 * US, rel=1e-12)
    assert speed.tp_comm_seconds(1, 2, "nvlink") == pytest.approx(2 * 8.7 * US, rel=1e-12)


@pytest.mark.parametrize("layers, tp", [(64, 1), (64, 0), (64, -2), (0, 4), (-1, 4)])
def test_no_comm_without_tensor_parallel_or_layers(layers, tp):
    assert speed.tp_comm_seconds(layers, tp, "pcie") == 0.0


# --- gpu_link ------------------------------------------------------------------------------------------------------


def _g(tier="consumer", link=None, unified=False):
    return SimpleNamespace(tier=tier, interconnect_gbs=link, unified=unified)


@pytest.mark.parametrize("stated", ["nvlink", "pcie-p2p", "pcie"])
def test_a_stated_link_wins(stated):
    hw = SimpleNamespace(gpu_link=stated, gpus=(_g("datacenter", 450.0),))
    assert speed.gpu_link(hw) == stated


def test_an_interconnect_above_pcie5_x16_is_nvlink():
    """Above MAX_HOST_LINK_GBS (64) a profile's interconnect_gbs is NVLink's figure; 64 itself is the host link."""
    assert speed.gpu_link(SimpleNamespace(gpu_link=None, gpus=(_g("consumer", 64.5),))) == "nvlink"
    assert speed.gpu_link(SimpleNamespace(gpu_link=None, gpus=(_g("consumer", 64.0),))) == "pcie"
    assert speed.gpu_link(SimpleNamespace(gpu_link=None, gpus=(_g("datacenter", 64.0),))) == "pcie-p2p"
    # one NVLink GPU among others is enough
    assert speed.gpu_link(SimpleNamespace(gpu_link=None, gpus=(_g("consumer", 32.0), _g("consumer", 100.0)))) == \
        "nvlink"


def test_tiers_decide_p2p():
    """Workstation and datacenter cards: P2P; a consumer card anywhere in the machine: none (the GeForce driver)."""
    hw = SimpleNamespace(gpu_link=None, gpus=(_g("workstation"), _g("datacenter")))
    assert speed.gpu_link(hw) == "pcie-p2p"
    hw = SimpleNamespace(gpu_link=None, gpus=(_g("datacenter"), _g("consumer")))
    assert speed.gpu_link(hw) == "pcie"


def test_unified_gpus_and_none_are_plain_pcie():
    """Apple's unified GPU is no PCIe card: left out, and no GPU at all is plain PCIe (a term that never applies)."""
    assert speed.gpu_link(SimpleNamespace(gpu_link=None, gpus=(_g("datacenter", 800.0, unified=True),))) == "pcie"
    assert speed.gpu_link(SimpleNamespace(gpu_link=None, gpus=())) == "pcie"
    assert speed.gpu_link(SimpleNamespace()) == "pcie"


# --- step_parts, StepParts, forecast -------------------------------------------------------------------------------

VLLM, CPU = speed.backend_params("vllm"), speed.backend_params("cpu")
SP = dict(weights_bytes=20e9, kv_bytes_per_stream=1e8, gpu_fraction=1.0, gpu_bandwidth_gbs=4000.0,
          host_bandwidth_gbs=100.0, active_params=20e9, peak_flops=1e15)


def test_step_parts_carries_the_comm_once_per_step():
    """comm_s = tp_comm_seconds(layers, tp, link); a step of n streams pays it once, as t0 (not per stream)."""
    plain = speed.step_parts(VLLM, CPU, **SP)
    tp = speed.step_parts(VLLM, CPU, **SP, tensor_parallel=4, layers=64, tp_link="pcie")
    comm = speed.tp_comm_seconds(64, 4, "pcie")
    assert plain.comm_s == 0.0 and tp.comm_s == pytest.approx(comm, rel=1e-12)
    assert tp.single_s() - plain.single_s() == pytest.approx(comm, rel=1e-9)
    for n in (1, 2, 7):
        assert tp.step_s(n) - plain.step_s(n) == pytest.approx(comm, rel=1e-9)
        assert tp.memory_s(n, n) - plain.memory_s(n, n) == pytest.approx(comm, rel=1e-9)
    # a prefill's rate is compute-bound: no all-reduce latency in it
    assert tp.prefill_s(1000) == plain.prefill_s(1000)


def test_the_default_link_is_plain_pcie_and_no_gpu_share_no_comm():
    d = speed.step_parts(VLLM, CPU, **SP, tensor_parallel=2, layers=10)
    assert d.comm_s == pytest.approx(speed.tp_comm_seconds(10, 2, "pcie"), rel=1e-12)
    cpu = speed.step_parts(CPU, CPU, **{**SP, "gpu_fraction": 0.0}, tensor_parallel=2, layers=10, tp_link="nvlink")
    assert cpu.comm_s == 0.0


def test_comm_can_make_a_step_memory_bound():
    """The all-reduces count with the memory side of the step (as t0) when deciding compute-bound."""
    p = speed.StepParts(weights_s=0.010, kv_s=0.0, t0_s=0.0, prompt_token_s=0.0, batch_token_s=0.0051)
    assert p.step(3)[1] is True  # 2 x 5.1 ms compute > 10 ms memory
    q = speed.StepParts(weights_s=0.010, kv_s=0.0, t0_s=0.0, prompt_token_s=0.0, batch_token_s=0.0051, comm_s=0.001)
    assert q.step(3) == (pytest.approx(0.010 + 0.001 + 0.0102), False)


def test_forecast_passes_the_tensor_parallel_to_the_step():
    """forecast's single-stream rate: 1 / (the step without comm + comm), rounded to 0.1."""
    base = speed.forecast("vllm", **SP, streams=1, prompt_tokens=100)
    tp = speed.forecast("vllm", **SP, streams=1, prompt_tokens=100, tensor_parallel=8, layers=126, tp_link="nvlink")
    step = speed.step_parts(VLLM, CPU, **SP).single_s() + speed.tp_comm_seconds(126, 8, "nvlink")
    assert tp.single_stream_tokens_per_s == round(1 / step, 1) < base.single_stream_tokens_per_s
    assert tp.per_user_tokens_per_s == round(1 / step, 1)


# --- a planned service: service_forecast and capacity.service_curve agree ------------------------------------------


def _plan(write_stack, hardware, extra=""):
    path = write_stack(f"version: 1\nhardware: {hardware}\n{extra}"
                       "workload: {concurrent_users: 4, context_tokens: 4096, prompt_tokens: 1000, "
                       "output_tokens: 200}\nservices:\n  s: {model: llama-3.1-70b-instruct, quant: bf16, "
                       "engine: vllm}\n")
    return resolve.resolve(load_stack(path), HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]


def test_a_tensor_parallel_plan_carries_its_links_comm_in_forecast_and_curve(write_stack):
    """4 x A100 SXM4 80 GB (the profile states NVLink): the simulator's curve carries 2 x 80 layers x the NVLink
    all-reduce at the plan's TP, and the plan's forecast is the same step (1 / single_s, rounded)."""
    sp = _plan(write_stack, "4x a100-80gb")
    tp = sp.memory.tensor_parallel
    assert tp > 1 and sp.model.layers == 80
    hw = load_stack_hw(write_stack, "4x a100-80gb")
    curve = capacity.service_curve(sp, hw)
    assert curve.comm_s == pytest.approx(speed.tp_comm_seconds(80, tp, "nvlink"), rel=1e-12)
    assert curve.step.comm_s == curve.comm_s
    fc = speed.fleet_forecast(sp, hw, 1)
    assert fc.single_stream_tokens_per_s == round(1 / curve.step.single_s(), 1)


def test_the_stated_link_changes_the_plans_speed(write_stack):
    """The same machine stated as plain PCIe (no P2P): a slower step by exactly the difference of the two links'
    all-reduces (2 x layers x (pcie - nvlink) at the plan's TP)."""
    hw_nv = load_stack_hw(write_stack, "4x a100-80gb")
    hw_pcie = hw_nv.model_copy(update={"gpu_link": "pcie"})
    sp = _plan(write_stack, "4x a100-80gb")
    tp = sp.memory.tensor_parallel
    nv, pcie = capacity.service_curve(sp, hw_nv), capacity.service_curve(sp, hw_pcie)
    want = 2 * 80 * (speed.allreduce_seconds("pcie", tp) - speed.allreduce_seconds("nvlink", tp))
    assert pcie.step_s(1, 0) - nv.step_s(1, 0) == pytest.approx(want, rel=1e-9)
    assert pcie.step_s(4, 0) - nv.step_s(4, 0) == pytest.approx(want, rel=1e-9)


def test_the_plan_says_what_each_step_waits_for_the_all_reduces(write_stack):
    """The forecast carries the curve's comm_s in ms with its link, and its text names both; JSON too."""
    sp = _plan(write_stack, "4x a100-80gb")
    hw = load_stack_hw(write_stack, "4x a100-80gb")
    curve = capacity.service_curve(sp, hw)
    fc = speed.fleet_forecast(sp, hw, sp.workload.concurrent_users)
    assert fc.tp_comm_ms == round(curve.comm_s * 1000, 2) and fc.tp_comm_ms > 0 and fc.tp_link == "nvlink"
    assert f"each step waits {fc.tp_comm_ms:g} ms for tensor parallel's all-reduces over NVLink" in fc.text()
    assert fc.to_json()["tp_comm_ms"] == fc.tp_comm_ms and fc.to_json()["tp_link"] == "nvlink"
    slow = speed.fleet_forecast(sp, hw.model_copy(update={"gpu_link": "pcie"}), sp.workload.concurrent_users)
    assert "over PCIe without P2P" in slow.text() and slow.tp_comm_ms > fc.tp_comm_ms


def test_one_gpu_plans_have_no_comm(write_stack):
    path = write_stack("version: 1\nhardware: h100-80gb\nworkload: {concurrent_users: 1}\n"
                       "services:\n  s: {model: llama-3.1-8b-instruct, engine: vllm}\n")
    stack = load_stack(path)
    sp = resolve.resolve(stack, HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]
    assert sp.memory.tensor_parallel == 1
    assert capacity.service_curve(sp, stack.hardware).comm_s == 0.0
    assert sp.speed.tp_comm_ms == 0.0 and sp.speed.tp_link == "" and "all-reduces" not in sp.speed.text()


def load_stack_hw(write_stack, hardware):
    """The HardwareSpec a stack naming `hardware` binds to."""
    path = write_stack(f"version: 1\nhardware: {hardware}\nservices:\n  s: {{model: llama-3.1-8b-instruct}}\n",
                       name="hw.yaml")
    return load_stack(path).hardware


@pytest.mark.parametrize("link, words", [("nvlink", "NVLink"), ("pcie-p2p", "PCIe with P2P"),
                                         ("pcie", "PCIe without P2P"), ("xgmi", "xgmi")])
def test_the_plan_names_each_link_in_words(link, words):
    """Forecast.text: the link's name in words, an unknown one as stated; tp_comm_ms is comm_s in ms to 2 places."""
    kw = dict(weights_bytes=40e9, kv_bytes_per_stream=0.0, gpu_fraction=1.0, gpu_bandwidth_gbs=8000.0,
              host_bandwidth_gbs=100.0, active_params=20e9, peak_flops=1e15, prompt_tokens=100)
    fc = speed.forecast("vllm", streams=1, tensor_parallel=8, layers=126, tp_link=link, **kw)
    comm = speed.tp_comm_seconds(126, 8, link)
    assert fc.tp_comm_ms == round(comm * 1000, 2) and fc.tp_link == link
    assert round(comm * 1001, 2) != fc.tp_comm_ms  # the figure is ms, not a near multiple
    assert f"each step waits {fc.tp_comm_ms:g} ms for tensor parallel's all-reduces over {words})" in fc.text()
