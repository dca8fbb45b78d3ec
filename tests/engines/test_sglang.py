"""SGLang (stackgen/engines/sglang.py): the plan follows sglang 0.5.23's memory rules, the argv carries every sized
value, the key never reaches argv or the engine's environment, and SGLang is picked only where its row says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stackgen import engines
from stackgen.engines import flagcheck
from stackgen.engines.sglang import LAUNCHER, default_batching, pool_tokens, prefill_graph_sizes, reserved_mib
from stackgen.errors import PlanError, SpecError
from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]  # the stacks below name their hardware
KEY = "serve: {api_key_env: STACK_KEY}\n"
PREFIX_HEAVY = "{concurrent_users: 32, context_tokens: 16384, prompt_tokens: 8000, output_tokens: 400, optimize: throughput}"


def plan(write_stack, hardware="h100-80gb", workload=PREFIX_HEAVY, model="llama-3.1-8b-instruct", top=KEY,
         extra=""):
    f = write_stack(f"version: 1\nhardware: {hardware}\nworkload: {workload}\n{top}services:\n  chat:\n"
                    f"    model: {model}\n{extra}")
    return resolve(load_stack(f), HOST).services[0]


def flag(argv, name):
    return argv[argv.index(name) + 1]


# ---------------------------------------------------------------------------------------------- the rules


def test_sglang_defaults_by_gpu_memory_are_the_sources_table():
    # memory_hook.py 89-179: (chunked_prefill_size, decode CUDA-graph max_bs) per GPU memory band and TP
    assert default_batching(16 * 1024, 1) == (2048, 8)
    assert default_batching(24 * 1024, 1) == (4096, 48) and default_batching(24 * 1024, 4) == (4096, 160)
    assert default_batching(40 * 1024, 2) == (4096, 32)
    assert default_batching(80 * 1024, 1) == (8192, 256) and default_batching(80 * 1024, 8) == (8192, 512)
    assert default_batching(180 * 1024, 1) == (16384, 512)
    # cuda_graph_hook.py 480-497: 8 + 14 + 8 + 8 + 12 sizes up to 4096, then one per 512 tokens
    assert prefill_graph_sizes(4096) == 50 and prefill_graph_sizes(8192) == 58 and prefill_graph_sizes(2048) == 42


def test_reserve_has_a_10_gib_floor_on_big_gpus_only():
    small = reserved_mib(24 * 1024, 4096, 8, 1)  # 512 + 4096 x 1.5 + 128 + 8 x 2 + 50 x 8
    assert small == 512 + 6144 + 128 + 16 + 400
    assert reserved_mib(80 * 1024, 2048, 1, 1) == 10 * 1024  # 512 + 3072 + 128 + 2 + 42 x 8 is under the floor


def test_h100_plan_mem_fraction_and_kv_pool(write_stack):
    sp = plan(write_stack)
    m = sp.memory
    assert sp.engine == "sglang"
    # H100 profile: CUDA reports 79.22 GiB = 81121.28 MiB; the CUDA context takes 1.79 GiB (1832.96 MiB) before SGLang
    # measures. Reserve at 32 running requests, chunked prefill 8192: 512 + 12288 + 128 + 64 + 58 x 8 = 13456 MiB.
    # f = floor((79288.32 - 13456) / 79288.32, 3 decimals) = floor(830.29) / 1000 = 0.830
    assert m.gpu_memory_utilization == pytest.approx(0.830)
    pre = 79288.32 * 2**20
    pool = pre * 0.830 - m.weights_bytes
    assert m.kv_cache_bytes == pytest.approx(pool, rel=1e-6)
    # 32 users x 16384 tokens of bf16 KV (128 KiB per token for Llama 3.1 8B) is 64 GiB: more than the pool, so fp8
    assert m.kv_cache_type == "fp8_e4m3"
    assert pool_tokens(m, sp.model) >= 32 * 16384
    assert m.tensor_parallel == 1 and m.parallel == 32 and m.context_per_request == 16384
    assert m.gpu_bytes <= m.gpu_budget_bytes


def test_argv_carries_every_sized_value(write_stack):
    sp = plan(write_stack)
    argv = list(sp.command)
    assert argv[:3] == ["python3", "-c", LAUNCHER]
    assert flag(argv, "--model-path") == "meta-llama/Llama-3.1-8B-Instruct"
    assert flag(argv, "--host") == "127.0.0.1" and flag(argv, "--port") == "30000"
    assert flag(argv, "--served-model-name") == "chat"
    assert flag(argv, "--context-length") == "16384" and flag(argv, "--max-running-requests") == "32"
    assert flag(argv, "--mem-fraction-static") == "0.830" and flag(argv, "--chunked-prefill-size") == "8192"
    assert flag(argv, "--kv-cache-dtype") == "fp8_e4m3" and flag(argv, "--schedule-policy") == "lpm"
    assert "--tp-size" not in argv and "--api-key" not in argv
    assert not any("STACK_KEY" in a for a in argv[3:])
    flagcheck.check_service(sp)  # every flag is in the 0.5.23 table


def test_70b_on_four_a100s_is_tensor_parallel(write_stack):
    sp = plan(write_stack, "4x a100-80gb", "{concurrent_users: 64, context_tokens: 32768, prompt_tokens: 12000, "
              "output_tokens: 500, optimize: throughput}", "llama-3.1-70b-instruct")
    assert sp.engine == "sglang"
    assert sp.memory.tensor_parallel == 4 and flag(list(sp.command), "--tp-size") == "4"
    assert any("tensor parallel over 4 GPUs" in r for r in sp.reasons)
    # 64 x 32768 tokens do not all fit: the plan says so with the pool's size in tokens
    assert any("not every user fits" in r and f"{pool_tokens(sp.memory, sp.model)} tokens" in r for r in sp.reasons)
    flagcheck.check_service(sp)


def test_overrides_pin_planned_knobs(write_stack):
    sp = plan(write_stack, extra="    engine: sglang\n    overrides: {mem-fraction-static: 0.7, tensor-parallel-size: 1, "
              "chunked-prefill-size: 4096, kv-cache-dtype: bf16}\n")
    argv = list(sp.command)
    assert flag(argv, "--mem-fraction-static") == "0.7" and sp.memory.gpu_memory_utilization == pytest.approx(0.7)
    assert flag(argv, "--chunked-prefill-size") == "4096" and argv.count("--chunked-prefill-size") == 1
    assert sp.memory.kv_cache_type == "bf16"
    assert any(r.startswith("pinned by overrides: --mem-fraction-static 0.7") for r in sp.reasons)


def test_two_spellings_of_tp_are_refused(write_stack):
    with pytest.raises(SpecError, match="same SGLang flag|both set the tensor parallel"):
        plan(write_stack, extra="    engine: sglang\n    overrides: {tp-size: 1, tensor-parallel-size: 2}\n")


# ---------------------------------------------------------------------------------------------- where it is picked


def test_without_a_key_sglang_is_rejected_for_its_hard_coded_cors(write_stack):
    sp = plan(write_stack, top="")
    assert sp.engine == "vllm"
    assert "CORS * with credentials is hard-coded" in sp.rejected["sglang"]
    assert "SGLang: answers cross-origin requests" in sp.reasons[0]  # why the row's first choice was skipped


def test_pinning_sglang_without_a_key_is_a_validate_error_with_the_place(write_stack):
    f = write_stack("version: 1\nhardware: h100-80gb\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n"
                    "    engine: sglang\n")
    with pytest.raises(SpecError) as exc:
        load_stack(f)
    text = str(exc.value)
    assert f"{f}:6:13" in text and "serve.api_key_env" in text and "CORS" in text


def test_short_prompts_stay_with_vllm_and_say_why_not_sglang(write_stack):
    sp = plan(write_stack, workload="team-api")  # 1500 prompt / 400 output tokens: not prefix-heavy
    assert sp.engine == "vllm"
    assert "long prompts (prompt at least 8x the answer)" in sp.rejected["sglang"]
    assert "1500 prompt tokens for 400 output tokens" in sp.rejected["sglang"]


@pytest.mark.parametrize("hardware,why", [
    ("m3-max-64gb", "Apple (MLX) backend is experimental"),
    ("cpu-server-64gb", "needs a CUDA GPU"),
    ("arc-a770", "no backend for Intel Arc"),
    ("rx-7900-xtx", "its ROCm builds target gfx942, gfx950, not the Radeon RX 7900 XTX's gfx1100"),
])
def test_hardware_sglang_does_not_serve(write_stack, hardware, why):
    sp = plan(write_stack, hardware=hardware, model="qwen2.5-0.5b-instruct")
    assert sp.engine != "sglang" and why in sp.rejected["sglang"]


def test_old_nvidia_gpus_are_blocked(write_stack):
    f = write_stack("version: 1\nhardware:\n  gpus: [{vendor: nvidia, name: Tesla V100, memory_gib: 32, "
                    "bandwidth_gbs: 900, compute_capability: '7.0', tier: datacenter}]\n  memory_gib: 128\n"
                    "  memory_bandwidth_gbs: 100\n  cpu: {cores: 16}\n" + KEY
                    + "services:\n  chat: {model: qwen2.5-0.5b-instruct, engine: sglang}\n")
    with pytest.raises(PlanError, match="compute capability 7.5"):
        resolve(load_stack(f), HOST)


def test_gguf_models_are_not_sglangs(write_stack):
    """Q4_K_M maps to the nearest HF format, awq; the catalog knows no AWQ checkpoint of this model, so SGLang (like
    vLLM) is refused instead of planning AWQ bytes while launching the bf16 repo (issue 12), and says why."""
    sp = plan(write_stack, extra="    quant: Q4_K_M\n")
    assert sp.engine != "sglang"
    assert "no awq checkpoint" in sp.rejected["sglang"] and "SGLang would load" in sp.rejected["sglang"]


def test_registered_with_its_facts():
    e = engines.get("sglang")
    assert e.display == "SGLang" and e.default_port == 30000 and e.api_key.env == "SGLANG_API_KEY"
    assert e.api_key.file_flag is None  # SGLang reads no key file: the launcher is how the key gets in


# ---------------------------------------------------------------------------------------------- the launcher


def _run_launcher(tmp_path: Path, env_key: str | None):
    """The launcher against a stand-in `sglang.launch_server` that reports what it was given (the launcher's own
    logic; the real module is exercised in tests/integration/test_sglang_real.py)."""
    pkg = tmp_path / "sglang"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "launch_server.py").write_text(
        "import os, sys\n"
        "if __name__ == '__main__':\n"
        "    print('ARGV', sys.argv[1:])\n"
        "    print('ENV', os.environ.get('SGLANG_API_KEY'))\n"
        "    import subprocess\n"
        "    print('CHILD', subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"SGLANG_API_KEY\"))'],"
        " capture_output=True, text=True).stdout.strip())\n"
        "    print(f'server_args=api_key={sys.argv[2]!r}', file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_API_KEY"}
    env["PYTHONPATH"] = str(tmp_path)
    if env_key is not None:
        env["SGLANG_API_KEY"] = env_key
    return subprocess.run([sys.executable, "-c", LAUNCHER, "--model-path", "m", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_launcher_puts_the_key_in_argv_inside_the_process_and_nowhere_else(tmp_path):
    r = _run_launcher(tmp_path, "canary-7f3a")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "ARGV ['--api-key', '<api-key>', '--model-path', 'm', '--port', '1']" in r.stdout  # inserted, masked
    assert "ENV None" in r.stdout and "CHILD None" in r.stdout  # gone from the environment children inherit
    assert "canary-7f3a" not in out  # masked in everything it writes, the logged server_args included
    assert "server_args=api_key='<api-key>'" in r.stderr


def test_launcher_without_a_key_passes_argv_through(tmp_path):
    r = _run_launcher(tmp_path, None)
    assert r.returncode == 0, r.stderr
    assert "ARGV ['--model-path', 'm', '--port', '1']" in r.stdout


def test_replicas_on_one_machine_become_data_parallel(write_stack):
    """capacity.py's layouts: SGLang is multi-instance and tensor-parallel, so four replicas on four GPUs run as one
    server with --dp-size 4 (SGLang's data-parallel controller), each rank a full copy of the weights."""
    sp = plan(write_stack, "4x h100-80gb", "{concurrent_users: 256, context_tokens: 8192, prompt_tokens: 6000, "
              "output_tokens: 300, optimize: throughput}", extra="    replicas: 4\n")
    argv = list(sp.command)
    assert sp.engine == "sglang" and flag(argv, "--dp-size") == "4" and "--tp-size" not in argv
    assert sp.memory.data_parallel == 4 and sp.memory.weights_bytes == 4 * sp.model.hf_bytes("bf16")[0]
    assert engines.get("sglang").gpu_count(sp) == 4
    flagcheck.check_service(sp)


def test_a_known_pre_quantized_checkpoint_is_what_sglang_launches(write_stack):
    """awq for a catalog model with a known AWQ repo (hf_variants): the plan counts that repo's bytes and the argv
    serves that repo, with no --quantization on top (the shared HF-checkpoint rule of vLLM and SGLang, issue 12)."""
    sp = plan(write_stack, model="qwen2.5-7b-instruct", extra="    quant: awq\n    engine: sglang\n")
    variant = sp.model.hf_variants["awq"]
    assert sp.engine == "sglang" and sp.memory.weights_format == "awq" and variant != sp.model.hf_repo
    assert sp.memory.weights_bytes == sp.model.hf_bytes("awq")[0]
    argv = list(sp.command)
    assert flag(argv, "--model-path") == variant and "--quantization" not in argv
