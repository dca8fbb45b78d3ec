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


# ---------------------------------------------------------------------------------------------- SGLang in the rankings

SG_KEY = "serve: {api_key_env: K}\n"  # SGLang is served only behind its key (SGLang.key_required)


def prefix_heavy(write_stack, users: int, prompt: int, output: int, optimize: str = "throughput"):
    body = (f"version: 1\nhardware: h100-80gb\n{SG_KEY}workload: {{concurrent_users: {users}, optimize: {optimize}, "
            f"context_tokens: 16384, prompt_tokens: {prompt}, output_tokens: {output}}}\nservices:\n"
            "  chat: {model: llama-3.1-8b-instruct}\n")
    return resolve.resolve(load_stack(write_stack(body)), HOST).services[0]


def test_sglang_first_for_long_shared_prompts_and_why_the_others_lost(write_stack):
    """32 users sending 8000-token prompts for 300-token answers (8000 / 300 = 26.7 >= 8: the gpu-prefix-heavy row):
    SGLang serves it; vLLM is next in that row and loses with the prompt ratio in whole times (8000 // 300 = 26x);
    llama.cpp loses to SGLang's paged KV cache like it does to vLLM's."""
    sp = prefix_heavy(write_stack, 32, 8000, 300)
    assert sp.engine == "sglang"
    assert sp.rejected["vllm"] == (
        "ranked below SGLang for this workload: vLLM's prefix caching reuses shared prompts too, but it schedules "
        "first-come-first-served; with 32 concurrent users sending prompts 26x longer than the answers, SGLang's "
        "cache-aware scheduling keeps more of them in cache")
    assert sp.rejected["llama.cpp"] == (
        "ranked below SGLang for this workload: 32 concurrent users: llama-server's slots share one batch, but "
        "SGLang's paged KV cache and scheduler scale further")


@pytest.mark.parametrize("users, optimize, chosen, why", [
    # one user, setup: the setup row (Ollama first); SGLang's install and graph compile are the reason
    (1, "setup", "Ollama", "SGLang is a large Python install (CUDA kernels, FlashInfer) that compiles CUDA graphs at "
                           "start; this workload optimizes setup"),
    # one user, latency: gpu-single-user (llama.cpp first)
    (1, "latency", "llama.cpp (llama-server)", "SGLang's batching scheduler and Python runtime cost one user start-up "
                                               "time and latency that a single stream does not win back"),
    # two users, short prompts (1000 / 200 = 5 < 8): gpu-multi-user (vLLM first)
    (2, "latency", "vLLM", "SGLang pays off when many users share long prompts (prompt at least 8x the answer); this "
                           "workload sends 1000 prompt tokens for 200 output tokens"),
])
def test_sglang_ranked_below_when_the_workload_is_not_its_own(write_stack, users, optimize, chosen, why):
    sp = prefix_heavy(write_stack, users, 1000, 200, optimize)
    assert sp.rejected["sglang"] == f"ranked below {chosen} for this workload: {why}"
