"""Edges of the speed model (stackgen/plan/speed.py) that its mutation run (benchmarks/results/mutation-speed.md)
found untested: which backend an engine runs as, the weight kinds, the empty step, the fits' degenerate inputs, the
tensor-parallel and calibrated service forecasts, and the forecast's JSON and sentence. Each expected figure is
derived from the model's formula in the docstring, not pasted from an output."""

from __future__ import annotations

import dataclasses
import math

import pytest

from stackgen.engines import flagcheck
from stackgen.host.facts import HostFacts
from stackgen.plan import resolve, speed
from stackgen.plan.capacity import CPU_FLOPS_PER_THREAD
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
HW = load_profiles().hardware


def _plan(write_stack, hardware, engine, model="llama-3.1-8b-instruct", users=1, extra=""):
    path = write_stack(f"version: 1\nhardware: {hardware}\n"
                       f"workload: {{concurrent_users: {users}, context_tokens: 4096, prompt_tokens: 1000, "
                       f"output_tokens: 200}}\nservices:\n  s: {{model: {model}, engine: {engine}{extra}}}\n")
    return resolve.resolve(load_stack(path), HOST).services[0]


# --- backend_for and weight_kind --------------------------------------------------------------------------------

def test_backend_for_every_vendor_and_the_cpu():
    """ggml's backend per GPU vendor (NVIDIA consumer CUDA, datacenter its own line, AMD ROCm, Apple Metal, Intel
    Vulkan), the CPU without a GPU; an engine with its own kernels (vLLM, MLX) runs as its own fit on a GPU and as
    the CPU on a host without one."""
    assert speed.backend_for(None, "nvidia") == "cuda"
    assert speed.backend_for(None, "nvidia", "datacenter") == "cuda-datacenter"
    assert speed.backend_for(None, "amd") == "rocm"
    assert speed.backend_for(None, "apple") == "metal"
    assert speed.backend_for(None, "intel") == "vulkan"
    assert speed.backend_for(None, None) == "cpu"
    assert speed.backend_for("vllm", "nvidia") == "vllm"
    assert speed.backend_for("vllm", None) == "cpu"
    assert speed.backend_for("sglang", "nvidia", "datacenter") == "sglang"  # its own line, not CUDA's nor vLLM's
    assert speed.backend_for("sglang", None) == "cpu"
    assert speed.backend_for("mlx", None) == "cpu"


@pytest.mark.parametrize("fmt", ["f16", "BF16", "F32", "fp16", "FP32", "float16", "bfloat16", "float32"])
def test_every_unquantized_float_format_is_16bit(fmt):
    assert speed.weight_kind(fmt) == "16bit"


@pytest.mark.parametrize("fmt", [None, "", "Q4_K_M", "q6_k", "4bit", "gptq", "fp8"])
def test_quantized_and_unknown_formats_are_quantized(fmt):
    """(Q8_0 and the other legacy block types are a kind of their own: test_speed_legacy.py.)"""
    assert speed.weight_kind(fmt) == "quantized"


@pytest.mark.parametrize("fmt", ["awq", "AWQ", "Awq"])
def test_an_awq_checkpoint_is_its_own_kind(fmt):
    """AWQ checkpoints (facts.normalize_quant's "awq") run through the engine's AWQ kernels: kind "int4-awq"."""
    assert speed.weight_kind(fmt) == "int4-awq"


# --- the empty step and the unknown peak --------------------------------------------------------------------------

def test_a_step_of_nothing_is_no_speed_not_an_error():
    """Zero bytes on a backend without overhead (CPU: t0 = 0) is a zero-second step: no speed (0), not a
    division by zero nor a made-up 1 token/s."""
    assert speed.BACKENDS["cpu"].t0_ms == 0
    assert speed.single_stream_tokens_per_s(0, 0, 100, "cpu") == 0.0
    assert speed.aggregate_tokens_per_s(0, 0, 100, "cpu", 4) == 0.0


def test_step_seconds_adds_no_cache_unless_given():
    """step_seconds without kv_bytes reads only the weights: 1000 bytes at e x 1 GB/s on vLLM, plus its t0."""
    b = speed.BACKENDS["vllm"]
    bw = b.read_gbs(1) * 1e9  # 1 GB/s as the line reads it
    assert speed.step_seconds(1000, 1, "vllm") == pytest.approx(1000 / (b.efficiency * bw) + b.t0_ms / 1000, rel=1e-12)


def test_sglang_steps_pay_its_overhead_and_read_each_kind_at_its_slope():
    """SGLang's line (speed.BACKENDS["sglang"]: a 2 ms per-step overhead, a slope per weight kind): 1e9 bytes of
    16-bit weights and 1e8 of KV cache at 4000 GB/s are 1e9 / (e_16bit x 4e12) + 1e8 / (e x 4e12) + t0; quantized
    weights read at e; no bytes at all still cost t0 (the step's fixed part)."""
    b = speed.BACKENDS["sglang"]
    assert b.t0_ms > 0 and b.efficiency_16bit and b.efficiency_16bit != b.efficiency
    t16 = 1e9 / (b.efficiency_16bit * 4e12) + 1e8 / (b.efficiency * 4e12) + b.t0_ms / 1000
    tq = 1e9 / (b.efficiency * 4e12) + 1e8 / (b.efficiency * 4e12) + b.t0_ms / 1000
    assert speed.step_seconds(1e9, 4000, "sglang", "16bit", 1e8) == pytest.approx(t16, rel=1e-12)
    assert speed.step_seconds(1e9, 4000, "sglang", "quantized", 1e8) == pytest.approx(tq, rel=1e-12)
    assert speed.single_stream_tokens_per_s(0, 0, 4000, "sglang") == pytest.approx(1000 / b.t0_ms)


def test_no_compute_term_without_a_peak_or_parameters():
    """batch_compute_seconds is 0 when the peak, the parameters or the MFU are unknown (0), whatever the others."""
    assert speed.batch_compute_seconds(8e9, 4, 0.0, 0.35) == 0.0
    assert speed.batch_compute_seconds(0.0, 4, 1e12, 0.35) == 0.0
    assert speed.batch_compute_seconds(8e9, 4, 1e12, 0.0) == 0.0
    assert speed.batch_compute_seconds(8e9, 4, 1e12, 0.5) == pytest.approx(3 * 2 * 8e9 / 0.5e12)
    assert speed.prefill_tokens_per_s(0, 10, "cuda") == 0.0
    assert speed.prefill_tokens_per_s(8e9, 0, "cuda") == 0.0


def test_the_aggregate_reads_the_union_of_experts():
    """aggregate_tokens_per_s of an MoE model at 4 streams: the step reads read_factor(4) times one token's active
    weights (8 experts, 2 active, 90% in experts: touched 1 - 0.75^4 = 0.684, factor (0.1 + 0.9 x 0.684) /
    (0.1 + 0.9 x 0.25) = 2.20), so it is 4 / (2.20 x the dense step), not 4 / the dense step."""
    moe = speed.ExpertRouting(8, 2, 0.9)
    factor = (0.1 + 0.9 * (1 - 0.75**4)) / (0.1 + 0.9 * 0.25)
    assert moe.read_factor(4) == pytest.approx(factor) and factor == pytest.approx(2.2, abs=0.01)
    agg = speed.aggregate_tokens_per_s(4e9, 0, 100, "vllm", 4, experts=moe)
    b = speed.BACKENDS["vllm"]
    assert agg == pytest.approx(4 / (factor * 4e9 / (b.efficiency * b.read_gbs(100) * 1e9) + b.t0_ms / 1000))


# --- the fits ----------------------------------------------------------------------------------------------------

def _pts(e, t0_ms, xs, kind="quantized"):
    """Points (bytes, 1 GB/s, tokens/s) that lie exactly on t = x / e + t0."""
    return [(x * 1e9, 1, 1 / (x / e + t0_ms / 1000), kind) for x in xs]


def test_fit_backend_recovers_an_exact_line():
    """Points exactly on t = x / 0.8 + 2 ms give back e = 0.8, t0 = 2 ms (and no 16-bit line)."""
    e, t0, e16 = speed.fit_backend(_pts(0.8, 2.0, [0.01, 0.02, 0.05, 0.1]))
    assert (e, t0, e16) == (pytest.approx(0.8), pytest.approx(2.0), 0.0)


def test_fit_backend_splits_only_with_two_points_of_each_kind():
    """16-bit points only: one line for every kind (e_16bit = 0), the same as if they were quantized."""
    pts = _pts(0.9, 1.0, [0.01, 0.03, 0.08], "16bit")
    e, t0, e16 = speed.fit_backend(pts)
    assert (e, t0, e16) == (pytest.approx(0.9), pytest.approx(1.0), 0.0)
    # two of each: each kind its own slope, one t0
    e, t0, e16 = speed.fit_backend(_pts(0.7, 1.0, [0.01, 0.05]) + _pts(0.9, 1.0, [0.02, 0.06], "16bit"))
    assert (e, t0, e16) == (pytest.approx(0.7), pytest.approx(1.0), pytest.approx(0.9))


def test_fit_backend_never_returns_a_negative_efficiency():
    """Step times that fall as the bytes grow fit a negative slope with a positive intercept; an efficiency must be
    positive, so the fit falls back to slopes through the origin (t0 = 0), for the one line and for a 16-bit line."""
    falling = [(1e9, 1, 1 / 3.0), (2e9, 1, 1 / 2.0)]  # x = 1 s -> t = 3 s, x = 2 s -> t = 2 s
    e, t0, _ = speed.fit_backend(falling)
    assert e > 0 and t0 == 0.0
    # through the origin, relative residuals: slope = sum(x / t) / sum(x^2 / t^2) = (1/3 + 1) / (1/9 + 1) = 1.2
    assert e == pytest.approx(1 / 1.2)
    rising = _pts(0.5, 1000.0, [1.0, 2.0])  # t = 2x + 1
    e, t0, e16 = speed.fit_backend(rising + [(1e9, 1, 1 / 3.0, "16bit"), (2e9, 1, 1 / 2.0, "16bit")])
    assert e > 0 and e16 > 0 and t0 == 0.0


def test_fit_batch_mfu_is_the_geometric_mean_over_curves():
    """Two curves, each exactly linear in b: step = b / tps = t1 + (b - 1) x 2 x params / (mfu x peak), with MFU
    0.2 and 0.5: the fit is sqrt(0.2 x 0.5) = 0.316; one curve alone gives back its own MFU."""
    def curve(mfu, params=8e9, peak=100e12, t1=0.01):
        per = 2 * params / (mfu * peak)
        return params, peak, [(b, b / (t1 + (b - 1) * per)) for b in (1, 2, 4, 8)]
    assert speed.fit_batch_mfu([curve(0.2)]) == pytest.approx(0.2)
    assert speed.fit_batch_mfu([curve(0.2), curve(0.5, params=3e9)]) == pytest.approx(math.sqrt(0.1))


# --- forecast ----------------------------------------------------------------------------------------------------

def _fc(**kw):
    args = dict(weights_bytes=4e9, kv_bytes_per_stream=0, streams=1, gpu_fraction=1.0, gpu_bandwidth_gbs=1000,
                host_bandwidth_gbs=50, active_params=8e9, peak_flops=100e12, prompt_tokens=1000)
    args.update(kw)
    return speed.forecast(kw.pop("backend", "cuda"), **{k: v for k, v in args.items() if k != "backend"})


def test_the_cpu_forecast_reads_at_the_cpu_efficiency_and_prefills_at_its_mfu():
    """gpu_fraction 0: the weights at the CPU's 0.606 of the host bandwidth, no GPU term even with a GPU bandwidth
    given; the prefill at the CPU's prefill_mfu (1.004) of the peak; the CPU's own error (0.15), not a split's."""
    cpu = speed.BACKENDS["cpu"]
    f = _fc(backend="cpu", gpu_fraction=0.0, gpu_bandwidth_gbs=1000, peak_flops=1e12)
    step = 4e9 / (cpu.efficiency * 50e9)
    assert f.single_stream_tokens_per_s == pytest.approx(1 / step, abs=0.05)
    assert f.ttft_s == pytest.approx(1000 / (cpu.prefill_mfu * 1e12 / 16e9) + step, abs=0.001)
    assert f.error == cpu.error


def test_a_gpu_backend_with_no_layers_on_the_gpu_uses_the_cpu_figures():
    """A llama.cpp plan on an NVIDIA host with -ngl 0: backend cuda, but every byte is read from RAM at the CPU's
    efficiency (plus cuda's t0), the prompt prefilled at the CPU's MFU, the extra tokens at the CPU's batch MFU,
    and the error is cuda's (no split)."""
    cpu, cuda = speed.BACKENDS["cpu"], speed.BACKENDS["cuda"]
    f = _fc(gpu_fraction=0.0, peak_flops=1e12, streams=2)
    step1 = 4e9 / (cpu.efficiency * 50e9) + cuda.t0_ms / 1000
    assert f.single_stream_tokens_per_s == pytest.approx(1 / step1, abs=0.05)
    assert f.ttft_s == pytest.approx(1000 / (cpu.prefill_mfu * 1e12 / 16e9) + step1, abs=0.001)
    step2 = step1 + 2 * 8e9 / (cpu.batch_mfu * 1e12)
    assert f.aggregate_tokens_per_s == pytest.approx(2 / step2, abs=0.05)
    assert f.error == cuda.error


def test_a_16bit_partial_offload_reads_its_ram_part_at_the_cpu_efficiency_and_its_16bit_batch_mfu():
    """Half the layers in RAM with F16 weights on cuda: the GPU half at cuda's efficiency_16bit, the RAM half at
    the CPU's (one efficiency for every kind); the extra token at cuda's batch_mfu_16bit; error max(cuda, cpu, the
    partial offload's own)."""
    cpu, cuda = speed.BACKENDS["cpu"], speed.BACKENDS["cuda"]
    f = _fc(gpu_fraction=0.5, weights="16bit", streams=2)
    step1 = 0.5 * 4e9 / (cuda.efficiency_16bit * 1000e9) + 0.5 * 4e9 / (cpu.efficiency * 50e9) + cuda.t0_ms / 1000
    assert f.single_stream_tokens_per_s == pytest.approx(1 / step1, abs=0.05)
    step2 = step1 + 2 * 8e9 / (cuda.batch_mfu_16bit * 100e12)
    assert f.aggregate_tokens_per_s == pytest.approx(2 / step2, abs=0.05)
    assert f.error == max(cuda.error, cpu.error, speed.PARTIAL_OFFLOAD_ERROR)
    # all on the GPU: nothing read from RAM, cuda's own error
    full = _fc(gpu_fraction=1.0, gpu_bandwidth_gbs=1)
    one = 4e9 / (cuda.efficiency * cuda.read_gbs(1) * 1e9) + cuda.t0_ms / 1000
    assert full.single_stream_tokens_per_s == pytest.approx(1 / one, abs=0.05)
    assert full.error == cuda.error


def test_no_decode_tile_and_no_host_flops_unless_given():
    """Defaults: no CPU tiles (2 streams on the CPU backend are the memory time plus one token's compute, faster in
    aggregate than one stream), no host FLOP/s (a partial offload's extra token costs 2 x params at the GPU's batch
    peak: host_flops 0 leaves the split compute out)."""
    cpu = speed.BACKENDS["cpu"]
    two = _fc(backend="cpu", gpu_fraction=0.0, streams=2, peak_flops=1e12)
    step = 4e9 / (cpu.efficiency * 50e9) + 2 * 8e9 / (cpu.batch_mfu * 1e12)
    assert two.aggregate_tokens_per_s == pytest.approx(2 / step, abs=0.05)
    cuda = speed.BACKENDS["cuda"]
    half = _fc(gpu_fraction=0.5, streams=2)
    mem = (0.5 * 4e9 / (cuda.efficiency * cuda.read_gbs(1000) * 1e9) + 0.5 * 4e9 / (cpu.efficiency * 50e9)
           + cuda.t0_ms / 1000)
    assert half.aggregate_tokens_per_s == pytest.approx(2 / (mem + 2 * 8e9 / (cuda.batch_mfu * 100e12)), abs=0.05)


# --- service_forecast --------------------------------------------------------------------------------------------

def test_tensor_parallel_reads_and_prefills_on_every_gpu(write_stack):
    """vLLM at tensor parallel 2 on two RTX 3090s reads each rank's share at once (2 x the bandwidth) and
    prefills on both (2 x the peak): the same memory plan at tp 1 on one GPU decodes and prefills half as fast, but
    for the TP step's all-reduces (2 per layer over PCIe without P2P, the consumer cards' link: speed.tp_comm_seconds)
    and its per-step t0 (not halved): the TP 2 step is half the TP 1 step's read plus t0 plus those."""
    sp = _plan(write_stack, "rtx-3090", "vllm", model="qwen2.5-7b-instruct")
    hw = HW["rtx-3090"]
    two_hw = hw.model_copy(update={"gpus": tuple(hw.gpus) * 2})
    kw = dict(users=1, prompt_tokens=1000, avg_context=1100, threads=8)
    one = speed.service_forecast("vllm", sp.model, dataclasses.replace(sp.memory, tensor_parallel=1), hw, **kw)
    two = speed.service_forecast("vllm", sp.model, dataclasses.replace(sp.memory, tensor_parallel=2), two_hw, **kw)
    comm = speed.tp_comm_seconds(sp.model.layers, 2, "pcie")
    assert comm > 0 and speed.gpu_link(two_hw) == "pcie"
    t0 = speed.BACKENDS["vllm"].t0_ms / 1000
    assert two.single_stream_tokens_per_s == pytest.approx(
        1 / ((1 / one.single_stream_tokens_per_s - t0) / 2 + t0 + comm), abs=0.2)
    assert two.single_stream_tokens_per_s < 2 * one.single_stream_tokens_per_s - 1
    prefill_one = one.ttft_s - 1 / one.single_stream_tokens_per_s
    prefill_two = two.ttft_s - 1 / two.single_stream_tokens_per_s
    assert prefill_two == pytest.approx(prefill_one / 2, abs=0.002)


def test_one_slot_decodes_one_stream_and_one_thread_is_one_threads_peak(write_stack):
    """llama.cpp on the CPU with -np 1 serves 4 users one at a time (1 stream); with 1 thread the prefill runs at
    the CPU's prefill_mfu of one thread's CPU_FLOPS_PER_THREAD."""
    sp = _plan(write_stack, "cpu-server-64gb", "llama.cpp", model="llama-3.2-3b-instruct", users=4)
    hw = HW["cpu-server-64gb"]
    mem = dataclasses.replace(sp.memory, parallel=1)
    f = speed.service_forecast("llama.cpp", sp.model, mem, hw, users=4, prompt_tokens=1000, avg_context=1100,
                               threads=1)
    assert f.streams == 1
    rate = speed.BACKENDS["cpu"].prefill_mfu * CPU_FLOPS_PER_THREAD / (2 * sp.model.active_params)
    assert f.ttft_s == pytest.approx(1000 / rate + 1 / f.single_stream_tokens_per_s, rel=0.002)


def test_ngl_0_on_a_gpu_host_prefills_on_the_cpu(write_stack):
    """A llama.cpp plan on an RTX 4090 host with no layer on the GPU (-ngl 0) prefills at the CPU's figures (its
    prefill_mfu of CPU_FLOPS_PER_THREAD x threads), not at the GPU's peak."""
    sp = _plan(write_stack, "rtx-4090", "llama.cpp")
    mem = dataclasses.replace(sp.memory, gpu_layers=0)
    f = speed.service_forecast("llama.cpp", sp.model, mem, HW["rtx-4090"], users=1, prompt_tokens=1000,
                               avg_context=1100, threads=4)
    rate = speed.BACKENDS["cpu"].prefill_mfu * CPU_FLOPS_PER_THREAD * 4 / (2 * sp.model.active_params)
    assert f.ttft_s == pytest.approx(1000 / rate + 1 / f.single_stream_tokens_per_s, rel=0.002)


def test_a_calibrated_cpu_plan_keeps_the_fits_error_and_count_and_prefills_at_the_measured_rate(write_stack):
    """A host calibration replaces the CPU fit's efficiency and t0, not its stated error or its public point count;
    with 1 thread the prefill runs at the measured FLOP/s per thread (prefill_tokens_per_s x 2 x the calibration
    model's params / its threads) over 2 x this model's active params, and a batch measured at 4 streams sets the
    knee at its FLOP/s of one thread."""
    from stackgen.host.calibration import EnginePoint
    cal = EnginePoint(engine="llama.cpp", build=11434, model="g.gguf", model_bytes=246_587_904,
                      model_params=268_098_176, threads=2, decode_tokens_per_s=50.0, prefill_tokens_per_s=400.0,
                      rss_bytes=0, planned_bytes=0, efficiency=0.5, t0_ms=2.0, batch_streams=4,
                      batch_decode_tokens_per_s=100.0)
    sp = _plan(write_stack, "cpu-server-64gb", "llama.cpp", model="llama-3.2-3b-instruct", users=1)
    f = speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["cpu-server-64gb"], users=1, prompt_tokens=1000,
                               avg_context=1100, threads=1, calibration=cal)
    fit = speed.BACKENDS["cpu"]
    assert (f.error, f.fitted_on) == (fit.error, fit.fitted_on)
    rate = 400.0 * 2 * 268_098_176 / 2 / (2 * sp.model.active_params)
    assert f.ttft_s == pytest.approx(1000 / rate + 1 / f.single_stream_tokens_per_s, rel=0.002)


def test_forecast_at_the_workloads_users_is_the_plans_own(write_stack):
    sp = _plan(write_stack, "rtx-4090", "llama.cpp", users=2)
    assert speed.forecast_at(sp, None, 2) is sp.speed
    assert speed.forecast_at(sp, None, 3) is None


# --- Forecast's JSON and sentence ---------------------------------------------------------------------------------

FC = speed.Forecast(backend="cuda", streams=4, per_user_tokens_per_s=50.5, aggregate_tokens_per_s=202.0,
                    single_stream_tokens_per_s=80.0, ttft_s=0.25, ttft_all_s=1.0, bound="memory bandwidth",
                    error=0.35, fitted_on=17, ttft_checked_on=6, ttft_error=1.05)


def test_to_json_holds_every_field_under_its_own_name():
    assert FC.to_json() == dataclasses.asdict(FC)


def test_text_states_the_figures_and_their_checks():
    assert FC.text() == ("50.5 tokens/s per user at 4 streams (202 aggregate, memory bandwidth-bound), TTFT 0.25 s "
                         "alone, 1.00 s when all 4 arrive together (decode +-35% for 9 in 10 public points, cuda "
                         "backend fitted on 17 public points; TTFT +-105%, checked on 6 public prefill points)")
    one = dataclasses.replace(FC, streams=1, fitted_on=1, ttft_checked_on=1, backend="cpu")
    assert one.text() == ("50.5 tokens/s per user at 1 stream (202 aggregate, memory bandwidth-bound), TTFT 0.25 s "
                          "alone (decode +-35% for 9 in 10 public points, cpu backend fitted on 1 public point; "
                          "TTFT +-105%, checked on 1 public prefill point)")
    # under sustained load (other users' prompts in the steps; StepParts.sustained_step_s), said where it differs
    fleet = dataclasses.replace(FC, sustained_per_user_tokens_per_s=31.2, instances=3, instances_busy=3, slots=4,
                                queue_requests_per_s=2.5)
    assert fleet.text() == ("50.5 tokens/s per user at 4 streams per instance on each of 3 instances (202 aggregate "
                            "over all instances, memory bandwidth-bound), 31.2 per user under sustained load (other "
                            "users' prompts sharing the steps), TTFT 0.25 s alone, 1.00 s when all 4 of an instance "
                            "arrive together; requests queue past 2.5 requests/s (all 3 x 4 slots busy) (decode +-35% "
                            "for 9 in 10 public points, cuda backend fitted on 17 public points; TTFT +-105%, checked "
                            "on 6 public prefill points)")
    assert dataclasses.replace(FC, sustained_per_user_tokens_per_s=50.5).text() == FC.text()
    none = dataclasses.replace(FC, fitted_on=0, ttft_checked_on=0, backend="x")
    assert none.text().endswith("(decode +-35% for 9 in 10 public points, x backend not fitted: a default; TTFT not "
                                "checked: no public prefill point for the x backend)")


# --- forecast's edges, second round ------------------------------------------------------------------------------

def test_forecast_rounds_each_figure_and_carries_the_fit():
    """vLLM on 4e9 bytes at 1000 GB/s, 3 streams, 8B params at 100 TFLOP/s: one step is
    4e9 / (e x 1e12) s + t0 plus 2 x 2 x 8e9 / (0.35 x 1e14) s for the two extra tokens; tokens/s are rounded to 0.1,
    TTFT to the millisecond; the prompts of the other 2 streams wait before the last one's (3 x 1000 prompt tokens
    at 0.528 x 1e14 / 1.6e10 tokens/s, then one step); the fit's point count and prefill check come along."""
    b = speed.BACKENDS["vllm"]
    f = _fc(backend="vllm", streams=3)
    single = 4e9 / (b.efficiency * b.read_gbs(1000) * 1e9) + b.t0_ms / 1000
    step = single + 2 * 2 * 8e9 / (b.batch_mfu * 100e12)
    prefill = b.prefill_mfu * 100e12 / 16e9
    assert f.per_user_tokens_per_s == round(1 / step, 1) and f.per_user_tokens_per_s != round(1 / step)
    assert f.aggregate_tokens_per_s == round(3 / step, 1) and f.single_stream_tokens_per_s == round(1 / single, 1)
    assert f.ttft_s == round(1000 / prefill + single, 3)
    assert f.ttft_all_s == round(3 * 1000 / prefill + step, 3)
    assert f.ttft_all_s != round(f.ttft_all_s, 2) or f.ttft_s != round(f.ttft_s, 2)
    # to the millisecond, not finer: with 2 streams too, so one of the two unrounded TTFTs has a 4th decimal
    two = _fc(backend="vllm", streams=2)
    step2 = single + 2 * 8e9 / (b.batch_mfu * 100e12)
    assert two.ttft_all_s == round(2 * 1000 / prefill + step2, 3)
    assert {round(x, 3) != round(x, 4) for x in (3 * 1000 / prefill + step, 2 * 1000 / prefill + step2)} & {True}
    assert (f.fitted_on, f.ttft_checked_on, f.ttft_error) == (b.fitted_on, *speed.PREFILL_CHECK["vllm"])
    dc = _fc(backend="cuda-datacenter")
    assert (dc.ttft_checked_on, dc.ttft_error) == (0, 0.0)  # no public prefill point for the datacenter line


def test_no_prefill_rate_means_an_unbounded_ttft():
    """Without parameters (or a peak) there is no prefill rate: TTFT alone and together are infinite, not a
    division by zero; the decode needs no compute term then either (no FLOPs to do)."""
    f = _fc(active_params=0, streams=2)
    assert f.ttft_s == f.ttft_all_s == float("inf")
    g = _fc(peak_flops=0, streams=4, decode_tile=4, backend="cpu", gpu_fraction=0.0)
    assert g.ttft_s == float("inf") and g.bound == "memory bandwidth"
    assert g.aggregate_tokens_per_s == pytest.approx(4 / (4e9 / (speed.BACKENDS["cpu"].efficiency * 50e9)), abs=0.05)
    assert speed.ttft_seconds(100, 0) == float("inf")
    assert speed.ttft_seconds(100, 0.5) == 200.0 and speed.ttft_seconds(100, 0.5, 1.0, queued_prompts=1) == 401.0


def test_decode_tiles_of_one_are_no_tiles_and_tiles_of_two_and_three_count():
    """decode_tile 1 is the untiled step; tile 2 at 2 streams is one roofline pass (max(memory, compute)), not
    memory + compute; tile 3 at 2 streams is two lone passes (each a single stream's step)."""
    kw = dict(backend="cpu", gpu_fraction=0.0, peak_flops=10e12)
    for n in (1, 2, 5):
        assert _fc(decode_tile=1, streams=n, **kw) == _fc(decode_tile=0, streams=n, **kw)
    cpu = speed.BACKENDS["cpu"]
    single = 4e9 / (cpu.efficiency * 50e9)
    pass2 = max(single, 2 * 2 * 8e9 / (cpu.batch_mfu * 10e12))
    assert _fc(decode_tile=2, streams=2, **kw).aggregate_tokens_per_s == pytest.approx(2 / pass2, abs=0.05)
    assert _fc(decode_tile=3, streams=2, **kw).aggregate_tokens_per_s == pytest.approx(1 / single, abs=0.05)


def test_host_flops_apply_only_to_a_split():
    """All layers in RAM (gpu_fraction 0): the extra token's compute is at the forecast's own batch peak (the CPU's
    batch MFU of peak_flops), host_flops does not enter; nor with every layer on the GPU."""
    kw = dict(backend="cpu", gpu_fraction=0.0, peak_flops=1e12, streams=2)
    assert _fc(host_flops=7e12, **kw) == _fc(**kw)
    assert _fc(host_flops=7e12, streams=2) == _fc(streams=2)


def test_a_gpu_of_unknown_bandwidth_adds_no_gpu_read():
    """gpu_bandwidth_gbs 0 (unknown) with layers on the GPU: no GPU term (not a division by zero); the RAM half
    still reads at the CPU's efficiency."""
    cpu, cuda = speed.BACKENDS["cpu"], speed.BACKENDS["cuda"]
    f = _fc(gpu_fraction=0.5, gpu_bandwidth_gbs=0)
    assert f.single_stream_tokens_per_s == pytest.approx(1 / (0.5 * 4e9 / (cpu.efficiency * 50e9)
                                                              + cuda.t0_ms / 1000), abs=0.05)


def test_unknown_backends_get_the_default_line():
    assert speed.backend_params("no-such-backend") == speed.DEFAULT_BACKEND == speed.Backend(0.70, 0.0)


def test_expert_share_edges():
    """ExpertRouting.of: no routing without a positive active expert count; the share depends only on
    active / params (1 / 4 of the parameters active with 2 of 8 experts: (1 - 0.25) / (1 - 0.25) = 1, all the
    parameters in experts); an active count of 0 is unusable (MOE_EXPERT_SHARE); a share past 1 (active / params
    below active / total experts) is capped at 1."""
    assert speed.ExpertRouting.of(1e9, 1e8, 8, 0) is None
    assert speed.ExpertRouting.of(1e9, 1e8, 8, None) is None
    assert speed.ExpertRouting.of(1.0, 0.25, 8, 2).share == pytest.approx(1.0)
    assert speed.ExpertRouting.of(4e9, 1e9, 8, 2).share == pytest.approx(1.0)
    assert speed.ExpertRouting.of(1e9, 0, 8, 2).share == speed.MOE_EXPERT_SHARE
    assert speed.ExpertRouting.of(100e9, 10e9, 8, 2).share == 1.0  # (1 - 0.1) / 0.75 = 1.2, capped


def test_step_times_that_do_not_grow_with_the_bytes_fall_back_through_the_origin():
    """Two points at the same step time (x = 1 s and 2 s at 1 GB/s, t = 2 s each) fit a slope of exactly 0 (an
    infinite efficiency) and t0 = 2 s; a zero slope is no efficiency, so the fit falls back through the origin:
    slope = sum(x / t) / sum(x^2 / t^2) = (0.5 + 1) / (0.25 + 1) = 1.2, e = 1 / 1.2, t0 = 0."""
    e, t0, e16 = speed.fit_backend([(1e9, 1, 0.5), (2e9, 1, 0.5)])
    assert (e, t0, e16) == (pytest.approx(1 / 1.2), 0.0, 0.0)


def test_every_layer_on_the_gpu_reads_nothing_from_ram():
    """gpu_fraction 1: no RAM term at all, so a host bandwidth of 0 (unknown) does not matter."""
    cuda = speed.BACKENDS["cuda"]
    f = _fc(gpu_fraction=1.0, host_bandwidth_gbs=0)
    one = 4e9 / (cuda.efficiency * cuda.read_gbs(1000) * 1e9) + cuda.t0_ms / 1000
    assert f.single_stream_tokens_per_s == pytest.approx(1 / one, abs=0.05)


def test_the_planned_weights_format_decides_the_cpu_tiles(write_stack):
    """The memory plan's weights format (the file it loads) decides the kind, before the model's quant: a CPU
    llama.cpp plan whose weights are F16 decodes 2 streams untiled (memory time plus the second token's compute:
    more than one stream's aggregate), even if the model's quant says Q4_K_M."""
    sp = _plan(write_stack, "cpu-server-64gb", "llama.cpp", model="llama-3.2-3b-instruct", users=2,
               extra=", quant: Q4_K_M")
    mem = dataclasses.replace(sp.memory, weights_format="F16")
    kw = dict(prompt_tokens=1000, avg_context=1100, threads=8)
    hw = HW["cpu-server-64gb"]
    one = speed.service_forecast("llama.cpp", sp.model, mem, hw, users=1, **kw)
    two = speed.service_forecast("llama.cpp", sp.model, mem, hw, users=2, **kw)
    assert two.streams == 2 and two.aggregate_tokens_per_s > 1.1 * one.aggregate_tokens_per_s  # tiled: equal


def test_a_cpu_tile_of_an_moe_model_reads_the_union_of_its_experts():
    """A ggml CPU tile of 4 streams on an MoE model (8 experts, 2 active, 90% in experts), memory-bound at a high
    peak: the pass reads read_factor(4) = 2.20 times one token's active weights, so 4 streams decode at
    4 / (2.20 x one stream's step) in aggregate, not 4 / one stream's step."""
    moe = speed.ExpertRouting(8, 2, 0.9)
    cpu = speed.BACKENDS["cpu"]
    f = _fc(backend="cpu", gpu_fraction=0.0, streams=4, decode_tile=4, peak_flops=1e15, experts=moe)
    assert f.bound == "memory bandwidth"
    assert f.aggregate_tokens_per_s == pytest.approx(4 / (moe.read_factor(4) * 4e9 / (cpu.efficiency * 50e9)),
                                                     abs=0.05)


def test_a_split_computes_each_extra_token_on_both_sides():
    """Half the layers on cuda, half in RAM with host_flops 1 TFLOP/s: the second token's 2 x 8e9 FLOPs run half at
    cuda's batch MFU of the GPU peak (0.212 x 100 TFLOP/s) and half at the CPU's batch MFU (0.47) of the host's."""
    cpu, cuda = speed.BACKENDS["cpu"], speed.BACKENDS["cuda"]
    f = _fc(gpu_fraction=0.5, streams=2, host_flops=1e12)
    mem = (0.5 * 4e9 / (cuda.efficiency * cuda.read_gbs(1000) * 1e9) + 0.5 * 4e9 / (cpu.efficiency * 50e9)
           + cuda.t0_ms / 1000)
    compute = 0.5 * 2 * 8e9 / (cuda.batch_mfu * 100e12) + 0.5 * 2 * 8e9 / (cpu.batch_mfu * 1e12)
    assert f.aggregate_tokens_per_s == pytest.approx(2 / (mem + compute), abs=0.05)
    # a GPU of 1 TFLOP/s: the GPU half's compute (0.5 x 16e9 / 0.212e12 = 38 ms) shows as much as the host's
    slow = _fc(gpu_fraction=0.5, streams=2, host_flops=1e12, peak_flops=1e12)
    compute = 0.5 * 2 * 8e9 / (cuda.batch_mfu * 1e12) + 0.5 * 2 * 8e9 / (cpu.batch_mfu * 1e12)
    assert slow.aggregate_tokens_per_s == pytest.approx(2 / (mem + compute), abs=0.05)


def test_a_split_states_the_larger_error_of_its_two_sides(monkeypatch):
    """A GPU backend stating a smaller error (ROCm at 0.10 here) than the CPU's (0.15) and both below the partial
    offload's own (PARTIAL_OFFLOAD_ERROR, 0.35): half the layers in RAM states 0.35; Vulkan's (0.45 here) is above all
    three: its split states 0.45; all on the GPU 0.10, and none on the GPU (gpu_fraction 0) ROCm's own 0.10 (the
    error of the backend named, no split). ROCm's own figure grew with corpus2's held-out points and Vulkan's fell to
    0.35 with confirm-gfx9, so the test sets the figures it needs."""
    from dataclasses import replace
    monkeypatch.setitem(speed.BACKENDS, "rocm", replace(speed.BACKENDS["rocm"], error=0.10))
    monkeypatch.setitem(speed.BACKENDS, "vulkan", replace(speed.BACKENDS["vulkan"], error=0.45))
    rocm, cpu, vulkan = speed.BACKENDS["rocm"], speed.BACKENDS["cpu"], speed.BACKENDS["vulkan"]
    assert rocm.error < cpu.error < speed.PARTIAL_OFFLOAD_ERROR < vulkan.error
    assert _fc(backend="rocm", gpu_fraction=0.5).error == speed.PARTIAL_OFFLOAD_ERROR
    assert _fc(backend="vulkan", gpu_fraction=0.5).error == vulkan.error
    assert _fc(backend="rocm", gpu_fraction=1.0).error == rocm.error
    assert _fc(backend="rocm", gpu_fraction=0.0).error == rocm.error


def test_the_single_stream_figure_is_rounded_to_a_tenth():
    """7e9 bytes at 1000 GB/s on vLLM: 1 / (7e9 / (e x 1e12) + t0) tokens/s (0.630, 0.69 ms: 84.74), shown to a
    tenth (84.7), not to the integer."""
    b = speed.BACKENDS["vllm"]
    exact = 1 / (7e9 / (b.efficiency * 1e12) + b.t0_ms / 1000)
    f = _fc(backend="vllm", weights_bytes=7e9)
    assert f.single_stream_tokens_per_s == round(exact, 1) != round(exact)


def test_the_fit_works_in_seconds_as_in_milliseconds():
    """Slow steps (t = x / 0.5 + 1 s, x = 1 and 2 s: a big model on a slow host) give back e = 0.5, t0 = 1000 ms:
    the normal equations' small entries (1/t^2 < 1) are no singular matrix."""
    e, t0, _ = speed.fit_backend(_pts(0.5, 1000.0, [1.0, 2.0]))
    assert (e, t0) == (pytest.approx(0.5), pytest.approx(1000.0))


def test_a_calibrated_knee_and_a_splits_host_compute_scale_with_threads(write_stack):
    """A calibration whose 4-stream batch reached 10 tokens/s on 2 threads (10 x 2 x 268.1M / 2 = 2.68 GFLOP/s per
    thread) makes a 3B CPU plan at 4 users compute-bound: its aggregate is that FLOP/s x threads / (2 x active
    params), for 1 thread half of 2 threads'. A llama.cpp split on an RTX 4090 computes its RAM half of the second
    token at CPU_FLOPS_PER_THREAD x threads: 1 thread is slower than 2."""
    from stackgen.host.calibration import EnginePoint
    cal = EnginePoint(engine="llama.cpp", build=11434, model="g.gguf", model_bytes=246_587_904,
                      model_params=268_098_176, threads=2, decode_tokens_per_s=50.0, prefill_tokens_per_s=400.0,
                      rss_bytes=0, planned_bytes=0, efficiency=0.5, t0_ms=2.0, batch_streams=4,
                      batch_decode_tokens_per_s=10.0)
    sp = _plan(write_stack, "cpu-server-64gb", "llama.cpp", model="llama-3.2-3b-instruct", users=4)
    assert sp.memory.parallel >= 4
    per_thread = 10.0 * 2 * 268_098_176 / 2
    for threads in (1, 2):
        f = speed.service_forecast("llama.cpp", sp.model, sp.memory, HW["cpu-server-64gb"], users=4,
                                   prompt_tokens=1000, avg_context=1100, threads=threads, calibration=cal)
        assert f.bound == "compute"
        assert f.aggregate_tokens_per_s == pytest.approx(per_thread * threads / (2 * sp.model.active_params),
                                                         abs=0.05)
    gpu = _plan(write_stack, "rtx-4090", "llama.cpp", users=2)
    mem = dataclasses.replace(gpu.memory, gpu_layers=gpu.memory.total_layers // 2, parallel=2)
    one, two = (speed.service_forecast("llama.cpp", gpu.model, mem, HW["rtx-4090"], users=2, prompt_tokens=1000,
                                       avg_context=1100, threads=t) for t in (1, 2))
    assert one.aggregate_tokens_per_s < two.aggregate_tokens_per_s


def test_text_of_two_streams_and_a_wide_error():
    two = dataclasses.replace(FC, streams=2, error=1.05)
    assert ", 1.00 s when all 2 arrive together (decode +-105% for 9 in 10 public points," in two.text()


def test_apple_reads_every_layer_at_the_unified_memory_bandwidth(write_stack):
    """On Apple silicon the layers llama.cpp keeps off Metal (-ngl below the layer count, e.g. past the GPU wired
    limit) still sit in the one unified memory: the forecast counts them at the GPU's bandwidth (gpu_fraction 1),
    not as layers in system RAM at the host bandwidth, so half the layers off Metal forecast as all on it."""
    sp = _plan(write_stack, "m4-16gb", "llama.cpp")
    hw = HW["m4-16gb"]
    kw = dict(users=1, prompt_tokens=1000, avg_context=1100, threads=4)
    half = dataclasses.replace(sp.memory, gpu_layers=sp.memory.total_layers // 2)
    full = dataclasses.replace(sp.memory, gpu_layers=sp.memory.total_layers)
    assert speed.service_forecast("llama.cpp", sp.model, half, hw, **kw) == \
        speed.service_forecast("llama.cpp", sp.model, full, hw, **kw)


# --- the llama.cpp build term (Backend.build_before, t0_before_ms) ------------------------------------------------

def _old(pts):
    """The same points marked as builds before the backend's build_before (fit_backend_build's fifth element)."""
    return [(*p, True) for p in pts]


def test_fit_backend_build_recovers_an_older_builds_overhead():
    """Current builds exactly on t = x / 0.7 + 0.5 ms and older ones on t = x / 0.7 + 0.5 + 1.5 ms (two of each
    kind, 16-bit at 0.9): the fit gives back e = 0.7, t0 = 0.5 ms, e_16bit = 0.9 and t0_before = 1.5 ms."""
    new = _pts(0.7, 0.5, [0.002, 0.01]) + _pts(0.9, 0.5, [0.004, 0.012], "16bit")
    old = _old(_pts(0.7, 2.0, [0.003, 0.02]) + _pts(0.9, 2.0, [0.005], "16bit"))
    e, t0, e16, t0b = speed.fit_backend_build(new + old)
    assert (e, t0, e16, t0b) == (pytest.approx(0.7), pytest.approx(0.5), pytest.approx(0.9), pytest.approx(1.5))
    # without the era marks the plain fit cannot put both eras on one line: not the same figures
    assert speed.fit_backend([p[:4] for p in new + old])[1] != pytest.approx(0.5)


def test_fit_backend_build_needs_two_points_of_each_era_and_a_positive_term():
    """One older point is not enough for a term of its own (it would be that point's exact fit): t0_before = 0 and
    the rest is fit_backend's over every point; so for one current point. Older builds that were faster (a
    negative term) are not the physical story (a per-step overhead later builds removed): no term either."""
    new = _pts(0.7, 0.5, [0.002, 0.01, 0.03])
    one_old = _old(_pts(0.7, 2.0, [0.005]))
    assert speed.fit_backend_build(new + one_old) == (*speed.fit_backend([p[:4] for p in new + one_old]), 0.0)
    one_new = new[:1] + _old(_pts(0.7, 2.0, [0.005, 0.02]))
    assert speed.fit_backend_build(one_new) == (*speed.fit_backend([p[:4] for p in one_new]), 0.0)
    faster = new + _old(_pts(0.7, 0.1, [0.005, 0.02]))
    assert speed.fit_backend_build(faster) == (*speed.fit_backend([p[:4] for p in faster]), 0.0)
    # unmarked points (no fifth element) are current builds: the plain fit with no term
    assert speed.fit_backend_build(new) == (*speed.fit_backend(new), 0.0)


def test_backend_params_adds_the_older_builds_overhead_below_the_cut():
    """CUDA builds before LLAMA_CUDA_GRAPHS_BUILD plan t0 + t0_before; the cut itself, newer builds and an unknown
    build (None) the current era's t0; a backend without a build term (Metal) the same at any build."""
    cuda = speed.BACKENDS["cuda"]
    cut = speed.LLAMA_CUDA_GRAPHS_BUILD
    assert cuda.build_before == cut and cuda.t0_before_ms > 0
    assert speed.backend_params("cuda", cut - 1).t0_ms == pytest.approx(cuda.t0_ms + cuda.t0_before_ms)
    assert speed.backend_params("cuda", cut - 1).efficiency == cuda.efficiency
    for build in (cut, cut + 1, None, 10488):
        assert speed.backend_params("cuda", build) == cuda
    assert speed.backend_params("metal", 1) == speed.BACKENDS["metal"]


def test_step_seconds_of_an_older_build_is_longer_by_its_overhead():
    """1e9 bytes at 1000 GB/s on CUDA: x / (e x BW) + t0 for the current build, + t0_before for b1786 (PR 4812's
    January-2024 build)."""
    cuda = speed.BACKENDS["cuda"]
    now = speed.step_seconds(1e9, 1000, "cuda")
    assert now == pytest.approx(1e9 / (cuda.efficiency * cuda.read_gbs(1000) * 1e9) + cuda.t0_ms / 1000, rel=1e-12)
    assert speed.step_seconds(1e9, 1000, "cuda", build=1786) - now == pytest.approx(cuda.t0_before_ms / 1000)
    assert speed.single_stream_tokens_per_s(1e9, 0, 1000, "cuda", build=1786) == pytest.approx(
        1 / (now + cuda.t0_before_ms / 1000))
    assert speed.aggregate_tokens_per_s(1e9, 0, 1000, "cuda", 1, build=1786) == pytest.approx(
        1 / (now + cuda.t0_before_ms / 1000))


def test_a_plan_for_an_older_llamacpp_build_forecasts_its_overhead(write_stack):
    """The stack's engine_version reaches the speed model: a llama.cpp plan on an RTX 4090 for b1786 carries that
    build (ServicePlan.engine_build) and decodes one stream in t0_before more per token than the plan for the
    default build; forecast_at at another user count and the capacity service curve use the same build."""
    from stackgen.plan.capacity import service_curve
    from stackgen.plan.memory import LLAMA_TARGET_BUILD
    cuda = speed.BACKENDS["cuda"]
    new = _plan(write_stack, "rtx-4090", "llama.cpp")
    old = _plan(write_stack, "rtx-4090", "llama.cpp", extra=", engine_version: b1786")
    assert (new.engine_build, old.engine_build) == (LLAMA_TARGET_BUILD, 1786)
    gap = 1 / old.speed.single_stream_tokens_per_s - 1 / new.speed.single_stream_tokens_per_s
    assert gap == pytest.approx(cuda.t0_before_ms / 1000, abs=0.01e-3)  # the forecast rounds to 0.1 tokens/s
    hw = HW["rtx-4090"]
    two_new, two_old = speed.forecast_at(new, hw, 2), speed.forecast_at(old, hw, 2)
    assert two_old.single_stream_tokens_per_s == old.speed.single_stream_tokens_per_s
    assert two_old.per_user_tokens_per_s < two_new.per_user_tokens_per_s
    assert service_curve(old, hw).t0_s - service_curve(new, hw).t0_s == pytest.approx(cuda.t0_before_ms / 1000)
    # a vLLM plan carries its version on the same axis (speed.vllm_build of the default flag table's: current era)
    assert _plan(write_stack, "rtx-4090", "vllm").engine_build == speed.vllm_build(
        flagcheck._profile("vllm")["default"]) >= speed.VLLM_V1_DEFAULT_BUILD
