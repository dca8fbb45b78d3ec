"""Issue 21: an override of a planned knob is planned with the user's value (memory, speed, fits, a reason line),
conflicting spellings are refused at validate, and the three measured regressions stay fixed."""

from __future__ import annotations

import json
import textwrap

import pytest

from stackgen.errors import PlanError, SpecError
from stackgen.plan.memory import (GIB, KV_BYTES_PER_ELEMENT, gpu_runtime_bytes, llamacpp_kv_bytes, vllm_activation_bytes,
                             vllm_kv_bytes_per_request)
from stackgen.spec.stack import load_stack
from tools.stacks import plan_for


def plan1(tmp_path, hardware: str, engine: str, overrides: dict, model: str = "llama-3.1-8b-instruct",
          workload: str = "{concurrent_users: 4, context_tokens: 8192}"):
    text = textwrap.dedent(f"""\
        version: 1
        hardware: {hardware}
        workload: {workload}
        services:
          chat: {{model: {model}, engine: {engine}, overrides: {json.dumps(overrides)}}}
        """)
    p = plan_for(tmp_path, text)
    return p.services[0]


def pinned_reason(sp, text: str) -> str:
    lines = [r for r in sp.reasons if r.startswith("pinned by overrides: ") and text in r]
    assert lines, sp.reasons
    return lines[0]


# ---------------------------------------------------------------------------------------------- llama.cpp


def test_llama_ctx_size_is_the_total_over_slots(tmp_path):
    sp = plan1(tmp_path, "rtx-4090", "llama.cpp", {"-c": 65536, "-np": 2})
    m = sp.memory
    assert (m.parallel, m.context_per_request) == (2, 32768)  # llama-server: n_ctx / n_parallel per slot
    assert m.kv_cache_bytes == llamacpp_kv_bytes(sp.model, 32768, 2, m.kv_cache_type)
    assert "stackgen would have chosen 32768 tokens of context (4 x 8192)" in pinned_reason(sp, "-c 65536")
    assert "stackgen would have chosen 4 parallel requests" in pinned_reason(sp, "-np 2")
    assert sp.command[sp.command.index("-c") + 1] == "65536" and sp.command[sp.command.index("-np") + 1] == "2"


def test_llama_gpu_layers_pinned_is_not_searched(tmp_path):
    free = plan1(tmp_path / "a", "rtx-4090", "llama.cpp", {}, model="llama-3.1-70b-instruct")
    assert 0 < free.memory.gpu_layers < 80  # stackgen would offload part of the model
    sp = plan1(tmp_path / "b", "rtx-4090", "llama.cpp", {"-ngl": 10}, model="llama-3.1-70b-instruct")
    assert sp.memory.gpu_layers == 10 and sp.memory.fits
    per_layer = sp.memory.weights_bytes / 81
    assert sp.memory.host_bytes > free.memory.host_bytes + (free.memory.gpu_layers - 10) * per_layer * 0.99
    assert f"stackgen would have chosen {free.memory.gpu_layers} of 80 layers on GPU" in pinned_reason(sp, "-ngl 10")


def test_llama_gpu_layers_pinned_above_what_fits_is_a_refusal_naming_the_override(tmp_path):
    with pytest.raises(PlanError) as exc:
        plan1(tmp_path, "rtx-4090", "llama.cpp", {"--n-gpu-layers": "all"}, model="llama-3.1-70b-instruct")
    assert "pinned by overrides: --n-gpu-layers all" in str(exc.value)


@pytest.mark.parametrize("ctk,ctv,expect", [("q8_0", "q8_0", "q8_0"), ("q4_0", None, "q4_0"), ("q8_0", "f16", "q8_0/f16")])
def test_llama_cache_types_size_the_kv_cache(tmp_path, ctk, ctv, expect):
    over = {"-ctk": ctk} | ({"-ctv": ctv} if ctv else {})
    sp = plan1(tmp_path, "rtx-4090", "llama.cpp", over)
    m = sp.memory
    assert m.kv_cache_type == expect
    f16 = llamacpp_kv_bytes(sp.model, m.context_per_request, m.parallel, "f16")
    k, v = (expect.split("/") + [expect])[:2]
    ratio = (KV_BYTES_PER_ELEMENT[k] + KV_BYTES_PER_ELEMENT[v]) / 2 / 2.0
    assert m.kv_cache_bytes == pytest.approx(f16 * ratio, rel=1e-6)


def test_llama_flash_attention_off_adds_the_score_matrix_and_refuses_a_quantized_v(tmp_path):
    on = plan1(tmp_path / "a", "rtx-4090", "llama.cpp", {"-fa": "on"})
    off = plan1(tmp_path / "b", "rtx-4090", "llama.cpp", {"-fa": "off"})
    m = off.memory
    # KQ scores of one micro-batch over every cell, f32, per head: n_kv x n_ubatch x n_head x 4 B (ggml mul_mat)
    assert m.compute_bytes - on.memory.compute_bytes == m.context_per_request * m.parallel * 512 * off.model.heads * 4
    assert m.kv_cache_type == "f16"  # without flash attention a quantized V cache is not a lever
    with pytest.raises(PlanError, match="needs flash attention for a quantized V cache"):
        plan1(tmp_path / "c", "rtx-4090", "llama.cpp", {"-fa": "off", "-ctv": "q8_0"})


def test_llama_ubatch_and_threads(tmp_path):
    sp = plan1(tmp_path, "rtx-4090", "llama.cpp", {"-ub": 2048, "-t": 3})
    base = plan1(tmp_path / "b", "rtx-4090", "llama.cpp", {})
    act = lambda ub: ub * 4 * (4 * sp.model.hidden + 2 * sp.model.ffn)  # noqa: E731
    assert sp.memory.compute_bytes - base.memory.compute_bytes == act(2048) - act(512)
    assert sp.threads == 3 and "stackgen would have chosen" in pinned_reason(sp, "-t 3")


def test_llama_prompt_cache_pinned_is_the_plan_line_and_can_refuse(tmp_path):
    """Issue 18's cache line follows a pinned --cache-ram / --ctx-checkpoints (the command already did)."""
    base = plan1(tmp_path / "a", "rtx-4090", "llama.cpp", {})
    sp = plan1(tmp_path / "b", "rtx-4090", "llama.cpp", {"-cram": 64})
    assert sp.memory.prompt_cache.limit_bytes == 64 * 2**20
    assert sp.memory.host_bytes - base.memory.host_bytes == (64 * 2**20 - base.memory.prompt_cache.limit_bytes)
    assert "stackgen would have chosen --cache-ram" in pinned_reason(sp, "-cram 64")
    assert sp.command[sp.command.index("-cram") + 1] == "64" and "--cache-ram" not in sp.command
    with pytest.raises(PlanError, match="pinned by overrides: --cache-ram 10000000"):
        plan1(tmp_path / "c", "rtx-4090", "llama.cpp", {"--cache-ram": 10_000_000})


def test_llama_batch_is_planned_without_changing_memory(tmp_path):
    """-b is the logical batch; llama.cpp sizes its compute buffers by the micro-batch (-ub), so a pinned -b shows
    in the reasons and the command but leaves the memory plan as it was."""
    base = plan1(tmp_path / "a", "rtx-4090", "llama.cpp", {})
    sp = plan1(tmp_path / "b", "rtx-4090", "llama.cpp", {"-b": 512})
    assert pinned_reason(sp, "-b 512") == "pinned by overrides: -b 512"
    assert sp.memory.compute_bytes == base.memory.compute_bytes and sp.memory.host_bytes == base.memory.host_bytes
    assert sp.command[sp.command.index("-b") + 1] == "512"


def test_llama_ctx_checkpoints_pinned_sizes_the_cache_line(tmp_path):
    """Gemma-style sliding-window models keep context checkpoints per slot; a pinned count is what the line counts."""
    import os

    gguf = os.environ.get("STACKGEN_GGUF")
    if not gguf:
        if os.environ.get("CI"):
            pytest.fail("STACKGEN_GGUF is not provisioned (.ci/provision.sh)")
        pytest.skip("STACKGEN_GGUF (a sliding-window GGUF) is provisioned by .ci/provision.sh")
    m0 = plan1(tmp_path / "a", "cpu-server-64gb", "llama.cpp", {"--ctx-checkpoints": 0}, model=gguf)
    m2 = plan1(tmp_path / "b", "cpu-server-64gb", "llama.cpp", {"--ctx-checkpoints": 2}, model=gguf)
    assert (m0.memory.prompt_cache.checkpoints, m2.memory.prompt_cache.checkpoints) == (0, 2)
    assert m2.memory.host_bytes > m0.memory.host_bytes
    assert pinned_reason(m2, "--ctx-checkpoints 2")


# ---------------------------------------------------------------------------------------------- vLLM


def test_vllm_utilization_pinned_low_is_planned_and_can_refuse(tmp_path):
    sp = plan1(tmp_path / "a", "a100-80gb", "vllm", {"gpu-memory-utilization": 0.5})
    m = sp.memory
    # vLLM multiplies the total CUDA reports (nominal - 0.43 GiB without a profile figure), not nvidia-smi's
    assert m.gpu_memory_utilization == 0.5 and m.gpu_bytes == int(gpu_runtime_bytes(sp.gpus[0]) * 0.5)
    assert "(stackgen would have chosen --gpu-memory-utilization 0.90)" in pinned_reason(sp, "0.5")
    with pytest.raises(PlanError, match="pinned by overrides: --gpu-memory-utilization 0.1"):
        plan1(tmp_path / "b", "a100-80gb", "vllm", {"gpu-memory-utilization": 0.1})


def test_vllm_utilization_above_090_can_be_planned(tmp_path):
    sp = plan1(tmp_path, "a100-80gb", "vllm", {"--gpu-memory-utilization": 0.98})
    assert sp.memory.gpu_memory_utilization == 0.98
    assert sp.memory.gpu_bytes == int(gpu_runtime_bytes(sp.gpus[0]) * 0.98)
    assert sp.command[sp.command.index("--gpu-memory-utilization") + 1] == "0.98"


def test_vllm_tensor_parallel_pinned_sizes_every_rank(tmp_path):
    sp = plan1(tmp_path, "8x h100-80gb", "vllm", {"tensor-parallel-size": 8})
    m = sp.memory
    per_gpu = gpu_runtime_bytes(sp.gpus[0])  # H100 80GB: 79.22 GiB as CUDA reports it (vllm PR 10511)
    assert per_gpu == int(79.22 * GIB)
    assert m.tensor_parallel == 8 and m.gpu_bytes == int(per_gpu * 0.90) * 8
    assert m.kv_cache_bytes == vllm_kv_bytes_per_request(sp.model, 8192, "auto", 8) * 4 * 8
    assert sp.to_json()["tensor_parallel"] == 8
    with pytest.raises(PlanError, match="needs 16 GPUs"):
        plan1(tmp_path / "b", "8x h100-80gb", "vllm", {"-tp": 16})


def test_vllm_context_seqs_kv_dtype_batched_tokens(tmp_path):
    base = plan1(tmp_path / "a", "a100-80gb", "vllm", {})
    sp = plan1(tmp_path / "b", "a100-80gb", "vllm", {"max-model-len": 4096, "max-num-seqs": 16,
                                                      "kv-cache-dtype": "fp8", "max-num-batched-tokens": 2048})
    m = sp.memory
    assert (m.context_per_request, m.parallel, m.kv_cache_type) == (4096, 16, "fp8")
    assert m.kv_cache_bytes == vllm_kv_bytes_per_request(sp.model, 4096, "fp8") * 16
    # a100: vLLM's default is 2048 batched tokens and 256 seqs (arg_utils.py excludes A100 from the 8192 tier); the
    # plan's --max-num-seqs is the workload's users. The activation term follows the pinned values.
    assert base.memory.overhead_bytes - m.overhead_bytes == (
        vllm_activation_bytes(sp.model, 2048, base.memory.parallel) - vllm_activation_bytes(sp.model, 2048, 16))
    big = plan1(tmp_path / "c", "a100-80gb", "vllm", {"max-num-batched-tokens": 16384})
    assert big.memory.overhead_bytes - base.memory.overhead_bytes == (
        vllm_activation_bytes(sp.model, 16384, 1) - vllm_activation_bytes(sp.model, 2048, 1))


def test_vllm_data_and_pipeline_parallel_count_their_gpus(tmp_path):
    sp = plan1(tmp_path, "8x h100-80gb", "vllm", {"data-parallel-size": 2, "pipeline-parallel-size": 2, "-tp": 2})
    m = sp.memory
    assert (m.tensor_parallel, m.pipeline_parallel, m.data_parallel) == (2, 2, 2)
    assert m.gpu_bytes == int(gpu_runtime_bytes(sp.gpus[0]) * 0.90) * 8
    j = sp.to_json()
    assert j["pipeline_parallel"] == 2 and j["data_parallel"] == 2
    assert "--distributed-executor-backend" not in sp.command  # one node: no Ray


def test_vllm_cpu_context_and_seqs(tmp_path):
    sp = plan1(tmp_path, "cpu-server-64gb", "vllm", {"max-model-len": 2048, "max-num-seqs": 3})
    assert (sp.memory.context_per_request, sp.memory.parallel) == (2048, 3)


# ---------------------------------------------------------------------------------------------- MLX, Ollama


def test_mlx_decode_concurrency(tmp_path):
    sp = plan1(tmp_path, "m4-max-128gb", "mlx", {"decode-concurrency": 6})
    base = plan1(tmp_path / "b", "m4-max-128gb", "mlx", {})
    assert sp.memory.parallel == 6 and sp.memory.kv_cache_bytes == base.memory.kv_cache_bytes // 4 * 6


@pytest.mark.parametrize("key,value,field,expect", [
    ("num_ctx", 4096, "context_per_request", 4096), ("OLLAMA_CONTEXT_LENGTH", 2048, "context_per_request", 2048),
    ("OLLAMA_NUM_PARALLEL", 2, "parallel", 2), ("num_gpu", 12, "gpu_layers", 12),
    ("OLLAMA_KV_CACHE_TYPE", "q8_0", "kv_cache_type", "q8_0")])
def test_ollama_knobs(tmp_path, key, value, field, expect):
    sp = plan1(tmp_path, "rtx-4090", "ollama", {key: value})
    assert getattr(sp.memory, field) == expect
    assert pinned_reason(sp, key)


def test_ollama_num_batch_and_flash_attention_size_compute(tmp_path):
    base = plan1(tmp_path / "a", "rtx-4090", "ollama", {})
    big = plan1(tmp_path / "b", "rtx-4090", "ollama", {"num_batch": 2048})
    act = lambda ub: ub * 4 * (4 * big.model.hidden + 2 * big.model.ffn)  # noqa: E731
    assert big.memory.compute_bytes - base.memory.compute_bytes == act(2048) - act(512)
    off = plan1(tmp_path / "c", "rtx-4090", "ollama", {"OLLAMA_FLASH_ATTENTION": "0"})
    m = off.memory
    assert m.compute_bytes - base.memory.compute_bytes == m.context_per_request * m.parallel * 512 * off.model.heads * 4
    assert m.kv_cache_type == "f16" and off.env["OLLAMA_FLASH_ATTENTION"] == "0"
    # unpinned, the daemon runs with flash attention, as the plan (without the scores' scratch) counts it -- also
    # for an f16 KV cache, which had OLLAMA_FLASH_ATTENTION=0 and 1-5 GiB of scratch the plan did not count
    assert base.memory.kv_cache_type == "f16" and base.env["OLLAMA_FLASH_ATTENTION"] == "1"


def test_ollama_runner_cache_ram(tmp_path):
    sp = plan1(tmp_path, "rtx-4090", "ollama", {"LLAMA_ARG_CACHE_RAM": 128})
    assert sp.memory.prompt_cache.limit_bytes == 128 * 2**20 and sp.env["LLAMA_ARG_CACHE_RAM"] == "128"


def test_ollama_num_thread(tmp_path):
    assert plan1(tmp_path, "rtx-4090", "ollama", {"num_thread": 5}).threads == 5


# ---------------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize("overrides,problem", [
    ({"-c": 8192, "--ctx-size": 4096}, "are the same"),
    ({"-c": 8192, "ctx-size": 4096}, "are the same"),
    ({"num_ctx": 4096, "OLLAMA_CONTEXT_LENGTH": 2048}, "both set the context per request"),
    ({"-ngl": "auto"}, "'auto' would let the engine decide again"),
    ({"gpu-memory-utilization": 1.5}, "a number between 0 and 1"),
])
def test_conflicting_or_unplannable_overrides_are_refused_at_validate(tmp_path, overrides, problem):
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        hardware: rtx-4090
        services:
          chat: {{model: llama-3.1-8b-instruct, overrides: {json.dumps(overrides)}}}
        """), encoding="utf-8")
    with pytest.raises(SpecError) as exc:
        load_stack(path)
    text = "\n".join(str(p) for p in exc.value.problems)
    assert problem in text and "stack.yaml:4:" in text, text


def test_overrides_that_are_not_knobs_pass_through_unplanned(tmp_path):
    sp = plan1(tmp_path, "rtx-4090", "llama.cpp", {"temp": 0.3, "jinja": True})
    assert not any(r.startswith("pinned by overrides") for r in sp.reasons)
    assert "--temp" in sp.command and "--jinja" in sp.command


# ---------------------------------------------------------------------------------------------- the measured cases


def test_regression_a100_utilization_half(tmp_path):
    """`--gpu-memory-utilization 0.5` on an A100 80GB: the plan budgets 0.5 (40 GiB), not 0.90 (72 GiB)."""
    sp = plan1(tmp_path, "a100-80gb", "vllm", {"--gpu-memory-utilization": 0.5})
    assert sp.memory.gpu_bytes == int(gpu_runtime_bytes(sp.gpus[0]) * 0.5)  # 0.5 of what CUDA reports


def test_regression_tp8_for_an_8b_model(tmp_path):
    """`--tensor-parallel-size 8` on 8 GPUs: the plan JSON says 8 (it said 4)."""
    j = plan1(tmp_path, "8x h100-80gb", "vllm", {"--tensor-parallel-size": 8},
              workload="{concurrent_users: 64, context_tokens: 8192}").to_json()
    assert j["tensor_parallel"] == 8


def test_regression_f16_kv_for_a_million_tokens_on_128_gib(tmp_path):
    """-ctk f16 -ctv f16 -fa off, 1M tokens, 128 GiB CPU: a q8_0 cache (68 GiB) was planned and said to fit; the
    real run needed the f16 size and failed to allocate. Now the plan sizes f16 and refuses, naming the overrides."""
    with pytest.raises(PlanError) as exc:
        plan1(tmp_path, "{cpu: {cores: 16, threads: 32}, memory_gib: 128, memory_bandwidth_gbs: 100}", "llama.cpp",
              {"-c": 1048576, "-ctk": "f16", "-ctv": "f16", "-fa": "off"},
              workload="{concurrent_users: 1, context_tokens: 1048576}")
    assert "pinned by overrides: -c 1048576, -ctk f16, -ctv f16, -fa off" in str(exc.value)


# ---------------------------------------------------------------------------------------------- which engine takes them


def _auto(tmp_path, overrides: str, model: str = "qwen2.5-7b-instruct", hardware: str = "rtx-4090"):
    return plan_for(tmp_path, f"version: 1\nhardware: {hardware}\nworkload: {{concurrent_users: 1}}\nservices:\n"
                              f"  chat: {{model: {model}, overrides: {overrides}}}\n").services[0]


def test_an_auto_service_goes_to_an_engine_that_takes_its_overrides(tmp_path):
    """`--max-num-seqs` is vLLM's (SGLang spells it otherwise): llama.cpp, which the table ranks first on a 4090 for
    one user, would have been launched with a flag it does not have (render refused it after plan printed it)."""
    sp = _auto(tmp_path, "{--max-num-seqs: 8}")
    assert sp.engine == "vllm" and sp.command.count("--max-num-seqs") == 1
    assert sp.rejected["llama.cpp"] == ("cannot take services.chat.overrides --max-num-seqs (llama.cpp 0c1e57098 has "
                                        "no flag --max-num-seqs)")
    assert sp.rejected["ollama"].startswith("cannot take services.chat.overrides --max-num-seqs (Ollama has no setting")
    # without the override the table's first pick stands
    assert _auto(tmp_path / "b", "{}").engine == "llama.cpp"


def test_an_override_no_engine_takes_is_refused_at_its_line(tmp_path):
    with pytest.raises(SpecError) as err:
        _auto(tmp_path, "{--frobnicate: true}")
    assert str(err.value).endswith(
        "stack.yaml:5:64: services.chat.overrides.--frobnicate: no engine stackgen runs takes --frobnicate "
        "(llama.cpp (llama-server), Ollama, vLLM, MLX (mlx_lm.server), SGLang) (remove it, or write the flag as the "
        "engine's --help spells it)")
    with pytest.raises(SpecError, match=r"gpu_memory_utilization: no engine .* \(did you mean "
                                        r"'--gpu-memory-utilization'\?\)"):
        _auto(tmp_path / "b", "{gpu_memory_utilization: 0.8}")


def test_a_pinned_context_shorter_than_the_workload_is_warned(tmp_path):
    """-c 8192 over -np 4 is 2048 tokens per slot against an 8192-token workload: every longer request is refused, so
    the plan says so (it said 4 x 2048 in its header only)."""
    sp = plan1(tmp_path, "rtx-4090", "llama.cpp", {"-c": 8192, "-np": 4},
               workload="{concurrent_users: 2, context_tokens: 8192}")
    assert sp.memory.context_per_request == 2048
    assert ("the plan serves a shorter context than the workload asked for: 2048 tokens per request (pinned by "
            "overrides: -c 8192, -np 4), not 8192; a longer request is refused") in sp.warnings
    assert not any("shorter context" in w for w in plan1(tmp_path / "b", "rtx-4090", "llama.cpp", {}).warnings)
