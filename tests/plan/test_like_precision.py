"""With no quant named, engines are compared at like precision: llama.cpp plans Q4_K_M, so vLLM may plan the
catalog's 4-bit checkpoint (resolve.like_precision) where its bf16 weights hold fewer requests at full context."""

from __future__ import annotations

from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import like_precision, resolve
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
CATALOG = load_profiles().models


def _plan(write_stack, hardware, workload, model, extra=""):
    f = write_stack(f"version: 1\nhardware: {hardware}\nworkload: {workload}\nservices:\n  svc:\n    model: {model}\n"
                    f"{extra}")
    return resolve(load_stack(f), HOST).services[0]


def test_70b_on_one_h100_goes_to_vllm_at_4_bit_not_llamacpp_spilling(write_stack):
    sp = _plan(write_stack, "h100-80gb", "{concurrent_users: 32, context_tokens: 8192, optimize: throughput}",
               "llama-3.1-70b-instruct")
    assert sp.engine == "vllm"
    assert sp.memory.weights_format == "awq" and sp.model.quant == "awq"
    assert "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4" in sp.command
    why = [r for r in sp.reasons if r.startswith("weights: no quant named")]
    assert len(why) == 1 and "bf16 weights (141.1 GB) do not fit" in why[0] and "`quant: bf16`" in why[0]
    assert sp.memory.gpu_layers == sp.memory.total_layers  # all on the GPU, where llama.cpp spilled 2 layers


def test_a_named_quant_is_kept(write_stack):
    sp = _plan(write_stack, "h100-80gb", "{concurrent_users: 32, context_tokens: 8192, optimize: throughput}",
               "llama-3.1-70b-instruct", "    quant: bf16\n")
    assert sp.engine == "llama.cpp"  # bf16 as named: vLLM cannot load 141 GB; llama.cpp plans BF16 spilling to RAM
    assert sp.memory.weights_format == "BF16" and sp.model.quant == "bf16"
    assert "141.1 GB of weights (bf16)" in sp.rejected["vllm"]
    assert not any(r.startswith("weights: no quant named") for r in sp.reasons)


def test_bf16_stays_where_it_holds_every_request(write_stack):
    sp = _plan(write_stack, "h100-80gb", "{concurrent_users: 8, context_tokens: 4096, optimize: throughput}",
               "qwen2.5-7b-instruct")
    assert sp.engine == "vllm" and sp.memory.weights_format == "bf16"
    assert not any("no quant named" in r for r in sp.reasons)


def test_like_precision_only_for_catalog_16_bit_without_a_quant():
    m = CATALOG["llama-3.1-70b-instruct"]
    assert like_precision(m, "bf16") == ["awq"]
    assert like_precision(m.with_quant("bf16"), "bf16") == []  # named
    assert like_precision(m, "fp8") == []  # not a 16-bit plan
    assert like_precision(CATALOG["llama-3.1-8b-instruct"], "bf16") == []  # no 4-bit checkpoint known


def test_plan_text_says_when_the_capacity_plan_misses_the_targets(write_stack):
    from stackgen.plan.report import service_text

    sp = _plan(write_stack, "rtx-4090", "{concurrent_users: 3, context_tokens: 8192, prompt_tokens: 1500}",
               "llama-3.1-70b-instruct", "    quant: Q4_K_M\n")
    assert sp.capacity is not None and not sp.capacity.meets
    text = "\n".join(service_text(sp))
    line = next(x for x in text.splitlines() if x.startswith("  capacity:"))
    assert "MISSES the workload's targets (p95 TTFT 2 s, 10 tokens/s per user)" in line
    assert f"p95 TTFT {sp.capacity.prediction.ttft_p95_s:.2f} s" in line
    assert all(f"    - {a}" in text for a in sp.capacity.advice) and sp.capacity.advice
    ok = _plan(write_stack, "h100-80gb", "{concurrent_users: 1, context_tokens: 4096}", "qwen2.5-7b-instruct")
    assert ok.capacity.meets and "capacity: 1 x TP1 meets the workload's targets" in "\n".join(service_text(ok))


def test_a_second_service_on_the_gpu_gets_what_cuda_exposes_after_vllm(write_stack):
    from stackgen.plan.memory import GIB, gpu_runtime_bytes

    f = write_stack("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 8, context_tokens: 8192}\n"
                    "services:\n  chat:\n    model: llama-3.1-8b-instruct\n    quant: bf16\n    engine: vllm\n"
                    "  local:\n    model: qwen2.5-7b-instruct\n    quant: Q4_K_M\n    engine: llama.cpp\n")
    plan = resolve(load_stack(f), HOST)
    chat, local = plan.services
    gpu = plan.hardware.gpus[0]
    runtime = gpu_runtime_bytes(gpu)
    # vLLM reserves 0.90 of what CUDA reports; llama.cpp gets the rest of THAT total, not of nvidia-smi's
    assert chat.memory.gpu_bytes == int(runtime * chat.memory.gpu_memory_utilization)
    assert local.memory.gpu_budget_bytes == int(gpu.memory_gib * GIB) - chat.memory.gpu_bytes - (
        int(gpu.memory_gib * GIB) - runtime)
    assert chat.memory.gpu_bytes + local.memory.gpu_bytes <= runtime
