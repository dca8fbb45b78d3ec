"""vLLM plans with pinned knobs: a pinned tensor-parallel size or KV dtype is the user's, so no lever claims stackgen
chose it; each refusal names what went wrong (issue 19: mutation survivors of plan_vllm).

Rules as in test_plan_vllm.py's header. Llama 3.1 8B: 32 heads, 8 KV heads; one 8192-token request's KV is 1 GiB
(bf16) or 512 MiB (fp8) at TP 1.
"""

from __future__ import annotations

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]


def machine(count: int = 1, gib: float = 80, runtime: float | None = 79.22) -> HardwareSpec:
    g = GPUSpec(vendor="nvidia", name="H100 80GB HBM3", memory_gib=gib, runtime_memory_gib=runtime,
                bandwidth_gbs=3000, count=count, tier="datacenter")
    return HardwareSpec(gpus=(g,), memory_gib=256, memory_bandwidth_gbs=200, cpu=CPUSpec(cores=16))


def plan(hw, users, weights, pins=memory.NO_PINS, budget=None):
    return memory.plan_vllm(M8, WorkloadSpec(concurrent_users=users, context_tokens=8192), hw,
                            budget or memory.initial_budget(hw), weights, "bf16", "test", pins)


def overhead(users: int, tp: int = 1) -> int:
    """Per rank on an H100 (batched 8192): (1.79 [+ 1.79 at TP > 1] + 0.5) GiB + 8192 x 5.95 x 18432 + users x
    128256 x 4 x 1.42."""
    return int((1.79 + (1.79 if tp > 1 else 0) + 0.5) * GIB + int(8192 * 5.95 * 18432 + users * 128256 * 4 * 1.42))


RESERVE = int(int(79.22 * GIB) * 0.9)


def test_pinned_tensor_parallel_and_kv_dtype_are_no_levers():
    """-tp 2 and --kv-cache-dtype fp8 pinned on 2 x H100, 16 GiB of weights, 4 users: it fits (8 GiB a rank), and
    the levers hold only the prefix-cache note: neither 'tensor parallel over 2 GPUs' nor 'KV cache in fp8'."""
    pins = memory.Pins(tensor_parallel=2, kv_cache_type="fp8",
                       said=(("tensor_parallel", "-tp 2"), ("kv_cache_type", "--kv-cache-dtype fp8")))
    p = plan(machine(2), 4, 16 * GIB, pins)
    assert p.fits and (p.tensor_parallel, p.kv_cache_type) == (2, "fp8")
    assert len(p.levers) == 1 and p.levers[0].startswith("prompt cache: vLLM")


def test_pinned_fp8_when_not_every_user_fits_is_no_lever_either():
    """--kv-cache-dtype fp8 pinned, 1 x H100, weights leaving room for 3.5 fp8 requests (512 MiB each) and 8 users:
    one request fits, not all; the levers say so, and do not claim stackgen chose fp8."""
    weights = RESERVE - overhead(8) - 7 * 256 * MIB
    pins = memory.Pins(kv_cache_type="fp8", said=(("kv_cache_type", "--kv-cache-dtype fp8"),))
    p = plan(machine(1), 8, weights, pins)
    assert p.fits and p.kv_cache_type == "fp8"
    assert p.levers[0] == "not every user fits at full context at once: vLLM will queue or preempt the rest"
    assert not any("fp8" in lever for lever in p.levers)


def test_fp8_chosen_for_one_request_that_bf16_cannot_hold_is_a_lever():
    """Weights leaving 768 MiB of KV room on one H100, 4 users: a bf16 request (1 GiB) does not fit, an fp8 one
    (512 MiB) does but not four of them: the plan is fp8, and both levers are reported."""
    weights = RESERVE - overhead(4) - 768 * MIB
    p = plan(machine(1), 4, weights)
    assert p.fits and p.kv_cache_type == "fp8" and p.tensor_parallel == 1
    assert p.levers[:2] == ("KV cache in fp8 to hold every user's context",
                            "not every user fits at full context at once: vLLM will queue or preempt the rest")


def test_refusal_reasons_name_the_cause():
    """-tp 2 pinned on one GPU: 2 ranks, 1 GPU. -tp 3 pinned on 4 GPUs: 32 heads do not divide over 3 ranks.
    Without pins, 200 GiB of weights on one H100: the weights + KV + overhead sentence, need = 200 GiB + 1 GiB KV +
    overhead(1) = 219,180,123,810 B ("219.2 GB"), against 80 GiB ("85.9 GB") of GPU memory."""
    p = plan(machine(1), 1, 16 * GIB, memory.Pins(tensor_parallel=2, said=(("tensor_parallel", "-tp 2"),)))
    assert p.fits is False and p.shortfall.startswith("needs 2 GPUs (tensor x pipeline x data parallel) and ")
    assert p.shortfall.endswith(" has 1 (pinned by overrides: -tp 2)")
    p = plan(machine(4), 1, 16 * GIB, memory.Pins(tensor_parallel=3, said=(("tensor_parallel", "-tp 3"),)))
    assert p.fits is False
    assert p.shortfall == ("32 attention heads do not divide over 3 tensor-parallel ranks "
                           "(pinned by overrides: -tp 3)")
    p = plan(machine(1), 1, 200 * GIB)
    need = 200 * GIB + GIB + overhead(1)
    assert need == 219_180_123_810
    # per GPU: weights, overhead and ONE request's KV (at the KV type that misses by the least) against the reserve
    one = memory.vllm_kv_bytes_per_request(M8, 8192, "fp8")
    assert p.fits is False and p.shortfall == (
        f"needs {memory.gb(200 * GIB + overhead(1) + one)} of GPU memory: 214.7 GB of weights (bf16), "
        f"{memory.gb(overhead(1))} runtime overhead and {memory.gb(one)} of KV cache (fp8) for one 8192-token request; "
        "--gpu-memory-utilization 0.9 of the 85.1 GB CUDA reports reserves 76.6 GB per GPU")


def test_pinned_utilization_refusal_only_when_the_reserve_exceeds_the_free_memory():
    """--gpu-memory-utilization 0.5 pinned with exactly its reserve free (int(79.22 GiB x 0.5)) but 60 GiB of weights:
    the reserve is free, so the refusal is the weights sentence, not the utilization one."""
    hw = machine(1)
    reserve = int(int(79.22 * GIB) * 0.5)
    pins = memory.Pins(gpu_memory_utilization=0.5, said=(("gpu_memory_utilization", "--gpu-memory-utilization 0.5"),))
    p = plan(hw, 1, 60 * GIB, pins, budget=memory.Budget(reserve, 200 * GIB))
    assert p.fits is False and p.gpu_bytes == reserve
    assert p.shortfall.startswith("needs 68.3 GB of GPU memory: 64.4 GB of weights (bf16), ")
    assert "--gpu-memory-utilization 0.5 of the 85.1 GB CUDA reports reserves 42.5 GB per GPU (pinned" in p.shortfall
