"""Worked examples for the two plans other branches are changing (written last, see issue 19): Ollama (llama-server
underneath) and vLLM's CPU backend.

- Ollama: llama.cpp's rules (tests/plan/test_plan_llamacpp.py) with Ollama's GPU reserve instead of the --fit
  margin: ml/device.go MinimumMemory 457 MiB (CUDA/ROCm) + OLLAMA_GPU_OVERHEAD default 512 MiB = 969 MiB per GPU;
  the runner takes the prompt-cache bound from LLAMA_ARG_CACHE_RAM in its environment.
- vLLM CPU backend: the KV cache is VLLM_CPU_KVCACHE_SPACE whole GiB of RAM (vllm/platforms/cpu.py), at least 1;
  the overhead (measured on the CI host, benchmarks/results/vllm_cpu_memory.md): three torch+vLLM processes
  1661 MiB, 4 tokenizer copies of 1404 bytes per vocabulary entry, the lm_head's float32 oneDNN copy
  (vocab x hidden x 4), 256 MiB of worker scratch, and the profiling forward pass at 2048 batched tokens
  (5.95 x (hidden + ffn) per token + 1.42 x the f32 logits of each sequence, as on GPU).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from stackgen.plan import memory, resolve
from stackgen.engines import get
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec, load_stack

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]
COMPUTE_2 = 512 * 4 * (4 * 4096 + 2 * 14336) + 2 * 128256 * 4  # one micro-batch + 2 logits rows (see llama.cpp file)


def gpu_box(gib: float = 24) -> HardwareSpec:
    return HardwareSpec(gpus=(GPUSpec(vendor="nvidia", name="G", memory_gib=gib, bandwidth_gbs=1000),),
                        memory_gib=64, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))


def ollama_plan(hw, users, weights, budget=None):
    w = replace(get("ollama").weights(M8), bytes=weights)
    return get("ollama").plan_memory(M8, WorkloadSpec(concurrent_users=users, context_tokens=8192), hw,
                                     budget or memory.initial_budget(hw), w)


def test_ollama_full_offload():
    """One 24 GiB GPU, 5 GiB weights, 2 users x 8192: GPU = 5 GiB + 2 GiB KV + compute + 969 MiB;
    host 80 MiB + the 4 GiB prompt cache (2 x KV, LLAMA_ARG_CACHE_RAM=4096)."""
    p = ollama_plan(gpu_box(), 2, 5 * GIB)
    assert p.fits and (p.gpu_layers, p.parallel, p.kv_cache_type, p.context_per_request) == (32, 2, "f16", 8192)
    assert (p.kv_cache_bytes, p.compute_bytes) == (2 * GIB, COMPUTE_2)
    assert p.overhead_bytes == (457 + 512) * MIB + 80 * MIB
    assert p.gpu_bytes == 7 * GIB + COMPUTE_2 + 969 * MIB
    assert p.host_bytes == 80 * MIB + 4 * GIB and p.prompt_cache.limit_bytes == 4 * GIB
    assert any(lever.startswith("loaded models: OLLAMA_MAX_LOADED_MODELS=1") for lever in p.levers)


def test_ollama_at_the_llamacpp_limit_its_own_estimate_binds():
    """With the GPU budget at exactly the llama.cpp-rule need above (weights + KV + compute + 969 MiB), Ollama's own
    layer estimate (engines/ollama_estimate.py after llm/memory.go v0.12.10: a larger compute-graph reserve) places
    fewer layers; the plan offloads what Ollama would and says why. The layer count comes from that estimator,
    checked against public Ollama logs in tests/test_public_logs.py; here the plan must follow it and never keep the
    llama.cpp-rule 32 layers."""
    need = 7 * GIB + COMPUTE_2 + 969 * MIB
    p = ollama_plan(gpu_box(), 2, 5 * GIB, budget=memory.Budget(need, 50 * GIB))
    assert p.fits and 0 < p.gpu_layers < 32
    assert any(lever.startswith("Ollama's own estimate") and f"offloads {p.gpu_layers} (num_gpu) instead of 32"
               in lever for lever in p.levers)


def test_ollama_renders_the_plan_into_env_and_modelfile(write_stack):
    f = write_stack("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 2, context_tokens: 8192}\n"
                    "services:\n  s: {model: llama-3.1-8b-instruct, engine: ollama}\n")
    sp = resolve.resolve(load_stack(f), HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]
    m = sp.memory
    assert sp.env["OLLAMA_NUM_PARALLEL"] == "2" and sp.env["OLLAMA_CONTEXT_LENGTH"] == "8192"
    assert sp.env["LLAMA_ARG_CACHE_RAM"] == str(m.prompt_cache.limit_bytes // MIB)
    params = dict(get("ollama").modelfile_parameters(sp))
    assert params["num_ctx"] == "8192" and params["num_gpu"] == str(m.total_layers + 1)  # all + the output layer


def cpu_overhead(users: int) -> int:
    """Llama 3.1 8B: vocab 128256, hidden 4096, ffn 14336."""
    act = int(2048 * 5.95 * (4096 + 14336) + users * 128256 * 4 * 1.42)
    return 1661 * MIB + 4 * 1404 * 128256 + 128256 * 4096 * 4 + 256 * MIB + act


def cpu_box(ram: float = 64) -> HardwareSpec:
    return HardwareSpec(gpus=(), memory_gib=ram, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=16))


def cpu_plan(users, ctx, weights, budget=None):
    hw = cpu_box()
    return memory.plan_vllm_cpu(M8, WorkloadSpec(concurrent_users=users, context_tokens=ctx), hw,
                                budget or memory.initial_budget(hw), weights, "bf16", "t")


@pytest.mark.parametrize("users,ctx,space", [(3, 8192, 3), (1, 4096, 1), (1, 256, 1), (3, 6000, 3)])
def test_vllm_cpu_kv_space_in_whole_gib(users, ctx, space):
    """KV = users x 32 x pad16(ctx) x 4096 bytes, rounded up to whole GiB, at least 1: 3 x 1 GiB = 3;
    0.5 GiB -> 1; 32 MiB -> 1; 3 x 6000 tokens = 2.2 GiB -> 3."""
    kv = users * 32 * math.ceil(ctx / 16) * 16 * 4096
    assert max(1, math.ceil(kv / GIB)) == space
    p = cpu_plan(users, ctx, 16 * GIB)
    assert p.fits and p.kv_cache_bytes == space * GIB
    assert (p.weights_bytes, p.compute_bytes, p.overhead_bytes, p.gpu_bytes) == (16 * GIB, 0, cpu_overhead(users), 0)
    assert p.host_bytes == 16 * GIB + space * GIB + cpu_overhead(users)
    assert (p.gpu_layers, p.parallel, p.context_per_request, p.kv_cache_type, p.gpu_memory_utilization) == (
        0, users, ctx, "auto", None)
    assert (p.gpu_budget_bytes, p.host_budget_bytes) == (0, int(64 * GIB * 0.85))


@pytest.mark.parametrize("extra,fits", [(0, True), (-1, False)])
def test_vllm_cpu_ram_limit_one_byte_either_side(extra, fits):
    need = 16 * GIB + GIB + cpu_overhead(1)
    p = cpu_plan(1, 4096, 16 * GIB, budget=memory.Budget(0, need + extra))
    assert p.fits is fits
    if not fits:
        assert p.shortfall.startswith("needs ")


def test_vllm_cpu_renders_the_kv_space(write_stack):
    f = write_stack("version: 1\nhardware: cpu-server-64gb\nworkload: {concurrent_users: 3, context_tokens: 8192}\n"
                    "services:\n  s: {model: llama-3.1-8b-instruct, engine: vllm}\n")
    sp = resolve.resolve(load_stack(f), HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]
    assert sp.env["VLLM_CPU_KVCACHE_SPACE"] == "3" and sp.memory.gpu_memory_utilization is None
    assert "--gpu-memory-utilization" not in sp.command
