"""Worked examples for the paths through llama.cpp's fit (memory._fit_llamacpp) that the boundary tests in
test_plan_llamacpp.py do not walk: unified-memory limits, a pinned -c split over -np slots, a pinned -ngl that does
not fit, the flash-attention rule for a quantized V cache, and which levers a pinned or chosen KV type reports on
the partial-offload and smaller-context paths (issue 19: mutation survivors of _fit_llamacpp).

Model: Llama 3.1 8B (32 layers, 8 KV heads, head_dim 128, hidden 4096, ffn 14336, vocab 128256, trained 131072
tokens, no documented YaRN). Rules (see test_plan_llamacpp.py's header for their sources):
- KV per slot: layers x pad256(ctx) x kv_heads x (128 + 128) x bytes per element (f16 2, q8_0 34/32);
- compute: 512 x 4 x (4 x 4096 + 2 x 14336) + min(512, slots) x 128256 x 4 (llamacpp_logit_rows, build >= 9616);
- GPU margin 1024 MiB per device, host overhead 80 MiB;
- unified memory (Apple): the GPU share holds gpu_bytes, the pool holds gpu_bytes + host_bytes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]
W = 5 * GIB  # weights of the examples
ACT = 512 * 4 * (4 * 4096 + 2 * 14336)  # 92,274,688 B


def kv(ctx: int, slots: int = 1, bpe: float = 2.0) -> int:
    cells = -(-ctx // 256) * 256
    return int(32 * cells * slots * 8 * 256 * bpe)


def compute(slots: int) -> int:
    return ACT + min(512, slots) * 128256 * 4


def hw(gib: float = 24) -> HardwareSpec:
    gpu = GPUSpec(vendor="nvidia", name="GPU", memory_gib=gib, bandwidth_gbs=1000, count=1, tier="consumer")
    return HardwareSpec(gpus=(gpu,), memory_gib=64, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))


def fit(budget, users=1, ctx=8192, pins=memory.NO_PINS, allow_kv_quant=True, machine=None):
    return memory._fit_llamacpp(M8, WorkloadSpec(concurrent_users=users, context_tokens=ctx), machine or hw(), budget,
                                W, "Q4_K_M", "test", allow_kv_quant=allow_kv_quant, gpu_overhead=1024 * MIB, pins=pins)


Q8 = 34 / 32
KV_LEVER = "KV cache quantized to"


@pytest.mark.parametrize("gpu_delta,pool_delta,kv_type", [(0, 0, "f16"), (-1, 0, "q8_0"), (0, -1, "q8_0")])
def test_unified_memory_limits_are_inclusive(gpu_delta, pool_delta, kv_type):
    """Full offload, 1 user x 8192, f16: gpu = 5 GiB + 1 GiB KV + compute(1) (92,787,712 B) + 1024 MiB margin
    = 7,608,980,480 B; host = 80 MiB. On unified memory it fits when gpu <= the GPU share and gpu + host <= the pool,
    both inclusive; one byte short on either and the first lever (q8_0 cache, 544 MiB) is pulled."""
    gpu = W + kv(8192) + compute(1) + 1024 * MIB
    assert gpu == 7_608_980_480
    pool = gpu + 80 * MIB
    p = fit(memory.Budget(gpu + gpu_delta, pool + pool_delta, unified=True))
    assert p.fits and p.gpu_layers == 32 and p.kv_cache_type == kv_type
    assert (p.gpu_bytes, p.host_bytes) == ((gpu, 80 * MIB) if kv_type == "f16" else
                                           (W + kv(8192, bpe=Q8) + compute(1) + 1024 * MIB, 80 * MIB))


@pytest.mark.parametrize("total,slots,per_slot", [(10000, 3, 3333), (3, 2, 1)])
def test_pinned_context_total_is_split_over_the_slots_whole(total, slots, per_slot):
    """llama-server gives each of the -np slots n_ctx / n_parallel tokens, an integer division (3333 for -c 10000
    -np 3; 1 for -c 3 -np 2); the KV cache pads each slot to 256 cells: 3584 x 3 slots."""
    pins = memory.Pins(context_total=total, parallel=slots, said=(("context_total", f"-c {total}"),
                                                                  ("parallel", f"-np {slots}")))
    p = fit(memory.Budget(20 * GIB, 50 * GIB), pins=pins)
    assert p.fits and p.context_per_request == per_slot and isinstance(p.context_per_request, int)
    assert p.parallel == slots and p.kv_cache_bytes == kv(per_slot, slots)


def test_weights_source_and_format_reach_the_plan():
    p = fit(memory.Budget(20 * GIB, 50 * GIB))
    assert (p.weights_source, p.weights_format, p.weights_bytes) == ("test", "Q4_K_M", W)


def test_pinned_ngl_that_does_not_fit_keeps_the_context_cap_lever():
    """-ngl 32 pinned on a 4 GiB GPU with 200,000 tokens asked: the context is capped at the trained 131072 (the
    model has no YaRN), the pinned split is not searched, and the refusal keeps the cap among its levers."""
    pins = memory.Pins(gpu_layers=32, said=(("gpu_layers", "-ngl 32"),))
    p = fit(memory.Budget(4 * GIB, 50 * GIB), ctx=200_000, pins=pins)
    assert p.fits is False and p.gpu_layers == 32 and p.context_per_request == 131072
    assert p.levers == ("context capped at the model's trained 131072 tokens (asked 200000)",)
    assert p.shortfall.endswith("(pinned by overrides: -ngl 32)")


def test_quantized_v_cache_without_flash_attention_is_refused_on_the_gpu_plan():
    """llama.cpp refuses a quantized V cache with -fa off; the refused plan is the full offload (32 layers on a
    GPU host), and the reason names only the two overrides involved (not -c)."""
    said = (("flash_attn", "-fa off"), ("kv_cache_type", "-ctk q8_0 -ctv q8_0"), ("context_total", "-c 8192"))
    pins = memory.Pins(flash_attn="off", kv_cache_type="q8_0", context_total=8192, said=said)
    p = fit(memory.Budget(20 * GIB, 50 * GIB), pins=pins)
    assert p.fits is False and p.gpu_layers == 32 and p.kv_cache_type == "q8_0"
    assert p.shortfall == ("llama.cpp needs flash attention for a quantized V cache "
                           "(pinned by overrides: -fa off, -ctk q8_0 -ctv q8_0)")


def test_quantized_k_with_f16_v_needs_no_flash_attention():
    """Only V must be f16 without flash attention: "q8_0/f16" (K q8_0, V f16) plans and fits with -fa off. KV:
    K at 34/32 and V at 2 bytes, their mean 1.53125 per element: 32 x 8192 x 8 x 256 x 1.53125 = 784 MiB; compute
    adds the KQ scratch pad256(8192) x 1 x 512 x 32 heads x 4 = 512 MiB."""
    pins = memory.Pins(flash_attn="off", kv_cache_type="q8_0/f16",
                       said=(("flash_attn", "-fa off"), ("kv_cache_type", "-ctk q8_0 -ctv f16")))
    p = fit(memory.Budget(20 * GIB, 50 * GIB), pins=pins)
    assert p.fits and not p.shortfall and p.kv_cache_type == "q8_0/f16"
    assert p.kv_cache_bytes == kv(8192, bpe=(Q8 + 2) / 2) == 784 * MIB
    assert p.compute_bytes == compute(1) + 8192 * 512 * 32 * 4
    assert p.levers == ()


def test_a_pinned_quantized_cache_that_fits_is_no_lever():
    """-ctk q8_0 -ctv q8_0 pinned: the q8_0 plan is the user's, so no 'KV cache quantized' lever is reported."""
    pins = memory.Pins(kv_cache_type="q8_0", said=(("kv_cache_type", "-ctk q8_0 -ctv q8_0"),))
    p = fit(memory.Budget(20 * GIB, 50 * GIB), pins=pins)
    assert p.fits and p.kv_cache_type == "q8_0" and p.kv_cache_bytes == kv(8192, bpe=Q8) and p.levers == ()


def _split():
    return memory.llamacpp_layer_split(M8, W, "Q4_K_M")


def _most_layers(budget_gpu: int, kv_slot: int, slots: int = 1) -> int:
    """Largest N < 32 with output + (N - 1) layers + (N - 1)/32 of the KV + compute + margin within the GPU budget."""
    s = _split()
    best = 0
    for n in range(1, 32):
        need = int(s.output + (n - 1) * s.per_layer) + int(kv_slot * (n - 1) / 32) + compute(slots) + 1024 * MIB
        if need <= budget_gpu:
            best = n
    return best


@pytest.mark.parametrize("pinned", [False, True])
def test_partial_offload_reports_a_kv_lever_only_when_the_planner_chose_it(pinned):
    """8 GiB-class GPU budget of 4 GiB, 1 user x 8192: the full offload (6.1 GiB) does not fit, so layers are split.
    With an f16 cache chosen by the planner, or a q8_0 cache pinned by the user, the levers are the offload alone."""
    pins = (memory.Pins(kv_cache_type="q8_0", said=(("kv_cache_type", "-ctk q8_0 -ctv q8_0"),)) if pinned
            else memory.NO_PINS)
    p = fit(memory.Budget(4 * GIB, 50 * GIB), pins=pins, allow_kv_quant=pinned)
    kv_slot = kv(8192, bpe=Q8 if pinned else 2.0)
    n = _most_layers(4 * GIB, kv_slot)
    assert 0 < n < 32 and p.fits and p.gpu_layers == n
    assert p.kv_cache_type == ("q8_0" if pinned else "f16")
    assert not any(KV_LEVER in lever for lever in p.levers)
    assert p.levers == (f"partial offload: {n} of 32 layers on GPU (-ngl {n}: the output layer and {n - 1} "
                        "repeating layers), the rest in system RAM (run on the CPU)",)


@pytest.mark.parametrize("pinned,allow_quant,kv_type,kv_lever", [
    (False, True, "q8_0", True),   # the planner quantized the cache: reported
    (True, True, "q8_0", False),   # the user pinned q8_0: not a lever
    (False, False, "f16", False),  # f16 (Ollama's path, no KV lever): nothing to report
])
def test_smaller_context_keeps_the_partial_offload_and_reports_the_kv_lever(pinned, allow_quant, kv_type, kv_lever):
    """4 GiB of GPU, 10 GiB of RAM (20 GiB for the f16 case), 131072 tokens asked: at 128k even the CPU-side plan does
    not fit (f16 KV 16 GiB, q8_0 8.5 GiB, plus 5 GiB of weights), so the context is halved to 65536 (q8_0 KV
    4.25 GiB). The GPU then holds as many layers as fit in 4 GiB (partial offload, never the whole model, which
    would need 5 GiB of weights alone), and the levers say: context reduced, then the KV lever when the planner
    chose q8_0, then the offload."""
    pins = (memory.Pins(kv_cache_type="q8_0", said=(("kv_cache_type", "-ctk q8_0 -ctv q8_0"),)) if pinned
            else memory.NO_PINS)
    host = 10 * GIB if kv_type == "q8_0" else 16 * GIB
    p = fit(memory.Budget(4 * GIB, host), ctx=131072, pins=pins, allow_kv_quant=allow_quant)
    ctx = 65536 if kv_type == "q8_0" else p.context_per_request
    assert p.fits and p.context_per_request == ctx < 131072 and p.kv_cache_type == kv_type
    n = _most_layers(4 * GIB, kv(ctx, bpe=Q8 if kv_type == "q8_0" else 2.0))
    assert 0 < n < 32 and p.gpu_layers == n
    want = [f"context reduced from 131072 to {ctx} tokens per request to fit"]
    if kv_lever:
        want.append("KV cache quantized to q8_0")
    want.append(f"partial offload: {n} of 32 layers on GPU (-ngl {n}: the output layer and {n - 1} repeating "
                "layers), the rest in system RAM (run on the CPU)")
    assert p.levers == tuple(want)


def test_plan_llamacpp_keeps_the_weights_source():
    """plan_llamacpp (the fit, then the cache bound) passes the weights' source through to the plan."""
    h = hw()
    p = memory.plan_llamacpp(M8, WorkloadSpec(concurrent_users=1, context_tokens=8192), h, memory.initial_budget(h), W,
                             "Q4_K_M", "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF")
    assert p.fits and p.weights_source == "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"


def test_room_for_the_output_layer_alone_is_ngl_1():
    """A GPU budget of exactly the output layer (its estimate, vocab x hidden at the file's mean bytes a parameter)
    + compute(1) + the 1024 MiB margin: -ngl 1, the output layer and 0 repeating layers (none of the KV)."""
    s = _split()
    budget = s.output + compute(1) + 1024 * MIB
    p = fit(memory.Budget(budget, 50 * GIB))
    assert p.fits and p.gpu_layers == 1 and p.gpu_bytes == budget
    assert p.host_bytes == s.host_weights(1, 32, W) + kv(8192) + 80 * MIB
    assert p.levers == ("partial offload: 1 of 32 layers on GPU (-ngl 1: the output layer and 0 repeating layers), "
                        "the rest in system RAM (run on the CPU)",)


def test_a_pinned_ubatch_sizes_the_sliding_window_cache_and_the_kq_scratch():
    """-ub 1024 pinned. Gemma 3 270M (18 layers, 15 of them sliding-window over 512 tokens, 1 KV head of 256 + 256),
    1 slot of 4096: the SWA layers keep pad256(min(4096, 512 + 1024)) = 1536 cells, so KV = 3 x 4096 x 1024 B +
    15 x 1536 x 1024 B = 36,175,872 B (15 x 1024 cells at the default -ub 512). Llama 3.1 8B with -fa off: compute
    = 1024 x 4 x (4 x 4096 + 2 x 14336) + 1 x 128256 x 4 = 185,062,400 B, plus the KQ scratch pad256(8192) x 1 slot x
    1024 rows x 32 heads x 4 B = 1 GiB."""
    gemma = load_profiles().models["gemma-3-270m"]
    pins = memory.Pins(ubatch=1024, said=(("ubatch", "-ub 1024"),))
    g = memory._fit_llamacpp(gemma, WorkloadSpec(concurrent_users=1, context_tokens=4096), hw(), memory.Budget(
        20 * GIB, 50 * GIB), 253_113_024, "Q4_K_M", "test", allow_kv_quant=True, gpu_overhead=1024 * MIB, pins=pins)
    assert g.fits and g.kv_cache_bytes == 3 * 4096 * 1024 + 15 * 1536 * 1024 == 36_175_872
    pins = memory.Pins(ubatch=1024, flash_attn="off", said=(("ubatch", "-ub 1024"), ("flash_attn", "-fa off")))
    p = fit(memory.Budget(20 * GIB, 50 * GIB), pins=pins)
    assert 1024 * 4 * (4 * 4096 + 2 * 14336) + 128256 * 4 == 185_062_400
    assert p.fits and p.compute_bytes == 185_062_400 + 8192 * 1024 * 32 * 4


def test_a_plan_for_another_quant_than_the_file_estimates_its_layers():
    """A model read from a Q4_K_M file knows that file's embedding and output bytes; a plan for Q8_0 weights (another
    file) cannot use them and estimates the split from vocab x hidden, exactly as for a catalog model."""
    from_file = replace(M8, quant="Q4_K_M", gguf_input_bytes=295_501_824, gguf_output_bytes=430_940_160,
                               gguf_output_tied=False)
    q8 = 8_540_770_848
    args = (WorkloadSpec(concurrent_users=1, context_tokens=8192), hw(), memory.Budget(6 * GIB, 50 * GIB), q8, "Q8_0",
            "test")
    a = memory._fit_llamacpp(from_file, *args, allow_kv_quant=True, gpu_overhead=1024 * MIB)
    b = memory._fit_llamacpp(M8, *args, allow_kv_quant=True, gpu_overhead=1024 * MIB)
    assert 0 < a.gpu_layers < 32 and (a.gpu_layers, a.gpu_bytes, a.host_bytes) == (b.gpu_layers, b.gpu_bytes,
                                                                                   b.host_bytes)
    assert memory.llamacpp_layer_split(from_file, q8, "Q8_0").source == "estimate"


@pytest.mark.parametrize("ram", [GIB // 2, 2 * GIB])
def test_a_smaller_context_tries_every_layer_on_the_gpu_first(ram):
    """Bug found by mutation testing (the smaller-context path only searched partial offloads, at most 31 layers).
    12 GiB of GPU budget, 131072 tokens asked. At 131072 the whole model needs 5 GiB + q8_0 KV (32 x 131072 x 8 x 256
    x 34/32 = 8.5 GiB) + compute(1) + 1 GiB margin = 14.6 GiB > 12 GiB, and no partial offload fits the RAM. At
    65536 every layer fits the GPU with a q8_0 cache: 5 GiB + 4.25 GiB + 92,787,712 B + 1 GiB = 11,098,641,408 B
    (f16, 8 GiB of KV, would need 14.1 GiB), with 80 MiB of RAM. Before the fix: 0.5 GiB of RAM was refused outright
    (every partial offload keeps the 0.3 GB embedding and more in RAM) and 2 GiB got -ngl 31."""
    p = fit(memory.Budget(12 * GIB, ram), ctx=131072)
    gpu = W + kv(65536, bpe=Q8) + compute(1) + 1024 * MIB
    assert gpu == 11_098_641_408
    assert p.fits and p.gpu_layers == 32 and p.context_per_request == 65536 and p.kv_cache_type == "q8_0"
    assert (p.gpu_bytes, p.host_bytes) == (gpu, 80 * MIB)
    assert p.levers == ("context reduced from 131072 to 65536 tokens per request to fit", "KV cache quantized to q8_0")


def test_cpu_only_smaller_context_has_no_offload_lever():
    """No GPU, 13.5 GiB of RAM, 131072 tokens asked: at 131072 even a q8_0 cache needs 5 + 8.5 GiB + compute(1)
    + 80 MiB > 13.5 GiB; at 65536 an f16 cache fits (5 + 8 GiB + 92,787,712 B + 80 MiB = 13.16 GiB). The only lever
    is the context: a CPU-only plan says nothing about layers on a GPU."""
    cpu = HardwareSpec(gpus=(), memory_gib=64, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))
    p = fit(memory.Budget(0, int(13.5 * GIB)), ctx=131072, machine=cpu)
    assert p.fits and p.gpu_layers == 0 and p.context_per_request == 65536 and p.kv_cache_type == "f16"
    assert p.host_bytes == W + kv(65536) + compute(1) + 80 * MIB
    assert p.levers == ("context reduced from 131072 to 65536 tokens per request to fit",)


def test_nothing_fits_is_a_refusal_with_fits_false():
    """1 GiB of GPU and 1 GiB of RAM cannot hold 5 GiB of weights at any context: fits is False (not merely falsy)
    and the shortfall says what is needed."""
    p = fit(memory.Budget(GIB, GIB))
    assert p.fits is False and p.shortfall.startswith("needs ")
