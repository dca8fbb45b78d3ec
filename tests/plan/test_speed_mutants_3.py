"""Edges of the speed model's newest code (stackgen/plan/speed.py) that the mutation run on 0340db6
(benchmarks/results/mutation-speed.md) found untested: one instance's step inputs (step_inputs, StepInputs) on Apple
silicon, a CPU-only machine and a codebook i-quant; the codebook floor's fit (fit_codebook: points without the
older-build field, a first guess that is not the fixed point); and the codebook floor's defaults (no codebook
weights: no floor, whatever the peak; no peak: no floor, whatever the weights). Each expected figure is derived from
the model's formula (in the docstrings), not pasted from an output."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from stackgen.plan import capacity, speed
from stackgen.plan.memory import MemoryPlan, _kv_bytes_read
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import GPUSpec

CATALOG = load_profiles().models
CUDA = speed.backend_params("cuda")
F = CUDA.codebook_flop_per_weight

# --- step_inputs ---------------------------------------------------------------------------------------------------


def _mem(weights_bytes: int = 5_000_000_000, layers: int = 32, gpu_layers: int | None = None, tp: int = 1,
         fmt: str = "") -> MemoryPlan:
    """A memory plan with every layer on the GPU unless `gpu_layers` says otherwise (nothing else of it is read by
    step_inputs but the bytes, the layers, the tensor parallel, the weights' format and the KV cache type)."""
    return MemoryPlan(weights_bytes=weights_bytes, kv_cache_bytes=0, compute_bytes=0, overhead_bytes=0, gpu_bytes=0,
                      host_bytes=0, gpu_layers=layers if gpu_layers is None else gpu_layers, total_layers=layers,
                      context_per_request=4096, parallel=1, kv_cache_type="f16", fits=True, gpu_budget_bytes=0,
                      host_budget_bytes=0, weights_format=fmt, tensor_parallel=tp)


def _gpu(name: str, vendor: str, bw: float, tier: str = "consumer", unified: bool = False,
         memory_type: str | None = None, share: float | None = None) -> GPUSpec:
    return GPUSpec(name=name, vendor=vendor, memory_gib=24.0, bandwidth_gbs=float(bw), tier=tier, unified=unified,
                   memory_type=memory_type, bandwidth_share=share)


def _hw(gpus=(), ram_bw: float = 100.0, gpu_link: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(gpus=list(gpus), is_apple=any(g.vendor == "apple" for g in gpus),
                           memory_bandwidth_gbs=ram_bw, gpu_link=gpu_link, nvidia_compute_capabilities=())


def test_apple_silicon_is_one_gpu_holding_every_layer_without_tensor_parallel():
    """On Apple silicon the one unified GPU holds every layer (gpu_fraction 1, whatever the memory plan's layer
    split) and tensor parallel is 1 (a memory plan's tensor_parallel 2 is not applied): the step reads at the GPU's
    800 GB/s and its planner peak, not twice either. One token's weights: the plan's bytes x active / total params
    at mlx's efficiency of 800 GB/s."""
    model = CATALOG["llama-3.1-8b-instruct"]
    gpu = _gpu("Apple M2 Ultra", "apple", 800.0, unified=True)
    si = speed.step_inputs("mlx", model, _mem(gpu_layers=0, tp=2), _hw([gpu]), avg_context=1000, threads=8)
    assert (si.backend, si.gpu_fraction, si.tensor_parallel) == ("mlx", 1.0, 1)
    assert si.gpu_bandwidth_gbs == 800.0
    assert si.peak_flops == capacity.gpu_peak_flops("Apple M2 Ultra", 800.0)
    mlx = speed.backend_params("mlx")
    assert si.parts().weights_s == pytest.approx(5e9 / (mlx.efficiency * mlx.read_gbs(800) * 1e9), rel=1e-12)
    assert si.parts().comm_s == 0.0


def test_a_cpu_only_machine_has_no_gpu_bandwidth_link_or_micro_batch():
    """No GPU: no share on it (0), no GPU bandwidth (0 GB/s), no host link or micro-batch (those are a partial
    offload's), the CPU's peak (threads x CPU_FLOPS_PER_THREAD) and, for a ggml engine with block-quantized
    weights, ggml's tiles of GGML_CPU_DECODE_TILE."""
    model = CATALOG["llama-3.1-8b-instruct"]
    si = speed.step_inputs("llama.cpp", model, _mem(gpu_layers=0, fmt="Q4_K_M"), _hw(), avg_context=1000,
                           threads=4)
    assert (si.backend, si.gpu_fraction, si.gpu_bandwidth_gbs) == ("cpu", 0.0, 0.0)
    assert (si.host_link_gbs, si.ubatch) == (0.0, 0)
    assert si.peak_flops == si.host_flops == 4 * capacity.CPU_FLOPS_PER_THREAD
    assert si.decode_tile == speed.GGML_CPU_DECODE_TILE


def test_a_whole_gpu_plan_has_no_host_link_micro_batch_or_tiles():
    """Every layer on one RTX 3090 (llama.cpp, Q4_K_M): GPU share 1 at its 936 GB/s, no partial offload (no host
    link, no micro-batch), the additive step (decode_tile 0), no codebook floor (a K-quant), no tensor parallel."""
    model = CATALOG["llama-3.1-8b-instruct"]
    hw = _hw([_gpu("GeForce RTX 3090", "nvidia", 936.0)])
    si = speed.step_inputs("llama.cpp", model, _mem(fmt="Q4_K_M"), hw, avg_context=1000, threads=8)
    assert (si.backend, si.gpu_fraction, si.gpu_bandwidth_gbs) == ("cuda", 1.0, 936.0)
    assert (si.host_link_gbs, si.ubatch, si.decode_tile) == (0.0, 0, 0)
    assert (si.codebook_params, si.tensor_parallel) == (0.0, 1)
    assert si.kv_bytes_per_stream == _kv_bytes_read(model, _mem(fmt="Q4_K_M"), 1000)


def test_a_codebook_quant_counts_every_active_weight_through_the_floor():
    """codebook_params: the model's active parameters for a codebook i-quant format (the memory plan's, else the
    model's quant), 0 for any other; an MoE model's active count (3.35B of Qwen3 30B-A3B's 30.5B), its total when
    the active count is unknown, and 0 when neither is known."""
    hw = _hw([_gpu("GeForce RTX 3090", "nvidia", 936.0)])
    moe = CATALOG["qwen3-30b-a3b"]
    assert moe.active_params < moe.params

    def cb(model, fmt):
        return speed.step_inputs("llama.cpp", model, _mem(layers=model.layers or 32, fmt=fmt), hw,
                                 avg_context=1000, threads=8).codebook_params

    assert cb(moe, "IQ3_XXS") == moe.active_params
    assert cb(moe, "Q4_K_M") == 0.0
    assert cb(replace(moe, quant="UD-IQ2_M"), "") == moe.active_params
    dense = CATALOG["llama-3.1-8b-instruct"]
    assert cb(replace(dense, active_params=0), "IQ2_XS") == dense.params
    assert cb(replace(dense, active_params=0, params=0), "IQ2_XS") == 0.0


def test_a_codebook_plans_floor_is_its_active_params_at_the_gpus_peak():
    """The step of an IQ2_M 8B on an RTX 3090: weights_s + codebook_s = max(bytes / (e x 936 GB/s), 8.03B x f /
    the 3090's peak) (step_parts), the floor binding there."""
    model = CATALOG["llama-3.1-8b-instruct"]
    hw = _hw([_gpu("GeForce RTX 3090", "nvidia", 936.0)])
    p = speed.step_inputs("llama.cpp", model, _mem(weights_bytes=2_900_000_000, fmt="IQ2_M"), hw, avg_context=1000,
                          threads=8).parts()
    floor = model.active_params * F / capacity.gpu_peak_flops("GeForce RTX 3090", 936.0)
    assert floor > 2.9e9 / (CUDA.efficiency * CUDA.read_gbs(936) * 1e9)
    assert p.weights_s + p.codebook_s == pytest.approx(floor, rel=1e-12)


def test_tensor_parallel_without_a_layer_count_adds_no_all_reduce():
    """A model whose layer count is unknown (0): layers 0, so tp_comm_seconds adds nothing (not one layer's
    all-reduces); with 80 layers on the same 2 GPUs over plain PCIe: 2 x 80 all-reduces."""
    model = replace(CATALOG["llama-3.1-8b-instruct"], layers=0)
    gpus = [_gpu("GeForce RTX 3090", "nvidia", 936.0)] * 2
    si = speed.step_inputs("vllm", model, _mem(layers=32, tp=2), _hw(gpus), avg_context=1000, threads=8)
    assert (si.layers, si.tensor_parallel, si.tp_link, si.gpu_bandwidth_gbs) == (0, 2, "pcie", 1872.0)
    assert si.parts().comm_s == 0.0
    si80 = speed.step_inputs("vllm", replace(model, layers=80), _mem(layers=32, tp=2), _hw(gpus), avg_context=1000,
                             threads=8)
    assert si80.parts().comm_s == pytest.approx(2 * 80 * speed.allreduce_seconds("pcie", 2), rel=1e-12)


# --- fit_codebook --------------------------------------------------------------------------------------------------
# Points (bytes, 1 GB/s, tokens/s, params, peak) on a line of e = 1 and t0 = 1 ms: a point's read is bytes / 1e9 s,
# its a = params / peak s per FLOP-per-weight; the fit minimises sum ((f a + t0) / t - 1)^2 over the binding points,
# whose solution on one point is f = (t - t0) / a.


def _cb(read_ms: float, a_ms: float, t_ms: float) -> tuple:
    return (read_ms * 1e6, 1.0, 1000 / t_ms, a_ms * 1e3, 1e6)


def test_fit_codebook_points_without_the_older_build_field():
    """5-field points (no older-build extra: 0 ms, not 1): one point above its read (t 51 ms = 1 + 50, read 40 ms,
    a 1 ms: f = 50, though t - t0 < 2 x read) and one read-bound point (t = t0 + read, not above it: left out)."""
    pts = [_cb(40, 1, 51), _cb(200, 1, 201)]
    assert speed.fit_codebook(pts, 1.0, 1.0) == pytest.approx(50.0, rel=1e-9)


def test_fit_codebook_a_floor_below_one_flop_per_weight():
    """f < 1: a point whose measured step above t0 (3 ms) is shorter than its a (4 ms) but longer than its read
    (2 ms) binds at f = 3 / 4."""
    assert speed.fit_codebook([_cb(2, 4, 4)], 1.0, 1.0) == pytest.approx(0.75, rel=1e-9)


def test_fit_codebook_iterates_to_the_points_the_floor_binds():
    """Two points above their read, A (read 40 ms, a 1 ms, t 51 ms: (t - t0) / a = 50) and C (read 10 ms, a 1 ms,
    t 13 ms: 12): their joint fit (weights (a / t)^2: 1/51^2 and 1/13^2) is ~14.3, which leaves A read-bound
    (14.3 x 1 < 40), so the fit over C alone: 12, which binds C (12 > 10) and not A: the fixed point."""
    pts = [_cb(40, 1, 51), _cb(10, 1, 13)]
    w_a, w_c = (1 / 51) ** 2, (1 / 13) ** 2
    joint = (w_a * 50 + w_c * 12) / (w_a + w_c)
    assert 10 < joint < 40
    assert speed.fit_codebook(pts, 1.0, 1.0) == pytest.approx(12.0, rel=1e-9)


def test_fit_codebook_starts_from_the_points_above_their_read():
    """The first guess is the points measured above their read, not all of them: A (read 2 ms, a 1 ms, t 4 ms: 3,
    above its read) and B, measured faster than its read (read 2 ms, a 0.5 ms, t 1.25 ms: 0.5). From A alone f = 3,
    which does not bind B (3 x 0.5 < 2): 3. From both the weighted fit (~1.2) binds neither, which would give 0."""
    pts = [_cb(2, 1, 4), _cb(2, 0.5, 1.25)]
    w_a, w_b = (1 / 4) ** 2, (0.5 / 1.25) ** 2
    assert (w_a * 3 + w_b * 0.5) / (w_a + w_b) < 2
    assert speed.fit_codebook(pts, 1.0, 1.0) == pytest.approx(3.0, rel=1e-9)


# --- the codebook floor's defaults ---------------------------------------------------------------------------------


def test_no_codebook_weights_no_floor_whatever_the_peak():
    """step_seconds, single_stream_tokens_per_s and aggregate_tokens_per_s without codebook_params: the read alone
    even at a peak of 1 kFLOP/s (where one codebook weight's 56.3 FLOP would take 56 ms): 1 GB at 0.736 x 1 TB/s +
    t0."""
    step = 1e9 / (CUDA.efficiency * CUDA.read_gbs(1000) * 1e9) + CUDA.t0_ms / 1000
    assert speed.step_seconds(1e9, 1000, "cuda", peak_flops=1e3) == pytest.approx(step, rel=1e-12)
    assert speed.single_stream_tokens_per_s(1e9, 0, 1000, "cuda", peak_flops=1e3) == pytest.approx(1 / step,
                                                                                                  rel=1e-12)
    assert speed.aggregate_tokens_per_s(1e9, 0, 1000, "cuda", 1, peak_tflops=1e-9) == pytest.approx(1 / step,
                                                                                                   rel=1e-12)


def test_codebook_weights_without_a_peak_no_floor():
    """codebook_floor_s is 0 when the peak is unknown: step_seconds, single_stream_tokens_per_s and
    aggregate_tokens_per_s with codebook weights and no peak (peak_flops, peak_tflops) are the read alone."""
    step = 1e9 / (CUDA.efficiency * CUDA.read_gbs(1000) * 1e9) + CUDA.t0_ms / 1000
    assert speed.step_seconds(1e9, 1000, "cuda", codebook_params=8e9) == pytest.approx(step, rel=1e-12)
    assert speed.single_stream_tokens_per_s(1e9, 0, 1000, "cuda", codebook_params=8e9) == pytest.approx(
        1 / step, rel=1e-12)
    assert speed.aggregate_tokens_per_s(1e9, 0, 1000, "cuda", 1, codebook_params=8e9) == pytest.approx(1 / step,
                                                                                                       rel=1e-12)


def test_forecast_and_step_parts_defaults_add_no_floor():
    """forecast and step_parts without codebook_params: no codebook floor even at a GPU peak of 1 kFLOP/s (where
    one weight's 56.3 FLOP would be 56 ms): one stream is t0 + 1 GB / (0.736 x 1 TB/s), 544 tokens/s."""
    kw = dict(weights_bytes=1e9, kv_bytes_per_stream=0.0, gpu_fraction=1.0, gpu_bandwidth_gbs=1000.0,
              host_bandwidth_gbs=100.0, active_params=1e9, peak_flops=1e3)
    step = 1e9 / (CUDA.efficiency * CUDA.read_gbs(1000) * 1e9) + CUDA.t0_ms / 1000
    assert speed.step_parts(CUDA, speed.backend_params("cpu"), **kw).single_s() == pytest.approx(step, rel=1e-12)
    fc = speed.forecast("cuda", **kw, streams=1, prompt_tokens=0)
    assert fc.single_stream_tokens_per_s == round(1 / step, 1)


@pytest.mark.parametrize("tp, layers", [(None, 80), (2, None)])
def test_forecast_and_step_parts_defaults_are_no_tensor_parallel(tp, layers):
    """tensor_parallel defaults to 1 and layers to 0 (unknown): either alone adds no all-reduce (tp_comm_seconds
    needs tensor parallel > 1 and a layer count), so the step is the one without them."""
    kw = dict(weights_bytes=1e9, kv_bytes_per_stream=0.0, gpu_fraction=1.0, gpu_bandwidth_gbs=1000.0,
              host_bandwidth_gbs=100.0, active_params=1e9, peak_flops=1e15)
    extra = {k: v for k, v in (("tensor_parallel", tp), ("layers", layers)) if v is not None}
    vllm = speed.backend_params("vllm")
    step = 1e9 / (vllm.efficiency * vllm.read_gbs(1000) * 1e9) + vllm.t0_ms / 1000
    parts = speed.step_parts(vllm, speed.backend_params("cpu"), **kw, **extra)
    assert parts.comm_s == 0.0 and parts.single_s() == pytest.approx(step, rel=1e-12)
    fc = speed.forecast("vllm", **kw, **extra, streams=1, prompt_tokens=0)
    assert fc.single_stream_tokens_per_s == round(1 / step, 1)


def test_mean_context_is_prompt_and_half_the_output_capped_at_the_request_context():
    """speed.mean_context: what a decode step reads on average (the plan's roofline, forecast and the simulator)."""
    from types import SimpleNamespace as NS
    wl = NS(prompt_tokens=800, output_tokens=601)
    assert speed.mean_context(NS(context_per_request=4096), wl) == 800 + 300
    assert speed.mean_context(NS(context_per_request=1000), wl) == 1000
