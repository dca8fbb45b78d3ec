"""resolve.py's rules besides the table: CPU threads for services sharing a machine, where the weights come from,
which machines vLLM can span, the words a reason is built from, ports, and the quant ladder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stackgen import memory, resolve
from stackgen.hardware import HostFacts
from stackgen.spec import CPUSpec, GPUSpec, HardwareSpec, load_stack


def sp(gpu_layers: int, total: int = 32, gpu_budget: int = 1):
    m = SimpleNamespace(gpu_layers=gpu_layers, total_layers=total, gpu_budget_bytes=gpu_budget)
    return SimpleNamespace(memory=m, gpus=())


@pytest.mark.parametrize("layers,cores,expect", [
    ([32], 16, [16]),
    ([32], 0, [1]),
    ([32, 32], 16, [8, 8]),  # all on the GPU: an even split
    ([32, 32, 32], 16, [6, 5, 5]),  # the remainder to the earlier ones
    ([32, 10], 16, [1, 15]),  # the GPU-resident one needs one thread, the CPU one gets the rest
    ([10, 32, 0], 16, [8, 1, 7]),
    ([10, 10, 10], 2, [1, 1, 1]),  # more services than cores: one each
    ([32, 10, 10], 2, [1, 1, 1]),
])
def test_split_threads(layers, cores, expect):
    assert resolve.split_threads([sp(n) for n in layers], cores) == expect


def test_gpu_resident_needs_a_gpu_budget_and_every_layer():
    assert resolve._gpu_resident(sp(32)) and not resolve._gpu_resident(sp(31))
    assert not resolve._gpu_resident(sp(32, gpu_budget=0))
    assert resolve._layers_words(sp(32)) == "every layer on the GPU"
    assert resolve._layers_words(sp(0)) == "all 32 layers on the CPU"
    assert resolve._layers_words(sp(20)) == "20 of 32 layers on the GPU, 12 on the CPU"
    assert resolve._layers_words(sp(32, gpu_budget=0)) == "on the CPU"


def test_spills():
    def cand(layers, budget=1):
        return resolve.Candidate("llama.cpp", memory.MemoryPlan(
            weights_bytes=0, kv_cache_bytes=0, compute_bytes=0, overhead_bytes=0, gpu_bytes=0, host_bytes=0,
            gpu_layers=layers, total_layers=32, context_per_request=1, parallel=1, kv_cache_type="f16", fits=True,
            gpu_budget_bytes=budget, host_budget_bytes=0), "")
    assert resolve._spills(cand(31)) and not resolve._spills(cand(32)) and not resolve._spills(cand(0, budget=0))
    assert not resolve._spills(resolve.Candidate("vllm", None, "x"))


def test_free_port_skips_used_ones():
    assert resolve._free_port(8080, set()) == 8080
    assert resolve._free_port(8080, {8080, 8081, 8083}) == 8082


def machine(*gpus: GPUSpec) -> HardwareSpec:
    return HardwareSpec(gpus=gpus, memory_gib=64, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))


def g(vendor="nvidia", name="H100", gib=80.0, count=8, tier="datacenter") -> GPUSpec:
    return GPUSpec(vendor=vendor, name=name, memory_gib=gib, bandwidth_gbs=3000, count=count, tier=tier)


def nodes(*hws):
    return tuple(SimpleNamespace(hardware=h) for h in hws)


def test_multinode_block():
    same = machine(g())
    assert resolve._multinode_block("llama.cpp", nodes(machine(), same)) == ""
    assert resolve._multinode_block("vllm", nodes(same, machine(g()))) == ""
    assert resolve._multinode_block("vllm", nodes(machine(), machine())) == (
        "needs CUDA/ROCm datacenter GPUs on every node")
    assert resolve._multinode_block("vllm", nodes(machine(g("amd", tier="consumer")), same)) == (
        "needs CUDA/ROCm datacenter GPUs on every node")
    for other in (machine(g(count=4)), machine(g(gib=40)), machine(g(name="A100")), machine(g("amd"))):
        assert resolve._multinode_block("vllm", nodes(same, other)) == (
            "pipeline parallel with TP = GPUs per node needs identical GPUs on every node")


def test_words():
    one = machine(g(count=1, tier="consumer", name="RTX"))
    assert resolve.gpu_words(one) == "a consumer NVIDIA GPU (RTX)"
    assert resolve.gpu_words(machine(g(), g("amd", "MI300X", count=1))) == (
        "8 datacenter NVIDIA GPUs (H100) + a datacenter AMD GPU (MI300X)")
    assert resolve.gpu_words(machine()) == "a CPU-only machine (8 cores)"
    assert resolve.users_words(1) == "one user" and resolve.users_words(3) == "3 concurrent users"
    assert resolve.backend_words(machine()) == "CPU backend"
    assert resolve.backend_words(machine(g(), g("amd"), g("intel"))) == "ROCm/Vulkan/SYCL/Vulkan/CUDA backends"
    mac = HardwareSpec(gpus=(GPUSpec(vendor="apple", name="Apple M4", memory_gib=16, bandwidth_gbs=120,
                                     unified=True),), memory_gib=16, memory_bandwidth_gbs=120, cpu=CPUSpec(cores=10))
    assert resolve.backend_words(mac) == "Metal backend"
    assert resolve.gpu_words(mac) == "Apple M4 (Apple silicon, unified memory)"


@pytest.mark.parametrize("fmt,expect", [
    ("Q4_K_M", ["Q3_K_M", "Q2_K"]), ("F32", ["BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]),
    ("fp16", ["fp8", "awq"]), ("8bit", ["6bit", "4bit", "3bit"]), ("nonsense", [])])
def test_smaller_quants(fmt, expect):
    assert resolve.smaller_quants(fmt) == expect


def plan(write_stack, body: str):
    return resolve.resolve(load_stack(write_stack("version: 1\n" + body)), HostFacts(hardware=None))  # type: ignore


def test_model_refs_per_engine(write_stack):
    """Where each engine finds the weights run natively: llama.cpp -hf repo, Ollama its tag, MLX the
    mlx-community repo renamed to the planned quant, vLLM the HF repo."""
    p = plan(write_stack, "hardware: m3-max-64gb\nworkload: dev-loop\nservices:\n"
             "  a: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n"
             "  b: {model: llama-3.1-8b-instruct, engine: ollama}\n"
             "  c: {model: llama-3.1-8b-instruct, engine: mlx, quant: 8bit}\n"
             "  d: {model: llama-3.1-8b-instruct, engine: mlx}\n")
    a, b, c, d = p.services
    m = a.model
    assert a.model_ref == f"hf:{m.gguf_repo}"
    assert b.model_ref == m.ollama
    assert m.mlx_repo.endswith("-4bit")
    assert c.model_ref == m.mlx_repo[: -len("4bit")] + "8bit"
    assert d.model_ref == m.mlx_repo
    assert [s.port for s in p.services] == [8080, 11434, 8081, 8082]


def test_services_fill_the_gpu_in_file_order_and_threads_follow(write_stack):
    """Two llama.cpp services on one 24 GB GPU: the second gets what the first left; the reasons say so and the
    CPU threads are split (the GPU-resident one gets 1)."""
    p = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
             "  a: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q8_0}\n"
             "  b: {model: qwen2.5-32b-instruct, engine: llama.cpp}\n")
    a, b = p.services
    assert a.memory.gpu_layers == a.memory.total_layers
    assert b.memory.gpu_budget_bytes == a.memory.gpu_budget_bytes - a.memory.gpu_bytes
    assert b.memory.gpu_layers < b.memory.total_layers
    assert (a.threads, b.threads) == (1, p.hardware.cpu.cores - 1)
    assert any("list b first under services:" in w for w in b.warnings)
    assert not a.warnings or not any("list a first" in w for w in a.warnings)


def test_smaller_quants_for_quants_off_the_ladder():
    """IQ4_XS (4.46 bits) is no rung of the GGUF ladder but is a GGUF quant: the rungs below it are offered;
    gptq is an HF format off the HF ladder: nothing is offered."""
    assert resolve.smaller_quants("IQ4_XS") == ["Q3_K_M", "Q2_K"]
    assert resolve.smaller_quants("gptq") == []


def test_plan_json_of_an_unfit_service_plans_the_pinned_engine_as_pinned(write_stack):
    """engine: vllm on a CPU-only laptop is allowed (vLLM's CPU backend, asked for by name) and planned, so its
    entry in `plan --json` carries memory figures; unpinned, vLLM is blocked there with no figures."""
    from stackgen.errors import PlanError

    body = ("hardware: cpu-laptop-16gb\nworkload: dev-loop\nservices:\n"
            "  s: {model: llama-3.1-70b-instruct, quant: bf16, engine: vllm}\n")
    with pytest.raises(PlanError) as exc:
        plan(write_stack, body)
    cands = exc.value.plan_json["services"][-1]["candidates"]
    assert "memory" in cands["vllm"] and cands["vllm"]["memory"]["gpu_bytes"] == 0
    assert "memory" not in cands["mlx"]
    assert cands["vllm"]["block"].startswith("needs ")
