"""Worked examples: MLX on Apple unified memory, every figure derived by hand.

Sources:
- Wired limit: macOS lets the GPU wire recommendedMaxWorkingSetSize of unified memory: 2/3 on machines up to 36 GB
  (a 16 GB M4 reports 11453.25 MB), 3/4 above (64 GB: 49152 MiB; 128 GB: 98304 MiB, llama.cpp/LM Studio logs in
  profiles/hardware.yaml). The stack may set wired_limit_fraction to the machine's measured value.
- mlx_lm KVCache grows in steps of 256 tokens (mlx_lm/models/cache.py KVCache.step), bf16 (2 bytes); rotating
  (sliding-window) caches hold at most the window. Runtime overhead 0.5 GiB.
- Raising iogpu.wired_limit_mb lets the GPU wire more (mlx-lm README "Large Models"): the plan may use the whole
  pool less the 15% left to the OS, with that lever said.
- mlx_lm.server's prompt cache (--prompt-cache-size 10 entries by default): bounded to 2 conversations per slot and
  half the memory the plan leaves free, in whole requests, counted on the GPU side of unified memory.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from stackgen.plan import memory, resolve
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec, load_stack

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]


def mac(gib: float, wired: float | None = None) -> HardwareSpec:
    return HardwareSpec(gpus=(GPUSpec(vendor="apple", name="Apple M", memory_gib=gib, bandwidth_gbs=400, unified=True),),
                        memory_gib=gib, memory_bandwidth_gbs=400, cpu=CPUSpec(cores=12, arch="arm64"), os="macos",
                        wired_limit_fraction=wired)


@pytest.mark.parametrize("gib,fraction", [(16, 2 / 3), (36, 2 / 3), (36.5, 0.75), (64, 0.75), (128, 0.75)])
def test_wired_budget_by_machine_size(gib, fraction):
    b = memory.initial_budget(mac(gib))
    assert b.unified
    assert b.gpu_bytes == int(int(gib * GIB) * fraction)
    assert b.host_bytes == int(int(gib * GIB) * 0.85)


def test_measured_wired_fraction_wins():
    assert memory.initial_budget(mac(36, wired=0.5)).gpu_bytes == 18 * GIB


def plan(hw, users, weights, ctx=8192, budget=None, model=M8):
    return memory.plan_mlx(model, WorkloadSpec(concurrent_users=users, context_tokens=ctx), hw,
                           budget or memory.initial_budget(hw), weights, "4bit", "test")


def cache(kv: int, users: int, pool: int, used: int) -> int:
    """Prompt-cache bytes: whole requests, at most 10, 2 x the KV cache and half of the pool left free."""
    per = kv // users
    want = min(int((pool - used) * 0.5), 2 * kv)
    return min(10, want // per) * per


def test_36gb_mac():
    """36 GB Mac, 4 GiB of 4-bit weights, 1 user x 8192: KV 32 layers x 8192 x 8 x 256 x 2 = 1 GiB; with the
    0.5 GiB overhead 5.5 GiB, inside the 24 GiB wired budget (2/3). Prompt cache: 2 requests of 1 GiB."""
    hw = mac(36)
    p = plan(hw, 1, 4 * GIB)
    kv = 32 * 8192 * 4096
    pool = int(36 * GIB * 0.85)
    c = cache(kv, 1, pool, 4 * GIB + kv + GIB // 2)
    assert c == 2 * GIB
    assert p.fits and (p.weights_bytes, p.kv_cache_bytes, p.compute_bytes, p.overhead_bytes) == (
        4 * GIB, kv, 0, GIB // 2)
    assert (p.gpu_bytes, p.host_bytes) == (4 * GIB + kv + GIB // 2 + c, 0)
    assert (p.gpu_layers, p.total_layers, p.parallel, p.kv_cache_type, p.context_per_request) == (
        32, 32, 1, "bf16", 8192)
    assert (p.prompt_cache.entries, p.prompt_cache.bytes, p.prompt_cache.limit_bytes) == (2, c, c)
    assert (p.gpu_budget_bytes, p.host_budget_bytes) == (24 * GIB, pool)
    assert not any("wired" in lever for lever in p.levers)


def test_36gb_mac_past_the_wired_limit_raises_it():
    """26 GiB of weights: 27.5 GiB is over the 24 GiB wired budget but inside the 30.6 GiB pool: it fits with the
    iogpu.wired_limit_mb lever, sized to the whole plan (prompt cache included) in MiB, rounded up."""
    hw = mac(36)
    p = plan(hw, 1, 26 * GIB)
    kv = GIB
    pool = int(36 * GIB * 0.85)
    total = 26 * GIB + kv + GIB // 2
    c = cache(kv, 1, pool, total)
    assert p.fits and p.gpu_bytes == total + c
    assert p.levers[0] == (f"raise the GPU wired-memory limit to {math.ceil((total + c) / MIB)} MB "
                           "(sudo sysctl iogpu.wired_limit_mb=...)")


def test_128gb_mac():
    """128 GB Mac, 70 GiB of weights, 2 users x 8192: 70 + 2 + 0.5 = 72.5 GiB inside 96 GiB (3/4 wired)."""
    hw = mac(128)
    p = plan(hw, 2, 70 * GIB)
    kv = 2 * GIB
    pool = int(128 * GIB * 0.85)
    c = cache(kv, 2, pool, 72 * GIB + GIB // 2)
    assert c == 4 * GIB
    assert p.fits and p.gpu_budget_bytes == 96 * GIB
    assert (p.kv_cache_bytes, p.gpu_bytes, p.host_bytes, p.parallel) == (kv, 72 * GIB + GIB // 2 + c, 0, 2)
    assert p.prompt_cache.entries == 4


@pytest.mark.parametrize("extra,fits,wired", [(0, True, False), (1, True, True)])
def test_wired_limit_one_byte_either_side(extra, fits, wired):
    hw = mac(36)
    w = 24 * GIB - GIB - GIB // 2 + extra  # weights + 1 GiB KV + 0.5 GiB = exactly the 24 GiB budget (+ extra)
    p = plan(hw, 1, w)
    assert p.fits is fits
    assert any("iogpu.wired_limit_mb" in lever for lever in p.levers) is wired


@pytest.mark.parametrize("extra,fits", [(0, True), (1, False)])
def test_unified_pool_limit_one_byte_either_side(extra, fits):
    hw = mac(36)
    pool = int(36 * GIB * 0.85)
    p = plan(hw, 1, pool - GIB - GIB // 2 + extra)
    assert p.fits is fits
    if not fits:
        assert p.shortfall.startswith("needs ") and "can give the GPU at most" in p.shortfall


def test_sliding_window_kv_holds_the_window():
    """24 of 32 layers slide over 1024 tokens: 8 x pad256(8192) + 24 x pad256(1024) tokens x 4096 bytes; a 300-token
    context pads to 512 in both (min(300, 1024) = 300)."""
    swa = replace(M8, swa_layers=24, sliding_window=1024)
    assert memory.mlx_kv_bytes(swa, 8192, 2) == 2 * (8 * 8192 + 24 * 1024) * 4096
    assert memory.mlx_kv_bytes(swa, 300, 1) == 32 * 512 * 4096


def test_two_services_share_unified_memory(write_stack):
    """Two MLX services on a 64 GB Mac: the second is planned in what the first left: wired budget
    48 GiB - first.gpu_bytes, pool int(64 GiB x 0.85) - first.gpu_bytes - first.host_bytes."""
    f = write_stack(
        "version: 1\nhardware: m3-max-64gb\nworkload: {concurrent_users: 1, context_tokens: 8192}\nservices:\n"
        "  a:\n    model: llama-3.1-8b-instruct\n    engine: mlx\n"
        "  b:\n    model: llama-3.1-8b-instruct\n    engine: mlx\n")
    a, b = resolve.resolve(load_stack(f), HostFacts(hardware=None)).services  # type: ignore[arg-type]
    assert a.memory.gpu_budget_bytes == 48 * GIB and a.memory.host_budget_bytes == int(64 * GIB * 0.85)
    assert b.memory.gpu_budget_bytes == 48 * GIB - a.memory.gpu_bytes
    assert b.memory.host_budget_bytes == int(64 * GIB * 0.85) - a.memory.gpu_bytes - a.memory.host_bytes
    # Same model and workload: the same plan but the prompt cache, sized from less free memory.
    assert (b.memory.weights_bytes, b.memory.kv_cache_bytes) == (a.memory.weights_bytes, a.memory.kv_cache_bytes)
    assert b.memory.prompt_cache.bytes == cache(GIB, 1, b.memory.host_budget_bytes,
                                                a.memory.gpu_bytes - a.memory.prompt_cache.bytes)
    assert any("2 services share" in r for r in b.reasons)


def test_consume_on_unified_memory_takes_the_gpu_part_from_both():
    b = memory.Budget(48 * GIB, 54 * GIB, unified=True)
    p = plan(mac(64), 1, 4 * GIB)
    after = memory.consume(b, p)
    assert (after.gpu_bytes, after.host_bytes, after.unified) == (48 * GIB - p.gpu_bytes, 54 * GIB - p.gpu_bytes, True)
    both = memory.consume(b, replace(p, host_bytes=GIB))  # a process's own RAM beside its GPU arrays
    assert (both.gpu_bytes, both.host_bytes) == (48 * GIB - p.gpu_bytes, 53 * GIB - p.gpu_bytes)
    split = memory.consume(memory.Budget(48 * GIB, 54 * GIB), replace(p, host_bytes=GIB))
    assert (split.gpu_bytes, split.host_bytes) == (48 * GIB - p.gpu_bytes, 53 * GIB)
