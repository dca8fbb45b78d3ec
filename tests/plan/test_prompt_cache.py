"""Issue 18: every cache that grows under load is bounded from the plan's host headroom, counted as its own line of
the memory plan (JSON, table, host_bytes), explained in the reasons, and pinned in each engine's argv or env."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from stackgen.run.bench import RequestResult, summarize
from stackgen.host.facts import HostFacts
from stackgen.plan.memory import (CACHE_HEADROOM_SHARE, MIB, Budget, bound_llamacpp_cache, llamacpp_checkpoint_bytes,
                             llamacpp_kv_bytes)
from stackgen.spec.profiles import load_profiles
from stackgen.plan.report import service_text
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]  # every stack below names a hardware profile
CATALOG = load_profiles().models
QUICKSTART = "{concurrent_users: 4, context_tokens: 4096, prompt_tokens: 256, output_tokens: 128, optimize: latency}"


def plan_for(write_stack, hardware, workload, model, engine, extra=""):
    f = write_stack(f"version: 1\nhardware: {hardware}\nworkload: {workload}\nservices:\n  svc:\n"
                    f"    model: {model}\n    engine: {engine}\n{extra}")
    return resolve(load_stack(f), HOST).services[0]


def flag(argv, name):
    argv = list(argv)
    return argv[argv.index(name) + 1] if name in argv else None


# ---------------------------------------------------------------------------------------------- llama.cpp


def test_llamacpp_quickstart_bounds_cache_ram_and_checkpoints_and_counts_them(write_stack):
    sp = plan_for(write_stack, "cpu-server-64gb", QUICKSTART, "gemma-3-270m", "llama.cpp")
    m = sp.memory
    kv = llamacpp_kv_bytes(CATALOG["gemma-3-270m"], 4096, 4)
    assert kv == 108 * MIB
    # 2 finished conversations per slot: 2 x the KV cache, far below the 8192 MiB default and the headroom.
    assert flag(sp.command, "--cache-ram") == "216"
    # Gemma 3 has sliding-window layers: a checkpoint copies 15 layers x pad256(512 + 512) cells x 1 KiB.
    assert llamacpp_checkpoint_bytes(CATALOG["gemma-3-270m"], 4096) == 15 * MIB
    assert flag(sp.command, "--ctx-checkpoints") == "4"
    assert m.prompt_cache.bytes == 216 * MIB + 4 * 4 * 15 * MIB
    assert m.host_bytes == m.weights_bytes + m.kv_cache_bytes + m.compute_bytes + m.overhead_bytes + m.prompt_cache.bytes
    assert m.total_bytes == m.host_bytes  # CPU only: everything is in system RAM
    doc = sp.to_json()
    assert doc["memory"]["prompt_cache_bytes"] == m.prompt_cache.bytes
    assert doc["memory"]["host_bytes"] == m.host_bytes
    reason = next(r for r in sp.reasons if "prompt cache bounded" in r)
    assert "--cache-ram 216" in reason and "buys prompt reuse" in reason and "costs up to 216 MiB" in reason
    assert "--ctx-checkpoints 4" in reason
    row = next(line for line in service_text(sp) if line.strip().startswith("prompt cache"))
    assert f"{m.prompt_cache.bytes / 1e9:.2f} GB" in row


def test_llamacpp_without_sliding_window_has_no_checkpoint_flag(write_stack):
    sp = plan_for(write_stack, "cpu-server-64gb", "{concurrent_users: 4, context_tokens: 8192}",
                  "llama-3.1-8b-instruct", "llama.cpp", "    quant: Q4_K_M\n")
    assert "--ctx-checkpoints" not in sp.command
    assert flag(sp.command, "--cache-ram") == "8192"  # 2 x 4 GiB of KV is capped at llama-server's own default
    assert sp.memory.prompt_cache.bytes == 8192 * MIB


def test_llamacpp_cache_shrinks_to_half_the_headroom_on_a_16gb_laptop(write_stack):
    sp = plan_for(write_stack, "cpu-laptop-16gb", "{concurrent_users: 4, context_tokens: 8192}",
                  "llama-3.1-8b-instruct", "llama.cpp", "    quant: Q4_K_M\n")
    m = sp.memory
    before = m.host_bytes - m.prompt_cache.bytes
    headroom = m.host_budget_bytes - before
    assert 0 < m.prompt_cache.bytes <= headroom * CACHE_HEADROOM_SHARE
    assert m.prompt_cache.bytes < 8192 * MIB
    assert int(flag(sp.command, "--cache-ram")) * MIB == m.prompt_cache.bytes
    assert m.host_bytes <= m.host_budget_bytes


def test_no_headroom_turns_the_caches_off_and_says_so():
    model = CATALOG["gemma-3-270m"]
    from stackgen.plan.memory import MemoryPlan

    plan = MemoryPlan(weights_bytes=100, kv_cache_bytes=108 * MIB, compute_bytes=0, overhead_bytes=0, gpu_bytes=0,
                      host_bytes=1000 * MIB, gpu_layers=0, total_layers=18, context_per_request=4096, parallel=4,
                      kv_cache_type="f16", fits=True, gpu_budget_bytes=0, host_budget_bytes=1001 * MIB)
    out = bound_llamacpp_cache(plan, model, Budget(0, 1001 * MIB))
    assert (out.prompt_cache.bytes, out.prompt_cache.limit_bytes, out.prompt_cache.checkpoints) == (0, 0, 0)
    assert out.host_bytes == plan.host_bytes
    assert "prompt cache off (--cache-ram 0)" in out.prompt_cache.note
    assert "context checkpoints off (--ctx-checkpoints 0)" in out.prompt_cache.note


def test_unified_memory_headroom_counts_the_gpu_part():
    model = CATALOG["llama-3.1-8b-instruct"]
    from stackgen.plan.memory import MemoryPlan

    plan = MemoryPlan(weights_bytes=0, kv_cache_bytes=4096 * MIB, compute_bytes=0, overhead_bytes=0,
                      gpu_bytes=9000 * MIB, host_bytes=100 * MIB, gpu_layers=32, total_layers=32,
                      context_per_request=8192, parallel=4, kv_cache_type="f16", fits=True,
                      gpu_budget_bytes=10000 * MIB, host_budget_bytes=10000 * MIB)
    out = bound_llamacpp_cache(plan, model, Budget(10000 * MIB, 10000 * MIB, unified=True))
    assert out.prompt_cache.limit_bytes == 450 * MIB  # half of 10000 - 9000 - 100


def test_override_of_cache_ram_replaces_the_tuned_flag(write_stack):
    sp = plan_for(write_stack, "cpu-server-64gb", QUICKSTART, "gemma-3-270m", "llama.cpp",
                  "    overrides: {-cram: 64}\n")
    assert list(sp.command).count("--cache-ram") == 0 and flag(sp.command, "-cram") == "64"


# ---------------------------------------------------------------------------------------------- Ollama


def test_ollama_runner_gets_the_bound_through_its_environment(write_stack):
    sp = plan_for(write_stack, "rtx-4090", "{concurrent_users: 2, context_tokens: 4096}", "gemma-3-270m", "ollama")
    m = sp.memory
    assert sp.env["LLAMA_ARG_CACHE_RAM"] == str(m.prompt_cache.limit_bytes // MIB)
    assert sp.env["LLAMA_ARG_CTX_CHECKPOINTS"] == "4"
    assert (sp.env["OLLAMA_MAX_LOADED_MODELS"], sp.env["OLLAMA_KEEP_ALIVE"], sp.env["OLLAMA_NUM_PARALLEL"]) == \
        ("1", "-1", "2")
    assert m.prompt_cache.bytes > 0 and m.host_bytes >= m.prompt_cache.bytes
    text = " ".join(sp.reasons)
    assert "LLAMA_ARG_CACHE_RAM=" in text and "OLLAMA_MAX_LOADED_MODELS=1" in text


# ---------------------------------------------------------------------------------------------- MLX


def test_mlx_prompt_cache_count_and_bytes_are_pinned_and_counted_on_unified_memory(write_stack):
    sp = plan_for(write_stack, "m3-max-64gb", "{concurrent_users: 2, context_tokens: 8192}",
                  "llama-3.1-8b-instruct", "mlx")
    m = sp.memory
    per_request = m.kv_cache_bytes // 2
    assert flag(sp.command, "--prompt-cache-size") == "4"  # 2 conversations per user, 2 users
    assert flag(sp.command, "--prompt-cache-bytes") == str(4 * per_request)
    assert m.prompt_cache.bytes == 4 * per_request
    assert m.gpu_bytes == m.total_bytes and m.host_bytes == 0  # MLX arrays live in unified memory
    assert any("--prompt-cache-size 4" in r for r in sp.reasons)


def test_mlx_on_linux_cpu_counts_the_cache_in_host_ram(write_stack):
    sp = plan_for(write_stack, "cpu-server-64gb", "{concurrent_users: 1, context_tokens: 2048}", "gemma-3-270m", "mlx")
    m = sp.memory
    assert m.prompt_cache.bytes > 0 and m.host_bytes == m.total_bytes
    assert flag(sp.command, "--prompt-cache-bytes") == str(m.prompt_cache.bytes)


# ---------------------------------------------------------------------------------------------- vLLM


@pytest.mark.parametrize("hardware", ["cpu-server-64gb", "a100-80gb"])
def test_vllm_prefix_cache_lives_in_its_kv_pool_and_nothing_offloads(write_stack, hardware):
    sp = plan_for(write_stack, hardware, "{concurrent_users: 2, context_tokens: 4096}", "llama-3.1-8b-instruct", "vllm")
    m = sp.memory
    assert m.prompt_cache.bytes == 0 and "prefix caching" in m.prompt_cache.note
    for forbidden in ("--kv-offloading-size", "--cpu-offload-gb", "--swap-space"):
        assert forbidden not in sp.command
    assert any("prefix caching reuses shared prefixes" in r for r in sp.reasons)
    if hardware.startswith("cpu"):
        assert int(sp.env["VLLM_CPU_KVCACHE_SPACE"]) * 1024**3 == m.kv_cache_bytes
        assert "VLLM_CPU_KVCACHE_SPACE=" in m.prompt_cache.note


# ---------------------------------------------------------------------------------------------- bench


def _result(peak, plan):
    ok = RequestResult(ok=True, start=0.0, ttft_s=0.1, tokens=3, token_times=[0.1, 0.2, 0.3])
    return summarize([ok], wall_s=1.0, engine="llama.cpp", users=1, peak_rss=peak, predicted_host_bytes=plan)


def test_bench_flags_peak_rss_above_the_plan():
    r = _result(631 * MIB, 461 * MIB)
    text = " ".join(r.findings)
    assert "peak RSS 631 MiB is 37% above the plan's 461 MiB" in text
    assert json.loads(json.dumps(r.to_json()))["findings"] == r.findings


@pytest.mark.parametrize("peak", [400 * MIB, 461 * MIB, int(461 * MIB * 1.05)])
def test_bench_does_not_flag_rss_within_the_plan(peak):
    assert not [f for f in _result(peak, 461 * MIB).findings if "peak RSS" in f]


def test_bench_without_rss_or_plan_has_no_memory_finding():
    assert not _result(None, 461 * MIB).findings and not _result(631 * MIB, None).findings


def test_total_counts_the_prompt_cache_line():
    m = replace(_plain_plan(), prompt_cache=replace(_plain_plan().prompt_cache, bytes=5))
    assert m.total_bytes == _plain_plan().total_bytes + 5 == 15


def _plain_plan():
    from stackgen.plan.memory import MemoryPlan

    return MemoryPlan(weights_bytes=1, kv_cache_bytes=2, compute_bytes=3, overhead_bytes=4, gpu_bytes=0, host_bytes=10,
                      gpu_layers=0, total_layers=1, context_per_request=1, parallel=1, kv_cache_type="f16", fits=True,
                      gpu_budget_bytes=0, host_budget_bytes=100)
