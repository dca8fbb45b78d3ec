"""resolve.py's rules besides the table: CPU threads for services sharing a machine, where the weights come from,
which machines vLLM can span, the words a reason is built from, ports, and the quant ladder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stackgen.plan import memory, resolve
from stackgen.host.facts import HostFacts
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, load_stack


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
    row = {r.engine: r for r in resolve.MULTINODE_TABLE}
    assert list(row) == ["vllm", "llama.cpp"]  # vLLM first, llama.cpp RPC the fallback
    same = machine(g())
    assert resolve._multinode_block(row["llama.cpp"], nodes(machine(), same)) == ""
    assert resolve._multinode_block(row["vllm"], nodes(same, machine(g()))) == ""
    assert resolve._multinode_block(row["vllm"], nodes(machine(), machine())) == (
        "needs CUDA/ROCm datacenter GPUs on every node")
    assert resolve._multinode_block(row["vllm"], nodes(machine(g("amd", tier="consumer")), same)) == (
        "needs CUDA/ROCm datacenter GPUs on every node")
    for other in (machine(g(count=4)), machine(g(gib=40)), machine(g(name="A100")), machine(g("amd"))):
        assert resolve._multinode_block(row["vllm"], nodes(same, other)) == (
            "pipeline parallel with TP = GPUs per node needs identical GPUs on every node")
    # identical datacenter NVIDIA nodes vLLM itself cannot run on (Pascal, compute capability 6.1): its own hardware
    # block; llama.cpp RPC has no hardware row and takes them
    p40 = machine(GPUSpec(vendor="nvidia", name="Tesla P40", memory_gib=24, bandwidth_gbs=346, count=4,
                          tier="datacenter", compute_capability="6.1"))
    assert resolve._multinode_block(row["vllm"], nodes(p40, p40)).startswith("needs NVIDIA compute capability 7.5")
    assert resolve._multinode_block(row["llama.cpp"], nodes(p40, p40)) == ""


def test_words():
    one = machine(g(count=1, tier="consumer", name="RTX"))
    assert resolve.gpu_words(one) == "a consumer NVIDIA GPU (RTX)"
    assert resolve.gpu_words(machine(g(), g("amd", "MI300X", count=1))) == (
        "8 datacenter NVIDIA GPUs (H100) + a datacenter AMD GPU (MI300X)")
    assert resolve.gpu_words(machine()) == "a CPU-only machine (8 cores)"
    assert resolve.gpu_words(machine(g(count=2, tier="consumer", name="RTX 3090"))) == (
        "2 consumer NVIDIA GPUs (RTX 3090)")  # two is already plural
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
    svc = exc.value.plan_json["services"][-1]
    assert (svc["name"], svc["engine"], svc["fits"]) == ("s", "vllm", False)
    assert svc["model"] == {"name": "llama-3.1-70b-instruct", "source": "catalog"}
    cands = svc["candidates"]
    assert set(cands) == {"llama.cpp", "ollama", "vllm", "mlx", "sglang"}
    v = cands["vllm"]
    assert set(v) == {"fits", "block", "shortfall", "memory"} and v["fits"] is False
    assert set(v["memory"]) == {"weights_bytes", "kv_cache_bytes", "compute_bytes", "overhead_bytes", "total_bytes",
                                "gpu_bytes", "host_bytes", "gpu_budget_bytes", "host_budget_bytes", "kv_cache_type"}
    m = v["memory"]
    assert m["gpu_bytes"] == 0 and m["kv_cache_type"] == "auto"
    assert m["total_bytes"] == m["weights_bytes"] + m["kv_cache_bytes"] + m["compute_bytes"] + m["overhead_bytes"]
    assert v["shortfall"] and v["block"].startswith(v["shortfall"])
    assert set(cands["mlx"]) == {"fits", "block"} and cands["mlx"]["fits"] is False


def mplan(**kw) -> memory.MemoryPlan:
    base = dict(weights_bytes=0, kv_cache_bytes=0, compute_bytes=0, overhead_bytes=0, gpu_bytes=0, host_bytes=0,
                gpu_layers=20, total_layers=32, context_per_request=4096, parallel=3, kv_cache_type="q8_0",
                fits=True, gpu_budget_bytes=0, host_budget_bytes=0, tensor_parallel=2, gpu_memory_utilization=0.85,
                prompt_cache=memory.PromptCache(limit_bytes=512 * 2**20, checkpoints=2))
    base.update(kw)
    return memory.MemoryPlan(**base)


@pytest.mark.parametrize("knob,text", [
    ("context_total", "12288 tokens of context (3 x 4096)"),
    ("context_per_request", "4096 tokens per request"),
    ("parallel", "3 parallel requests"),
    ("gpu_layers", "20 of 32 layers on GPU"),
    ("kv_cache_type", "a q8_0 KV cache"),
    ("gpu_memory_utilization", "--gpu-memory-utilization 0.85"),
    ("tensor_parallel", "tensor parallel 2"),
    ("threads", "6 threads"),
    ("cache_ram_mib", "--cache-ram 512"),
    ("ctx_checkpoints", "--ctx-checkpoints 2"),
    ("batch", None),
])
def test_knob_text(knob, text):
    """The words a pinned knob's reason uses for what stackgen would have chosen."""
    assert resolve._knob_text(mplan(), knob, 6) == text


def test_knob_text_of_what_is_not_planned():
    assert resolve._knob_text(None, "parallel", 1) is None
    none = mplan(gpu_memory_utilization=None, prompt_cache=memory.PromptCache())
    assert resolve._knob_text(none, "gpu_memory_utilization", 1) is None
    assert resolve._knob_text(none, "ctx_checkpoints", 1) is None


def ranked(name, chosen, users, optimize, gpus=True):
    hw = machine(g(count=1, tier="consumer", name="RTX")) if gpus else machine()
    svc = SimpleNamespace(workload=SimpleNamespace(concurrent_users=users, optimize=optimize))
    row = resolve.pick_row(resolve.hardware_class(hw), users, optimize)
    return resolve._ranked_below(name, chosen, row, svc, hw), row.text(hw, users)


def test_ranked_below_texts():
    """Why an engine that could serve lost, from the users and the goal."""
    t, _ = ranked("ollama", "vllm", 4, "setup")
    assert t == ("ranked below vLLM for this workload: 4 concurrent users: Ollama's daemon picks GPU layers and "
                 "context itself and serves few parallel requests per model; a team API outgrows it; its easier "
                 "setup does not outweigh that")
    t, _ = ranked("ollama", "llama.cpp", 1, "latency", gpus=False)
    assert t == ("ranked below llama.cpp (llama-server) for this workload: Ollama adds a daemon that picks threads "
                 "and context itself; its strength is setup time, and this workload optimizes latency")
    t, row_text = ranked("ollama", "llama.cpp", 1, "setup")
    assert t == f"ranked below llama.cpp (llama-server) for this workload: {row_text}"
    assert ranked("llama.cpp", "mlx", 1, "latency")[0].endswith(
        "llama.cpp runs on Metal too, but MLX is the native path through unified memory for a dev loop")
    assert ranked("llama.cpp", "ollama", 1, "setup")[0].endswith(
        "llama.cpp needs every flag set by hand; this workload optimizes setup")
    t, row_text = ranked("llama.cpp", "ollama", 1, "latency")
    assert t.endswith(row_text)
    assert ranked("vllm", "ollama", 1, "setup")[0].endswith(
        "vLLM is a large Python install with the slowest start-up; this workload optimizes setup")
    assert ranked("vllm", "llama.cpp", 1, "latency")[0].endswith("that one user does not win back")
    t, row_text = ranked("vllm", "llama.cpp", 3, "latency")
    assert t.endswith(row_text)
    assert ranked("mlx", "llama.cpp", 1, "latency")[0].endswith(
        "mlx_lm.server is a development server without slots, metrics or API keys")
    assert ranked("llama.cpp", "vllm", 5, "throughput")[0].endswith(
        "5 concurrent users: llama-server's slots share one batch, but vLLM's paged KV cache and scheduler scale "
        "further")
