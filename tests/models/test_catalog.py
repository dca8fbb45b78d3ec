"""The built-in catalog (profiles/models.yaml): every name is a short name for a reference (`ref:`), its architecture is
self-consistent, it plans on a machine of its size, `plan` shows the reference, a MoE entry's plan counts all experts
for memory and the active ones for speed, and `stackgen lock --catalog` pins the reference through the resolver."""

from __future__ import annotations

import json

import pytest
from tools.hub_server import Hub, Repo, recorded_repo

from stackgen.models.hub import parse_hf, parse_ollama
from stackgen.models.lock import lock_path_for, read_lock
from stackgen.models.facts import CATALOG_REF
from stackgen.spec.profiles import load_profiles
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

CATALOG = load_profiles().models
# Families whose config.json sets head_dim explicitly, so heads x head_dim need not equal hidden_size.
EXPLICIT_HEAD_DIM = {"gemma2", "gemma3", "qwen3", "qwen3moe", "gpt-oss"}
# Machines from small to large: each entry must plan on one of them with the default engine.
LADDER = ("cpu-server-64gb", "a100-80gb", "dgx-h100")
ADDED = ("qwen3-8b", "qwen3-30b-a3b", "gemma-2-9b-it", "deepseek-r1-distill-qwen-7b", "phi-4", "gpt-oss-20b")


def stack(model: str, hardware: str, extra: str = "") -> str:
    return f"version: 1\nhardware: {hardware}\nservices:\n  chat:\n    model: {model}\n{extra}"


def test_the_catalog_covers_the_families_people_run():
    assert set(ADDED) <= set(CATALOG)
    archs = {f.architecture for f in CATALOG.values()}
    assert {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "gpt-oss"} <= archs


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_names_a_reference_whose_form_parses(name):
    ref = CATALOG[name].ref
    assert ref and CATALOG_REF.fullmatch(ref), name
    if ref.startswith("hf:"):
        repo, revision, tag = parse_hf(ref[3:])
        assert repo.count("/") == 1 and revision == "main"
    elif ref.startswith("ollama:"):
        parse_ollama(ref[7:])


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_is_self_consistent(name):
    f = CATALOG[name]
    assert f.layers > 0 and f.hidden > 0 and f.vocab > 0 and f.context_length > 0
    assert f.heads % f.kv_heads == 0, "kv heads divide the query heads (GQA groups)"
    if f.architecture not in EXPLICIT_HEAD_DIM:
        assert f.heads * f.head_dim_k == f.hidden, "head_dim x heads = hidden_size"
    if f.is_moe:
        assert 0 < f.experts_active < f.experts_total
        assert f.active_params < f.params
    else:
        assert f.experts_active is None and f.active_params <= f.params
    assert 0 <= f.swa_layers < f.layers or (f.swa_layers == 0)
    if f.sliding_window:
        assert f.sliding_window < f.context_length and f.swa_layers > 0
    else:
        assert f.swa_layers == 0
    # the sizes in the catalog are of this model: bf16 is 2 bytes a parameter (to 2 %), GGUF Q4_K_M under bf16
    if "bf16" in f.hf_sizes:
        assert abs(f.hf_sizes["bf16"] / (2 * f.params) - 1) < 0.02, name
    if "Q4_K_M" in f.gguf_sizes and "bf16" in f.hf_sizes:
        assert f.gguf_sizes["Q4_K_M"] < f.hf_sizes["bf16"] / 2


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_plans_on_a_machine_of_its_size(name, write_stack):
    from stackgen.errors import PlanError

    failures = []
    for hw in LADDER:
        f = write_stack(stack(name, hw))
        try:
            plan = resolve(load_stack(f), None)
        except PlanError as exc:
            failures.append(f"{hw}: {exc}")
            continue
        sp = plan.services[0]
        assert sp.memory.fits and sp.memory.weights_bytes > 0 and sp.predicted_decode_tokens_per_s > 0
        assert sp.model.ref == CATALOG[name].ref
        return
    pytest.fail(f"{name} plans on none of {LADDER}: {failures}")


def test_plan_shows_the_reference_the_name_stands_for(write_stack, cli):
    f = write_stack(stack("qwen3-8b", "rtx-4090"))
    res = cli("plan", f)
    assert res.exit_code == 0, res.output
    assert "  model: qwen3-8b = hf:Qwen/Qwen3-8B (catalog figures; `stackgen lock --catalog`" in res.output
    res = cli("plan", f, "--json")
    assert res.exit_code == 0, res.output
    model = json.loads(res.output)["services"][0]["model"]
    assert model["name"] == "qwen3-8b" and model["ref"] == "hf:Qwen/Qwen3-8B" and model["source"] == "catalog"


def test_a_moe_entry_counts_every_expert_for_memory_and_the_active_ones_for_speed(write_stack, tmp_path):
    """Qwen3-30B-A3B against a dense twin with the same bytes (a user profile): same weights in memory, and the MoE
    decodes several times faster because each token reads ~3.3B parameters' bytes, not 30.5B."""
    (tmp_path / "profiles").mkdir()
    moe = CATALOG["qwen3-30b-a3b"]
    (tmp_path / "profiles" / "models.yaml").write_text(
        "dense-twin:\n  description: same bytes, dense\n  architecture: qwen3\n"
        f"  params_b: {moe.params / 1e9}\n  layers: {moe.layers}\n  hidden_size: {moe.hidden}\n"
        f"  intermediate_size: {moe.ffn}\n  heads: {moe.heads}\n  kv_heads: {moe.kv_heads}\n  head_dim: {moe.head_dim_k}\n"
        f"  vocab_size: {moe.vocab}\n  context_length: {moe.context_length}\n"
        f"  gguf: {{Q4_K_M: {moe.gguf_sizes['Q4_K_M']}}}\n")
    plans = {}
    for name in ("qwen3-30b-a3b", "dense-twin"):
        f = write_stack(stack(name, "rtx-4090", "    engine: llama.cpp\n    quant: Q4_K_M\n"), name=f"{name}.yaml")
        plans[name] = resolve(load_stack(f), None).services[0]
    m, d = plans["qwen3-30b-a3b"], plans["dense-twin"]
    assert m.memory.weights_bytes == d.memory.weights_bytes == moe.gguf_sizes["Q4_K_M"]  # all 128 experts resident
    assert m.memory.fits and m.memory.gpu_layers == m.memory.total_layers
    assert m.predicted_decode_tokens_per_s > 3 * d.predicted_decode_tokens_per_s  # 8 of 128 experts read per token


def test_gpt_oss_plans_mxfp4_gguf_and_a_bf16_checkpoint_for_vllm(write_stack):
    f = write_stack(stack("gpt-oss-20b", "rtx-4090", "    engine: llama.cpp\n    quant: MXFP4\n"))
    sp = resolve(load_stack(f), None).services[0]
    assert sp.memory.weights_format == "MXFP4" and sp.memory.weights_bytes == CATALOG["gpt-oss-20b"].gguf_sizes["MXFP4"]
    f = write_stack(stack("gpt-oss-20b", "a100-80gb", "    engine: vllm\n"))
    sp = resolve(load_stack(f), None).services[0]
    # the planner has no mxfp4 HF format: vLLM serves the bf16 upcast whose bytes it counted
    assert sp.memory.weights_format == "bf16" and sp.model_ref == "unsloth/gpt-oss-20b-BF16"
    assert sp.memory.weights_bytes == CATALOG["gpt-oss-20b"].hf_sizes["bf16"]


# ---------------------------------------------------------------------------------------------- lock --catalog


@pytest.fixture
def gemma_hub(monkeypatch):
    from tools.hub_server import HubServer

    hub = Hub(repos={"google/gemma-3-270m": recorded_repo("gemma-3-270m-hf")})
    with HubServer(hub) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        for name in ("HF_HUB_OFFLINE", "STACKGEN_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        yield hub


def test_a_catalog_name_plans_offline_from_its_figures_until_lock_catalog_pins_its_reference(gemma_hub, write_stack,
                                                                                             cli, monkeypatch):
    f = write_stack(stack("gemma-3-270m", "a100-80gb", "    engine: vllm\n"))
    before = resolve(load_stack(f), None).services[0]
    assert before.model.source == "catalog" and before.memory.weights_source == "catalog"
    res = cli("lock", f)
    assert res.exit_code == 0 and "--catalog" in res.output and not lock_path_for(f).exists()
    assert gemma_hub.log == []  # a catalog name never reaches the network by itself

    res = cli("lock", f, "--catalog")
    assert res.exit_code == 0, res.output
    entry = read_lock(lock_path_for(f))[("hf:google/gemma-3-270m", "")]
    assert entry.resolved["repo"] == "google/gemma-3-270m" and entry.resolved["format"] == "bf16"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = len(gemma_hub.log)
    sp = resolve(load_stack(f), None).services[0]
    assert len(gemma_hub.log) == requests  # the lock answers
    assert sp.model.name == "gemma-3-270m" and sp.model.ref == "hf:google/gemma-3-270m"
    assert sp.memory.weights_source == "header" and sp.memory.weights_bytes == entry.resolved["weights_bytes"]
    assert sp.model.revision == entry.resolved["revision"] and sp.model_ref == "google/gemma-3-270m"
    assert sp.model.layers == 18 and sp.model.swa_layers == 15  # the real config.json agrees with the catalog

    monkeypatch.delenv("HF_HUB_OFFLINE")
    before_text = lock_path_for(f).read_text()
    res = cli("lock", f)  # without --catalog the pin stays
    assert res.exit_code == 0 and "unchanged" in res.output and lock_path_for(f).read_text() == before_text
    res = cli("lock", f, "--upgrade")  # upgrade re-pins what the lock pinned
    assert res.exit_code == 0 and lock_path_for(f).read_text() == before_text


def test_lock_catalog_pins_nothing_for_a_format_without_a_checkpoint(gemma_hub, write_stack, cli):
    """awq on a name with no AWQ checkpoint: no reference holds those bytes, so nothing is pinned and the plan's own
    refusal (vLLM would load the bf16 weights) stands."""
    f = write_stack(stack("gemma-3-270m", "a100-80gb", "    quant: awq\n    engine: vllm\n"))
    res = cli("lock", f, "--catalog")
    assert res.exit_code == 0 and not lock_path_for(f).exists() and gemma_hub.log == []
    res = cli("plan", f)
    assert res.exit_code == 1 and "no awq checkpoint of gemma-3-270m is known" in res.output


def test_lock_catalog_refuses_gpt_oss_mxfp4_with_the_reason(write_stack, cli, monkeypatch):
    """openai/gpt-oss-20b is an mxfp4 checkpoint (stand-in: the recorded tiny Llama with gpt-oss's quantization_config):
    the planner has no mxfp4 HF format, so pinning it is refused with the reason, not sized wrongly."""
    from tools.hub_server import HubServer

    repo = recorded_repo("tiny-llama")
    config = json.loads(repo.files["config.json"])
    config["quantization_config"] = {"quant_method": "mxfp4"}
    repo.files["config.json"] = json.dumps(config).encode()
    with HubServer(Hub(repos={"openai/gpt-oss-20b": repo})) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        for name in ("HF_HUB_OFFLINE", "STACKGEN_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        f = write_stack(stack("gpt-oss-20b", "a100-80gb", "    engine: vllm\n"))
        res = cli("lock", f, "--catalog")
    assert res.exit_code == 1, res.output
    assert "gpt-oss-20b (= hf:openai/gpt-oss-20b)" in res.output and "(mxfp4) is not one stackgen plans" in res.output
    assert not lock_path_for(f).exists()


def test_lock_catalog_with_a_gguf_quant_pins_that_file_of_the_names_gguf_repo(write_stack, cli, tmp_path, monkeypatch):
    from test_remote import write_llama_gguf
    from tools.hub_server import HubServer, OnDisk

    from stackgen.models import gguf as sg_gguf

    [p] = write_llama_gguf(tmp_path, "gemma-3-270m-Q4_K_M.gguf", big=64)  # a stand-in file under the catalog's repo
    hub = Hub(repos={"unsloth/gemma-3-270m-GGUF": Repo({p.name: OnDisk(p)}, sha256={p.name: "cd" * 32})})
    with HubServer(hub) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        for name in ("HF_HUB_OFFLINE", "STACKGEN_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        f = write_stack(stack("gemma-3-270m", "cpu-server-64gb", "    quant: Q4_K_M\n    engine: llama.cpp\n"))
        res = cli("lock", f, "--catalog")
        assert res.exit_code == 0, res.output
    entry = read_lock(lock_path_for(f))[("hf:unsloth/gemma-3-270m-GGUF:Q4_K_M", "Q4_K_M")]
    sp = resolve(load_stack(f), None).services[0]
    assert sp.model.name == "gemma-3-270m" and sp.memory.weights_source == "header"
    assert sp.memory.weights_bytes == sg_gguf.read_gguf_header(p).tensor_data_bytes == entry.resolved["weights_bytes"]
    assert f"unsloth/gemma-3-270m-GGUF/resolve/{entry.resolved['revision']}/{p.name}" in " ".join(sp.command)
