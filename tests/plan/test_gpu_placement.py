"""Services on a multi-GPU machine are placed on GPUs still free (capacity.place_gpus): each process's GPU set is in
the plan (ServicePlan.gpu_ids), per-GPU memory is consumed, and every target pins the set (CUDA_VISIBLE_DEVICES for
native starts, device_ids / CDI names for containers); a service the GPUs left cannot hold is refused with the field
and the fix. Audit a3 #1: both services started from GPU 0 (GPUs 4-7 idle, GPU 0 over-committed)."""

from __future__ import annotations

import pytest
import yaml

from stackgen.errors import PlanError
from stackgen.render.artifact import RenderContext, render_plan
from tools.stacks import plan_for

TWO_FLEETS = """
version: 1
name: two
hardware: 8x rtx-4090
workload: {concurrent_users: 32, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}
services:
  a: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: 4}
  b: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: 4}
"""

TWO_VLLM = """
version: 1
name: vv
hardware: 8x h100-80gb
workload: {concurrent_users: 64, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}
services:
  a: {model: llama-3.1-8b-instruct, engine: vllm, quant: bf16}
  b: {model: qwen2.5-7b-instruct, engine: vllm, quant: bf16}
"""

THREE_FLEETS_ON_8 = TWO_FLEETS + """\
  c: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M, replicas: 4}
"""

# vLLM takes 0.90 of GPU 0; then one llama.cpp server over both GPUs splits its layers by GPU size (-ts 24,24):
# half of its 28 GB on GPU 0, where 2.5 GB are left
VLLM_THEN_SPLIT = """
version: 1
name: mix
hardware: 2x rtx-4090
workload: {concurrent_users: 8, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}
services:
  a: {model: llama-3.1-8b-instruct, engine: vllm, quant: bf16}
  b: {model: qwen2.5-32b-instruct, engine: llama.cpp, quant: Q4_K_M}
"""


def render(plan, target: str) -> dict:
    return {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), [target])}


def env_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def per_gpu_use(plan) -> dict[int, int]:
    """GPU index -> bytes the plan's processes hold on it (each set's share of its process's GPU bytes)."""
    use: dict[int, int] = {}
    for sp in plan.services:
        for ids in sp.gpu_sets():
            for i in ids:
                use[i] = use.get(i, 0) + sp.memory.gpu_bytes // len(ids)
    return use


def test_two_replicated_services_get_disjoint_gpus_and_no_gpu_is_over_committed(tmp_path):
    plan = plan_for(tmp_path, TWO_FLEETS)
    a, b = plan.services
    assert a.gpu_sets() == [(0,), (1,), (2,), (3,)]
    assert b.gpu_sets() == [(4,), (5,), (6,), (7,)]  # was (0,) .. (3,) again: 29.4 GB on each 24 GiB GPU
    size = int(plan.hardware.gpus[0].memory_gib * 2**30)  # one GPU's memory
    assert all(used <= size for used in per_gpu_use(plan).values())
    arts = render(plan, "script")
    assert [env_of(arts[f"b/b-{i}.env"])["CUDA_VISIBLE_DEVICES"] for i in range(1, 5)] == ["4", "5", "6", "7"]
    compose = yaml.safe_load(render(plan, "compose")["compose/compose.yaml"])
    ids = [compose["services"][f"b-{i}"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
           for i in range(1, 5)]
    assert ids == [["4"], ["5"], ["6"], ["7"]]
    systemd = render(plan, "systemd")
    assert env_of(systemd["systemd/b@1.env"])["CUDA_VISIBLE_DEVICES"] == "4"
    assert "CUDA_VISIBLE_DEVICES" not in systemd["systemd/stackgen-two-b@.service"]  # each instance's file sets it


def test_single_gpu_vllm_services_each_get_their_own_gpu_in_every_target(tmp_path):
    plan = plan_for(tmp_path, TWO_VLLM)
    a, b = plan.services
    assert (a.gpu_ids, b.gpu_ids) == ((0,), (1,))  # both ran on GPU 0 at 0.90 + 0.87 of it
    assert a.env["CUDA_VISIBLE_DEVICES"] == "0" and b.env["CUDA_VISIBLE_DEVICES"] == "1"
    script = render(plan, "script")
    assert env_of(script["b/b.env"])["CUDA_VISIBLE_DEVICES"] == "1"
    assert 'Environment="CUDA_VISIBLE_DEVICES=1"' in render(plan, "systemd")["systemd/stackgen-vv-b.service"]
    compose = yaml.safe_load(render(plan, "compose")["compose/compose.yaml"])
    dev = compose["services"]["b"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["device_ids"] == ["1"] and "count" not in dev
    assert "AddDevice=nvidia.com/gpu=1" in render(plan, "quadlet")["quadlet/stackgen-vv-b.container"]
    assert plan.to_json()["services"][1]["gpu_ids"] == [1]


def test_a_third_fleet_shares_the_gpus_the_first_left_room_on(tmp_path):
    plan = plan_for(tmp_path, THREE_FLEETS_ON_8)
    size = int(plan.hardware.gpus[0].memory_gib * 2**30)  # one GPU's memory
    assert plan.services[2].gpu_sets() == [(0,), (1,), (2,), (3,)]
    assert all(used <= size for used in per_gpu_use(plan).values())


def test_a_service_the_gpus_left_cannot_hold_is_refused_with_its_field_and_the_fix(tmp_path):
    with pytest.raises(PlanError) as exc:
        plan_for(tmp_path, VLLM_THEN_SPLIT)
    text = str(exc.value)
    assert text.startswith(f"{tmp_path / 'stack.yaml'}:8:6: services.b: needs 2 GPUs with 14.1 GB free on each")
    assert "GPU 0 2.5 GB, GPU 1 25.8 GB free" in text and "(list it first under services:" in text


def test_a_pipeline_parallel_server_is_placed_on_every_rank_gpu(tmp_path):
    # --tensor-parallel-size 2 --pipeline-parallel-size 2 --data-parallel-size 2 on one node: 8 ranks, 8 GPUs; placed
    # as 4 (Engine.gpu_count leaves out the stages), each asked 2 GPUs' memory, it was refused
    plan = plan_for(tmp_path, """
version: 1
hardware: 8x h100-80gb
workload: team-api
services:
  chat:
    model: llama-3.1-8b-instruct
    engine: vllm
    overrides: {data-parallel-size: 2, pipeline-parallel-size: 2, -tp: 2}
""")
    sp = plan.services[0]
    assert sp.gpu_ids == ()  # every GPU of the machine: not pinned


# An RTX 3060 (bus 01) and an RTX 4090: vLLM plans every rank on the smallest GPU (0.90 of the 3060's 11.6 GiB), and
# placement pins each service to the GPU with the most memory free: both to the 4090, where 0.90 reserved 21.2 GiB
# apiece (placed as 10.4 GiB apiece; the second could not start).
MIXED_VLLM = """
version: 1
name: mixed
hardware: {gpus: [{vendor: nvidia, name: GeForce RTX 3060, memory_gib: 12, bandwidth_gbs: 360, tier: consumer},
                  {vendor: nvidia, name: GeForce RTX 4090, memory_gib: 24, bandwidth_gbs: 1008, tier: consumer}],
           memory_gib: 64, memory_bandwidth_gbs: 51.2, cpu: {cores: 16, threads: 32, arch: x86_64}}
workload: {concurrent_users: 2, context_tokens: 8192}
services:
  a: {model: qwen2.5-0.5b-instruct, engine: vllm}
  b: {model: qwen2.5-0.5b-instruct, engine: vllm}
"""


def _util(sp) -> float:
    return float(sp.command[sp.command.index("--gpu-memory-utilization") + 1])


def test_vllm_pinned_to_a_larger_gpu_reserves_what_was_placed_there(tmp_path):
    from stackgen.plan.memory import gpu_runtime_bytes
    plan = plan_for(tmp_path, MIXED_VLLM)
    g3060, g4090 = plan.hardware.gpus
    reserved: dict[int, int] = {}
    for sp in plan.services:
        (gpu,) = sp.gpu_ids
        device = (g3060, g4090)[gpu]
        util = _util(sp)
        assert util == sp.memory.gpu_memory_utilization
        real = int(gpu_runtime_bytes(device) * util)  # what vLLM reserves: the share of the total CUDA reports
        assert real == sp.memory.gpu_bytes  # the plan counts and places what the engine will take
        sized = int(gpu_runtime_bytes(g3060) * 0.90)  # the reserve it was sized for: all of it, and 1% more at most
        assert sized <= real <= sized + gpu_runtime_bytes(device) // 100
        assert sp.memory.unpinned_utilization == 0.90
        reserved[gpu] = reserved.get(gpu, 0) + real
    for gpu, used in reserved.items():
        assert used <= gpu_runtime_bytes((g3060, g4090)[gpu]), (gpu, used)


def test_a_utilization_the_user_pinned_is_kept_and_counted_on_the_larger_gpu(tmp_path):
    from stackgen.plan.memory import gpu_runtime_bytes
    stack = MIXED_VLLM.replace("  a: {model: qwen2.5-0.5b-instruct, engine: vllm}",
                               "  a: {model: qwen2.5-0.5b-instruct, engine: vllm, overrides: {gpu-memory-utilization: 0.3}}")
    a, b = plan_for(tmp_path, stack).services
    g4090 = plan_for(tmp_path, stack).hardware.gpus[1]
    assert a.gpu_ids == (1,) and _util(a) == 0.3
    assert a.memory.gpu_bytes == int(gpu_runtime_bytes(g4090) * 0.3)  # what vLLM takes on the 4090, not the 3060
    assert b.gpu_ids == (1,) and a.memory.gpu_bytes + b.memory.gpu_bytes <= gpu_runtime_bytes(g4090)


def test_a_pinned_utilization_goes_to_the_gpu_that_holds_it_at_that_gpus_size(tmp_path):
    """0.45 of the 4090 first (10.6 GiB), then 0.85 pinned: 20 GiB of the 4090 (13 GiB left) or 9.8 GiB of the
    3060: the 3060, though the 4090 has more free."""
    from stackgen.plan.memory import gpu_runtime_bytes
    stack = MIXED_VLLM.replace(
        "  b: {model: qwen2.5-0.5b-instruct, engine: vllm}",
        "  b: {model: qwen2.5-0.5b-instruct, engine: vllm, overrides: {gpu-memory-utilization: 0.85}}").replace(
        "  a: {model: qwen2.5-0.5b-instruct, engine: vllm}",
        "  a: {model: qwen2.5-0.5b-instruct, engine: vllm, overrides: {gpu-memory-utilization: 0.45}}")
    plan = plan_for(tmp_path, stack)
    a, b = plan.services
    g3060, g4090 = plan.hardware.gpus
    assert (a.gpu_ids, b.gpu_ids) == ((1,), (0,))
    assert a.memory.gpu_bytes == int(gpu_runtime_bytes(g4090) * 0.45)
    assert b.memory.gpu_bytes == int(gpu_runtime_bytes(g3060) * 0.85)


def test_one_vllm_over_mixed_gpus_is_placed_at_its_share_of_each(tmp_path):
    """Tensor parallel over the 3060 and the 4090 at one share (0.90): the 4090 gives that share of its own 24 GiB
    (21.2 GiB, not the 3060's 10.4), so a second vLLM service of 10.4 GiB fits on neither (it was pinned to the
    4090, where 2.4 GiB were left)."""
    stack = MIXED_VLLM.replace("  a: {model: qwen2.5-0.5b-instruct, engine: vllm}",
                               "  a: {model: qwen2.5-0.5b-instruct, engine: vllm, overrides: {tensor-parallel-size: 2}}")
    with pytest.raises(PlanError) as info:
        plan_for(tmp_path, stack)
    assert "services.b" in str(info.value) and "GPU 1 2." in str(info.value)


TIGHT = MIXED_VLLM.replace("workload: {concurrent_users: 2, context_tokens: 8192}",
                           "workload: {concurrent_users: 1, context_tokens: 26800}").replace(
    "  a: {model: qwen2.5-0.5b-instruct, engine: vllm}\n  b: {model: qwen2.5-0.5b-instruct, engine: vllm}\n",
    "  a: {model: llama-3.1-8b-instruct, engine: vllm, quant: fp8}\n")


def test_the_scaled_share_still_holds_the_request_the_context_was_sized_for(tmp_path):
    """Review H1: the context was sized on the 3060's 0.90 (a pool just over one 26,800-token request); the share
    scaled to the 4090 was rounded down (0.44), a pool 45 MB short of that request, which vLLM refuses at start."""
    from stackgen.plan.capacity import kv_pool_bytes
    (sp,) = plan_for(tmp_path, TIGHT).services
    assert sp.gpu_ids == (1,) and sp.memory.context_per_request == 26800
    assert _util(sp) == 0.45
    assert kv_pool_bytes(sp.engine, sp.memory) >= sp.memory.kv_cache_bytes


def test_kubernetes_renders_the_share_planned_for_any_gpu(tmp_path):
    """Review H2: a pod is not pinned to a GPU (the device plugin picks one): 0.44 of a 3060 holds less than the
    weights; the pod gets the share planned on the smallest GPU, the pinned targets the scaled one."""
    plan = plan_for(tmp_path, TIGHT)
    (sp,) = plan.services
    arts = render(plan, "kubernetes")
    text = next(t for p, t in arts.items() if p.endswith("a.yaml"))
    assert "- --gpu-memory-utilization\n" in text and "- '0.90'\n" in text and "'0.45'" not in text
    units = render(plan, "systemd")
    unit = next(t for p, t in units.items() if p.endswith(".service"))
    assert '"--gpu-memory-utilization" "0.45"' in unit and 'CUDA_VISIBLE_DEVICES=1' in unit
