"""Issue 12: a catalog model with quant awq/gptq/fp8 launches the checkpoint whose bytes the plan counted (the
pre-quantized repo in the catalog's hf_variants), or the bf16 repo quantized on load (fp8, both sizes said), or is
refused with the reason; checked on hand-made stacks and on every golden and example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackgen.cli import load_and_plan
from stackgen.errors import StackgenError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
CATALOG = load_profiles().models
ROOT = Path(__file__).resolve().parents[2]


def vllm_plan(write_stack, model, quant, hardware="a100-80gb", users=2, ctx=4096):
    f = write_stack(f"version: 1\nhardware: {hardware}\nworkload: {{concurrent_users: {users}, context_tokens: {ctx}}}\n"
                    f"services:\n  svc:\n    model: {model}\n    engine: vllm\n    quant: {quant}\n")
    return resolve(load_stack(f), HOST).services[0]


def served(argv):
    argv = list(argv)
    return argv[argv.index("serve") + 1]


def test_awq_launches_the_awq_repo_it_sized(write_stack):
    sp = vllm_plan(write_stack, "qwen2.5-7b-instruct", "awq")
    assert served(sp.command) == "Qwen/Qwen2.5-7B-Instruct-AWQ" == CATALOG["qwen2.5-7b-instruct"].hf_variants["awq"]
    assert sp.memory.weights_bytes == CATALOG["qwen2.5-7b-instruct"].hf_sizes["awq"]
    assert "--quantization" not in sp.command  # vLLM reads quantization_config from the AWQ checkpoint


def test_fp8_with_a_checkpoint_launches_it_without_on_the_fly_quantization(write_stack):
    sp = vllm_plan(write_stack, "llama-3.1-405b-instruct", "fp8", hardware="dgx-h100", users=1)
    assert served(sp.command) == "meta-llama/Llama-3.1-405B-Instruct-FP8"
    assert "--quantization" not in sp.command
    assert sp.memory.weights_bytes == CATALOG["llama-3.1-405b-instruct"].hf_sizes["fp8"]


def test_fp8_without_a_checkpoint_is_the_bf16_repo_quantized_on_load_and_says_both_sizes(write_stack):
    sp = vllm_plan(write_stack, "llama-3.1-8b-instruct", "fp8")
    argv = list(sp.command)
    assert served(argv) == "meta-llama/Llama-3.1-8B-Instruct"
    assert argv[argv.index("--quantization") + 1] == "fp8"
    m = CATALOG["llama-3.1-8b-instruct"]
    assert sp.memory.weights_bytes == m.hf_bytes("fp8")[0] < m.hf_sizes["bf16"]
    said = " ".join(sp.warnings + sp.reasons)
    assert f"{m.hf_sizes['bf16'] / 1e9:.1f} GB on disk" in said and "quantizes it to fp8 as it loads" in said


@pytest.mark.parametrize("quant", ["awq", "gptq"])
def test_awq_or_gptq_without_a_known_checkpoint_is_refused_for_vllm(write_stack, quant):
    with pytest.raises(StackgenError) as info:
        vllm_plan(write_stack, "llama-3.1-8b-instruct", quant)
    text = str(info.value)
    assert f"no {quant} checkpoint of llama-3.1-8b-instruct is known" in text and "hf:ORG/REPO" in text


def _stacks():
    for stack in sorted([*ROOT.glob("tests/golden/*/stack.yaml"), *ROOT.glob("examples/*/stack.yaml")]):
        host = stack.parent / "host.json"
        yield pytest.param(stack, host if host.is_file() else None, id=stack.parent.name)


@pytest.mark.parametrize("stack,host", list(_stacks()))
def test_every_golden_and_example_serves_the_checkpoint_it_sized(stack, host):
    try:
        _, plan = load_and_plan(stack, host, write_lock=False)
    except StackgenError:
        # A stack that names a file only its own setup provisions (the quickstart's GGUF, STACKGEN_GGUF cases) cannot
        # be planned in a fresh clone; none of them may hold a service that could be planned on vLLM from the catalog,
        # else this check would miss it: every service names its engine, and not vLLM.
        services = (yaml.safe_load(stack.read_text()) or {}).get("services") or {}
        engines = {name: (svc or {}).get("engine", "auto") for name, svc in services.items()}
        assert engines and all(e not in ("auto", "vllm") for e in engines.values()), (stack, engines)
        return
    checked = 0
    for sp in plan.services:
        if sp.engine != "vllm" or sp.model.source != "catalog":
            continue
        fmt = sp.memory.weights_format
        ref = served(sp.command)
        assert ref == sp.model.hf_repo_for(fmt), (sp.name, ref, fmt)
        per_instance = sp.memory.weights_bytes // max(1, sp.memory.data_parallel)
        assert per_instance == sp.model.hf_bytes(fmt)[0], (sp.name, fmt)
        if fmt in ("awq", "gptq"):
            assert ref == sp.model.hf_variants[fmt]
        if fmt == "fp8":
            assert ("--quantization" in sp.command) == ("fp8" not in sp.model.hf_variants)
        checked += 1
    if not checked:
        assert all(sp.engine != "vllm" or sp.model.source != "catalog" for sp in plan.services)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_catalog_model_in_fp32_is_planned_at_the_16_bits_its_engine_loads(write_stack, engine):
    """`quant: fp32` of a catalog model counted 4 bytes a parameter (32.12 GB for Llama 3.1 8B), but vLLM and SGLang
    load it with --dtype auto (stackgen passes no --dtype) in 16 bits, as they do an fp32 HF folder
    (test_hfmodel.py::test_a_float32_checkpoint_is_planned_at_the_16_bits_it_loads_in): the plan now counts the
    catalog's bf16 bytes (16.06 GB), says why, and launches no --dtype."""
    f = write_stack("version: 1\nhardware: a100-80gb\nworkload: {concurrent_users: 2, context_tokens: 4096}\n"
                    "serve: {api_key_env: SG_KEY}\n"  # SGLang is served only behind a key
                    f"services:\n  svc:\n    model: llama-3.1-8b-instruct\n    engine: {engine}\n    quant: fp32\n")
    sp = resolve(load_stack(f), HOST).services[0]
    bf16 = CATALOG["llama-3.1-8b-instruct"].hf_sizes["bf16"]
    assert (sp.memory.weights_format, sp.memory.weights_bytes) == ("bf16", bf16) and bf16 == 16060522496
    assert any("float32 weights in 16 bits" in w for w in sp.warnings + sp.memory.levers + sp.reasons), sp.warnings
    assert "--dtype" not in sp.command
