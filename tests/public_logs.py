"""Predictions for the public-log corpus (shared by tests/test_public_logs.py and benchmarks/bench_public_logs.py)."""

from __future__ import annotations

from types import SimpleNamespace

from stackgen.memory import GIB, VLLM_NON_TORCH_GIB, VLLM_NON_TORCH_TP_GIB, vllm_activation_bytes


def predict_vllm_case(c: dict) -> dict:
    """vLLM's own arithmetic with stackgen's terms: KV = total x util - weights - non-torch - activation peak."""
    m = c["model"]
    model = SimpleNamespace(hidden=m["hidden"], ffn=m["ffn"], vocab=m["vocab"])
    non_torch = (VLLM_NON_TORCH_GIB[c["tier"]] + (VLLM_NON_TORCH_TP_GIB if c["tp"] > 1 else 0.0)) * GIB
    act = vllm_activation_bytes(model, c["batched_tokens"], c["max_seqs"], c["tp"])
    graphs = 0.5 * GIB if c["cudagraphs"] else 0
    kv = c["total_gib"] * GIB * c["utilization"] - c["weights_gib"] * GIB - non_torch - act - graphs
    per_token = m["layers"] * max(1, m["kv_heads"] // c["tp"]) * m["head_dim"] * 2 * 2
    verdict = "started" if kv / per_token >= c["max_model_len"] else "refused"
    return {"non_torch": non_torch, "activation": act, "kv": kv, "verdict": verdict}
