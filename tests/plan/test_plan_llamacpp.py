"""Worked examples: llama.cpp's whole memory plan, every figure derived by hand from llama.cpp's sizing rules.

Sources (see /work/shared/reference/engines.md, "Memory"):
- KV cache: src/llama-kv-cache.cpp, one stream per slot without --kv-unified: pad256(n_ctx / n_seq) cells per slot,
  each cell holds n_head_kv x (head_k + head_v) elements per layer at the cache type's ggml size (f16: 2 bytes,
  q8_0: 34 bytes per block of 32, ggml-common.h).
- Layers (src/llama-model.cpp load_tensors: i_gpu_start = n_layer + 1 - N, the output layer is il = n_layer):
  -ngl N with N < layers puts the output layer and N - 1 repeating layers (with their KV cache) on the GPU; the
  input embedding stays in host memory. Without the file's tensor list the embedding and output are each
  vocab x hidden at the file's mean bytes per parameter (untied when the parameters outside the dense layers count
  two such matrices) and the rest is spread over the layers (memory.llamacpp_layer_split).
- GPU margin: --fit-target default of 1024 MiB left free on each device (common/arg.cpp); host overhead 80 MiB
  measured (RSS minus llama-server's printed memory breakdown).
- Prompt cache: --cache-ram default 8192 MiB (common.h), bounded to 2 finished conversations per slot and at most
  half the RAM the plan leaves free.
Every expected number below is computed in the test from these rules, not read from the planner.
"""

from __future__ import annotations

import pytest

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]


def test_the_model_facts_the_examples_use():
    """Llama 3.1 8B config.json: 32 layers, hidden 4096, intermediate 14336, 32 heads, 8 KV heads, head_dim 128,
    vocab 128256. If the catalog changes, every derivation below must be redone."""
    assert (M8.layers, M8.hidden, M8.ffn, M8.heads, M8.kv_heads, M8.head_dim_k, M8.head_dim_v, M8.vocab) == (
        32, 4096, 14336, 32, 8, 128, 128, 128256)
    assert (M8.swa_layers, M8.sliding_window) == (0, None)


def nvidia(gib: float, name: str = "GPU", count: int = 1) -> GPUSpec:
    return GPUSpec(vendor="nvidia", name=name, memory_gib=gib, bandwidth_gbs=1000, count=count, tier="consumer")


def machine(*gpus: GPUSpec, ram: float = 64) -> HardwareSpec:
    return HardwareSpec(gpus=gpus, memory_gib=ram, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))


def wl(users: int, ctx: int = 8192) -> WorkloadSpec:
    return WorkloadSpec(concurrent_users=users, context_tokens=ctx)


# Hand derivations shared by the examples (Llama 3.1 8B shape).
KV_F16_PER_SLOT_8K = 32 * 8192 * 8 * (128 + 128) * 2  # layers x cells x kv_heads x (k + v) x 2 bytes = 1 GiB
KV_Q8_PER_SLOT_8K = 32 * 8192 * 8 * 256 * 34 // 32  # q8_0: 34 bytes per 32 elements = 544 MiB
ACTIVATIONS = 512 * 4 * (4 * 4096 + 2 * 14336)  # ubatch 512 x f32 x (4 hidden + 2 ffn) = 92,274,688


def compute(slots: int) -> int:
    """llamacpp_compute_bytes: one micro-batch's activations + one f32 logits row (vocab 128256) per slot."""
    return ACTIVATIONS + slots * 128256 * 4


def plan(hw, workload, weights, budget=None, **kw):
    budget = budget or memory.initial_budget(hw)
    return memory.plan_llamacpp(M8, workload, hw, budget, weights, "Q4_K_M", "test", **kw)


def cache_limit(kv: int, host_budget: int, host: int) -> int:
    """--cache-ram: min(8192 MiB, 2 conversations per slot = 2 x KV), at most half the free RAM, whole MiB."""
    room = int((host_budget - host) * 0.5)
    return max(0, min(8192 * MIB, 2 * kv, room)) // MIB * MIB


def test_full_offload_on_one_gpu():
    """RTX-4090-like: one 24 GiB GPU, 64 GiB RAM; 5 GiB of weights, 2 users x 8192 tokens.

    KV: 2 slots x 1 GiB (f16) = 2 GiB. Compute: 92,274,688 + 2 x 513,024 = 93,300,736 bytes.
    GPU: weights 5 GiB + KV 2 GiB + compute + 1024 MiB margin = 8 GiB + 93,300,736.
    Host: 80 MiB before the prompt cache; host budget 64 GiB x 0.85 (15% left to the OS).
    Prompt cache: min(8 GiB, 2 x 2 GiB) = 4 GiB, far under half the free RAM: --cache-ram 4096, counted in host.
    """
    hw = machine(nvidia(24))
    p = plan(hw, wl(2), 5 * GIB)
    kv = 2 * KV_F16_PER_SLOT_8K
    assert kv == 2 * GIB
    host_budget = int(64 * GIB * 0.85)
    assert p.fits and p.levers[:-1] == ()
    assert (p.weights_bytes, p.kv_cache_bytes, p.compute_bytes) == (5 * GIB, kv, compute(2))
    assert p.overhead_bytes == 1024 * MIB + 80 * MIB
    assert p.gpu_bytes == 5 * GIB + kv + compute(2) + 1024 * MIB
    limit = cache_limit(kv, host_budget, 80 * MIB)
    assert limit == 4 * GIB
    assert p.prompt_cache.bytes == p.prompt_cache.limit_bytes == limit
    assert p.prompt_cache.checkpoints is None  # no sliding-window layers: no checkpoints
    assert p.host_bytes == 80 * MIB + limit
    assert (p.gpu_layers, p.total_layers, p.context_per_request, p.parallel, p.kv_cache_type) == (
        32, 32, 8192, 2, "f16")
    assert (p.gpu_budget_bytes, p.host_budget_bytes) == (24 * GIB, host_budget)
    assert p.total_bytes == 5 * GIB + kv + compute(2) + 1024 * MIB + 80 * MIB + limit
    assert p.offload_fraction == 0.0


def edges(weights: int) -> tuple[int, float]:
    """(embedding = output bytes, one repeating layer's bytes) of Llama 3.1 8B's shape at `weights`: 8.03e9
    params, of which 2 x 128256 x 4096 outside the layers (untied), at weights / params bytes each."""
    embd = int(128256 * 4096 * (weights / 8_029_999_999))
    return embd, (weights - 2 * embd) / 32


def gpu_weights(weights: int, ngl: int, layers: int = 32) -> int:
    embd, layer = edges(weights)
    return weights if ngl >= layers else 0 if ngl == 0 else int(embd + (ngl - 1) * layer)


def host_weights(weights: int, ngl: int) -> int:
    embd, layer = edges(weights)
    return int(weights - embd - (ngl - 1) * layer)


def gpu_need(weights: int, ngl: int, kv: int, slots: int, n_gpus: int = 1, layers: int = 32) -> int:
    """GPU bytes of -ngl ngl: the output layer and ngl - 1 repeating layers with their KV cache (everything at
    ngl = layers), the compute buffer and the 1024 MiB margin per GPU."""
    kv_layers = layers if ngl >= layers else max(0, ngl - 1)
    return gpu_weights(weights, ngl, layers) + int(kv * kv_layers / layers) + compute(slots) + 1024 * MIB * n_gpus


def most_layers(weights: int, kv: int, slots: int, gpu_budget: int, n_gpus: int = 1) -> int:
    """The largest ngl below 32 whose GPU need fits, by a plain scan (the planner binary-searches)."""
    return max(n for n in range(32) if gpu_need(weights, n, kv, slots, n_gpus) <= gpu_budget)


def test_partial_offload_on_one_gpu():
    """40 GiB of weights (a 70B at Q4 in size, 8B in shape) on one 24 GiB GPU, 1 user x 8192.

    The output layer is 128256 x 4096 x 5.35 B = 2,809,842,358 bytes, a repeating layer (40 GiB - 2 x that) / 32 =
    1,166,562,132 bytes plus 1 GiB / 32 = 32 MiB of f16 KV; the GPU holds 24 GiB less the 1024 MiB margin and the
    92,787,712-byte compute buffer, 24.60e9 left, so -ngl 19 fits (the output + 18 layers: 2.81e9 + 18 x 1.20e9 =
    24.41e9; -ngl 20 would need 25.61e9); q8_0 (17 MiB a layer) also gives 19, so the f16 cache stays (it must buy
    more layers). Host: the embedding, the 14 other layers' weights and KV + 80 MiB, plus a 2 GiB prompt cache."""
    hw = machine(nvidia(24))
    w = 40 * GIB
    p = plan(hw, wl(1), w)
    kv = KV_F16_PER_SLOT_8K
    n = most_layers(w, kv, 1, 24 * GIB)
    assert n == 19
    assert most_layers(w, KV_Q8_PER_SLOT_8K, 1, 24 * GIB) == 19
    assert p.fits and (p.gpu_layers, p.kv_cache_type) == (n, "f16")
    assert p.gpu_bytes == gpu_need(w, n, kv, 1) == int(2_809_842_358 + 18 * 1_166_562_132.625) + int(kv * 18 / 32) \
        + compute(1) + GIB
    w_gpu, kv_gpu = gpu_weights(w, n), int(kv * 18 / 32)
    host = host_weights(w, n) + (kv - kv_gpu) + 80 * MIB
    assert w_gpu + host_weights(w, n) == pytest.approx(w, abs=1)  # untied: the file's bytes are on one side or the other
    limit = cache_limit(kv, int(64 * GIB * 0.85), host)
    assert limit == 2 * GIB
    assert p.host_bytes == host + limit
    assert (p.compute_bytes, p.overhead_bytes, p.kv_cache_bytes) == (compute(1), GIB + 80 * MIB, kv)
    assert p.offload_fraction == pytest.approx(13 / 32)
    assert p.levers[0] == ("partial offload: 19 of 32 layers on GPU (-ngl 19: the output layer and 18 repeating "
                           "layers), the rest in system RAM (run on the CPU)")


def test_two_mismatched_gpus_full_offload_counts_a_margin_on_each():
    """24 GiB + 12 GiB GPUs: llama.cpp splits layers by -ts 24,12 (proportional to memory), so the pool is 36 GiB
    and each device keeps its own 1024 MiB --fit margin: 30 GiB weights + 1 GiB KV + compute + 2 x 1024 MiB."""
    hw = machine(nvidia(24, "big"), nvidia(12, "small"))
    p = plan(hw, wl(1), 30 * GIB)
    assert p.fits and p.gpu_layers == 32 and p.kv_cache_type == "f16"
    assert p.gpu_budget_bytes == 36 * GIB
    assert p.overhead_bytes == 2 * 1024 * MIB + 80 * MIB
    assert p.gpu_bytes == 30 * GIB + KV_F16_PER_SLOT_8K + compute(1) + 2 * 1024 * MIB
    kv = KV_F16_PER_SLOT_8K
    assert p.host_bytes == 80 * MIB + cache_limit(kv, int(64 * GIB * 0.85), 80 * MIB)


def test_two_mismatched_gpus_partial_offload():
    """60 GiB of weights over 24 + 12 GiB: 36 GiB less 2 x 1024 MiB margins and the compute buffer, at a
    4.21e9-byte output layer and 1.75e9 + 32 MiB a repeating layer: -ngl 19 (4.21e9 + 18 x 1.78e9 = 36.3e9 of
    36.4e9)."""
    hw = machine(nvidia(24, "big"), nvidia(12, "small"))
    w = 60 * GIB
    p = plan(hw, wl(1), w)
    kv = KV_F16_PER_SLOT_8K
    n = most_layers(w, kv, 1, 36 * GIB, n_gpus=2)
    assert n == 19
    assert p.fits and p.gpu_layers == n
    assert p.gpu_bytes == gpu_need(w, n, kv, 1, n_gpus=2)
    host = host_weights(w, n) + (kv - int(kv * (n - 1) / 32)) + 80 * MIB
    assert p.host_bytes == host + cache_limit(kv, int(64 * GIB * 0.85), host)


# ---------------------------------------------------------------------------------------------- boundaries


def full_need(kv: int, weights: int = 5 * GIB) -> int:
    return weights + kv + compute(1) + 1024 * MIB


@pytest.mark.parametrize("delta,kv_type", [(+1, "f16"), (0, "f16"), (-1, "q8_0")])
def test_full_offload_gpu_limit_one_byte_either_side(delta, kv_type):
    """At or over the f16 plan's GPU need every layer stays on the GPU with f16; one byte under, the first lever is
    a q8_0 cache (544 MiB instead of 1 GiB), which fits."""
    hw = machine(nvidia(24))
    need = full_need(KV_F16_PER_SLOT_8K)
    p = plan(hw, wl(1), 5 * GIB, budget=memory.Budget(need + delta, 50 * GIB))
    assert p.fits and p.gpu_layers == 32 and p.kv_cache_type == kv_type
    kv = KV_F16_PER_SLOT_8K if kv_type == "f16" else KV_Q8_PER_SLOT_8K
    assert p.gpu_bytes == full_need(kv)
    if kv_type == "q8_0":
        assert "KV cache quantized to q8_0 (with flash attention) to keep every layer on the GPU" in p.levers


@pytest.mark.parametrize("delta,quant,layers,kv_type", [
    (0, True, 18, "f16"), (+1, True, 18, "f16"), (-1, True, 18, "q8_0"),
    (0, False, 18, "f16"), (+1, False, 18, "f16"), (-1, False, 17, "f16")])
def test_partial_offload_gpu_limit_one_byte_either_side(delta, quant, layers, kv_type):
    """The budget set to exactly the need of 18 layers with an f16 cache gives 18; one byte less, a q8_0 cache
    (17 MiB a layer instead of 32) keeps 18 layers, as quantizing buys a layer; without the KV lever (Ollama's
    path: allow_kv_quant=False) one byte less gives 17."""
    hw = machine(nvidia(24))
    w, kv = 40 * GIB, KV_F16_PER_SLOT_8K
    p = plan(hw, wl(1), w, budget=memory.Budget(gpu_need(w, 18, kv, 1) + delta, 60 * GIB), allow_kv_quant=quant)
    assert p.fits and p.gpu_layers == layers and p.kv_cache_type == kv_type
    assert p.gpu_bytes == gpu_need(w, layers, kv if kv_type == "f16" else KV_Q8_PER_SLOT_8K, 1)
    if kv_type == "q8_0":
        assert "KV cache quantized to q8_0" in p.levers


def test_the_last_partial_layer_is_31_not_32():
    """The partial search tries at most layers - 1: with room for 31 layers but not the whole model (the output layer
    is the rest of the weights), the plan has 31 layers on the GPU."""
    hw = machine(nvidia(24))
    w, kv = 20 * GIB, KV_F16_PER_SLOT_8K
    need_31 = gpu_need(w, 31, kv, 1)
    q8_full = full_need(KV_Q8_PER_SLOT_8K, w)
    assert need_31 < q8_full  # so a budget at need_31 cannot hold the whole model even with q8_0
    p = plan(hw, wl(1), w, budget=memory.Budget(need_31, 60 * GIB))
    assert p.fits and p.gpu_layers == 31 and p.gpu_bytes == need_31


@pytest.mark.parametrize("delta,fits", [(0, True), (+1, True), (-1, False)])
def test_cpu_only_host_limit_one_byte_either_side(delta, fits):
    """CPU-only: everything in RAM: weights + KV + compute + 80 MiB. At q8_0 (the last lever before a smaller
    context) and a 2048-token floor; here the limit is set at the q8_0 plan at full context, so one byte under
    makes the planner reach for a smaller context instead."""
    hw = machine(ram=64)
    w = 5 * GIB
    need = w + KV_Q8_PER_SLOT_8K + compute(1) + 80 * MIB
    p = plan(hw, wl(1), w, budget=memory.Budget(0, need + delta))
    if fits:
        assert p.fits and p.context_per_request == 8192 and p.kv_cache_type == "q8_0" and p.gpu_layers == 0
        assert p.host_bytes == need + cache_limit(KV_Q8_PER_SLOT_8K, need + delta, need)
    else:  # the context lever halves it: 4096 tokens per request, f16 (512 MiB)
        assert p.fits and p.context_per_request == 4096 and p.kv_cache_type == "f16"
        assert p.kv_cache_bytes == 32 * 4096 * 8 * 256 * 2
        assert "context reduced from 8192 to 4096 tokens per request to fit" in p.levers


def test_host_limit_in_partial_offload_refuses_at_one_byte_short():
    """Partial offload also needs the host part to fit: with the host budget one byte under the 18-layer plan's
    host need, and a GPU budget of exactly 18 layers, the 18-layer plan is out."""
    hw = machine(nvidia(24))
    w, kv = 40 * GIB, KV_F16_PER_SLOT_8K
    host_18 = host_weights(w, 18) + (kv - int(kv * 17 / 32)) + 80 * MIB
    ok = plan(hw, wl(1), w, budget=memory.Budget(gpu_need(w, 18, kv, 1), host_18))
    assert ok.fits and ok.gpu_layers == 18 and ok.host_bytes == host_18  # no RAM left: prompt cache 0
    assert ok.prompt_cache.limit_bytes == 0
    short = plan(hw, wl(1), w, budget=memory.Budget(gpu_need(w, 18, kv, 1), host_18 - 1))
    assert not (short.fits and short.gpu_layers == 18 and short.context_per_request == 8192
                and short.kv_cache_type == "f16")


def test_no_layer_fits_says_so_with_the_size_of_one_layer():
    """A GPU with less room than its margin: zero layers is the best 'partial' plan, and the lever says every layer
    runs on the CPU, naming the size of the first layer -ngl offloads (the output layer) and the GPU memory there is."""
    hw = machine(nvidia(24))
    w = 40 * GIB
    p = plan(hw, wl(1), w, budget=memory.Budget(GIB // 2, 60 * GIB))
    assert p.fits and p.gpu_layers == 0 and p.gpu_bytes == 0
    assert p.host_bytes - p.prompt_cache.bytes == w + KV_F16_PER_SLOT_8K + compute(1) + 80 * MIB
    assert p.levers[0] == (f"no layer fits in the {GIB / 2 / 1e9:.1f} GB of GPU memory available (the output layer, "
                           f"the first one -ngl offloads, needs {edges(w)[0] / 1e9:.1f} GB plus the engine's GPU "
                           "runtime margin): all 32 layers run on the CPU from system RAM")
