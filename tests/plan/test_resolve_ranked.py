"""Why the engines that could serve a service lost (resolve._ranked_below) and the first reason of the chosen one
(resolve._why), whole, for two users: Ollama's "N concurrent users" wording starts at 2 users, names what its
daemon picks (GPU layers on a GPU, threads on a CPU-only machine), and adds "its easier setup does not outweigh
that" only when the workload optimizes setup."""

from __future__ import annotations

import pytest

from stackgen.plan import resolve
from stackgen.host.facts import HostFacts
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
OLLAMA_MULTI = ("{users} concurrent users: Ollama's daemon picks {picks} and context itself and serves few parallel "
                "requests per model; a team API outgrows it")
SETUP = "; its easier setup does not outweigh that"


def service(write_stack, hw: str, users: int, optimize: str):
    body = (f"version: 1\nhardware: {hw}\nworkload: {{concurrent_users: {users}, optimize: {optimize}, "
            "context_tokens: 8192, prompt_tokens: 1000, output_tokens: 200}\nservices:\n"
            "  chat: {model: llama-3.1-8b-instruct}\n")
    return resolve.resolve(load_stack(write_stack(body)), HOST).services[0]


@pytest.mark.parametrize("hw, optimize, chosen, display, picks, suffix", [
    # CUDA + several users: the gpu-multi-user row (every goal, setup included) puts vLLM first
    ("rtx-4090", "latency", "vllm", "vLLM", "GPU layers", ""),
    ("rtx-4090", "setup", "vllm", "vLLM", "GPU layers", SETUP),
    # CPU-only: the portable row puts llama.cpp first for every goal; no GPU, so Ollama picks threads
    ("cpu-server-64gb", "throughput", "llama.cpp", "llama.cpp (llama-server)", "threads", ""),
    ("cpu-server-64gb", "setup", "llama.cpp", "llama.cpp (llama-server)", "threads", SETUP),
])
def test_ollama_ranked_below_for_two_users(write_stack, hw, optimize, chosen, display, picks, suffix):
    sp = service(write_stack, hw, 2, optimize)
    assert sp.engine == chosen
    assert sp.rejected["ollama"] == (f"ranked below {display} for this workload: "
                                     + OLLAMA_MULTI.format(users=2, picks=picks) + suffix)


def test_the_first_engine_of_the_row_is_named_with_the_row_text(write_stack):
    """vLLM is first in gpu-multi-user and fits: the first reason is its display name and the row's text with the
    facts filled in (2 users, the RTX 4090's class and name); nothing about preferred engines."""
    sp = service(write_stack, "rtx-4090", 2, "latency")
    assert sp.reasons[0] == ("vLLM: 2 concurrent users on a consumer NVIDIA GPU (GeForce RTX 4090): vLLM's continuous "
                             "batching and PagedAttention scale throughput with concurrency")
    assert sp.rejected["llama.cpp"] == ("ranked below vLLM for this workload: 2 concurrent users: llama-server's "
                                        "slots share one batch, but vLLM's paged KV cache and scheduler scale further")
