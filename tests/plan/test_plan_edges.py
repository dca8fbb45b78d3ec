"""Edges of the planner that the worked examples do not reach: each found by a surviving mutant (issue 19,
benchmarks/results/mutation.md) and pinned here against a hand computation."""

from __future__ import annotations

from dataclasses import replace

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec

GIB, MIB = 1024**3, 1024**2
CATALOG = load_profiles().models
M8 = CATALOG["llama-3.1-8b-instruct"]
QWEN = CATALOG["qwen2.5-7b-instruct"]
COMPUTE_1 = 512 * 4 * (4 * 4096 + 2 * 14336) + 128256 * 4


def box(gpus=(), ram: float = 64) -> HardwareSpec:
    return HardwareSpec(gpus=gpus, memory_gib=ram, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))


def nv(gib: float, count: int = 1, name: str = "G") -> GPUSpec:
    return GPUSpec(vendor="nvidia", name=name, memory_gib=gib, bandwidth_gbs=900, count=count)


def wl(users=1, ctx=8192):
    return WorkloadSpec(concurrent_users=users, context_tokens=ctx)


# ---------------------------------------------------------------------------------------------- vLLM CPU


def test_vllm_cpu_plan_names_its_weights_and_layers():
    hw = box()
    p = memory.plan_vllm_cpu(M8, wl(), hw, memory.initial_budget(hw), 16 * GIB, "bf16", "catalog")
    assert (p.weights_format, p.weights_source, p.total_layers) == ("bf16", "catalog", 32)


def test_vllm_cpu_refusal_names_the_pinned_overrides():
    hw = box(ram=8)
    pins = memory.Pins(parallel=4, said=(("parallel", "--max-num-seqs 4"),))
    p = memory.plan_vllm_cpu(M8, wl(), hw, memory.initial_budget(hw), 16 * GIB, "bf16", "c", pins)
    assert not p.fits and p.shortfall.endswith("(pinned by overrides: --max-num-seqs 4)")
    plain = memory.plan_vllm_cpu(M8, wl(), hw, memory.initial_budget(hw), 16 * GIB, "bf16", "c")
    assert not plain.fits and plain.shortfall.endswith("usable")


def test_vllm_cpu_overhead_note_adds_scratch_and_activations():
    """Llama 3.1 8B, 1 user: worker scratch 256 MiB (268,435,456 B) plus activations at 2048 batched tokens and one
    sequence, int(2048 x 5.95 x (4096 + 14336) + 1 x 128256 x 4 x 1.42) = 225,333,473 B: 493,768,929 B, "0.5 GB"."""
    hw = box()
    p = memory.plan_vllm_cpu(M8, wl(), hw, memory.initial_budget(hw), 16 * GIB, "bf16", "catalog")
    assert int(2048 * 5.95 * (4096 + 14336) + 128256 * 4 * 1.42) == 225_333_473
    assert any(lever.endswith("worker scratch and activations 0.5 GB") for lever in p.levers)


# ---------------------------------------------------------------------------------------------- multi-node


def test_vllm_multinode_sizes_ranks_by_the_largest_gpu_of_a_node():
    """A node with 2 x 80 GiB and a 24 GiB card: the plan is sized on the 80 GiB GPUs (TP = 3 GPUs)."""
    node = box(gpus=(nv(24), GPUSpec(vendor="nvidia", name="H100", memory_gib=80, runtime_memory_gib=79.22,
                                     bandwidth_gbs=3000, count=2, tier="datacenter")), ram=512)
    p = memory.plan_vllm_multinode(replace(M8, heads=48), wl(), node, 2, 100 * GIB, "bf16", "c")
    assert p.gpu_bytes == int(int(79.22 * GIB) * 0.9) * 3 * p.pipeline_parallel


def test_node_capacity_is_never_negative():
    assert memory.node_capacity(box(gpus=(nv(0.5),))) == 0
    assert memory.node_capacity(box(ram=0.05)) == 0


def rpc(nodes, weights, users=1, ctx=8192, model=M8):
    return memory.plan_llamacpp_rpc(model, wl(users, ctx), nodes, weights, "Q4_K_M", "catalog")


def test_rpc_all_on_gpus_leaves_only_the_host_overhead_and_names_its_weights():
    """Two 48 GiB GPU nodes hold 10 GiB of weights + 1 GiB KV + 2 compute buffers: host is the 80 MiB alone."""
    nodes = (box(gpus=(nv(48),)), box(gpus=(nv(48),)))
    p = rpc(nodes, 10 * GIB)
    need = 11 * GIB + 2 * COMPUTE_1
    assert p.gpu_bytes == need and p.host_bytes - p.prompt_cache.bytes == 80 * MIB
    assert (p.weights_format, p.weights_source, p.node_layers) == ("Q4_K_M", "catalog", (16, 16))
    assert p.levers[0].startswith("layers split over 2 nodes in proportion to their memory (16 + 16)")


def test_rpc_quantizes_then_shrinks_the_context_and_says_so():
    """CPU nodes of 16 GiB (13.52 GiB usable each): 24 GiB of weights leave too little for 4 x 8192 f16 (4 GiB) or
    q8_0 (2.125 GiB) KV once only 2 GiB is left; at 4096 tokens the f16 cache (2 GiB) fits; with 2.125 GiB left,
    q8_0 at full context does."""
    nodes = (box(ram=16), box(ram=16))
    cap = 2 * (int(16 * GIB * 0.85) - 80 * MIB)
    compute_4 = COMPUTE_1 + 3 * 128256 * 4  # 4 slots: 4 logits rows
    w = cap - 2 * compute_4 - 2 * GIB
    p = rpc(nodes, w, users=4)
    assert p.fits and (p.context_per_request, p.kv_cache_type, p.kv_cache_bytes) == (4096, "f16", 2 * GIB)
    assert "context reduced from 8192 to 4096 tokens per request to fit" in p.levers
    assert not any("quantized" in lever for lever in p.levers)
    q = rpc(nodes, cap - 2 * compute_4 - 4 * 544 * MIB, users=4)
    assert q.fits and (q.context_per_request, q.kv_cache_type) == (8192, "q8_0")
    assert "KV cache quantized to q8_0" in q.levers
    assert not any("context reduced" in lever for lever in q.levers)


def test_rpc_context_cap_lever_and_smaller_context_in_q8():
    """Asked past the trained context of a model without YaRN: capped (the lever says so). A q8_0 cache at the
    smaller context when f16 at it does not fit."""
    no_yarn = replace(QWEN, long_context=None)
    nodes = (box(ram=64), box(ram=64))
    p = rpc(nodes, 8 * GIB, ctx=65536, model=no_yarn)
    assert p.context_per_request == 32768 and p.levers[0].startswith("context capped at the model's trained 32768")


def test_rpc_prompt_cache_is_bounded_by_the_head_nodes_ram():
    """The cache lives in the head's RAM: a 16 GiB head and a 256 GiB worker bound it from the head's 13.6 GiB."""
    small_head = rpc((box(gpus=(nv(48),), ram=16), box(gpus=(nv(48),), ram=256)), 40 * GIB, users=8)
    big_head = rpc((box(gpus=(nv(48),), ram=256), box(gpus=(nv(48),), ram=16)), 40 * GIB, users=8)
    room = int((int(16 * GIB * 0.85) - 80 * MIB) * 0.5)
    assert small_head.prompt_cache.limit_bytes == min(8192 * MIB, 16 * GIB, room) // MIB * MIB
    assert big_head.prompt_cache.limit_bytes == 8192 * MIB


def test_rpc_refusal():
    """Two 16 GiB CPU nodes cannot hold 40 GiB: refused, with the figures: need = weights + the q8_0 KV cache."""
    p = rpc((box(ram=16), box(ram=16)), 40 * GIB)
    cap = 2 * (int(16 * GIB * 0.85) - 80 * MIB)
    need = 40 * GIB + 544 * MIB
    assert p.fits is False
    assert p.shortfall == (f"needs {need / 1e9:.1f} GB (weights + KV cache) but the 2 nodes hold {cap / 1e9:.1f} GB: "
                           f"{(need - cap) / 1e9:.1f} GB short")


# ---------------------------------------------------------------------------------------------- MLX


def test_mlx_kv_without_a_window_size_counts_every_layer_in_full():
    odd = replace(M8, swa_layers=4, sliding_window=None)
    assert memory.mlx_kv_bytes(odd, 8192, 1) == 28 * 8192 * 4096
    assert memory.mlx_kv_bytes(replace(M8, sliding_window=512), 8192, 1) == 32 * 8192 * 4096


def test_mlx_on_linux_counts_host_ram():
    """mlx_lm's CPU build on Linux: nothing on a GPU, the whole plan in RAM, fit against RAM (one byte either side)."""
    hw = box(ram=64)
    w = int(64 * GIB * 0.85) - GIB - GIB // 2
    p = memory.plan_mlx(M8, wl(), hw, memory.initial_budget(hw), w, "4bit", "catalog")
    assert p.fits and (p.gpu_bytes, p.gpu_layers, p.host_bytes) == (0, 0, w + GIB + GIB // 2)
    assert (p.weights_format, p.weights_source) == ("4bit", "catalog")
    over = memory.plan_mlx(M8, wl(), hw, memory.initial_budget(hw), w + 1, "4bit", "catalog")
    assert not over.fits


def test_mlx_context_cap_lever():
    hw = box(ram=64)
    p = memory.plan_mlx(replace(QWEN, long_context=None), wl(ctx=65536), hw, memory.initial_budget(hw), GIB,
                        "4bit", "c")
    assert p.context_per_request == 32768 and p.levers[0].startswith("context capped at the model's trained")


def test_mlx_cache_off_and_on_notes_and_levers():
    """No room: the cache is off and the note says so; room for 3 of 10 entries of 1 GiB: 3, in the levers."""
    plan = replace(memory.plan_mlx(M8, wl(), box(), memory.Budget(0, 100 * GIB), GIB, "4bit", "c"),
                   prompt_cache=memory.PromptCache(), levers=())
    none = memory.bound_mlx_cache(plan, memory.Budget(0, plan.host_bytes))
    assert none.prompt_cache.entries == 0 and none.prompt_cache.bytes == 0
    assert none.levers == (none.prompt_cache.note,) and none.prompt_cache.note.startswith(
        "prompt cache off (--prompt-cache-size 0): the plan leaves 0.0 GB of memory free")
    three = memory.bound_mlx_cache(replace(plan, kv_cache_bytes=2 * GIB, parallel=2),
                                   memory.Budget(0, plan.host_bytes + 6 * GIB + 1))
    assert three.prompt_cache.entries == 3 and three.host_bytes == plan.host_bytes + 3 * GIB
    assert three.levers == (three.prompt_cache.note,)
    assert "3 finished requests of at most 1024 MiB each" in three.prompt_cache.note
    assert "it costs up to 3072 MiB, counted in the plan" in three.prompt_cache.note
    # 2 GiB free leaves 1 GiB of room, less than one 2 GiB request: off, and the note gives the free memory, 2 GiB.
    off = memory.bound_mlx_cache(replace(plan, kv_cache_bytes=2 * GIB, parallel=1),
                                 memory.Budget(0, plan.host_bytes + 2 * GIB))
    assert off.prompt_cache.entries == 0 and off.prompt_cache.note.startswith(
        "prompt cache off (--prompt-cache-size 0): the plan leaves 2.1 GB of memory free")
    one = memory.bound_mlx_cache(replace(plan, kv_cache_bytes=2 * GIB, parallel=2),
                                 memory.Budget(0, plan.host_bytes + 2 * GIB))
    assert one.prompt_cache.entries == 1 and "bounded to 1 finished requests" in one.prompt_cache.note
    empty = memory.bound_mlx_cache(replace(plan, kv_cache_bytes=0), memory.Budget(0, 100 * GIB))
    assert empty.prompt_cache.entries == 0


# ---------------------------------------------------------------------------------------------- refusals


def test_smaller_contexts_from_an_odd_size():
    assert memory._smaller_contexts(2049) == [2048]
    assert memory._smaller_contexts(2304) == [2048]


def unfit(gpu: int, host: int, layers: int = 20) -> memory.MemoryPlan:
    return memory.MemoryPlan(weights_bytes=30 * GIB, kv_cache_bytes=2 * GIB, compute_bytes=0, overhead_bytes=0,
                             gpu_bytes=gpu, host_bytes=host, gpu_layers=layers, total_layers=32,
                             context_per_request=8192, parallel=1, kv_cache_type="q8_0", fits=False,
                             gpu_budget_bytes=0, host_budget_bytes=0)


def gbw(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def test_shortfall_when_the_pool_is_short():
    """need = GPU + host part; have = GPU + host budget (discrete) -> 'needs X (..) but has Y usable: Z short'."""
    hw = box(gpus=(nv(24),))
    p, b = unfit(24 * GIB, 20 * GIB), memory.Budget(20 * GIB, 10 * GIB)
    assert memory._shortfall(p, b, hw) == (
        f"needs {gbw(44 * GIB)} ({gbw(30 * GIB)} weights + {gbw(2 * GIB)} KV cache) but {hw.label()} has "
        f"{gbw(30 * GIB)} usable ({gbw(20 * GIB)} of GPU memory + {gbw(10 * GIB)} of system RAM): {gbw(14 * GIB)} short")


def test_shortfall_when_only_the_gpu_share_is_short():
    """The pool holds it (need <= have, equal here) but the GPU part is one byte over its budget."""
    hw = box(gpus=(nv(24),))
    p, b = unfit(20 * GIB + 1, 10 * GIB - 1), memory.Budget(20 * GIB, 10 * GIB)
    assert memory._shortfall(p, b, hw) == (f"needs {gbw(20 * GIB + 1)} of GPU memory for 20 layers but "
                                           f"{hw.label()} has {gbw(20 * GIB)}")
    at = unfit(20 * GIB, 10 * GIB)  # exactly the GPU budget: not the GPU's fault
    assert memory._shortfall(at, b, hw).startswith("needs ") and "usable" in memory._shortfall(at, b, hw)


def test_shortfall_on_unified_memory_counts_only_the_pool():
    """Unified: have = the pool (host budget) alone; 30 GiB of plan in a 40 GiB pool with a 20 GiB GPU share is
    the GPU-share case; in a 25 GiB pool it is short by 5 GiB."""
    hw = box(gpus=(nv(24),))
    p = unfit(30 * GIB, 0, layers=32)
    assert "of GPU memory for 32 layers" in memory._shortfall(p, memory.Budget(20 * GIB, 40 * GIB, True), hw)
    assert memory._shortfall(p, memory.Budget(20 * GIB, 25 * GIB, True), hw).endswith(f"{gbw(5 * GIB)} short")
    pins = memory.Pins(parallel=2, said=(("parallel", "-np 2"),))
    assert memory._shortfall(p, memory.Budget(20 * GIB, 25 * GIB, True), hw, pins).endswith(
        "short (pinned by overrides: -np 2)")
