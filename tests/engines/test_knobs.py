"""Issue 16: YaRN past the trained context (model facts, planner, argv per engine) and structured output."""

from __future__ import annotations

import json
import textwrap

import pytest

from stackgen.run.bench import RequestResult, schema_fields, summarize
from stackgen.errors import PlanError
from stackgen.plan.memory import llamacpp_kv_bytes
from stackgen.models.facts import ModelFacts
from stackgen.spec.stack import SpecError
from tools.stacks import plan_for


def plan1(tmp_path, engine: str, context: int, model: str = "qwen2.5-7b-instruct", hardware: str = "h100-80gb",
          extra: str = ""):
    text = textwrap.dedent(f"""\
        version: 1
        hardware: {hardware}
        workload: {{concurrent_users: 1, context_tokens: {context}}}
        services:
          chat: {{model: {model}, engine: {engine}{extra}}}
        """)
    return plan_for(tmp_path, text).services[0]


def flag(argv, name):
    return argv[list(argv).index(name) + 1]


def test_qwen_past_its_trained_context_gets_yarn_on_llama_server(tmp_path):
    sp = plan1(tmp_path, "llama.cpp", 65536)
    m = sp.memory
    assert m.context_per_request == 65536  # not capped at the trained 32768
    assert m.rope_scaling is not None and m.rope_scaling.factor == 2.0  # the smallest factor that reaches 65536
    assert m.kv_cache_bytes == llamacpp_kv_bytes(sp.model, 65536, 1, m.kv_cache_type)
    argv = list(sp.command)
    assert flag(argv, "-c") == "65536"
    assert flag(argv, "--rope-scaling") == "yarn"
    assert flag(argv, "--rope-scale") == "2"
    assert flag(argv, "--yarn-orig-ctx") == "32768"
    why = [r for r in sp.reasons if r.startswith("context: ")]
    assert why and "factor 2 over 32768" in why[0] and "short texts" in why[0] and "Qwen2.5-7B-Instruct" in why[0]


def test_within_the_trained_context_nothing_is_added(tmp_path):
    sp = plan1(tmp_path, "llama.cpp", 16384)
    assert sp.memory.rope_scaling is None
    assert "--rope-scaling" not in sp.command
    assert not [r for r in sp.reasons if r.startswith("context: ")]


def test_past_the_documented_reach_is_capped_and_said(tmp_path):
    sp = plan1(tmp_path, "llama.cpp", 200000)
    assert sp.memory.context_per_request == 131072
    assert flag(sp.command, "--rope-scale") == "4"
    assert any("capped at 131072" in r and "asked 200000" in r for r in sp.reasons)


def test_a_model_without_documented_scaling_is_still_capped(tmp_path):
    sp = plan1(tmp_path, "llama.cpp", 65536, model="mistral-7b-instruct")
    assert sp.memory.context_per_request == 32768
    assert "--rope-scaling" not in sp.command
    assert any("capped at the model's trained 32768" in r for r in sp.reasons)


def test_vllm_gets_the_rope_override_its_version_takes(tmp_path):
    sp = plan1(tmp_path, "vllm", 65536)
    assert flag(sp.command, "--max-model-len") == "65536"
    over = json.loads(flag(sp.command, "--hf-overrides"))
    assert over == {"max_position_embeddings": 65536,
                    "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32768,
                                        "rope_theta": 1000000.0}}


def test_vllm_without_the_flag_is_capped_and_says_so(tmp_path):
    sp = plan1(tmp_path, "vllm", 65536, model="mistral-7b-instruct")
    assert flag(sp.command, "--max-model-len") == "32768"
    assert "--hf-overrides" not in sp.command
    assert any("capped at the model's trained 32768" in r for r in sp.reasons)


@pytest.mark.parametrize("engine, words", [("ollama", "no RoPE-scaling PARAMETER"), ("mlx", "no RoPE-scaling option")])
def test_engines_that_cannot_scale_are_refused_with_the_reason(tmp_path, engine, words):
    hw = "m3-max-64gb" if engine == "mlx" else "h100-80gb"
    with pytest.raises(PlanError, match=words):
        plan1(tmp_path, engine, 65536, hardware=hw)
    assert plan1(tmp_path, engine, 32768, hardware=hw).memory.context_per_request == 32768


def test_auto_engine_skips_one_that_cannot_scale(tmp_path):
    sp = plan1(tmp_path, "auto", 65536, hardware="rtx-4090")
    assert sp.engine in ("llama.cpp", "vllm") and sp.memory.rope_scaling is not None
    assert "RoPE-scaling" in sp.rejected["ollama"]


def test_pinned_context_past_the_trained_one_gets_yarn(tmp_path):
    sp = plan1(tmp_path, "llama.cpp", 8192, extra=", overrides: {'-c': 98304}")
    assert sp.memory.context_per_request == 98304
    assert flag(sp.command, "--rope-scale") == "3"


def test_config_json_yarn_is_read_from_the_file():
    s = {"architecture": "Qwen2ForCausalLM", "layers": 2, "context_length": 32768,
         "rope_scaling": {"type": "yarn", "factor": 4.0, "original_context": 32768, "rope_theta": 1e6}}
    lc = ModelFacts.from_summary("q", "hf", "/m", s).long_context
    assert lc is not None and lc.in_file and lc.max_context == 131072 and lc.rope_theta == 1e6
    built_in = dict(s, context_length=163840, rope_scaling=dict(s["rope_scaling"], original_context=4096, factor=40.0))
    assert ModelFacts.from_summary("d", "hf", "/m", built_in).long_context is None  # DeepSeek-style: already scaled


def test_hf_config_rope_scaling_and_rope_parameters():
    from stackgen.models.hf import _rope_scaling

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert _rope_scaling({"rope_scaling": yarn, "rope_theta": 1e6})["rope_theta"] == 1e6
    assert _rope_scaling({"rope_parameters": dict(yarn, rope_theta=5e5)})["original_context"] == 32768
    assert _rope_scaling({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) is None


# ---------------------------------------------------------------------------------------------- structured output


def test_vllm_renders_the_structured_output_backend_and_its_cost(tmp_path):
    sp = plan1(tmp_path, "vllm", 8192, extra=", structured_output: {backend: guidance}")
    assert json.loads(flag(sp.command, "--structured-outputs-config")) == {"backend": "guidance"}
    assert any(r.startswith("structured output: ") and "guidance" in r for r in sp.reasons)
    auto = plan1(tmp_path, "vllm", 8192, extra=", structured_output: {}")
    assert "--structured-outputs-config" not in auto.command  # vLLM's own default is auto
    assert any("auto (xgrammar" in r for r in auto.reasons)


def test_llama_server_takes_grammars_per_request(tmp_path):
    sp = plan1(tmp_path, "llama.cpp", 8192, extra=", structured_output: {}")
    assert not [a for a in sp.command if "grammar" in a or "schema" in a]
    assert any(r.startswith("structured output: llama-server constrains each request") for r in sp.reasons)
    with pytest.raises(SpecError, match="xgrammar is a vLLM setting"):  # validate's, since it needs only the stack
        plan1(tmp_path, "llama.cpp", 8192, extra=", structured_output: {backend: xgrammar}")


def test_mlx_is_refused_for_structured_output(tmp_path):
    with pytest.raises(SpecError, match="no JSON-schema or grammar constraint"):  # validate's, as above
        plan1(tmp_path, "mlx", 8192, hardware="m3-max-64gb", extra=", structured_output: {}")


def test_unknown_backend_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="backend"):
        plan1(tmp_path, "vllm", 8192, extra=", structured_output: {backend: regex}")


def test_bench_schema_fields_and_validity():
    schema = {"type": "object"}
    assert schema_fields("llama.cpp", schema) == {"json_schema": schema}
    assert schema_fields("vllm", schema)["response_format"]["json_schema"]["schema"] == schema
    from stackgen.run.bench import BenchError
    with pytest.raises(BenchError):
        schema_fields("ollama", schema)
    ok = RequestResult(ok=True, start=0.0, ttft_s=0.1, token_times=[0.1, 0.2], tokens=2, json_ok=True)
    bad = RequestResult(ok=True, start=0.0, ttft_s=0.1, token_times=[0.1, 0.2], tokens=2, json_ok=False)
    r = summarize([ok, bad], wall_s=1.0, json_schema=True, max_tokens=2)
    assert r.invalid_json == 1 and any("not valid JSON" in f for f in r.findings)
