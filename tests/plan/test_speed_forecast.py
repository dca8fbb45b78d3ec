"""The per-backend speed model wired into plans and bench (issue 13): decode per user and TTFT at the workload's
concurrency, its stated error, and bench's finding when a measurement falls outside it."""

from __future__ import annotations

from pathlib import Path

import math

import pytest
import yaml

from public_logs import point_line, predict_decode
from stackgen.plan import speed
from stackgen.run.bench import RequestResult, summarize

POINTS = yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml").read_text())["points"]
GIB = 1024**3


def _fc(streams=1, gpu_fraction=1.0, backend="cuda", peak=165e12):
    return speed.forecast(backend, weights_bytes=4.6 * GIB, kv_bytes_per_stream=64 * 2**20, streams=streams,
                          gpu_fraction=gpu_fraction, gpu_bandwidth_gbs=1008, host_bandwidth_gbs=60,
                          active_params=8e9, peak_flops=peak, prompt_tokens=1000)


@pytest.mark.parametrize("backend", sorted(b for b, v in speed.BACKENDS.items() if v.fitted_on))
def test_stated_error_covers_nine_in_ten_public_points_of_the_backend(backend):
    """Backend.error is what the model claims: 9 in 10 of that backend's points (fitted and held out, outliers
    aside; speed.ERROR_SHARE) lie within it, and it is not padded past that share's error by more than 5 points."""
    errs = sorted(abs(predict_decode(p) / p["tokens_per_s"] - 1)
                  for p in POINTS if point_line(p) == backend and not p.get("outlier"))
    b = speed.BACKENDS[backend]
    share = errs[math.ceil(speed.ERROR_SHARE * len(errs)) - 1]  # the error 9 in 10 points are within
    assert sum(e <= b.error for e in errs) >= speed.ERROR_SHARE * len(errs)
    assert share <= b.error <= max(share, 0.10) + 0.05


def test_per_user_speed_falls_and_aggregate_rises_with_streams():
    one, four = _fc(1), _fc(4)
    assert four.per_user_tokens_per_s < one.per_user_tokens_per_s
    assert one.aggregate_tokens_per_s < four.aggregate_tokens_per_s < 4 * one.aggregate_tokens_per_s
    # one step = weights / (e x BW) + t0 (+ KV): the consumer CUDA fit on 4.6 GiB + 64 MiB at 1008 GB/s
    b = speed.BACKENDS["cuda"]
    t = (4.6 * GIB + 64 * 2**20) / (b.efficiency * b.read_gbs(1008) * 1e9) + b.t0_ms / 1000
    assert one.single_stream_tokens_per_s == pytest.approx(1 / t, rel=0.01)


def test_layers_in_system_ram_slow_decode_and_widen_the_error():
    full, half = _fc(1, 1.0), _fc(1, 0.5)
    assert half.per_user_tokens_per_s < full.per_user_tokens_per_s / 4  # 60 GB/s RAM vs 1008 GB/s VRAM
    assert half.error == max(speed.BACKENDS["cuda"].error, speed.BACKENDS["cpu"].error, speed.PARTIAL_OFFLOAD_ERROR)


def test_compute_knee_and_ttft():
    many = _fc(512, peak=10e12)
    assert many.bound == "compute"
    # far past the knee each token costs its compute: the aggregate approaches batch_mfu x peak / (2 x params)
    assert many.aggregate_tokens_per_s == pytest.approx(speed.BACKENDS["cuda"].batch_mfu * 10e12 / (2 * 8e9), rel=0.05)
    assert many.aggregate_tokens_per_s < speed.BACKENDS["cuda"].batch_mfu * 10e12 / (2 * 8e9)
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
    """The hardware profile's gpus[].tier and .memory_type pick the CUDA line (issue 13; confirm-tier): consumer and
    HBM datacenter GPUs are not one line, the per-token overhead dominates on HBM GPUs; GDDR datacenter GPUs decode
    as the GeForce/workstation silicon they share."""
    assert speed.backend_for(None, "nvidia", "datacenter") == "cuda-datacenter"
    # confirm-tier: the memory, not the tier, picks the line; a datacenter GPU whose memory is not stated keeps its tier's
    assert speed.backend_for(None, "nvidia", "datacenter", "gddr") == "cuda"
    assert speed.backend_for(None, "nvidia", "datacenter", "hbm") == "cuda-datacenter"
    assert speed.backend_for(None, "nvidia", "consumer", "hbm") == "cuda"
    assert speed.backend_for("vllm", "nvidia", "datacenter", "gddr") == "vllm"
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
    # vLLM's TTFT is checked on its one-request TTFT points (6, largest error 88%: 4 x RTX 3090 at TP 4)
    assert (vllm.ttft_checked_on, vllm.ttft_error) == speed.PREFILL_CHECK["vllm"] == (6, 0.90)
    assert "TTFT +-90%, checked on 6 public prefill points" in vllm.text()
    dc = _fc(1, backend="cuda-datacenter")
    assert dc.ttft_checked_on == 0 and "TTFT not checked: no public prefill point for the cuda-datacenter backend" in dc.text()
    assert "not yet checked" not in gpu.text()


def test_batched_decode_knee_is_not_the_prefill_rate():
    """A decode step of b single-token sequences costs each token past the first its compute at the batch MFU (CUDA
    block-quantized 0.21, 16-bit 0.90, fitted on service_curve.yaml), not at the fitted prefill MFU (0.93): with the
    prefill's, llama 8B Q4_0 on an RTX 3090 at b = 8 was over-predicted 2x; the prefill rate still uses prefill_mfu."""
    b = speed.BACKENDS["cuda"]
    assert b.prefill_mfu > 4 * b.batch_mfu and b.batch_mfu_for("16bit") > 4 * b.batch_mfu_for("quantized")
    one, two = _fc(1, peak=10e12), _fc(2, peak=10e12)
    # the second stream adds its KV read and one token's compute to the step
    extra = 1 / two.per_user_tokens_per_s - 1 / one.per_user_tokens_per_s
    assert extra == pytest.approx(2 * 8e9 / (b.batch_mfu * 10e12), rel=0.05)
    assert speed.prefill_tokens_per_s(8e9, 10, "cuda") == pytest.approx(b.prefill_mfu * 10e12 / (2 * 8e9))


# ---- MoE at concurrency: a step of b tokens reads the union of the experts they route to (speed.ExpertRouting) ----

def _moe_fc(streams, experts):
    return speed.forecast("vllm", weights_bytes=3.35e9 * 2, kv_bytes_per_stream=48 * 2**20, streams=streams,
                          gpu_fraction=1.0, gpu_bandwidth_gbs=1008, host_bandwidth_gbs=60, active_params=3.35e9,
                          peak_flops=165e12, prompt_tokens=1000, experts=experts)


QWEN3_30B = speed.ExpertRouting.of(30.53e9, 3.35e9, 128, 8)  # profiles/models.yaml's qwen3-30b-a3b


def test_dense_models_have_no_routing_and_keep_their_forecast():
    assert speed.ExpertRouting.of(8.03e9, 8.03e9, None, None) is None
    assert speed.ExpertRouting.of(8.03e9, 8.03e9, 8, 8) is None  # every expert active: nothing to route
    for n in (1, 4, 64):
        assert _moe_fc(n, None) == speed.forecast(
            "vllm", weights_bytes=3.35e9 * 2, kv_bytes_per_stream=48 * 2**20, streams=n, gpu_fraction=1.0,
            gpu_bandwidth_gbs=1008, host_bandwidth_gbs=60, active_params=3.35e9, peak_flops=165e12, prompt_tokens=1000)
        assert speed.aggregate_tokens_per_s(4e9, 1e7, 1000, "cuda", n, experts=None) == \
            speed.aggregate_tokens_per_s(4e9, 1e7, 1000, "cuda", n)
    assert speed.step_weights_bytes(4e9, 64) == 4e9


def test_one_stream_reads_one_tokens_active_weights():
    assert QWEN3_30B.touched(1) == pytest.approx(8 / 128) and QWEN3_30B.read_factor(1) == pytest.approx(1.0)
    moe, dense = _moe_fc(1, QWEN3_30B), _moe_fc(1, None)
    assert moe.single_stream_tokens_per_s == dense.single_stream_tokens_per_s
    assert moe.aggregate_tokens_per_s == dense.aggregate_tokens_per_s
    assert speed.aggregate_tokens_per_s(6.7e9, 0, 1008, "vllm", 1, experts=QWEN3_30B) == \
        speed.aggregate_tokens_per_s(6.7e9, 0, 1008, "vllm", 1)


def test_many_streams_read_every_expert():
    """As b grows every expert is touched: a step reads all the weights, params / active_params times one token's."""
    assert QWEN3_30B.touched(10_000) == pytest.approx(1.0)
    assert QWEN3_30B.read_factor(10_000) == pytest.approx(30.53 / 3.35)
    factors = [QWEN3_30B.read_factor(b) for b in (1, 2, 4, 8, 16, 64, 256)]
    assert factors == sorted(factors) and factors[-1] < 30.53 / 3.35  # grows with b, never past the whole model
    # memory-bound below the knee, the MoE step is slower than the dense one that reads only active weights
    assert _moe_fc(16, QWEN3_30B).aggregate_tokens_per_s < _moe_fc(16, None).aggregate_tokens_per_s


def test_deepseek_r1_at_16_streams_touches_40_percent_of_the_experts():
    """vllm_concurrency.yaml's DeepSeek-R1 point: 16 tokens route to 1 - (1 - 8/256)^16 = 39.8% of each layer's
    256 routed experts; with the experts' share solved from 671e9 / 37e9 parameters a step reads 7.49x one token's
    active weights."""
    r1 = speed.ExpertRouting.of(671e9, 37e9, 256, 8)
    assert r1.touched(16) == pytest.approx(1 - (1 - 8 / 256) ** 16) == pytest.approx(0.398, abs=0.001)
    assert r1.share == pytest.approx((1 - 37 / 671) / (1 - 8 / 256))
    assert r1.read_factor(16) == pytest.approx(7.49, abs=0.01)


def test_expert_share_comes_from_the_stated_active_count_or_facts_90_percent():
    """A catalog model's share solves active = params x (1 - s + s x k/E) (Mixtral 8x7B: 45.1 of 46.7 B in
    experts); a GGUF model's active count came from facts.py's 90% assumption, which it gives back; without an
    active count, the same 90%."""
    mixtral = speed.ExpertRouting.of(46.70e9, 12.88e9, 8, 2)
    assert mixtral.share * 46.70 == pytest.approx((46.70 - 12.88) / (1 - 2 / 8) , rel=1e-9)
    params = 30e9
    gguf_active = int(params * (8 / 128) * 0.9 + params * 0.1)  # facts.ModelFacts from GGUF metadata
    assert speed.ExpertRouting.of(params, gguf_active, 128, 8).share == pytest.approx(speed.MOE_EXPERT_SHARE, rel=1e-6)
    assert speed.ExpertRouting.of(params, params, 128, 8).share == speed.MOE_EXPERT_SHARE


def test_moe_plan_forecast_reads_the_union_of_experts(tmp_path, monkeypatch):
    """A planned MoE service at 8 users (qwen3-30b-a3b: 8 of 128 experts per token): 8 tokens touch 40% of each
    layer's experts, a step reads 3.95x one token's active weights, so the plan's aggregate falls below the dense
    reading of active weights only, while one stream's figure stays the same."""
    from tools.stacks import plan_for
    plan = plan_for(tmp_path, """
version: 1
hardware: rtx-4090
workload: {concurrent_users: 8, context_tokens: 8192}
services:
  chat: {model: qwen3-30b-a3b, engine: llama.cpp, quant: Q4_K_M}
""")
    sp, hw = plan.services[0], plan.hardware
    m, wl = sp.model, sp.workload
    assert m.is_moe and (m.experts_total, m.experts_active) == (128, 8) and sp.speed.streams == 8
    assert speed.ExpertRouting.of(m.params, m.active_params, 128, 8).read_factor(8) == pytest.approx(3.95, abs=0.01)

    def again():
        return speed.service_forecast(sp.engine, m, sp.memory, hw, users=8, prompt_tokens=wl.prompt_tokens,
                                      threads=sp.threads, avg_context=min(sp.memory.context_per_request,
                                                                          wl.prompt_tokens + wl.output_tokens // 2),
                                      output_tokens=wl.output_tokens)
    moe = again()
    assert moe == sp.speed  # what the plan prints
    monkeypatch.setattr(speed.ExpertRouting, "of", classmethod(lambda cls, *a: None))  # the dense reading
    dense = again()
    assert moe.single_stream_tokens_per_s == dense.single_stream_tokens_per_s
    assert moe.aggregate_tokens_per_s < 0.6 * dense.aggregate_tokens_per_s


def test_a_16bit_plan_decodes_at_the_backends_16bit_efficiency(write_stack):
    """The weights format of the memory plan picks the weight kind (speed.weight_kind): the same llama.cpp service on
    an RTX 4090 planned at F16 decodes at the consumer CUDA line's efficiency_16bit, at Q4_K_M at its efficiency;
    service_forecast with the kind swapped moves the single-stream figure by the ratio of the two efficiencies."""
    from dataclasses import replace

    from stackgen.host.facts import HostFacts
    from stackgen.plan import resolve
    from stackgen.spec.profiles import load_profiles
    from stackgen.spec.stack import load_stack

    hw = load_profiles().hardware["rtx-4090"]
    b = speed.BACKENDS["cuda"]
    for quant, eff in (("F16", b.efficiency_16bit), ("Q4_K_M", b.efficiency)):
        path = write_stack("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 1, context_tokens: 4096}\n"
                           f"services:\n  s: {{model: llama-3.2-3b-instruct, engine: llama.cpp, quant: {quant}}}\n")
        sp = resolve.resolve(load_stack(path), HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]
        assert speed.weight_kind(sp.memory.weights_format) == ("16bit" if quant == "F16" else "quantized")
        other = replace(sp.memory, weights_format="Q4_K_M" if quant == "F16" else "F16")
        kw = dict(users=1, prompt_tokens=sp.workload.prompt_tokens, threads=sp.threads,
                  avg_context=min(sp.memory.context_per_request,
                                  sp.workload.prompt_tokens + sp.workload.output_tokens // 2),
                  output_tokens=sp.workload.output_tokens)
        mine = speed.service_forecast("llama.cpp", sp.model, sp.memory, hw, **kw)
        swapped = speed.service_forecast("llama.cpp", sp.model, other, hw, **kw)
        assert mine == sp.speed
        assert (mine.single_stream_tokens_per_s > swapped.single_stream_tokens_per_s) == (quant == "F16"), eff


def test_cpu_knee_has_its_own_mfu_and_ggml_decodes_in_tiles_of_four():
    """The CPU backend's batch_mfu is its own (0.47, the quickstart's 4-stream aggregate here), GPUs keep 0.35. On a
    ggml engine (decode_tile 4) the streams past whole tiles of 4 decode one pass each, as long as a stream alone:
    1-3 streams keep the single-stream aggregate, 4 share one pass (the roofline), 5 = a tile plus a lone pass."""
    assert speed.backend_params("cpu").batch_mfu == speed.CPU_BATCH_MFU == 0.47
    assert all(b.batch_mfu == 0.35 for name, b in speed.BACKENDS.items() if name not in ("cpu", "cuda"))

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
    # without tiles (a non-ggml engine on the CPU) the step is the memory time plus each extra token's compute
    untiled = step1 + 3 * 2 * 268.1e6 / (0.47 * 120e9)
    assert cpu(4, tile=0).aggregate_tokens_per_s == pytest.approx(4 / untiled, abs=0.1)
    assert cpu(5).aggregate_tokens_per_s == pytest.approx(5 / (tile + step1), abs=0.1)
    assert cpu(8).aggregate_tokens_per_s == pytest.approx(cpu(4).aggregate_tokens_per_s, abs=0.1)
    assert cpu(2, tile=0).aggregate_tokens_per_s > 1.2 * cpu(2).aggregate_tokens_per_s  # untiled: no lone passes


@pytest.mark.parametrize("quant,tiled", [("Q4_K_M", True), ("F16", False)])
def test_cpu_tiles_apply_to_block_quantized_weights_only(tmp_path, quant, tiled):
    """ggml repacks block-quantized weights into 4-row tiles, not F16 (benchmarks/results/cpu_aggregate.md: the
    quickstart's model requantized to F16 decoded 4 streams 34-40% below the tile model). A Q4_K_M CPU plan at 2
    users keeps the single stream's aggregate (two lone passes); an F16 one is the memory time plus the second
    token's compute, faster in aggregate than one stream; the fleet curve takes the same step."""
    from stackgen.plan.capacity import service_curve
    from stackgen.plan.speed import forecast_at
    from tools.stacks import plan_for

    plan = plan_for(tmp_path, f"""
version: 1
hardware: cpu-server-64gb
workload: {{concurrent_users: 2, context_tokens: 4096}}
services:
  chat: {{model: llama-3.2-3b-instruct, engine: llama.cpp, quant: {quant}}}
""")
    sp, hw = plan.services[0], plan.hardware
    one, two = forecast_at(sp, hw, 1), forecast_at(sp, hw, 2)
    assert two.streams == 2
    if tiled:
        assert two.aggregate_tokens_per_s == pytest.approx(one.aggregate_tokens_per_s, abs=0.1)
    else:
        assert two.aggregate_tokens_per_s > 1.2 * one.aggregate_tokens_per_s
    assert (service_curve(sp, hw).decode_tile == speed.GGML_CPU_DECODE_TILE) == tiled


def test_the_plan_says_where_queueing_starts(tmp_path):
    """Issue 13's "the point where queueing starts": with every slot decoding, each request costs the engine its
    prompt's prefill plus output tokens / the aggregate at all the slots; past 1 / that many requests per second
    arrivals wait. The plan's forecast carries it (JSON and text) from the same model at all the slots."""
    from tools.stacks import plan_for
    plan = plan_for(tmp_path, """
version: 1
hardware: rtx-4090
workload: {concurrent_users: 2, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}
""")
    sp, hw = plan.services[0], plan.hardware
    fc = sp.speed
    assert fc.slots == sp.memory.parallel >= 2
    full = speed.forecast_at(sp, hw, fc.slots)
    prefill = fc.ttft_s - 1 / fc.single_stream_tokens_per_s
    assert 1 / fc.queue_requests_per_s == pytest.approx(prefill + 300 / full.aggregate_tokens_per_s, rel=0.01)
    assert fc.to_json()["queue_requests_per_s"] == fc.queue_requests_per_s
    assert "requests queue past" in fc.text() and f"all {fc.slots} slots busy" in fc.text()
    # a longer answer holds a slot longer: queueing starts at a lower request rate
    longer = speed.service_forecast(sp.engine, sp.model, sp.memory, hw, users=2, prompt_tokens=1000,
                                    avg_context=1150, threads=sp.threads, output_tokens=600)
    assert longer.queue_requests_per_s < fc.queue_requests_per_s


def test_an_sglang_plan_decodes_on_sglangs_own_line(tmp_path):
    """SGLang plans decode on SGLang's own line (engines/sglang.py speed_backend "sglang", fitted on its public H20
    rows): one step is t0 + the weights at the line's efficiency for their kind + the KV cache at its efficiency,
    and the plan states that line's error and SGLang's own TTFT check (speed.PREFILL_CHECK["sglang"]); the prefill
    rate is vLLM's (the same MFU: no SGLang prefill point is fitted), so the two engines' prompts take as long."""
    from stackgen.plan.memory import _kv_bytes_read
    from tools.stacks import plan_for
    stack = """
version: 1
hardware: h100-80gb
workload: {concurrent_users: 1, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 200}
serve: {api_key_env: CHAT_API_KEY}
services:
  chat: {model: llama-3.1-8b-instruct, engine: %s}
"""
    plan = plan_for(tmp_path / "sg", stack % "sglang")
    sp = plan.services[0]
    vl = plan_for(tmp_path / "vl", stack % "vllm").services[0].speed
    sg, b = sp.speed, speed.BACKENDS["sglang"]
    assert (sg.backend, vl.backend) == ("sglang", "vllm")
    m = sp.memory
    bw = min(g.bandwidth_gbs for g in plan.hardware.gpus) * 1e9 * max(1, m.tensor_parallel)
    kind = speed.weight_kind(m.weights_format or sp.model.quant)
    kv = _kv_bytes_read(sp.model, m, min(m.context_per_request, 1000 + 200 // 2))
    t = m.weights_bytes / (b.efficiency_for(kind) * bw) + kv / (b.efficiency * bw) + b.t0_ms / 1000
    assert sg.single_stream_tokens_per_s == pytest.approx(1 / t, abs=0.06)
    assert (sg.error, sg.fitted_on, sg.ttft_checked_on, sg.ttft_error) == (b.error, 8, *speed.PREFILL_CHECK["sglang"])
    assert (vl.error, vl.ttft_checked_on, vl.ttft_error) == (speed.BACKENDS["vllm"].error, *speed.PREFILL_CHECK["vllm"])
    assert sg.prefill_tokens_per_s == vl.prefill_tokens_per_s
    n, err = speed.PREFILL_CHECK["sglang"]
    assert f"decode +-{b.error * 100:.0f}% for 9 in 10 public points, sglang backend fitted on 8 public points" in sg.text()
    assert f"TTFT +-{err * 100:.0f}%, checked on {n} public prefill points" in sg.text()
