"""The planner's smaller rules, each against a hand computation: decode speed from bandwidth, context checkpoints
and the prompt-cache bound at their limits, the context cap and YaRN factor, mixed K/V cache types, and the
capacity of a node for llama.cpp RPC."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec

GIB, MIB = 1024**3, 1024**2
CATALOG = load_profiles().models
M8 = CATALOG["llama-3.1-8b-instruct"]
GEMMA = CATALOG["gemma-3-270m"]


def mem(**kw) -> memory.MemoryPlan:
    base = dict(weights_bytes=4 * GIB, kv_cache_bytes=GIB, compute_bytes=0, overhead_bytes=0, gpu_bytes=0,
                host_bytes=0, gpu_layers=0, total_layers=32, context_per_request=8192, parallel=1,
                kv_cache_type="f16", fits=True, gpu_budget_bytes=0, host_budget_bytes=0)
    base.update(kw)
    return memory.MemoryPlan(**base)


def hw(gpu_bw: float | None = None, host_bw: float = 80, apple: bool = False, count: int = 1) -> HardwareSpec:
    gpus = ()
    if gpu_bw is not None:
        gpus = (GPUSpec(vendor="apple" if apple else "nvidia", name="G", memory_gib=24, bandwidth_gbs=gpu_bw,
                        count=count, unified=apple),)
    return HardwareSpec(gpus=gpus, memory_gib=64, memory_bandwidth_gbs=host_bw, cpu=CPUSpec(cores=8))


READ = 4 * GIB + 32 * 1024 * 8 * 256 * 2  # weights + f16 KV of 1024 tokens (32 layers x 8 heads x 256 x 2)


def test_cpu_only_speed_reads_everything_from_ram():
    """Every token reads the weights and the KV cache once: 0.7 x 80 GB/s / 4.43e9 bytes = 12.6 tokens/s."""
    assert memory.predict_decode_tokens_per_s(M8, mem(), hw(), 1024) == (
        round(0.7 / (READ / 80e9), 1), "system RAM bandwidth")
    assert round(0.7 / (READ / 80e9), 1) == 12.6


def test_full_gpu_speed_and_tensor_parallel():
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=32), hw(1000), 1024) == (
        round(0.7 / (READ / 1000e9), 1), "GPU memory bandwidth")
    # TP 2 reads each half on its own GPU: twice the bandwidth.
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=32, tensor_parallel=2), hw(1000, count=2),
                                              1024)[0] == round(0.7 / (READ / 2000e9), 1)


def test_partial_offload_speed_adds_both_parts():
    """16 of 32 layers on a 1000 GB/s GPU, 16 from 80 GB/s RAM: half the bytes at each; RAM binds."""
    s = READ / 2 / 1000e9 + READ / 2 / 80e9
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=16), hw(1000), 1024) == (
        round(0.7 / s, 1), "system RAM bandwidth (50% of layers run from RAM)")
    # 31 of 32 on the GPU: the GPU part is larger, the GPU binds.
    s = READ * 31 / 32 / 1000e9 + READ / 32 / 80e9
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=31), hw(1000), 1024) == (
        round(0.7 / s, 1), "GPU memory bandwidth")


def test_apple_speed_uses_unified_bandwidth_and_moe_reads_active_weights():
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=32), hw(400, apple=True), 1024) == (
        round(0.7 / (READ / 400e9), 1), "unified memory bandwidth")
    moe = replace(M8, params=8_000_000_000, active_params=2_000_000_000)
    read = GIB + 32 * 1024 * 4096  # a quarter of the 4 GiB of weights is active per token
    assert memory.predict_decode_tokens_per_s(moe, mem(), hw(), 1024)[0] == round(0.7 / (read / 80e9), 1)


def test_sliding_window_kv_read_is_the_window():
    """Gemma 3 270M: 3 full layers read 4096 tokens, 15 sliding layers read their 512-token window,
    1 KV head x (256 + 256) x 2 bytes each."""
    assert memory._kv_bytes_read(GEMMA, mem(), 4096) == (3 * 4096 + 15 * 512) * 1024
    assert memory._kv_bytes_read(GEMMA, mem(kv_cache_type="q8_0"), 100) == 18 * 100 * 512 * 34 / 32


def test_mixed_k_and_v_cache_types_take_the_mean():
    assert memory.kv_bytes_per_element("q8_0/f16") == (34 / 32 + 2) / 2
    assert memory.kv_bytes_per_element("q4_0") == 18 / 32
    assert memory.kv_bytes_per_element("fp8") == 1.0
    assert memory.kv_bytes_per_element("fp8_e5m2") == 1.0


@pytest.mark.parametrize("kv_type", ["FP8", "Q8_0", "fp16", "", "q8_0/FP8"])
def test_an_unknown_cache_type_is_refused_not_planned_as_two_bytes(kv_type):
    """Cache-type names are case-sensitive flags of the engines (llama.cpp -ctk q8_0, vLLM --kv-cache-dtype fp8):
    "FP8" is not a type either engine accepts, so planning it as 2 bytes (bf16) would both over-size the cache and
    render a flag that fails at start-up. The planner refuses it, naming what it got and what it knows."""
    with pytest.raises(memory.PlanError) as err:
        memory.kv_bytes_per_element(kv_type)
    bad = kv_type.split("/")[-1]
    assert f"unknown KV cache type {bad!r}" in str(err.value)
    assert "fp8, fp8_e4m3" in str(err.value) and "q8_0" in str(err.value)
    with pytest.raises(memory.PlanError):
        memory.kv_bytes_per_element("fp8/" + kv_type) if kv_type else memory.kv_bytes_per_element("/")


def test_offload_fraction():
    assert mem(gpu_layers=8).offload_fraction == 0.75
    assert mem(total_layers=0).offload_fraction == 0.0


# ---------------------------------------------------------------------------------------------- checkpoints


CKPT = 15 * 1024 * 1 * 512 * 2  # Gemma 3 270M: 15 SWA layers x pad256(512 + 512) cells x 1 head x 512 x 2 bytes


def test_checkpoint_size():
    """A checkpoint copies the sliding-window cells: min(pad256(ctx), window + ubatch), padded: 1024 at 4096 tokens,
    256 at 200 tokens; a model without sliding-window layers makes none."""
    assert memory.llamacpp_checkpoint_bytes(GEMMA, 4096) == CKPT == 15 * MIB
    assert memory.llamacpp_checkpoint_bytes(GEMMA, 200) == 15 * 256 * 1024
    assert memory.llamacpp_checkpoint_bytes(GEMMA, 4096, "q8_0") == int(15 * 1024 * 512 * 34 / 32)
    assert memory.llamacpp_checkpoint_bytes(M8, 4096) == 0


@pytest.mark.parametrize("room_quarter,per_slot", [(4, 4), (4 - 1e-9, 2), (2, 2), (1, 1), (0.5, 0)])
def test_checkpoints_per_slot_at_their_limit(room_quarter, per_slot):
    """The most of 4, 2, 1 checkpoints per slot whose copies (2 slots x n x 15 MiB) take at most half the cache
    room (itself half the free RAM): free RAM = 4 x 2 slots x n x 15 MiB gives n."""
    slots = 2
    free = int(4 * slots * room_quarter * CKPT)
    plan = mem(context_per_request=4096, parallel=slots, kv_cache_bytes=64 * MIB, host_bytes=GIB)
    out = memory.bound_llamacpp_cache(plan, GEMMA, memory.Budget(0, GIB + free))
    c = out.prompt_cache
    assert c.checkpoints == per_slot
    room = int(free * 0.5)
    ckpt_total = slots * per_slot * CKPT
    assert c.limit_bytes == max(0, min(8192 * MIB, 2 * 64 * MIB, room - ckpt_total)) // MIB * MIB
    assert c.bytes == c.limit_bytes + ckpt_total and out.host_bytes == GIB + c.bytes


def test_cache_ram_is_capped_at_llama_servers_default():
    """2 x a 6 GiB KV cache would be 12 GiB: --cache-ram stays at llama-server's own 8192 MiB."""
    out = memory.bound_llamacpp_cache(mem(kv_cache_bytes=6 * GIB, host_bytes=GIB), M8, memory.Budget(0, 100 * GIB))
    assert out.prompt_cache.limit_bytes == 8192 * MIB and out.prompt_cache.checkpoints is None


def test_an_unfit_plan_gets_no_cache():
    plan = mem(fits=False)
    assert memory.bound_llamacpp_cache(plan, M8, memory.Budget(0, 100 * GIB)) is plan


@pytest.mark.parametrize("extra,fits", [(0, True), (-1, False)])
def test_pinned_cache_ram_at_the_ram_limit(extra, fits):
    """--cache-ram 1024 pinned: it fits when the RAM budget holds the plan plus 1024 MiB, not one byte less."""
    pins = memory.Pins(cache_ram_mib=1024, said=(("cache_ram_mib", "--cache-ram 1024"),))
    out = memory.bound_llamacpp_cache(mem(host_bytes=GIB), M8, memory.Budget(0, 2 * GIB + extra), pins=pins)
    assert out.fits is fits and out.prompt_cache.limit_bytes == GIB and out.host_bytes == 2 * GIB


@pytest.mark.parametrize("extra,fits", [(0, True), (-1, False)])
def test_pinned_cache_on_unified_memory_counts_the_gpu_part(extra, fits):
    pins = memory.Pins(cache_ram_mib=1024, said=(("cache_ram_mib", "--cache-ram 1024"),))
    plan = mem(host_bytes=GIB, gpu_bytes=3 * GIB)
    out = memory.bound_llamacpp_cache(plan, M8, memory.Budget(10 * GIB, 5 * GIB + extra, unified=True), pins=pins)
    assert out.fits is fits


def test_host_headroom():
    p = mem(gpu_bytes=3 * GIB, host_bytes=GIB)
    assert memory.host_headroom(p, memory.Budget(0, 10 * GIB)) == 9 * GIB
    assert memory.host_headroom(p, memory.Budget(0, 10 * GIB, unified=True)) == 6 * GIB
    assert memory.host_headroom(p, memory.Budget(0, GIB // 2)) == 0


# ---------------------------------------------------------------------------------------------- context


QWEN = CATALOG["qwen2.5-7b-instruct"]


def test_context_cap_and_yarn_factor():
    """Qwen2.5 7B: trained 32768, YaRN factor 4 documented (131072). 65536 asked: served, factor 2;
    40000 asked: factor ceil(40000 / 32768 x 2) / 2 = 1.5; 200000 asked: capped at 131072 with the lever."""
    assert (QWEN.context_length, QWEN.long_context.factor, QWEN.long_context.max_context) == (32768, 4.0, 131072)
    assert memory.context_for(QWEN, 32768) == (32768, None)
    assert memory.context_for(QWEN, 65536) == (65536, None)
    assert memory.context_for(QWEN, 131072) == (131072, None)
    ctx, lever = memory.context_for(QWEN, 131073)
    assert ctx == 131072 and lever.startswith("context capped at 131072 tokens")
    no_yarn = replace(QWEN, long_context=None)
    assert memory.context_for(no_yarn, 40000) == (32768, "context capped at the model's trained 32768 tokens "
                                                         "(asked 40000)")
    assert memory.context_for(no_yarn, 32768) == (32768, None)  # exactly the trained context: no cap, no lever
    assert memory.context_for(replace(QWEN, context_length=0), 40000) == (40000, None)
    p = mem(context_per_request=40000)
    assert memory.with_rope(p, QWEN).rope_scaling.factor == 1.5
    assert memory.with_rope(mem(context_per_request=32768), QWEN).rope_scaling is None
    assert memory.with_rope(p, no_yarn).rope_scaling is None


def test_smaller_contexts_halve_to_2048():
    assert memory._smaller_contexts(16384) == [8192, 4096, 2048]
    assert memory._smaller_contexts(5000) == [2560, 2048]
    assert memory._smaller_contexts(2048) == []


def test_proportional_layers_largest_remainder_ties_to_the_earlier():
    assert memory._proportional_layers(32, [1, 1, 1]) == (11, 11, 10)
    assert memory._proportional_layers(10, [3, 1]) == (8, 2)  # 7.5, 2.5: the tie goes to the first


def test_node_capacity():
    """GPU node: GPU memory less 1024 MiB per GPU; CPU-only: RAM x 0.85 less 80 MiB; Apple: the wired share less
    80 MiB."""
    gpu = HardwareSpec(gpus=(GPUSpec(vendor="nvidia", name="G", memory_gib=24, bandwidth_gbs=900, count=2),),
                       memory_gib=64, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))
    assert memory.node_capacity(gpu) == 48 * GIB - 2 * GIB
    assert memory.node_capacity(hw()) == int(64 * GIB * 0.85) - 80 * MIB
    mac = HardwareSpec(gpus=(GPUSpec(vendor="apple", name="M", memory_gib=64, bandwidth_gbs=400, unified=True),),
                       memory_gib=64, memory_bandwidth_gbs=400, cpu=CPUSpec(cores=12), os="macos")
    assert memory.node_capacity(mac) == 48 * GIB - 80 * MIB


def test_gb_is_decimal_with_one_digit():
    """Vendors' and file listings' GB (10^9 bytes); 12.75 rounds half to even, to 12.8."""
    assert memory.gb(12_750_000_000) == "12.8 GB"
    assert memory.gb(2**30) == "1.1 GB"


def test_pinned_ctx_checkpoints_are_counted_as_pinned():
    """--ctx-checkpoints 8 pinned on Gemma 3 270M (2 slots x 4096): the count is the user's 8, not the 4 the room
    would give, and the plan counts 2 slots x 8 x 15 MiB = 240 MiB of copies beside the prompt cache."""
    pins = memory.Pins(ctx_checkpoints=8, said=(("ctx_checkpoints", "--ctx-checkpoints 8"),))
    plan = mem(context_per_request=4096, parallel=2, kv_cache_bytes=64 * MIB, host_bytes=GIB)
    out = memory.bound_llamacpp_cache(plan, GEMMA, memory.Budget(0, 100 * GIB), pins=pins)
    assert out.prompt_cache.checkpoints == 8
    assert out.prompt_cache.bytes == out.prompt_cache.limit_bytes + 2 * 8 * CKPT == 128 * MIB + 240 * MIB


def test_checkpoints_of_a_q8_cache_are_q8_sized():
    """A checkpoint copies the slot's cache as it is stored: with a q8_0 cache each is 15 layers x 1024 cells x 512
    elements x 34/32 bytes = 8,355,840 B (not the f16 15 MiB); 1 slot x 4 of them."""
    plan = mem(context_per_request=4096, parallel=1, kv_cache_bytes=64 * MIB, host_bytes=GIB, kv_cache_type="q8_0")
    out = memory.bound_llamacpp_cache(plan, GEMMA, memory.Budget(0, 100 * GIB))
    each = 15 * 1024 * 512 * 34 // 32
    assert each == 8_355_840
    assert out.prompt_cache.checkpoints == 4 and out.prompt_cache.bytes == 128 * MIB + 4 * each


def test_pinned_cache_on_a_discrete_gpu_counts_only_the_ram_part():
    """On a discrete GPU the RAM budget holds host_bytes alone: 1 GiB + --cache-ram 1024 = 2 GiB fits a 2 GiB RAM
    budget although the plan also has 3 GiB on the GPU."""
    pins = memory.Pins(cache_ram_mib=1024, said=(("cache_ram_mib", "--cache-ram 1024"),))
    out = memory.bound_llamacpp_cache(mem(host_bytes=GIB, gpu_bytes=3 * GIB), M8, memory.Budget(10 * GIB, 2 * GIB),
                                      pins=pins)
    assert out.fits is True and out.host_bytes == 2 * GIB


def test_pinned_cache_refusal_names_its_overrides_and_the_ram_left():
    """--cache-ram 1024 and --ctx-checkpoints 2 pinned (and -np 2, not a cache knob) on Gemma 3 270M, 2 slots x 4096:
    the cache needs 1024 MiB + 2 x 2 x 15 MiB = 1084 MiB = 1,136,656,384 B ("1.1 GB"); the plan holds 1 GiB of a
    1.5 GiB RAM budget, so 0.5 GiB = 536,870,912 B ("0.5 GB") is left. The reason names the two cache overrides."""
    said = (("cache_ram_mib", "--cache-ram 1024"), ("ctx_checkpoints", "--ctx-checkpoints 2"), ("parallel", "-np 2"))
    pins = memory.Pins(cache_ram_mib=1024, ctx_checkpoints=2, parallel=2, said=said)
    plan = mem(context_per_request=4096, parallel=2, kv_cache_bytes=64 * MIB, host_bytes=GIB)
    out = memory.bound_llamacpp_cache(plan, GEMMA, memory.Budget(0, GIB + GIB // 2), pins=pins)
    assert out.fits is False and out.prompt_cache.bytes == 1084 * MIB
    assert out.shortfall == ("the prompt cache needs 1.1 GB of RAM beside the rest of the plan, 0.5 GB is left "
                             "(pinned by overrides: --cache-ram 1024, --ctx-checkpoints 2)")


def test_speed_edges_unknown_layers_params_and_nothing_to_read():
    """Degenerate inputs: a plan with no layer count reads everything from RAM (never divides by 0 layers); a model
    with no parameter count reads all its weights per token; a plan that reads 0 bytes has no speed (0.0)."""
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=0, total_layers=0), hw(1000), 1024) == (
        round(0.7 / (READ / 80e9), 1), "system RAM bandwidth")
    no_params = replace(M8, params=0, active_params=0)
    assert memory.predict_decode_tokens_per_s(no_params, mem(), hw(), 1024)[0] == round(0.7 / (READ / 80e9), 1)
    assert memory.predict_decode_tokens_per_s(M8, mem(weights_bytes=0), hw(), 0) == (0.0, "system RAM bandwidth")


def test_partial_offload_speed_tie_goes_to_the_gpu_and_the_share_is_rounded():
    """A GPU as slow as RAM (80 GB/s each) with half the layers on it: both parts take the same time and the GPU is
    named (RAM binds only when its part is strictly larger). 8 of 32 layers on a 1000 GB/s GPU: 24/32 = 75% of the
    layers run from RAM."""
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=16), hw(80), 1024)[1] == "GPU memory bandwidth"
    s = READ / 4 / 1000e9 + READ * 3 / 4 / 80e9
    assert memory.predict_decode_tokens_per_s(M8, mem(gpu_layers=8), hw(1000), 1024) == (
        round(0.7 / s, 1), "system RAM bandwidth (75% of layers run from RAM)")


def test_pad_rounds_up_to_the_step():
    """llama.cpp pads a slot's cells to 256 (and vLLM its blocks to 16): a multiple stays, one more token takes a
    whole step."""
    assert [memory.pad(n) for n in (1, 255, 256, 257, 512, 513)] == [256, 256, 256, 512, 512, 768]
    assert [memory.pad(n, 16) for n in (16, 17, 8193)] == [16, 32, 8208]


def test_checkpoint_note_gives_each_copy_and_their_total():
    """Gemma 3 270M, 2 slots, 4 checkpoints each of 15 MiB: "up to 15.0 MiB each (120 MiB for 2 slots)"."""
    plan = mem(context_per_request=4096, parallel=2, kv_cache_bytes=64 * MIB, host_bytes=GIB)
    out = memory.bound_llamacpp_cache(plan, GEMMA, memory.Budget(0, 100 * GIB))
    assert out.prompt_cache.checkpoints == 4
    assert "copies of the sliding-window cache of up to 15.0 MiB each (120 MiB for 2 slots)" in out.prompt_cache.note


def test_llamacpp_cache_notes_give_whole_mib_and_the_free_ram():
    """1 slot with a 64 MiB cache and 100 GiB free: --cache-ram is 2 x 64 = 128 MiB, written as whole MiB in the note
    and its flag. With 100 MiB free the room is half of it, so the bound is min(128 MiB, 50 MiB) = 50 MiB; with
    1.5 MiB - 2 B free the room (786,431 B) rounds down to 0 MiB: off, and the note gives the free RAM ("0.0 GB")."""
    plan = mem(kv_cache_bytes=64 * MIB, host_bytes=GIB)
    on = memory.bound_llamacpp_cache(plan, M8, memory.Budget(0, 100 * GIB)).prompt_cache.note
    assert on.startswith("prompt cache bounded to 128 MiB of system RAM (--cache-ram 128; ")
    half = memory.bound_llamacpp_cache(plan, M8, memory.Budget(0, GIB + 100 * MIB)).prompt_cache.note
    assert half.startswith("prompt cache bounded to 50 MiB of system RAM (--cache-ram 50; ")
    off = memory.bound_llamacpp_cache(plan, M8, memory.Budget(0, GIB + 3 * GIB // 2 // 1024 - 2)).prompt_cache
    assert off.limit_bytes == 0 and off.note.startswith("prompt cache off (--cache-ram 0): the plan leaves 0.0 GB")
