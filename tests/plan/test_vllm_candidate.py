"""vLLM's per-candidate fit (memory._vllm_candidate) at its edges: whole bytes per rank, pipeline stages splitting
a request's KV, data-parallel copies against the budget, and the host RAM of every worker (issue 19: mutation
survivors).

Rules (vllm/v1/worker/gpu_worker.py determine_available_memory; see test_plan_vllm.py's header): each rank reserves
utilization x the device total; its KV room is that less its share of the weights (weights // (tp x pp), whole
bytes) and the non-KV peak; a request's KV is split over the pipeline stages (whole bytes per stage); an engine has
tp x pp ranks and --data-parallel-size runs dp engines, each of which must get its reserve; RAM is 2.5 GiB for the
API server + 2 GiB per rank of every engine.
Model: Llama 3.1 8B, f16 KV of one 8192-token request = 32 layers x 8192 x 8 heads x 256 x 2 B = 1 GiB (TP 1).
"""

from __future__ import annotations

from stackgen.plan import memory
from stackgen.spec.profiles import load_profiles

GIB, MIB = 1024**3, 1024**2
M8 = load_profiles().models["llama-3.1-8b-instruct"]


def cand(tp=1, pp=1, dp=1, util=0.9, per_gpu=int(79.22 * GIB), weights=16 * GIB, budget=None):
    budget = budget or memory.Budget(1000 * GIB, 1000 * GIB)
    return memory._vllm_candidate(M8, 8192, 1, tp, "auto", util, per_gpu, weights, budget, pp, dp, 2048,
                                  "datacenter")


def overhead(tp: int) -> int:
    """Non-KV peak per rank, datacenter tier: 1.79 GiB non-torch (+ 1.79 with TP > 1) + 0.5 GiB graphs
    + 2048 x 5.95 x (4096 + 14336) + 1 seq x 128256 x 4 x 1.42."""
    non_torch = 1.79 + (1.79 if tp > 1 else 0.0)
    return int((non_torch + 0.5) * GIB + int(2048 * 5.95 * (4096 + 14336) + 128256 * 4 * 1.42))


def test_pipeline_stages_split_a_requests_kv_in_whole_bytes():
    """pp 3: each stage holds 1 GiB // 3 = 357,913,941 B of the request's KV; the engine's 3 stages 1,073,741,823 B
    (an integer: a byte count)."""
    p = cand(pp=3)
    assert p.kv_cache_bytes == 357_913_941 * 3 == 1_073_741_823 and isinstance(p.kv_cache_bytes, int)
    assert p.pipeline_parallel == 3 and p.gpu_bytes == int(int(79.22 * GIB) * 0.9) * 3


def test_data_parallel_engines_each_need_their_reserve_and_ram():
    """dp 2, tp 1: two engines of one rank each reserve int(79.22 GiB x 0.9) = int(85,061,827,297 x 0.9) = 76,555,644,567 B; the plan fits when
    the GPU budget holds both (153,111,289,134 B), not one byte less. RAM: 2.5 + 2 x 2 ranks = 6.5 GiB."""
    reserve = int(int(79.22 * GIB) * 0.9)
    assert reserve == 76_555_644_567
    at = cand(dp=2, budget=memory.Budget(2 * reserve, 100 * GIB))
    under = cand(dp=2, budget=memory.Budget(2 * reserve - 1, 100 * GIB))
    assert at.fits is True and under.fits is False
    assert at.gpu_bytes == 2 * reserve and at.host_bytes == int(6.5 * GIB)
    assert at.weights_bytes == 32 * GIB and at.kv_cache_bytes == 1 * GIB and at.data_parallel == 2  # 1 user's KV


def test_weights_per_rank_are_whole_bytes_at_the_kv_limit():
    """tp 2 with an odd weight size (16 GiB + 1 B): a rank holds (16 GiB + 1) // 2 = 8 GiB; a request's KV per rank
    is 512 MiB (4 of the 8 KV heads). A device total of exactly 8 GiB + overhead(tp 2) + 512 MiB at utilization 1.0
    leaves exactly 512 MiB of KV room: it fits, and one byte less does not."""
    per_gpu = 8 * GIB + overhead(2) + 512 * MIB
    assert cand(tp=2, util=1.0, per_gpu=per_gpu, weights=16 * GIB + 1).fits is True
    assert cand(tp=2, util=1.0, per_gpu=per_gpu - 1, weights=16 * GIB + 1).fits is False
