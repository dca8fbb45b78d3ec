"""Worked examples: plans over several machines (docs/multinode.md), every figure derived by hand.

- vLLM: tensor parallel over the GPUs of a node, pipeline parallel across nodes (vLLM
  docs/serving/parallelism_scaling.md); PP is the smallest stage count whose per-rank share of the weights, the
  non-KV overhead (datacenter 1.79 GiB + 1.79 GiB NCCL at TP > 1 + 0.5 GiB graphs + activations) and one request's
  KV cache (its stage's layers) fits utilization 0.90 x the runtime total of a GPU.
- llama.cpp RPC: every layer on some device; llama.cpp spreads layers by free memory, so the plan splits them in
  proportion to each node's capacity (GPU memory less the 1024 MiB --fit margin per GPU; RAM x 0.85 less 80 MiB on
  a CPU-only node), largest remainder first.
"""

from __future__ import annotations

import pytest

from stackgen.plan import memory, resolve
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec, load_stack

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]


def node(gpus: int = 2, gib: float = 80, runtime: float | None = 79.22, ram: float = 512) -> HardwareSpec:
    g = (GPUSpec(vendor="nvidia", name="H100 80GB HBM3", memory_gib=gib, runtime_memory_gib=runtime,
                 bandwidth_gbs=3350, count=gpus, tier="datacenter"),) if gpus else ()
    return HardwareSpec(gpus=g, memory_gib=ram, memory_bandwidth_gbs=200, cpu=CPUSpec(cores=32))


RESERVE = int(int(79.22 * GIB) * 0.9)
OVERHEAD = int((1.79 + 1.79 + 0.5) * GIB + int(8192 * 5.95 * (4096 + 14336) + 1 * 128256 * 4 * 1.42))
KV_TP2 = 32 * 8192 * 4 * 256 * 2  # one 8192-token request per rank at TP 2 (4 of the 8 KV heads): 512 MiB


def mn(weights: int, n_nodes: int, users: int = 1):
    return memory.plan_vllm_multinode(M8, WorkloadSpec(concurrent_users=users, context_tokens=8192), node(),
                                      n_nodes, weights, "bf16", "test")


def test_vllm_three_stages_when_two_cannot_hold_the_weights():
    """Nodes of 2 x H100 (TP 2), 300 GiB of weights, 1 user: at PP 2 a rank holds 75 GiB, more than the
    71.3 GiB reserve; at PP 3, 50 GiB + 4.9 GiB overhead + 512/3 MiB of KV fits. Layers 32 over 3 stages: 11+11+10."""
    w = 300 * GIB
    assert RESERVE - w // 4 - OVERHEAD < KV_TP2 // 2 // 2  # not even fp8 at PP 2
    p = mn(w, 3)
    ranks = 2 * 3
    assert p.fits and (p.tensor_parallel, p.pipeline_parallel, p.nodes, p.node_layers) == (2, 3, 3, (11, 11, 10))
    assert (p.weights_bytes, p.kv_cache_bytes, p.overhead_bytes, p.gpu_bytes) == (
        w, KV_TP2 // 3 * ranks, OVERHEAD * ranks, RESERVE * ranks)
    assert p.host_bytes == int((2.5 + 2 * 2) * GIB)
    assert (p.kv_cache_type, p.gpu_memory_utilization, p.context_per_request, p.parallel) == ("auto", 0.9, 8192, 1)
    assert (p.compute_bytes, p.total_layers, p.gpu_layers, p.weights_format, p.weights_source) == (
        0, 32, 32, "bf16", "test")
    assert (p.gpu_budget_bytes, p.host_budget_bytes) == (2 * 80 * GIB * 3, int(512 * GIB * 0.85))
    assert p.levers[0] == ("tensor parallel over the 2 GPUs of each node and pipeline parallel over 3 nodes "
                           "(11 + 11 + 10 layers) to hold the weights")


def test_vllm_more_stages_than_nodes_is_refused():
    """The same 300 GiB on 2 nodes: PP would have to be 3, and there are 2 nodes. The refused plan is the first
    candidate tried (PP 2, the bf16 cache): a later one that does not fit either does not replace it."""
    p = mn(300 * GIB, 2)
    assert p.fits is False and p.pipeline_parallel == 2 and p.kv_cache_type == "auto"
    assert "2 nodes of" in p.shortfall and gb_words(RESERVE * 2 * 2) in p.shortfall


def gb_words(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


@pytest.mark.parametrize("extra,kv", [(0, "auto"), (1, "auto"), (4, "fp8")])
def test_vllm_stage_limit_one_rank_byte_either_side(extra, kv):
    """Weights set so that a rank at PP 2 has exactly one bf16 request of KV room (512 MiB / 2 stages): bf16;
    1 byte more leaves a rank's whole-byte share (weights // 4) the same: still bf16; 4 bytes more of weights
    (1 per rank) and only fp8 (half the KV) fits at PP 2."""
    w = (RESERVE - OVERHEAD - KV_TP2 // 2) * 4 + extra
    p = mn(w, 2)
    assert p.fits and p.pipeline_parallel == 2 and p.kv_cache_type == kv
    assert p.kv_cache_bytes == (KV_TP2 // 2 if kv == "auto" else KV_TP2 // 2 // 2) * 4


def test_llamacpp_rpc_splits_layers_in_proportion_to_memory():
    """Three nodes: one 24 GiB GPU (23 GiB after the 1024 MiB margin), one 12 GiB GPU (11 GiB), a CPU-only node with
    64 GiB RAM (int(64 GiB x 0.85) - 80 MiB = 54.32 GiB). 32 layers x capacity / 88.32 GiB = 8.33, 3.99, 19.68:
    floors 8 + 3 + 19 = 30, the two largest remainders (3.99, 19.68) get one more: 8 + 4 + 20.
    Need: 40 GiB weights + 1 GiB KV (1 slot x 8192, f16) + one compute buffer per node; the GPUs hold 34 GiB of it,
    the rest goes to RAM beside the 80 MiB host overhead."""
    def gpu_node(gib):
        return HardwareSpec(gpus=(GPUSpec(vendor="nvidia", name="G", memory_gib=gib, bandwidth_gbs=900),),
                            memory_gib=64, memory_bandwidth_gbs=80, cpu=CPUSpec(cores=8))
    nodes = (gpu_node(24), gpu_node(12), node(gpus=0, ram=64))
    w = 40 * GIB
    p = memory.plan_llamacpp_rpc(M8, WorkloadSpec(concurrent_users=1, context_tokens=8192), nodes, w, "Q4_K_M", "t")
    caps = [23 * GIB, 11 * GIB, int(64 * GIB * 0.85) - 80 * MIB]
    compute = 512 * 4 * (4 * 4096 + 2 * 14336) + 128256 * 4
    need = w + GIB + 3 * compute
    assert p.fits and p.node_layers == (8, 4, 20) and p.nodes == 3
    assert (p.weights_bytes, p.kv_cache_bytes, p.compute_bytes) == (w, GIB, 3 * compute)
    assert p.overhead_bytes == 2 * 1024 * MIB + 80 * MIB
    assert p.gpu_bytes == 34 * GIB and p.gpu_budget_bytes == 34 * GIB
    assert p.host_budget_bytes == sum(caps) - 34 * GIB
    host = 80 * MIB + need - 34 * GIB
    head_room = int((int(64 * GIB * 0.85) - host) * 0.5)
    limit = min(8192 * MIB, 2 * GIB, head_room) // MIB * MIB
    assert p.host_bytes == host + limit
    assert (p.gpu_layers, p.context_per_request, p.kv_cache_type) == (32, 8192, "f16")


@pytest.mark.parametrize("extra,kv", [(0, "f16"), (1, "q8_0")])
def test_llamacpp_rpc_capacity_one_byte_either_side(extra, kv):
    """Two CPU-only nodes: the f16 plan needs exactly their capacity (set through the weights): f16; one byte more
    and the KV cache is quantized to q8_0."""
    nodes = (node(gpus=0, ram=64), node(gpus=0, ram=64))
    cap = 2 * (int(64 * GIB * 0.85) - 80 * MIB)
    compute = 512 * 4 * (4 * 4096 + 2 * 14336) + 128256 * 4
    w = cap - GIB - 2 * compute + extra
    p = memory.plan_llamacpp_rpc(M8, WorkloadSpec(concurrent_users=1, context_tokens=8192), nodes, w, "Q4_K_M", "t")
    assert p.fits and p.kv_cache_type == kv and p.node_layers == (16, 16)


TWO_DGX = ("version: 1\nname: mn\nhardware:\n  nodes:\n    - hardware: dgx-h100\n      count: 2\n"
           "      addresses: [10.0.0.1, 10.0.0.2]\nworkload: team-api\nservices:\n  chat:\n"
           "    model: llama-3.1-405b-instruct\n    quant: bf16\n")


def plan_stack(write_stack, extra=""):
    host = HostFacts(hardware=None)  # type: ignore[arg-type]
    return resolve.resolve(load_stack(write_stack(TWO_DGX + extra)), host).services[0]


def test_multinode_unpinned_is_vllm_over_ray(write_stack):
    sp = plan_stack(write_stack)
    assert sp.engine == "vllm" and sp.topology.kind == "vllm-ray"
    assert sp.speed is None  # the one-machine speed forecast does not model pipeline stages over the network
    assert (sp.memory.tensor_parallel, sp.memory.pipeline_parallel) == (8, 2)


def test_a_pinned_llamacpp_stays_llamacpp_rpc_on_a_cluster_vllm_could_serve(write_stack):
    """engine: llama.cpp on two DGX nodes: 405B bf16 (810 GB) spills on one node, so it is split, and with the
    engine pinned the split is llama.cpp RPC even though vLLM + Ray would fit."""
    sp = plan_stack(write_stack, "    engine: llama.cpp\n")
    assert sp.engine == "llama.cpp" and sp.topology.kind == "llama-rpc"
    assert sp.rejected["vllm"] == "not chosen: the stack pins the engine"


@pytest.mark.parametrize("engine", ["ollama", "mlx"])
def test_a_pinned_engine_that_cannot_split_is_refused_with_the_reason(write_stack, engine):
    with pytest.raises(PlanError) as exc:
        plan_stack(write_stack, f"    engine: {engine}\n")
    text = str(exc.value)
    assert "nor split over the 2 nodes" in text
    assert "cannot split one model over several machines (only vLLM and llama.cpp RPC can)" in text


def test_vllm_stages_with_several_users_take_fp8_to_hold_them_all():
    """4 users at PP 2: the weights leave room for 2 bf16 requests per rank (512 MiB / 2 stages = 256 MiB each):
    bf16 fits some, not all; fp8 (128 MiB each) holds all 4: the plan takes fp8 and says so. With room for 1.5 fp8
    requests only, fp8 is kept and the plan says vLLM queues the rest; with room for 4 bf16 requests, bf16."""
    half = KV_TP2 // 2
    oh4 = int((1.79 + 1.79 + 0.5) * GIB + int(8192 * 5.95 * (4096 + 14336) + 4 * 128256 * 4 * 1.42))
    w = (RESERVE - oh4 - 2 * half) * 4
    p = mn(w, 2, users=4)
    assert p.fits and p.kv_cache_type == "fp8" and p.kv_cache_bytes == (half // 2) * 4 * 4
    assert p.levers[1] == "KV cache in fp8 to hold every user's context"
    assert not any("queue" in lever for lever in p.levers)
    tight = mn((RESERVE - oh4 - half // 2 - half // 4) * 4, 2, users=4)
    assert tight.fits and tight.kv_cache_type == "fp8"
    assert tight.levers[1:3] == ("KV cache in fp8 to hold every user's context",
                                 "not every user fits at full context at once: vLLM will queue or preempt the rest")
    roomy = mn((RESERVE - oh4 - 4 * half) * 4, 2, users=4)
    assert roomy.kv_cache_type == "auto" and not any("fp8" in lever or "queue" in lever for lever in roomy.levers)


def test_vllm_ray_topology_names_each_node_whole(write_stack):
    """Llama 3.1 405B (126 layers, config.json num_hidden_layers) in bf16 over two DGX H100 at PP 2: each stage holds
    126 / 2 = 63 layers; the first listed node is the Ray head, the second a worker; each names its address, its
    hardware profile, its 8 GPUs and their vendor (device access of its units)."""
    sp = plan_stack(write_stack)
    assert sp.memory.total_layers == 126 and sp.memory.pipeline_parallel == 2
    assert sp.topology.nodes == (
        resolve.NodeRole(index=0, address="10.0.0.1", role="head", layers=63, label="dgx-h100", gpus=8, vendors=("nvidia",)),
        resolve.NodeRole(index=1, address="10.0.0.2", role="worker", layers=63, label="dgx-h100", gpus=8, vendors=("nvidia",)))


def test_vllm_ray_reason_and_rejections_whole(write_stack):
    """Why the service is split, and why each other engine is not the one: the one-node blocks of the engines that
    can split (llama.cpp would only spill to RAM; vLLM's own one-node shortfall, 405B bf16 = the catalog's bytes),
    then vLLM's split (TP 8 in a node, PP 2 over the nodes); llama.cpp's row says why RPC ranks below; the engines
    without a multi-node mode name the two that have one."""
    sp = plan_stack(write_stack)
    w = load_profiles().models["llama-3.1-405b-instruct"].hf_bytes("bf16")[0]
    # vLLM's one-node shortfall per GPU, at the tensor-parallel size that misses by the least (TP 8: an eighth of
    # the catalog's 405B bf16 bytes on each GPU)
    assert sp.reasons[0].startswith(
        "multi-node: llama-3.1-405b-instruct does not fit one node (8x H100 80GB HBM3) (llama.cpp (llama-server): "
        f"only by spilling layers to system RAM; vLLM: needs 109.5 GB of GPU memory on each of 8 GPUs: {w / 8 / 1e9:.1f} GB of "
        "weights (bf16), 7.8 GB runtime overhead and 0.3 GB of KV cache (fp8) for one 8192-token request; "
        "--gpu-memory-utilization 0.9 of the 85.1 GB CUDA reports reserves 76.6 GB per GPU); ")
    assert sp.reasons[0].endswith(
        "per GPU); vLLM splits it with tensor parallel 8 inside each node "
        "(GPUs on NVLink) and pipeline parallel 2 across nodes, Ray as the distributed executor; every node has the "
        "same 8 CUDA GPUs")
    only = "cannot split one model over several machines (only vLLM and llama.cpp RPC can)"
    assert sp.rejected == {
        "llama.cpp": "llama.cpp RPC could split it too, but vLLM batches concurrent users and keeps tensor parallel "
                     "on NVLink inside each node",
        "ollama": only, "mlx": only, "sglang": only}


def test_a_pinned_engine_that_fits_one_node_of_a_cluster_is_planned_on_that_node(write_stack):
    """engine: vllm with Llama 3.1 8B on two DGX nodes: it fits the first node (no spill), so no split: the plan is
    the one-machine plan (no topology, TP over that node's GPUs only), and the other engines lose to the pin."""
    sp = resolve.resolve(load_stack(write_stack(TWO_DGX.replace("llama-3.1-405b-instruct", "llama-3.1-8b-instruct")
                                                + "    engine: vllm\n")), HostFacts(hardware=None)).services[0]
    assert sp.model.name == "llama-3.1-8b-instruct"
    assert sp.engine == "vllm" and sp.topology is None and sp.memory.pipeline_parallel == 1
    assert sp.reasons[0] == "engine: vllm is set in the stack file"


def test_a_single_node_list_is_planned_as_one_machine(write_stack):
    """`nodes:` with one node is not a cluster: a pinned engine that does not fit it is refused like on one machine
    (its shortfall), not as a failed split over "1 nodes"."""
    body = ("version: 1\nhardware:\n  nodes:\n    - hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
            "  chat:\n    model: llama-3.1-70b-instruct\n    engine: vllm\n")
    with pytest.raises(PlanError) as exc:
        resolve.resolve(load_stack(write_stack(body)), HostFacts(hardware=None))
    text = str(exc.value)
    assert ": services.chat: engine vllm cannot serve llama-3.1-70b-instruct: needs " in text
    assert "of GPU memory: 141.1 GB of weights (bf16)" in text
    assert "split over" not in text


def refusal_lines(write_stack, extra: str) -> list[str]:
    with pytest.raises(PlanError) as exc:
        plan_stack(write_stack, extra)
    return str(exc.value).split("\n")


def test_a_pinned_engine_that_cannot_split_says_what_rules_it_out_on_one_node(write_stack):
    """The refusal, line by line: the head, then one line per engine tried. MLX's line adds its one-node block
    (Apple silicon); Ollama has none (it would run the 405B on one node only by spilling), so its line ends there."""
    head = ("services.chat: llama-3.1-405b-instruct does not fit one node (8x H100 80GB HBM3), nor split over the 2 "
            "nodes:")
    cannot = "cannot split one model over several machines (only vLLM and llama.cpp RPC can)"
    mlx = refusal_lines(write_stack, "    engine: mlx\n")
    assert mlx[0].endswith(": " + head) and mlx[1:] == [
        f"  - MLX (mlx_lm.server): {cannot}; on one node: needs Apple silicon (this machine has 8x H100 80GB HBM3)"]
    ollama = refusal_lines(write_stack, "    engine: ollama\n")
    assert ollama[0].endswith(": " + head) and ollama[1:] == [f"  - Ollama: {cannot}"]


def test_too_big_for_both_splits_names_each_shortfall(write_stack):
    """405B in fp32 on two one-H200 nodes: vLLM loads float32 in 16 bits (811.7 GB of bf16 weights) and its stages
    hold 2 x 140.40 GiB x 0.9 = 270.5 GB; llama.cpp's GGUF F32 is 1641.4 GB with the KV cache, its RPC split 299.4 GB.
    Both are tried, vLLM first (MULTINODE_TABLE), each with its own shortfall. (On two DGX H100 nodes the test read
    vLLM's need as 4 bytes a weight, 1623.4 GB; vLLM now fits there, below.)"""
    with pytest.raises(PlanError) as exc:
        resolve.resolve(load_stack(write_stack(TWO_DGX.replace("quant: bf16", "quant: fp32")
                                               .replace("dgx-h100", "h200"))), HostFacts(hardware=None))
    lines = str(exc.value).split("\n")
    assert lines[1:] == [
        "  - vLLM: needs 811.7 GB of weights (bf16) plus KV cache; 2 nodes of NVIDIA H200 hold 270.5 GB at "
        "--gpu-memory-utilization 0.9",
        "  - llama.cpp (llama-server): needs 1641.4 GB (weights + KV cache) but the 2 nodes hold 299.4 GB: 1342.0 GB "
        "short"]
    sp = resolve.resolve(load_stack(write_stack(TWO_DGX.replace("quant: bf16", "quant: fp32"))),
                         HostFacts(hardware=None)).services[0]
    assert (sp.engine, sp.memory.weights_format, round(sp.memory.weights_bytes / 1e9, 1)) == ("vllm", "bf16", 811.7)


def test_a_split_of_bf16_has_no_weights_note(write_stack):
    """llama.cpp pinned with quant: bf16 over two nodes: GGUF's BF16 is that type, so there is no weights note (it said
    "bf16 is not a GGUF type; llama.cpp would load the nearest GGUF, BF16"); a real mapping keeps its note
    (tests/plan/test_resolve_candidates.py, awq -> Q4_K_M)."""
    sp = plan_stack(write_stack, "    engine: llama.cpp\n")
    assert sp.topology.kind == "llama-rpc" and sp.memory.weights_format == "BF16"
    assert sp.warnings == ()


def test_a_split_service_and_a_local_one_do_not_share_a_memory_line(write_stack):
    """405B split over the two DGX nodes and Llama 3.1 8B after it, which fits the head node: only one service is
    local, so there is no "N services share the ... GPU memory" line (that needs two local services); the CPU threads
    are still divided between the two."""
    text = TWO_DGX + "  small:\n    model: llama-3.1-8b-instruct\n"
    big, small = resolve.resolve(load_stack(write_stack(text)), HostFacts(hardware=None)).services
    assert big.topology is not None and small.topology is None
    assert not any(" services share the " in r for r in big.reasons + small.reasons)
    assert any(r.startswith("CPU threads: 2 services share 112 cores: ") for r in small.reasons)


def cluster_hf(write_stack, folder, context: int = 8192) -> list[str]:
    body = (f"version: 1\nhardware:\n  nodes:\n    - hardware: dgx-h100\n      count: 2\nworkload: {{concurrent_users: 1, "
            f"context_tokens: {context}, prompt_tokens: 1000, output_tokens: 200}}\nservices:\n  chat:\n"
            f"    model: {folder}\n")
    with pytest.raises(PlanError) as exc:
        resolve.resolve(load_stack(write_stack(body)), HostFacts(hardware=None))
    return str(exc.value).split("\n")[1:]


def test_an_hf_folder_too_big_for_vllm_across_nodes_is_not_llamacpps_either(write_stack, tmp_path):
    """A 700e9-parameter bf16 HF folder (1400 GB) on two DGX H100 nodes: more than vLLM's 1224.9 GB across both;
    llama.cpp RPC, next, cannot load an HF folder at all: each line says its own reason."""
    from test_resolve_hint import big_hf_folder

    lines = cluster_hf(write_stack, big_hf_folder(tmp_path / "hf", 700 * 10**9))
    assert lines[0].startswith("  - vLLM: needs 1400.0 GB of weights (bf16) plus KV cache; 2 nodes of 8x H100 80GB "
                               "HBM3 hold 1224.9 GB")
    assert lines[1:] == ["  - llama.cpp (llama-server): loads GGUF files and this is an HF safetensors folder (convert "
                         "it with llama.cpp's convert_hf_to_gguf.py)"]


def test_vllm_across_nodes_needs_the_rope_theta_for_yarn(write_stack, tmp_path):
    """A 405e9-parameter bf16 HF folder (810 GB: more than one DGX node, within two) trained to 8192 tokens with YaRN
    factor 4 in its config.json but no rope_theta: 16384 tokens need the YaRN, and vLLM's RoPE override must restate
    rope_theta, so vLLM cannot split it; llama.cpp cannot load it."""
    from test_resolve_hint import big_hf_folder

    folder = big_hf_folder(tmp_path / "hf", 405 * 10**9, max_position_embeddings=8192, rope_theta=None,
                           rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192})
    assert cluster_hf(write_stack, folder, context=16384) == [
        "  - vLLM: its RoPE override (--hf-overrides rope_parameters) replaces the model's whole rope settings and the "
        "model's rope_theta is unknown",
        "  - llama.cpp (llama-server): loads GGUF files and this is an HF safetensors folder (convert it with "
        "llama.cpp's convert_hf_to_gguf.py)"]
    # with rope_theta in the file, vLLM splits it, YaRN and all
    ok = big_hf_folder(tmp_path / "ok", 405 * 10**9, max_position_embeddings=8192,
                       rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192})
    body = ("version: 1\nhardware:\n  nodes:\n    - hardware: dgx-h100\n      count: 2\nworkload: {concurrent_users: 1, "
            f"context_tokens: 16384, prompt_tokens: 1000, output_tokens: 200}}\nservices:\n  chat:\n    model: {ok}\n")
    sp = resolve.resolve(load_stack(write_stack(body, name="ok.yaml")), HostFacts(hardware=None)).services[0]
    assert sp.engine == "vllm" and sp.topology.kind == "vllm-ray" and sp.memory.rope_scaling.factor == 2.0


def test_vllm_multinode_names_its_kv_pool_and_keeps_the_a100_batch():
    """A100 80GB nodes keep vLLM's 2048 batched tokens (arg_utils excludes the A100 from the >= 70 GiB tier of
    8192), so the per-rank overhead is (1.79 + 1.79 + 0.5) GiB + 2048 x 5.95 x 18432 + 128256 x 4 x 1.42; the
    prefix-cache note names the pool it lives in, --gpu-memory-utilization."""
    a100 = HardwareSpec(gpus=(GPUSpec(vendor="nvidia", name="A100-SXM4-80GB", memory_gib=80, bandwidth_gbs=2039,
                                      count=2, tier="datacenter"),),
                        memory_gib=512, memory_bandwidth_gbs=200, cpu=CPUSpec(cores=32))
    p = memory.plan_vllm_multinode(M8, WorkloadSpec(concurrent_users=1, context_tokens=8192), a100, 2, 200 * GIB,
                                   "bf16", "test")
    per_rank = int((1.79 + 1.79 + 0.5) * GIB + int(2048 * 5.95 * (4096 + 14336) + 128256 * 4 * 1.42))
    assert p.fits and p.overhead_bytes == per_rank * 2 * p.pipeline_parallel
    assert "(--gpu-memory-utilization)" in p.levers[-1]
