"""The knobs each engine is started with carry the memory plan's figures (flags, environment, Modelfile)."""

from __future__ import annotations

from stackgen.plan import resolve
from stackgen.host.facts import HostFacts
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]


def service(write_stack, hardware: str, body: str, workload: str = "{concurrent_users: 2, context_tokens: 8192}"):
    f = write_stack(f"version: 1\nhardware: {hardware}\nworkload: {workload}\nservices:\n  s:\n{body}")
    return resolve.resolve(load_stack(f), HOST).services[0]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_llamacpp_flags_carry_the_plan(write_stack):
    """-c is the total over the -np slots; -ngl the planned layers; --cache-ram the bound in MiB; two GPUs of
    different sizes get -ts in proportion to their memory."""
    hw = ("{gpus: [{vendor: nvidia, name: big, memory_gib: 24, bandwidth_gbs: 1000}, "
          "{vendor: nvidia, name: small, memory_gib: 12, bandwidth_gbs: 500}], memory_gib: 64, "
          "memory_bandwidth_gbs: 80, cpu: {cores: 8}}")
    sp = service(write_stack, hw, "    model: qwen2.5-32b-instruct\n    engine: llama.cpp\n")
    m, argv = sp.memory, sp.command
    assert flag(argv, "-c") == str(2 * m.context_per_request) and flag(argv, "-np") == "2"
    assert flag(argv, "-ngl") == ("all" if m.gpu_layers == m.total_layers else str(m.gpu_layers))
    assert flag(argv, "--cache-ram") == str(m.prompt_cache.limit_bytes // 2**20)
    assert flag(argv, "-ts") == "24,12" and flag(argv, "-sm") == "layer"
    assert ("-ctk" in argv) is (m.kv_cache_type != "f16")


def test_vllm_flags_carry_the_plan(write_stack):
    sp = service(write_stack, "a100-80gb", "    model: llama-3.1-8b-instruct\n    engine: vllm\n")
    m, argv = sp.memory, sp.command
    assert flag(argv, "--max-model-len") == "8192" and flag(argv, "--max-num-seqs") == "2"
    assert flag(argv, "--gpu-memory-utilization") == f"{m.gpu_memory_utilization:.2f}" == "0.90"
    assert "--tensor-parallel-size" not in argv and "--kv-cache-dtype" not in argv


def test_vllm_second_service_on_a_shared_gpu_renders_its_share(write_stack):
    """Two vLLM services on one A100 80GB: the first reserves its share of the runtime total; the second is planned in
    what is left of that total (the nominal less the runtime total is nobody's: memory.unexposed_bytes) and starts at
    that share less 2 points, so vLLM's own free-memory check passes."""
    f = write_stack("version: 1\nhardware: a100-80gb\nworkload: {concurrent_users: 2, context_tokens: 4096}\n"
                    "services:\n  a: {model: qwen2.5-0.5b-instruct, engine: vllm, overrides: "
                    "{--gpu-memory-utilization: 0.4}}\n  b: {model: qwen2.5-0.5b-instruct, engine: vllm}\n")
    a, b = resolve.resolve(load_stack(f), HOST).services
    left = a.memory.gpu_budget_bytes - a.memory.gpu_bytes - (80 * 1024**3 - int((80 - 0.43) * 1024**3))
    assert b.memory.gpu_budget_bytes == left
    share = left / (80 * 1024**3)
    assert b.memory.gpu_memory_utilization == round(min(0.90, share - 0.02), 2)
    assert flag(b.command, "--gpu-memory-utilization") == f"{b.memory.gpu_memory_utilization:.2f}"


def test_mlx_flags_carry_the_prompt_cache_bound(write_stack):
    sp = service(write_stack, "m3-max-64gb", "    model: llama-3.1-8b-instruct\n    engine: mlx\n")
    c = sp.memory.prompt_cache
    assert c.entries > 0
    assert flag(sp.command, "--prompt-cache-size") == str(c.entries)
    assert flag(sp.command, "--prompt-cache-bytes") == str(c.limit_bytes)


def test_answers_are_capped_at_the_context_not_the_typical_output(write_stack):
    """workload.output_tokens is a typical length (the forecast's): a request that names no max_tokens may answer up to
    its planned context on MLX (--max-tokens) and Ollama (num_predict), as on llama.cpp and vLLM."""
    from stackgen import engines

    wl = "{concurrent_users: 1, context_tokens: 8192, output_tokens: 300}"
    mlx = service(write_stack, "m3-max-64gb", "    model: llama-3.1-8b-instruct\n    engine: mlx\n", wl)
    assert flag(mlx.command, "--max-tokens") == str(mlx.memory.context_per_request) == "8192"
    oll = service(write_stack, "rtx-4090", "    model: llama-3.1-8b-instruct\n    engine: ollama\n", wl)
    params = dict(engines.get("ollama").modelfile_parameters(oll))
    assert params["num_predict"] == str(oll.memory.context_per_request) == params["num_ctx"]


def test_a_gguf_quant_held_in_another_repo_is_fetched_from_it(write_stack):
    """gpt-oss-20b's MXFP4 file is ggml-org's (catalog gguf_variants), unsloth's repo has the other quants: -hf names
    the repository of the quant planned, without a tag for a one-file variant repo."""
    from stackgen.models.facts import catalog_pin_ref
    from stackgen.spec.profiles import load_profiles

    mx = service(write_stack, "rtx-4090", "    model: gpt-oss-20b\n    quant: MXFP4\n    engine: llama.cpp\n")
    assert flag(mx.command, "-hf") == "ggml-org/gpt-oss-20b-GGUF"
    q4 = service(write_stack, "rtx-4090", "    model: gpt-oss-20b\n    quant: Q4_K_M\n    engine: llama.cpp\n")
    assert flag(q4.command, "-hf") == "unsloth/gpt-oss-20b-GGUF:Q4_K_M"
    facts = load_profiles().models["gpt-oss-20b"]
    assert catalog_pin_ref(facts, "MXFP4") == "hf:ggml-org/gpt-oss-20b-GGUF"
    assert catalog_pin_ref(facts, "Q8_0") == "hf:unsloth/gpt-oss-20b-GGUF:Q8_0"
