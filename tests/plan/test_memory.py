"""The memory planner against hand-computed sizes (full attention, GQA, sliding window) and measured ground truth."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackgen.plan.memory import (MIB, llamacpp_kv_bytes, mlx_kv_bytes, pad, vllm_kv_bytes_per_request)
from stackgen.models.facts import ModelFacts
from stackgen.spec.profiles import load_profiles

CATALOG = load_profiles().models


def mha_7b() -> ModelFacts:
    """Llama-2-7B shape: full multi-head attention (32 KV heads), 32 layers, head_dim 128."""
    return replace(CATALOG["llama-3.1-8b-instruct"], kv_heads=32, name="llama-2-7b-like")


def test_full_attention_mha_kv_matches_hand_computation():
    # 32 layers x 4096 cells x 32 heads x (128 + 128) x 2 bytes = 2 GiB, the well-known Llama-2-7B figure.
    assert llamacpp_kv_bytes(mha_7b(), 4096, 1) == 32 * 4096 * 32 * 256 * 2 == 2 * 1024**3


def test_gqa_kv_is_divided_by_the_head_ratio():
    m = CATALOG["llama-3.1-8b-instruct"]
    assert (m.kv_heads, m.head_dim_k, m.layers) == (8, 128, 32)
    # 32 layers x 8192 x 8 KV heads x 256 x 2 = 1 GiB per 8k-token sequence.
    assert llamacpp_kv_bytes(m, 8192, 1) == 1024**3
    assert vllm_kv_bytes_per_request(m, 8192, "auto") == 1024**3
    assert vllm_kv_bytes_per_request(m, 8192, "auto", tp=2) == 1024**3 // 2
    assert vllm_kv_bytes_per_request(m, 8192, "fp8") == 1024**3 // 2


def test_sliding_window_kv_matches_llama_server_breakdown():
    """Gemma 3 270M, llama-server -np 8 -c 32768 -lv 4 printed: context 216 MiB = 96 MiB full-attention KV
    (3 layers x 4096 cells x 8 seqs) + 120 MiB sliding-window KV (15 layers x 1024 cells x 8 seqs)."""
    m = CATALOG["gemma-3-270m"]
    assert (m.layers, m.swa_layers, m.sliding_window, m.kv_heads, m.head_dim_k) == (18, 15, 512, 1, 256)
    assert llamacpp_kv_bytes(m, 4096, 8) == 216 * MIB
    full_only = replace(m, swa_layers=0, sliding_window=None)
    assert llamacpp_kv_bytes(full_only, 4096, 8) == 18 * 4096 * 8 * 512 * 2


def test_kv_quantization_uses_ggml_block_sizes():
    m = CATALOG["llama-3.1-8b-instruct"]
    f16 = llamacpp_kv_bytes(m, 8192, 1, "f16")
    assert llamacpp_kv_bytes(m, 8192, 1, "q8_0") == int(f16 * (34 / 32) / 2)
    assert llamacpp_kv_bytes(m, 8192, 1, "q4_0") == int(f16 * (18 / 32) / 2)


def test_llamacpp_pads_cells_to_256():
    m = CATALOG["llama-3.1-8b-instruct"]
    assert llamacpp_kv_bytes(m, 1000, 1) == llamacpp_kv_bytes(m, 1024, 1)
    assert pad(1000) == 1024 and pad(1024) == 1024


def test_mlx_kv_grows_in_256_token_steps():
    m = CATALOG["llama-3.1-8b-instruct"]
    assert mlx_kv_bytes(m, 300, 1) == 32 * 512 * 8 * 256 * 2
    assert mlx_kv_bytes(m, 300, 3) == 3 * mlx_kv_bytes(m, 300, 1)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_facts_are_consistent(name):
    m = CATALOG[name]
    assert m.heads % m.kv_heads == 0, "GQA needs heads divisible by KV heads"
    assert 0 <= m.swa_layers <= m.layers
    assert m.active_params <= m.params
    q4 = m.gguf_bytes("Q4_K_M")[0]
    # A Q4_K_M file is 4.5-5.2 bits per parameter (embeddings and output tensors are kept larger); in sub-1B
    # models the embedding table is most of the weights and is stored at 6-8 bits.
    upper = 5.6 if m.params >= 1e9 else 8.5
    assert 4.3 <= q4 * 8 / m.params <= upper, (q4, m.params)
