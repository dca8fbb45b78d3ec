"""The decision table (each row and each rejection), the memory levers, and plan output."""

from __future__ import annotations

import json

import pytest

from stackgen import engines
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.plan.resolve import DECISION_TABLE, resolve
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]  # profiles below never need the host


def plan_for(write_stack, hardware, workload, model="llama-3.1-8b-instruct", extra="", top=""):
    f = write_stack(f"version: 1\nhardware: {hardware}\nworkload: {workload}\n{top}services:\n  svc:\n    model: {model}\n"
                    f"{extra}")
    return resolve(load_stack(f), HOST).services[0]


ROWS = [
    # (row id, hardware, workload, expected engine)
    ("mac-setup", "m3-max-64gb", "{concurrent_users: 1, optimize: setup}", "ollama"),
    ("mac-dev-loop", "m3-max-64gb", "dev-loop", "mlx"),
    ("mac-multi-user", "m4-max-128gb", "team-api", "llama.cpp"),
    ("gpu-prefix-heavy", "h100-80gb", "{concurrent_users: 32, context_tokens: 16384, prompt_tokens: 8000, output_tokens: 400}", "sglang"),
    ("gpu-multi-user", "a100-80gb", "team-api", "vllm"),
    ("setup", "rtx-4090", "{concurrent_users: 1, optimize: setup}", "ollama"),
    ("setup", "cpu-laptop-16gb", "quickstart", "ollama"),  # setup friction is Ollama's bottleneck on a CPU too
    ("gpu-single-user", "rtx-4090", "dev-loop", "llama.cpp"),
    ("portable", "rx-7900-xtx", "team-api", "llama.cpp"),
    ("portable", "arc-a770", "team-api", "llama.cpp"),
    ("portable", "cpu-server-64gb", "team-api", "llama.cpp"),
]


@pytest.mark.parametrize("row_id,hardware,workload,engine", ROWS)
def test_each_row_of_the_decision_table(write_stack, row_id, hardware, workload, engine):
    top = "serve: {api_key_env: STACK_KEY}\n" if engine == "sglang" else ""  # SGLang runs only behind its key
    sp = plan_for(write_stack, hardware, workload, top=top)
    assert sp.engine == engine
    row = next(r for r in DECISION_TABLE if r.id == row_id)
    hw = load_profiles().hardware[hardware]
    assert row.text(hw, sp.workload.concurrent_users) in sp.reasons[0]
    assert set(sp.rejected) == set(engines.ENGINES) - {engine}
    assert all(sp.rejected.values()), "every rejected engine carries a reason"


def test_every_row_is_exercised():
    tested = {r[0] for r in ROWS}
    assert tested == {r.id for r in DECISION_TABLE} - {"fallback"}


def test_seed_case_spills_to_llamacpp_and_says_why_vllm_cannot(write_stack):
    sp = plan_for(write_stack, "rtx-4090", "{concurrent_users: 3, optimize: throughput}",
                  "llama-3.1-70b-instruct", "    quant: Q4_K_M\n")
    assert sp.engine == "llama.cpp"
    assert 0 < sp.memory.gpu_layers < sp.memory.total_layers == 80
    assert "spill to system RAM" in sp.reasons[0]
    assert "GPU memory" in sp.rejected["vllm"] and "GB" in sp.rejected["vllm"]
    assert "Apple silicon" in sp.rejected["mlx"]
    assert "3 concurrent users" in sp.rejected["ollama"]
    assert sp.memory.gpu_bytes <= sp.memory.gpu_budget_bytes
    assert "-ngl" in sp.command and str(sp.memory.gpu_layers) in sp.command
    assert ["--fit", "off"] == list(sp.command[sp.command.index("--fit"):sp.command.index("--fit") + 2])
    assert "system RAM" in sp.bottleneck


def test_rejections_name_the_real_obstacle(write_stack):
    cpu = plan_for(write_stack, "cpu-server-64gb", "team-api")
    assert "CUDA or ROCm GPU" in cpu.rejected["vllm"]
    amd = plan_for(write_stack, "rx-7900-xtx", "team-api")  # gfx1100: vLLM's ROCm builds ship for it, ranked below
    assert amd.engine == "llama.cpp" and amd.rejected["vllm"].startswith("ranked below llama.cpp")
    intel = plan_for(write_stack, "arc-a770", "team-api")
    assert "Intel (XPU) backend is basic" in intel.rejected["vllm"]
    mac = plan_for(write_stack, "m3-max-64gb", "dev-loop")
    assert "Metal" in mac.rejected["vllm"]


def test_model_format_rejections(write_stack, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "vocab_size": 1024, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}))
    _write_safetensors(tmp_path / "hf" / "model.safetensors")
    sp = plan_for(write_stack, "a100-80gb", "team-api", "./hf")
    assert sp.engine == "vllm"
    assert "GGUF" in sp.rejected["llama.cpp"]


def _write_safetensors(path):
    import struct

    header = json.dumps({"w": {"dtype": "BF16", "shape": [1024, 128], "data_offsets": [0, 1024 * 128 * 2]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(1024 * 128 * 2))


def test_explicit_engine_that_cannot_serve_is_an_error_in_gb(write_stack, cli):
    f = write_stack("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-70b-instruct\n"
                    "    quant: bf16\n    engine: vllm\n")
    with pytest.raises(PlanError) as info:
        resolve(load_stack(f), HOST)
    assert "services.chat" in str(info.value) and "GB" in str(info.value)
    res = cli("plan", f)
    assert res.exit_code == 1 and "GB" in res.output and "Traceback" not in res.output


def test_nothing_fits_says_what_is_missing(write_stack, cli):
    f = write_stack("version: 1\nhardware: cpu-laptop-16gb\nservices:\n  big:\n    model: llama-3.1-405b-instruct\n")
    res = cli("plan", f)
    assert res.exit_code == 1
    assert "no engine can serve" in res.output and "short" in res.output


def test_services_share_the_machine(write_stack):
    one = "version: 1\nhardware: rtx-4090\nworkload: dev-loop\nservices:\n  a: {model: qwen2.5-32b-instruct, engine: llama.cpp}\n"
    f = write_stack(one)
    alone = resolve(load_stack(f), HOST).services[0]
    f2 = write_stack(one + "  b: {model: qwen2.5-32b-instruct, engine: llama.cpp}\n", name="two.yaml")
    a, b = resolve(load_stack(f2), HOST).services
    assert a.memory.gpu_layers == alone.memory.gpu_layers
    assert b.memory.gpu_layers < a.memory.gpu_layers, "the second service gets what the first left"
    assert a.port != b.port


def test_tensor_parallel_when_weights_need_several_gpus(write_stack):
    sp = plan_for(write_stack, "4x a100-80gb", "team-api", "llama-3.1-70b-instruct", "    quant: bf16\n")
    assert sp.engine == "vllm" and sp.memory.tensor_parallel in (2, 4)
    assert "--tensor-parallel-size" in sp.command
    assert 0.85 <= sp.memory.gpu_memory_utilization <= 0.92


def test_kv_quantization_lever_before_partial_offload(write_stack):
    # 8B Q8_0 (8.5 GB) + 4 x 32k-token f16 KV (16 GB) overflows 24 GB; q8_0 KV keeps every layer on the GPU.
    sp = plan_for(write_stack, "rtx-4090", "{concurrent_users: 4, context_tokens: 32768}",
                  extra="    quant: Q8_0\n    engine: llama.cpp\n")
    assert sp.memory.kv_cache_type == "q8_0" and sp.memory.gpu_layers == sp.memory.total_layers
    assert any("KV cache quantized" in r for r in sp.reasons)
    assert {"-ctk", "-ctv"} <= set(sp.command) and "-fa" in sp.command


def test_overrides_win_over_tuned_flags(write_stack):
    sp = plan_for(write_stack, "rtx-4090", "dev-loop", extra="    engine: llama.cpp\n    overrides: {ctx-size: 4096, -t: 3}\n")
    cmd = list(sp.command)
    assert "-c" not in cmd and cmd[cmd.index("--ctx-size") + 1] == "4096"
    assert cmd.count("-t") == 1 and cmd[cmd.index("-t") + 1] == "3"


def test_plan_json_contract(write_stack, cli):
    f = write_stack("version: 1\nhardware: rtx-4090\nworkload: team-api\nservices:\n  chat: {model: llama-3.1-8b-instruct}\n")
    res = cli("plan", f, "--json")
    assert res.exit_code == 0, res.output
    svc = json.loads(res.output)["services"][0]
    for key in ("engine", "fits", "memory", "gpu_layers", "total_layers", "parallel", "context_per_request",
                "predicted_decode_tokens_per_s", "command", "reasons", "rejected"):
        assert key in svc
    mem = svc["memory"]
    # vLLM: the total is what it reserves, weights + the KV pool it allocates + overhead (kv_cache_bytes is what
    # every user at full context needs, which the pool may hold or not)
    assert mem["total_bytes"] == mem["weights_bytes"] + mem["kv_pool_bytes"] + mem["overhead_bytes"] + \
        mem["compute_bytes"] == mem["gpu_bytes"]
    assert svc["engine"] == "vllm" and isinstance(svc["command"], list) and svc["command"][:2] == ["vllm", "serve"]
    assert svc["predicted_decode_tokens_per_s"] > 0


def test_plan_is_deterministic(write_stack, cli):
    f = write_stack("version: 1\nhardware: m3-max-64gb\nworkload: dev-loop\nservices:\n  chat: {model: qwen2.5-32b-instruct}\n")
    assert cli("plan", f, "--json").output == cli("plan", f, "--json").output
    human = cli("plan", f).output
    assert "service chat: mlx" in human and "rejected:" in human and "predicted decode" in human


def test_speed_prediction_is_bandwidth_bound(write_stack):
    a = plan_for(write_stack, "rtx-4090", "dev-loop", extra="    engine: llama.cpp\n")
    b = plan_for(write_stack, "rtx-3090", "dev-loop", extra="    engine: llama.cpp\n")
    # Same model fully on GPU: speed scales with GPU bandwidth (1008 vs 936 GB/s).
    assert a.predicted_decode_tokens_per_s / b.predicted_decode_tokens_per_s == pytest.approx(1008 / 936, rel=0.02)


def test_cors_is_never_a_wildcard(write_stack):
    local = plan_for(write_stack, "rtx-4090", "dev-loop", extra="    engine: llama.cpp\n")
    cmd = list(local.command)
    assert cmd[cmd.index("--cors-origins") + 1] == "localhost" and "--no-cors-credentials" in cmd
    f = write_stack("version: 1\nhardware: a100-80gb\nworkload: team-api\nservices:\n  chat: {model: llama-3.1-8b-instruct}\n"
                    "serve: {cors_origins: [https://chat.example.com]}\n", name="cors.yaml")
    sp = resolve(load_stack(f), HOST).services[0]
    assert sp.engine == "vllm"
    cmd = list(sp.command)
    assert json.loads(cmd[cmd.index("--allowed-origins") + 1]) == ["https://chat.example.com"]
