"""The per-backend speed model wired into plans and bench (issue 13): decode per user and TTFT at the workload's
concurrency, its stated error, and bench's finding when a measurement falls outside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackgen.plan import speed
from stackgen.run.bench import RequestResult, summarize

POINTS = yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml").read_text())["points"]
GIB = 1024**3


def _fc(streams=1, gpu_fraction=1.0, backend="cuda", peak=165e12):
    return speed.forecast(backend, weights_bytes=4.6 * GIB, kv_bytes_per_stream=64 * 2**20, streams=streams,
                          gpu_fraction=gpu_fraction, gpu_bandwidth_gbs=1008, host_bandwidth_gbs=60,
                          active_params=8e9, peak_flops=peak, prompt_tokens=1000)


@pytest.mark.parametrize("backend", sorted(b for b, v in speed.BACKENDS.items() if v.fitted_on))
def test_stated_error_covers_every_public_point_of_the_backend(backend):
    """Backend.error is what the model claims: every point of that backend (fitted and held out, outliers aside)
    lies within it, and it is not padded past the worst point by more than 5 points."""
    errs = [abs(speed.single_stream_tokens_per_s(p["bytes_mib"] * 2**20, 0, p["bandwidth_gbs"], backend)
                / p["tokens_per_s"] - 1) for p in POINTS if p["backend"] == backend and not p.get("outlier")]
    b = speed.BACKENDS[backend]
    assert max(errs) <= b.error <= max(max(errs), 0.10) + 0.05


def test_per_user_speed_falls_and_aggregate_rises_with_streams():
    one, four = _fc(1), _fc(4)
    assert four.per_user_tokens_per_s < one.per_user_tokens_per_s
    assert one.aggregate_tokens_per_s < four.aggregate_tokens_per_s < 4 * one.aggregate_tokens_per_s
    # one step = weights / (e x BW) + t0 (+ KV): the consumer CUDA fit on 4.6 GiB + 64 MiB at 1008 GB/s
    b = speed.BACKENDS["cuda"]
    t = (4.6 * GIB + 64 * 2**20) / (b.efficiency * 1008e9) + b.t0_ms / 1000
    assert one.single_stream_tokens_per_s == pytest.approx(1 / t, rel=0.01)


def test_layers_in_system_ram_slow_decode_and_widen_the_error():
    full, half = _fc(1, 1.0), _fc(1, 0.5)
    assert half.per_user_tokens_per_s < full.per_user_tokens_per_s / 4  # 60 GB/s RAM vs 1008 GB/s VRAM
    assert half.error == max(speed.BACKENDS["cuda"].error, speed.BACKENDS["cpu"].error)


def test_compute_knee_and_ttft():
    many = _fc(512, peak=10e12)
    assert many.bound == "compute"
    assert many.aggregate_tokens_per_s == pytest.approx(speed.BACKENDS["cuda"].batch_mfu * 10e12 / (2 * 8e9), rel=0.01)
    one = _fc(4)
    prefill = speed.BACKENDS["cuda"].prefill_mfu * 165e12 / (2 * 8e9)
    assert one.ttft_s == pytest.approx(1000 / prefill + 1 / one.single_stream_tokens_per_s, rel=0.02)
    assert one.ttft_all_s > 3.9 * (1000 / prefill)  # the last of 4 prompts waits for the other three


def test_plan_carries_the_forecast_at_the_workload_concurrency(tmp_path):
    from tools.stacks import plan_for
    sp = plan_for(tmp_path, """
version: 1
hardware: rtx-4090
workload: {concurrent_users: 4, context_tokens: 8192}
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}
""").services[0]
    f = sp.speed
    assert f.backend == "cuda" and f.streams == 4 and f.error == speed.BACKENDS["cuda"].error
    assert f.per_user_tokens_per_s < f.single_stream_tokens_per_s and f.ttft_all_s > f.ttft_s
    doc = sp.to_json()["speed"]
    assert doc["per_user_tokens_per_s"] == f.per_user_tokens_per_s and doc["backend"] == "cuda"


def _bench(decode_tps, forecast):
    rs = []
    for i in range(4):
        rs.append(RequestResult(ok=True, start=0.0, ttft_s=0.1, tokens=33,
                                token_times=[0.1 + k / decode_tps for k in range(33)]))
    return summarize(rs, wall_s=1.0, users=4, engine="llama.cpp", forecast=forecast)


def test_bench_finds_decode_outside_the_stated_error_only():
    f = _fc(4)
    inside = _bench(f.per_user_tokens_per_s * (1 - f.error / 2), f)
    outside = _bench(f.per_user_tokens_per_s * (1 - 2 * f.error), f)
    assert inside.predicted_per_user_tokens_per_s == f.per_user_tokens_per_s
    assert not any("speed model predicts" in x for x in inside.findings)
    assert any("slower than the speed model predicts" in x for x in outside.findings)


def test_datacenter_nvidia_gpus_use_the_datacenter_cuda_line():
    """The hardware profile's gpus[].tier picks the CUDA line (issue 13): consumer and datacenter GPUs were not one
    line, the per-token overhead dominates on HBM GPUs."""
    assert speed.backend_for(None, "nvidia", "datacenter") == "cuda-datacenter"
    assert speed.backend_for(None, "nvidia", "consumer") == speed.backend_for(None, "nvidia") == "cuda"
    assert speed.backend_for(None, "nvidia", "workstation") == "cuda"
    assert speed.backend_for("vllm", "nvidia", "datacenter") == "vllm"  # an engine's own kernels keep their fit
    assert speed.backend_for(None, "amd", "datacenter") == "rocm"


def test_h200_plan_is_overhead_bound_not_bandwidth_bound(tmp_path):
    """Llama 3.1 8B Q4_K_M on one H200 (4.8 TB/s): the old through-origin line said ~700 tokens/s, public llama.cpp
    figures for 8B Q4 on Hopper are ~150-200; the datacenter line (t0 ~3 ms) keeps the forecast there."""
    from tools.stacks import plan_for
    sp = plan_for(tmp_path, """
version: 1
hardware: h200
workload: {concurrent_users: 1, context_tokens: 8192}
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}
""").services[0]
    assert sp.speed.backend == "cuda-datacenter"
    assert 150 <= sp.speed.single_stream_tokens_per_s <= 260


def test_ttft_states_its_public_check():
    """The plan's TTFT carries how many public prefill points check it and their error (speed.PREFILL_CHECK); a backend
    without public prefill points says so; a CPU-only forecast carries the CPU's check."""
    gpu, cpu_only, vllm = _fc(1), _fc(1, gpu_fraction=0.0), _fc(1, backend="vllm")
    n, err = speed.PREFILL_CHECK["cuda"]
    assert (gpu.ttft_checked_on, gpu.ttft_error) == (n, err)
    assert f"TTFT +-{err * 100:.0f}%, checked on {n} public prefill points" in gpu.text()
    assert (cpu_only.ttft_checked_on, cpu_only.ttft_error) == speed.PREFILL_CHECK["cpu"]
    assert vllm.ttft_checked_on == 0 and "TTFT not checked: no public prefill point for the vllm backend" in vllm.text()
    assert "not yet checked" not in gpu.text()


def test_batched_decode_knee_is_not_the_prefill_rate():
    """A decode step of many single-token sequences turns compute-bound at batch_mfu (0.35), not at the fitted prefill
    MFU (0.93 on CUDA): with the prefill's, llama 1B F16 on an RTX 3090 at b = 64 was over-predicted by 42%
    (service_curve.yaml); the prefill rate itself still uses prefill_mfu."""
    b = speed.BACKENDS["cuda"]
    assert b.batch_mfu == 0.35 and b.prefill_mfu > 2 * b.batch_mfu
    many = _fc(512, peak=10e12)
    assert many.aggregate_tokens_per_s == pytest.approx(0.35 * 10e12 / (2 * 8e9), rel=0.01)
    assert speed.prefill_tokens_per_s(8e9, 10, "cuda") == pytest.approx(b.prefill_mfu * 10e12 / (2 * 8e9))


def test_cpu_knee_has_its_own_mfu_and_ggml_decodes_in_tiles_of_four():
    """The CPU backend's batch_mfu is its own (0.47, the quickstart's 4-stream aggregate here), GPUs keep 0.35. On a
    ggml engine (decode_tile 4) the streams past whole tiles of 4 decode one pass each, as long as a stream alone:
    1-3 streams keep the single-stream aggregate, 4 share one pass (the roofline), 5 = a tile plus a lone pass."""
    assert speed.backend_params("cpu").batch_mfu == speed.CPU_BATCH_MFU == 0.47
    assert all(b.batch_mfu == 0.35 for name, b in speed.BACKENDS.items() if name != "cpu")

    def cpu(n, tile=4):
        return speed.forecast("cpu", weights_bytes=246.6e6, kv_bytes_per_stream=0, streams=n, gpu_fraction=0,
                              gpu_bandwidth_gbs=0, host_bandwidth_gbs=27.3, active_params=268.1e6,
                              peak_flops=2 * 60e9, prompt_tokens=256, decode_tile=tile)
    one = cpu(1)
    step1 = 246.6e6 / (0.606 * 27.3e9)  # the fitted CPU efficiency, no t0
    assert one.aggregate_tokens_per_s == pytest.approx(1 / step1, abs=0.06)
    for n in (2, 3):
        assert cpu(n).aggregate_tokens_per_s == pytest.approx(one.aggregate_tokens_per_s, abs=0.1)
        assert cpu(n).bound == "memory bandwidth"
    tile = 2 * 268.1e6 * 4 / (0.47 * 120e9)  # compute-bound: 4 x 2 x params at 0.47 of 2 x 60 GFLOP/s
    assert cpu(4).aggregate_tokens_per_s == pytest.approx(4 / tile, abs=0.1) and cpu(4).bound == "compute"
    assert cpu(4).aggregate_tokens_per_s == cpu(4, tile=0).aggregate_tokens_per_s  # a whole tile: the roofline
    assert cpu(5).aggregate_tokens_per_s == pytest.approx(5 / (tile + step1), abs=0.1)
    assert cpu(8).aggregate_tokens_per_s == pytest.approx(cpu(4).aggregate_tokens_per_s, abs=0.1)
    assert cpu(2, tile=0).aggregate_tokens_per_s > 1.5 * cpu(2).aggregate_tokens_per_s  # the roofline alone
