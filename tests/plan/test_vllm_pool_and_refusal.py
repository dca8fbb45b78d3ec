"""vLLM plans as vLLM allocates: the KV pool it reserves at start (not every user's demand) in the human table and
plan --json, the forecast's streams capped at what that pool holds, and a refusal that says what one GPU misses by,
with levers planned under the service's own pins."""

from __future__ import annotations

import json

import pytest

from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.plan.capacity import kv_pool_bytes, requests_held
from stackgen.plan.report import service_text
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
FP8_70B = ("version: 1\nhardware: h100-80gb\nworkload: {concurrent_users: 32, context_tokens: 8192}\nservices:\n"
           "  chat:\n    model: llama-3.1-70b-instruct\n    quant: fp8\n    engine: vllm\n"
           "    overrides: {--gpu-memory-utilization: 0.95}\n")


def _plan(write_stack, text):
    return resolve(load_stack(write_stack(text)), HOST)


def test_the_table_shows_the_pool_vllm_allocates_and_adds_up(write_stack):
    sp = _plan(write_stack, FP8_70B).services[0]
    m = sp.memory
    pool = kv_pool_bytes(sp.engine, sp.memory)
    assert pool == m.gpu_bytes - m.weights_bytes - m.overhead_bytes > 0
    held = requests_held("vllm", sp.model, m, 8192)
    assert 0 < held < 32
    rows = {line[4:24].strip(): line for line in service_text(sp) if line.startswith("    ") and "GB" in line}
    assert f"{pool / 1e9:8.2f} GB  pool: {held} of 32 requests at 8192 tokens at once (all 32: " \
           f"{m.kv_cache_bytes / 1e9:.2f} GB)" in rows["KV cache (auto)"]
    assert f"{m.gpu_bytes / 1e9:8.2f} GB  on GPU" in rows["total"]  # weights + pool + overhead = the reserve
    mem = json.loads(json.dumps(sp.to_json()))["memory"]
    assert mem["kv_pool_bytes"] == pool and mem["kv_cache_bytes"] == m.kv_cache_bytes
    assert mem["total_bytes"] == m.gpu_bytes  # what the table's total says


def test_the_forecast_streams_are_what_the_pool_holds(write_stack):
    sp = _plan(write_stack, FP8_70B).services[0]
    assert sp.speed.streams == sp.speed.slots == sp.capacity.curve.max_batch < 32


def test_the_llamacpp_table_is_unchanged(write_stack):
    sp = _plan(write_stack, FP8_70B.replace("engine: vllm", "engine: llama.cpp").replace(
        "quant: fp8", "quant: Q4_K_M").replace("overrides: {--gpu-memory-utilization: 0.95}", "overrides: {}")).services[0]
    assert kv_pool_bytes(sp.engine, sp.memory) is None
    assert "kv_pool_bytes" not in sp.to_json()["memory"]


def test_a_refusal_says_what_one_gpu_misses_and_levers_keep_the_pins(write_stack):
    text = ("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 4, context_tokens: 4096}\nservices:\n"
            "  chat:\n    model: llama-3.1-8b-instruct\n    quant: bf16\n    engine: vllm\n"
            "    overrides: {--gpu-memory-utilization: 0.5}\n")
    with pytest.raises(PlanError) as err:
        _plan(write_stack, text)
    msg = str(err.value)
    assert "needs 17.5 GB of GPU memory: 16.1 GB of weights (bf16)" in msg
    assert "--gpu-memory-utilization 0.5 of the 25.3 GB CUDA reports reserves 12.6 GB per GPU" in msg
    # a shorter context or fewer users cannot fit 16 GB of weights in 12.6 GB: only the smaller quant is offered
    assert "`quant: fp8`" in msg and "context_tokens" not in msg.split("Each of these fits")[1]
    assert "concurrent_users" not in msg.split("Each of these fits")[1]


def test_two_gpus_are_reported_per_gpu(write_stack):
    text = ("version: 1\nhardware: 2x rtx-3090\nworkload: {concurrent_users: 1, context_tokens: 8192}\nservices:\n"
            "  chat:\n    model: llama-3.1-70b-instruct\n    quant: Q4_K_M\n")
    sp = _plan(write_stack, text).services[0]
    assert sp.rejected["vllm"].startswith("needs 23.8 GB of GPU memory on each of 2 GPUs: 19.9 GB of weights (awq)")


MIXED = ("version: 1\nhardware:\n  gpus:\n"
         "    - {vendor: nvidia, name: GeForce RTX 4090, memory_gib: 24, bandwidth_gbs: 1008, compute_capability: '8.9'}\n"
         "    - {vendor: nvidia, name: GeForce RTX 3060, memory_gib: 12, bandwidth_gbs: 360, compute_capability: '8.6'}\n"
         "  memory_gib: 64\n  memory_bandwidth_gbs: 89.6\n  cpu: {cores: 16}\n")


def test_mixed_gpus_are_planned_for_the_smallest(write_stack):
    """An RTX 4090 beside an RTX 3060: every vLLM rank takes the same share of its own GPU and the same slice of the
    model, so the 3060 bounds them (it was planned as two 4090s: 18.5 GB per rank at 0.73, which the 3060 cannot
    hold); a llama.cpp replica pinned to the 3060 gets the 3060's memory, not the two cards' average."""
    from stackgen.plan.memory import gpu_runtime_bytes

    vl = _plan(write_stack, MIXED + "workload: {concurrent_users: 8, context_tokens: 8192, optimize: throughput}\n"
                                    "services: {chat: {model: qwen2.5-7b-instruct, engine: vllm}}\n").services[0]
    small = min(vl.gpus, key=lambda g: g.memory_gib)
    assert vl.memory.tensor_parallel == 2 and vl.memory.gpu_memory_utilization == 0.9
    assert vl.memory.gpu_bytes == 2 * int(gpu_runtime_bytes(small) * 0.9)
    rep = _plan(write_stack, MIXED + "workload: {concurrent_users: 8, context_tokens: 32768, optimize: throughput}\n"
                                     "services: {chat: {model: qwen2.5-7b-instruct, quant: Q4_K_M, engine: llama.cpp, "
                                     "replicas: 2}}\n").services[0]
    assert rep.capacity.replicas == 2
    assert rep.memory.gpu_bytes <= rep.memory.gpu_budget_bytes <= int(12 * 1024**3)


def test_a_gpu_left_full_by_earlier_services_is_said_so_not_a_negative_utilization(write_stack):
    text = ("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 8, context_tokens: 16384}\nservices:\n"
            "  chat: {model: llama-3.1-8b-instruct, engine: vllm}\n"
            "  code: {model: qwen2.5-7b-instruct, quant: Q4_K_M, engine: llama.cpp}\n"
            "  small: {model: llama-3.2-3b-instruct}\n")
    sp = _plan(write_stack, text).services[2]
    assert sp.rejected["vllm"].startswith("no GPU memory is left for it (")
    assert "utilization -" not in sp.rejected["vllm"] and "reserves -" not in sp.rejected["vllm"]
