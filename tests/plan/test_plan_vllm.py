"""Worked examples: vLLM's whole memory plan on GPUs, every figure derived by hand from vLLM's sizing rules.

Sources (see /work/shared/reference/engines.md, "Memory", and the comments in stackgen/plan/memory.py):
- vLLM sizes its KV pool as utilization x the device total CUDA reports (torch mem_get_info; nominal - ~0.43 GiB,
  or the profile's runtime_memory_gib) less the weights per rank and the non-KV peak of its profiling run
  (vllm/v1/worker/gpu_worker.py determine_available_memory).
- Non-KV peak per rank: non-torch memory (0.35 GiB consumer, 1.79 GiB datacenter, + 1.79 GiB with TP > 1: vllm
  issue 10517 and PR 10511 logs), a 0.5 GiB CUDA-graph estimate, and the profiling forward pass: 5.95 x
  (hidden + ffn) bytes per batched token plus 1.42 x the f32 logits of max_num_seqs rows (fitted on
  tests/fixtures/public-logs/vllm_memory.yaml).
- max_num_batched_tokens default: 8192 on a >= 70 GiB GPU that is not an A100, else 2048
  (vllm/engine/arg_utils.py _get_default_max_num_batched_tokens_and_seqs).
- KV per token per layer: kv_heads / TP x (head_k + head_v) x dtype bytes (2 for auto/bf16, 1 for fp8), block 16;
  sliding-window layers hold pad16(window + 16) tokens.
- --gpu-memory-utilization: 0.90 (vLLM's default) on a GPU no earlier service uses; else the free share - 0.02.
- System RAM: API server ~2.5 GiB + 2 GiB per worker rank (measured).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]


def test_the_model_facts_the_examples_use():
    assert (M8.layers, M8.hidden, M8.ffn, M8.heads, M8.kv_heads, M8.head_dim_k, M8.vocab) == (
        32, 4096, 14336, 32, 8, 128, 128256)


def gpu(gib: float, runtime: float | None, tier: str, name: str = "H100 80GB HBM3", count: int = 1) -> GPUSpec:
    return GPUSpec(vendor="nvidia", name=name, memory_gib=gib, runtime_memory_gib=runtime, bandwidth_gbs=3000,
                   count=count, tier=tier)


def machine(*gpus: GPUSpec, ram: float = 256) -> HardwareSpec:
    return HardwareSpec(gpus=gpus, memory_gib=ram, memory_bandwidth_gbs=200, cpu=CPUSpec(cores=16))


def wl(users: int, ctx: int = 8192) -> WorkloadSpec:
    return WorkloadSpec(concurrent_users=users, context_tokens=ctx)


def plan(model, hw, workload, weights, budget=None, pins=memory.NO_PINS):
    return memory.plan_vllm(model, workload, hw, budget or memory.initial_budget(hw), weights, "bf16", "test", pins)


def overhead(batched: int, seqs: int, non_torch_gib: float) -> int:
    """Non-KV bytes per rank: (non-torch + 0.5 GiB graphs) + 5.95 x (4096 + 14336) x batched + 1.42 x seqs x
    128256 x 4 (Llama 3.1 8B shape)."""
    act = int(batched * 5.95 * (4096 + 14336) + seqs * 128256 * 4 * 1.42)
    return int((non_torch_gib + 0.5) * GIB + act)


def kv_request(ctx: int, kv_heads: int = 8, bpe: int = 2, layers: int = 32) -> int:
    return layers * ((ctx + 15) // 16 * 16) * kv_heads * 256 * bpe


def test_single_gpu():
    """H100 80GB (runtime total 79.22 GiB per the PR 10511 log), 4 users x 8192, 16 GiB bf16 weights.

    util 0.90 (nobody else on the GPU) -> reserve = int(int(79.22 GiB) x 0.9); batched 8192 (>= 70 GiB, not A100);
    overhead = (1.79 + 0.5) GiB + 5.95 x 18432 x 8192 + 1.42 x 4 x 128256 x 4 bytes; KV 1 GiB per request
    (32 x 8192 x 8 x 256 x 2), 4 requests fit the room left, so no lever. RAM: 2.5 + 2 x 1 GiB."""
    hw = machine(gpu(80, 79.22, "datacenter"))
    p = plan(M8, hw, wl(4), 16 * GIB)
    reserve = int(int(79.22 * GIB) * 0.9)
    oh = overhead(8192, 4, 1.79)
    kv = kv_request(8192)
    assert kv == GIB
    assert reserve - 16 * GIB - oh >= 4 * kv
    assert p.fits
    assert (p.weights_bytes, p.kv_cache_bytes, p.compute_bytes, p.overhead_bytes) == (16 * GIB, 4 * kv, 0, oh)
    assert (p.gpu_bytes, p.host_bytes) == (reserve, int(4.5 * GIB))
    assert (p.gpu_layers, p.total_layers, p.context_per_request, p.parallel, p.kv_cache_type) == (
        32, 32, 8192, 4, "auto")
    assert (p.tensor_parallel, p.pipeline_parallel, p.data_parallel, p.gpu_memory_utilization) == (1, 1, 1, 0.90)
    assert (p.gpu_budget_bytes, p.host_budget_bytes) == (80 * GIB, int(256 * GIB * 0.85))
    assert p.prompt_cache.bytes == 0 and len(p.levers) == 1 and p.levers[0].startswith("prompt cache: vLLM")
    assert "inside the KV pool it allocates once at start (--gpu-memory-utilization), so" in p.levers[0]
    assert p.levers[0].endswith("stay off, so RAM does not grow with traffic")


def test_tensor_parallel_over_two_consumer_gpus():
    """2 x RTX 3090 (runtime 23.58 GiB, vllm issue 10517), 30 GiB of weights, 4 users x 8192.

    TP 1: 30 GiB does not fit int(23.58 GiB) x 0.9 = 21.2 GiB. TP 2: 15 GiB per rank; overhead per rank
    (0.35 + 1.79 NCCL + 0.5) GiB + activations at 2048 batched tokens (< 70 GiB GPU); KV per request per rank
    halves with the KV heads (8 / 2 = 4): 512 MiB, x 4 users fits. Totals are per rank x 2."""
    hw = machine(gpu(24, 23.58, "consumer", "GeForce RTX 3090", count=2))
    p = plan(M8, hw, wl(4), 30 * GIB)
    reserve = int(int(23.58 * GIB) * 0.9)
    oh = overhead(2048, 4, 0.35 + 1.79)
    kv = kv_request(8192, kv_heads=4)
    assert kv == 512 * MIB and reserve - 15 * GIB - oh >= 4 * kv
    assert 30 * GIB > reserve  # TP 1 cannot hold the weights
    assert p.fits and p.tensor_parallel == 2
    assert (p.weights_bytes, p.kv_cache_bytes, p.overhead_bytes, p.gpu_bytes) == (30 * GIB, 4 * kv * 2, 2 * oh,
                                                                                   2 * reserve)
    assert p.host_bytes == int((2.5 + 2 * 2) * GIB)
    assert (p.gpu_memory_utilization, p.kv_cache_type, p.parallel) == (0.90, "auto", 4)
    assert p.levers[0] == "tensor parallel over 2 GPUs to hold the weights and KV cache"


def test_shared_gpu_gets_the_free_share_less_two_points():
    """An earlier service holds 40% of an 80 GiB A100: 48 GiB is free, share 0.6, so
    --gpu-memory-utilization round(0.6 - 0.02, 2) = 0.58 (vLLM refuses to start when utilization x total is more
    than what is free). The A100 keeps 2048 batched tokens (arg_utils excludes it from the 70 GiB tier)."""
    hw = machine(gpu(80, None, "datacenter", "A100-SXM4-80GB"))
    budget = memory.Budget(int(80 * GIB * 0.6), int(200 * GIB))
    p = plan(M8, hw, wl(2), 16 * GIB, budget=budget)
    per_gpu = int((80 - 0.43) * GIB)  # nominal - the 0.43 GiB CUDA reserve
    reserve = int(per_gpu * 0.58)
    assert p.fits and p.gpu_memory_utilization == 0.58
    assert p.gpu_bytes == reserve <= budget.gpu_bytes
    assert p.overhead_bytes == overhead(2048, 2, 1.79)
    assert p.kv_cache_bytes == 2 * GIB and p.gpu_budget_bytes == int(80 * GIB * 0.6)


@pytest.mark.parametrize("free_share,util", [(0.5, 0.48), (0.91, 0.89), (0.92, 0.90), (0.95, 0.90), (1.0, 0.90)])
def test_utilization_by_free_share(free_share, util):
    """min(0.90, share - 0.02) below a 0.92 share; vLLM's 0.90 default at or above it."""
    hw = machine(gpu(80, None, "datacenter", "A100-SXM4-80GB"))
    p = plan(M8, hw, wl(1), 8 * GIB, budget=memory.Budget(int(80 * GIB * free_share), int(200 * GIB)))
    assert p.gpu_memory_utilization == util


@pytest.mark.parametrize("delta,fits", [(0, True), (+1, True), (-1, False)])
def test_pinned_utilization_reserve_at_the_free_memory_limit(delta, fits):
    """--gpu-memory-utilization 0.5 pinned: vLLM reserves int(per_gpu x 0.5); it starts only if that much is free."""
    hw = machine(gpu(80, 79.22, "datacenter"))
    reserve = int(int(79.22 * GIB) * 0.5)
    pins = memory.Pins(gpu_memory_utilization=0.5, said=(("gpu_memory_utilization", "--gpu-memory-utilization 0.5"),))
    p = plan(M8, hw, wl(1), 16 * GIB, budget=memory.Budget(reserve + delta, int(200 * GIB)), pins=pins)
    assert p.fits is fits and p.gpu_bytes == reserve
    if not fits:
        assert "--gpu-memory-utilization 0.5 reserves" in p.shortfall


def kv_room(weights: int, users: int) -> int:
    """KV room on the H100 of test_single_gpu: reserve - weights - overhead."""
    return int(int(79.22 * GIB) * 0.9) - weights - overhead(8192, users, 1.79)


@pytest.mark.parametrize("extra,fits", [(0, True), (1, False)])
def test_weights_limit_one_full_request_at_one_byte(extra, fits):
    """vLLM starts when the KV room holds one full request (its max_model_len check): weights set so the room is
    exactly one fp8 request (512 MiB) fit; one byte more of weights and neither dtype fits."""
    hw = machine(gpu(80, 79.22, "datacenter"))
    one_fp8 = kv_request(8192, bpe=1)
    w = kv_room(0, 1) - one_fp8 + extra
    p = plan(M8, hw, wl(1), w)
    assert p.fits is fits
    if fits:
        assert p.kv_cache_type == "fp8" and p.kv_cache_bytes == one_fp8
        assert "KV cache in fp8 to hold every user's context" in p.levers
    else:
        assert "runtime overhead" in p.shortfall


def test_fp8_kv_lever_holds_every_user():
    """Room for 3 bf16 requests (1 GiB each) but 4 users: fp8 halves a request to 512 MiB, so all 4 fit with
    --kv-cache-dtype fp8 and the lever says so; the plan's KV is 4 x 512 MiB."""
    hw = machine(gpu(80, 79.22, "datacenter"))
    w = kv_room(0, 4) - 3 * GIB - 1  # bf16: 3 requests fit, not 4
    p = plan(M8, hw, wl(4), w)
    assert p.fits and p.kv_cache_type == "fp8" and p.kv_cache_bytes == 4 * 512 * MIB
    assert p.levers[0] == "KV cache in fp8 to hold every user's context"


def test_when_no_dtype_holds_every_user_bf16_is_kept_and_vllm_queues():
    """Room for 1.5 bf16 requests and 4 users: fp8 holds 3, still not 4; the first plan that fits (bf16) is kept
    and the lever says vLLM queues or preempts the rest."""
    hw = machine(gpu(80, 79.22, "datacenter"))
    w = kv_room(0, 4) - GIB - 512 * MIB
    p = plan(M8, hw, wl(4), w)
    assert p.fits and p.kv_cache_type == "auto" and p.kv_cache_bytes == 4 * GIB
    assert p.levers[0] == "not every user fits at full context at once: vLLM will queue or preempt the rest"


def test_sliding_window_layers_hold_only_the_window():
    """24 of 32 layers with a 1024-token window: full layers 8 x 8192 tokens, SWA layers 24 x pad16(1024 + 16) =
    1040 tokens, 8 x 256 x 2 bytes each: 268,435,456 + 102,236,160 = 370,671,616 bytes per request."""
    swa = replace(M8, swa_layers=24, sliding_window=1024)
    hw = machine(gpu(80, 79.22, "datacenter"))
    p = plan(swa, hw, wl(2), 16 * GIB)
    per = 8 * 8192 * 4096 + 24 * 1040 * 4096
    assert per == 370_671_616
    assert memory.vllm_kv_bytes_per_request(swa, 8192, "auto") == per
    assert p.fits and p.kv_cache_bytes == 2 * per
    # A window wider than the context: those layers hold the context (pad16(1000) = 1008 tokens), like full ones.
    assert memory.vllm_kv_bytes_per_request(swa, 1000, "auto") == 32 * 1008 * 4096


def test_overhead_terms():
    """vllm_overhead_bytes, term by term: datacenter 1.79 + graphs 0.5 GiB + activations; TP adds 1.79 GiB;
    without CUDA graphs the 0.5 GiB goes; an unknown tier counts like a consumer card (0.35)."""
    act = int(2048 * 5.95 * 18432 + 256 * 128256 * 4 * 1.42)
    assert memory.vllm_activation_bytes(M8, 2048, 256) == act
    assert memory.vllm_overhead_bytes(M8, 2048, max_seqs=256, tier="datacenter") == int(2.29 * GIB + act)
    assert memory.vllm_overhead_bytes(M8, 2048, max_seqs=256, tier="datacenter", tp=2) == int(
        (1.79 + 1.79 + 0.5) * GIB + act)
    assert memory.vllm_overhead_bytes(M8, 2048, max_seqs=256, tier="consumer", cudagraphs=False) == int(
        0.35 * GIB + act)
    assert memory.vllm_overhead_bytes(M8, 2048, max_seqs=256, tier="other") == int(0.85 * GIB + act)


@pytest.mark.parametrize("gib,name,expect", [
    (160, "H200", (16384, 1024)), (159.99, "H200", (8192, 1024)), (70, "H100", (8192, 1024)),
    (69.99, "H100", (2048, 256)), (80, "A100-SXM4-80GB", (2048, 256))])
def test_default_batching_tiers(gib, name, expect):
    """arg_utils.py: >= 160 GiB -> 16384/1024; >= 70 GiB except A100 -> 8192/1024; else 2048/256."""
    assert memory.vllm_default_batching(int(gib * GIB), name) == expect


@pytest.mark.parametrize("vendor,runtime,expect", [
    ("nvidia", None, int((24 - 0.43) * GIB)), ("amd", None, int((24 - 0.43) * GIB)),
    ("intel", None, 24 * GIB), ("nvidia", 23.58, int(23.58 * GIB))])
def test_runtime_total(vendor, runtime, expect):
    g = GPUSpec(vendor=vendor, name="x", memory_gib=24, runtime_memory_gib=runtime, bandwidth_gbs=900)
    assert memory.gpu_runtime_bytes(g) == expect


@pytest.mark.parametrize("extra,kv_type", [(0, "auto"), (1, "fp8")])
def test_every_user_fits_at_the_byte(extra, kv_type):
    """Weights set so the room is exactly 4 bf16 requests: bf16 holds every user; one byte more and fp8 does."""
    hw = machine(gpu(80, 79.22, "datacenter"))
    p = plan(M8, hw, wl(4), kv_room(0, 4) - 4 * GIB + extra)
    assert p.fits and p.kv_cache_type == kv_type


@pytest.mark.parametrize("extra,kv_type", [(0, "auto"), (1, "fp8")])
def test_every_user_fits_at_the_byte_with_odd_weights_over_two_ranks(extra, kv_type):
    """TP 2 pinned on two GPUs, odd weights: a rank holds weights // 2 (vLLM loads whole tensors; the byte is
    rounded down per rank); the room of each rank is exactly 4 requests of 512 MiB at the boundary."""
    hw = machine(gpu(80, 79.22, "datacenter", count=2))
    pins = memory.Pins(tensor_parallel=2, said=(("tensor_parallel", "-tp 2"),))
    reserve = int(int(79.22 * GIB) * 0.9)
    oh = overhead(8192, 4, 1.79 + 1.79)
    per_rank_w = reserve - oh - 4 * 512 * MIB  # exactly the room for 4 requests
    w = 2 * per_rank_w + 1 + 2 * extra  # odd: weights // 2 == per_rank_w (+ extra)
    p = plan(M8, hw, wl(4), w, pins=pins)
    assert p.fits and p.tensor_parallel == 2 and p.kv_cache_type == kv_type


def test_data_parallel_counts_its_instances_in_the_user_check():
    """-dp 2 on two GPUs: two engine cores of one rank each; weights, reserve and overhead are per core times 2, the
    users are shared: vLLM balances requests over the cores, so each holds its half of the 4 users (room for 2
    requests per core holds them in bf16), and the KV every user needs at full context is the 4 requests' (it was
    counted once per core, and each core was asked to hold all 4)."""
    hw = machine(gpu(80, 79.22, "datacenter", count=2))
    pins = memory.Pins(data_parallel=2, said=(("data_parallel", "-dp 2"),))
    w = kv_room(0, 4) - 2 * GIB
    p = plan(M8, hw, wl(4), w, pins=pins)
    assert p.fits and p.data_parallel == 2 and p.kv_cache_type == "auto"
    assert (p.weights_bytes, p.gpu_bytes, p.kv_cache_bytes) == (2 * w, 2 * int(int(79.22 * GIB) * 0.9), 4 * GIB)
    over = plan(M8, hw, wl(4), w + 1, pins=pins)
    assert over.fits and over.kv_cache_type == "fp8"


@pytest.mark.parametrize("extra,kv_type", [(0, "auto"), (2, "fp8")])
def test_pipeline_parallel_on_one_machine_at_the_byte(extra, kv_type):
    """-pp 2 on two GPUs: each stage holds half the weights and half of each request's KV (its 16 layers): room for
    4 half-requests (4 x 512 MiB) per rank exactly holds every user in bf16; 2 more bytes of weights (1 per rank)
    and only fp8 does."""
    hw = machine(gpu(80, 79.22, "datacenter", count=2))
    pins = memory.Pins(pipeline_parallel=2, said=(("pipeline_parallel", "-pp 2"),))
    reserve = int(int(79.22 * GIB) * 0.9)
    w = 2 * (reserve - overhead(8192, 4, 1.79) - 4 * 512 * MIB) + extra
    p = plan(M8, hw, wl(4), w, pins=pins)
    assert p.fits and p.pipeline_parallel == 2 and p.kv_cache_type == kv_type


def test_shared_share_over_two_gpus_is_of_both():
    """Two A100 80GB with 96 GiB of the 160 GiB free: share 0.6 of the pair, utilization 0.58 on each."""
    hw = machine(gpu(80, None, "datacenter", "A100-SXM4-80GB", count=2))
    p = plan(M8, hw, wl(1), 8 * GIB, budget=memory.Budget(int(160 * GIB * 0.6), int(200 * GIB)))
    assert p.gpu_memory_utilization == 0.58
    assert p.tensor_parallel == 1  # one GPU holds the model: no tensor parallel


@pytest.mark.parametrize("gpus,weights_gib,tp", [(8, 60, 4), (8, 120, 8), (16, 200, 16)])
def test_tensor_parallel_is_the_smallest_power_of_two_that_holds_the_weights(gpus, weights_gib, tp):
    """RTX 3090s (21.2 GiB reserve each): 60 GiB needs 4 ranks (15 GiB each), 120 GiB 8, 200 GiB 16."""
    hw = machine(gpu(24, 23.58, "consumer", "GeForce RTX 3090", count=gpus))
    p = plan(M8, hw, wl(1, 4096), weights_gib * GIB)
    assert p.fits and p.tensor_parallel == tp
    assert (p.weights_format, p.weights_source) == ("bf16", "test")
