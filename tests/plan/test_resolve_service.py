"""What resolve() adds around the memory plan: serve-block rules, warnings, held memory in a refusal, and the
predicted speed over several nodes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackgen.plan import memory, resolve
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
HW = load_profiles().hardware.__getitem__


def plan(write_stack, body: str):
    return resolve.resolve(load_stack(write_stack("version: 1\n" + body)), HOST)


def test_a_public_bind_rules_out_the_engines_without_a_key(write_stack):
    p = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 1, optimize: setup}\n"
             "serve: {host: 0.0.0.0, api_key_env: MY_KEY}\nservices:\n  s: {model: llama-3.1-8b-instruct}\n")
    sp = p.services[0]
    assert sp.engine == "llama.cpp"  # the setup row prefers Ollama, which has no API key
    assert sp.rejected["ollama"] == ("has no API key option, and serve.host 0.0.0.0 is not loopback (keep "
                                     "serve.host 127.0.0.1 and put an authenticating proxy in front)")


def test_tls_rules_out_the_engines_that_cannot_serve_it(write_stack):
    p = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 1, optimize: setup}\n"
             "serve: {tls: {cert_file: /etc/c.pem, key_file: /etc/k.pem}}\nservices:\n"
             "  s: {model: llama-3.1-8b-instruct}\n")
    sp = p.services[0]
    assert sp.engine == "llama.cpp"
    assert sp.rejected["ollama"] == "cannot serve TLS itself (serve.tls is set; drop it and put a TLS proxy in front)"


def test_a_keyless_engine_on_loopback_warns_that_the_key_is_not_enforced(write_stack):
    sp = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nserve: {api_key_env: MY_KEY}\nservices:\n"
              "  s: {model: llama-3.1-8b-instruct, engine: ollama}\n").services[0]
    assert any(w.startswith("Ollama has no API key option: serve.api_key_env is not enforced") for w in sp.warnings)
    keyed = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nserve: {api_key_env: MY_KEY}\nservices:\n"
                 "  s: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n").services[0]
    assert not any("API key" in w for w in keyed.warnings)


@pytest.mark.parametrize("engine,warned", [("vllm", True), ("mlx", True), ("llama.cpp", False)])
def test_python_engines_on_a_cpu_only_machine_are_flagged(write_stack, engine, warned):
    sp = plan(write_stack, "hardware: cpu-server-64gb\nworkload: dev-loop\nservices:\n"
              f"  s: {{model: qwen2.5-0.5b-instruct, engine: {engine}}}\n").services[0]
    assert any("on a CPU-only machine: a test/development path" in w for w in sp.warnings) is warned


def test_a_reduced_context_is_a_warning(write_stack):
    sp = plan(write_stack, "hardware: cpu-laptop-16gb\nworkload: {concurrent_users: 4, context_tokens: 131072}\n"
              "services:\n  s: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n").services[0]
    assert sp.memory.context_per_request < 131072
    assert any(w.startswith("the plan serves a shorter context than the workload asked for: ") for w in sp.warnings)


def test_speed_uses_the_average_context_of_a_request(write_stack):
    """The decode speed reads the KV cache of an average request: min(context, prompt + output / 2)."""
    sp = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 1, context_tokens: 8192, "
              "prompt_tokens: 3000, output_tokens: 1000}\nservices:\n"
              "  s: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n").services[0]
    want = memory.predict_decode_tokens_per_s(sp.model, sp.memory, HW("rtx-4090"), 3500)
    assert (sp.predicted_decode_tokens_per_s, sp.bottleneck) == want


def test_a_refusal_after_earlier_services_names_what_they_hold(write_stack):
    with pytest.raises(PlanError) as exc:
        plan(write_stack, "hardware: rtx-4060\nworkload: dev-loop\nservices:\n"
             "  a: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}\n"
             "  b: {model: llama-3.1-70b-instruct, engine: vllm}\n")
    assert "(the services planned before it on this machine, a, hold " in str(exc.value)
    assert "of GPU memory and " in str(exc.value)


def test_multinode_speed_runs_the_stages_in_turn(write_stack):
    """vLLM over 2 DGX nodes: the head's bandwidth speed of the whole model, said per stage; llama.cpp RPC:
    the per-node seconds of each node's layer share add up."""
    body = ("hardware:\n  nodes:\n    - hardware: dgx-h100\n      count: 2\nworkload: team-api\nservices:\n"
            "  chat: {model: llama-3.1-405b-instruct, quant: bf16}\n")
    sp = plan(write_stack, body).services[0]
    assert sp.bottleneck.endswith("of each pipeline stage in turn (plus a network hop per node boundary)")
    assert sp.predicted_decode_tokens_per_s > 0
    rpc = plan(write_stack, body.replace("quant: bf16}", "quant: bf16, engine: llama.cpp}")).services[0]
    assert rpc.bottleneck == "memory bandwidth of each node in turn (plus a network round trip per node boundary)"
    # Both nodes are DGX H100s: the split is even, so the sum of halves is the one-node speed.
    m = rpc.memory
    avg = min(m.context_per_request, rpc.workload.prompt_tokens + rpc.workload.output_tokens // 2)
    hw = HW("dgx-h100")
    one, _ = memory.predict_decode_tokens_per_s(rpc.model, replace(m, gpu_layers=m.total_layers),
                                                hw, avg, efficiency=1.0)
    assert rpc.predicted_decode_tokens_per_s == round(0.7 / (sum(n / m.total_layers for n in m.node_layers) / one), 1)


def hint(write_stack, body: str) -> str:
    with pytest.raises(PlanError) as exc:
        plan(write_stack, body)
    return str(exc.value).splitlines()[-1]


def test_hint_lines(write_stack):
    """Qwen2.5 32B at Q4_K_M on a 16 GB laptop (13.6 GB usable): Q3_K_M does not fit, Q2_K does; llama.cpp and
    Ollama load the same file, the first of them in engine order (llama.cpp) is named, with the catalog's sizes."""
    m = load_profiles().models["qwen2.5-32b-instruct"]
    q2, q4 = m.gguf_bytes("Q2_K")[0], m.gguf_bytes("Q4_K_M")[0]
    line = hint(write_stack, "hardware: cpu-laptop-16gb\nservices:\n  big: {model: qwen2.5-32b-instruct, quant: Q4_K_M}\n")
    assert line == (f"Each of these fits: `quant: Q2_K` (llama.cpp (llama-server) fits it at 4096 tokens per request, "
                    f"not 16384: {q2 / 1e9:.1f} GB of weights "
                    f"instead of {q4 / 1e9:.1f} GB). Or a smaller model, or more memory.")
    # At 2048 tokens there is no shorter context to try and one user has no fewer users: only the quants are named.
    line = hint(write_stack, "hardware: cpu-laptop-16gb\nworkload: {concurrent_users: 1, context_tokens: 2048, "
                "prompt_tokens: 1000, output_tokens: 200}\nservices:\n  big: {model: llama-3.1-70b-instruct}\n")
    assert line == ("None of these makes it fit: a smaller quant (tried Q3_K_M, Q2_K). Pick a smaller model or a "
                    "machine with more memory.")


def test_hint_offers_the_longest_context_that_fits(write_stack):
    """vLLM pinned on a 24 GB GPU with 16 GB of bf16 weights and 131072-token requests (16 GiB of KV each): the hint
    halves the context until the plan fits, and the offered context really is the first that fits (checked by
    planning the stack at it and at twice it)."""
    stack = ("hardware: rtx-4090\nworkload: {{concurrent_users: 4, context_tokens: {ctx}}}\nservices:\n"
             "  big: {{model: llama-3.1-8b-instruct, quant: bf16, engine: vllm}}\n")
    line = hint(write_stack, stack.format(ctx=131072))
    offered = [int(o.split("`context_tokens: ")[1].split("`")[0]) for o in line.split("; ") if "context_tokens" in o]
    assert len(offered) == 1 and "(vLLM fits it)" in line and "concurrent_users" not in line
    ctx = offered[0]
    assert plan(write_stack, stack.format(ctx=ctx)).services[0].memory.context_per_request == ctx
    if ctx * 2 < 131072:
        with pytest.raises(PlanError):
            plan(write_stack, stack.format(ctx=ctx * 2))
    assert line.startswith("Each of these fits: `quant: fp8` (vLLM fits it: ")


@pytest.mark.parametrize("cc, engine, warned", [("3.7", "llama.cpp", True), ("3.7", "ollama", True),
                                                ("5.2", "llama.cpp", False), (None, "llama.cpp", False)])
def test_a_gpu_below_compute_capability_5_is_outside_the_forecast(write_stack, cc, engine, warned):
    """A Kepler GPU (the K80) is below CUDA 12's and llama.cpp's default build's lowest architecture, and the decode
    lines are not fitted on it (its public point decodes at 0.37 of the line): the plan says so; Maxwell (5.2) and
    a GPU whose compute capability is not known plan without the warning."""
    cc_line = f", compute_capability: '{cc}'" if cc else ""
    sp = plan(write_stack, "hardware: {gpus: [{vendor: nvidia, name: Tesla K80, memory_gib: 12, bandwidth_gbs: 240, "
              f"count: 1, tier: datacenter{cc_line}}}], memory_gib: 64, memory_bandwidth_gbs: 50, "
              "cpu: {cores: 8, threads: 16}}\nworkload: dev-loop\nservices:\n"
              f"  s: {{model: qwen2.5-0.5b-instruct, engine: {engine}}}\n").services[0]
    got = [w for w in sp.warnings if "below 5.0" in w]
    assert got == ([resolve.OLD_CUDA_WARNING.format(cc=cc)] if warned else [])
