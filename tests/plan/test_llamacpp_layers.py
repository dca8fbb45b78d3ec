"""Issue 13: llama.cpp's per-layer bytes in a partial offload.

Layers (src/llama-model.cpp load_tensors): `i_gpu_start = n_layer + 1 - ngl`; layer il is on the GPU when
il >= i_gpu_start, and the output layer is il = n_layer, so `-ngl N` (N <= n_layer) holds the output layer and N - 1
repeating layers; the input layer (token_embd) is always on the CPU (`dev_input = { cpu_dev, ... }`). A file without
output.weight ties the output to the embedding and llama.cpp loads a copy of token_embd as the output.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from stackgen.plan import memory
from stackgen.plan.memory import GIB, MIB
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, GPUSpec, HardwareSpec, WorkloadSpec

M8 = load_profiles().models["llama-3.1-8b-instruct"]

# Llama 3.1 8B Q4_K_M, every tensor size from ggml's block sizes (ggml-common.h): token_embd is Q4_K (144 bytes per
# 256 elements), output is Q6_K (210 bytes per 256): 128256 x 4096 elements each. The file's tensor data is the
# catalog's 4,920,734,016 bytes ("4.58 GiB" in llama-bench). llama.cpp logs the embedding as
# "CPU_Mapped model buffer size = 281.81 MiB" on a full offload: 295,501,824 B / 2**20 = 281.81.
Q4K_EMBD = 128256 * 4096 // 256 * 144
Q6K_OUT = 128256 * 4096 // 256 * 210
FILE = 4_920_734_016


def test_ggml_sizes_of_the_worked_example():
    assert Q4K_EMBD == 295_501_824 and round(Q4K_EMBD / MIB, 2) == 281.81
    assert Q6K_OUT == 430_940_160
    assert M8.gguf_sizes["Q4_K_M"] == FILE


def _file_model():
    """Llama 3.1 8B as its Q4_K_M file describes itself (what summarize() reads from the tensor list)."""
    return replace(M8, quant="Q4_K_M", gguf_input_bytes=Q4K_EMBD, gguf_output_bytes=Q6K_OUT, gguf_output_tied=False)


def test_layer_split_from_the_file_worked_example():
    """Per repeating layer: (4,920,734,016 - 295,501,824 - 430,940,160) / 32 = 131,071,626 B (125.0 MiB); the old
    rule, file / 33, said 149,113,152 B (+13.8%). -ngl 20: output + 19 layers = 430,940,160 + 19 x 131,071,626.
    = 2,921,301,054 B on the GPU (the old rule: 20 x 149,113,152 = 2,982,263,040); in RAM the embedding and the other
    13 layers: 295,501,824 + 13 x 131,071,626 = 1,999,432,962 B."""
    s = memory.llamacpp_layer_split(_file_model(), FILE, "Q4_K_M")
    assert s.source == "file" and s.per_layer == pytest.approx(131_071_626.0, abs=1)
    assert s.gpu_weights(20, 32) == 2_921_301_054
    assert s.host_weights(20, 32, FILE) == 1_999_432_962
    assert s.gpu_weights(20, 32) + s.host_weights(20, 32, FILE) == FILE
    assert s.gpu_weights(1, 32) == Q6K_OUT  # -ngl 1 offloads the output layer alone
    assert s.host_weights(1, 32, FILE) == FILE - Q6K_OUT  # ... and RAM keeps the rest, embedding and all 32 layers
    assert s.gpu_weights(0, 32) == 0 and s.host_weights(0, 32, FILE) == FILE


def test_layer_split_estimate_is_within_2_percent_of_the_file():
    """Without the tensor list (a catalog model): embedding and output at the file's mean 4.90 bits per parameter,
    128256 x 4096 x 4,920,734,016 / 8.03e9 = 321,922,983 B each; a layer (file - 2 x that) / 32 = 133,652,752 B,
    1.97% over the file's 131,071,626 (the old file / 33 rule: 13.8% over)."""
    s = memory.llamacpp_layer_split(M8, FILE, "Q4_K_M")
    assert s.source == "estimate" and s.output == s.output_in_file == s.input == 321_922_983
    assert s.per_layer / 131_071_626 == pytest.approx(1.0197, abs=0.0005)
    assert (FILE / 33) / 131_071_626 == pytest.approx(1.138, abs=0.001)


def test_tied_output_is_a_gpu_copy_of_the_embedding(tmp_path):
    """Gemma 3 270M's GGUF has no output.weight: the output layer on the GPU is a copy of token_embd (Q8_0,
    178,257,920 B) plus output_norm; the file counts the embedding once, so the layers share the rest."""
    gguf = os.environ.get("STACKGEN_GGUF")
    if not gguf or not Path(gguf).is_file():
        pytest.skip("the cached Gemma 3 270M GGUF is not here (STACKGEN_GGUF)")
    from stackgen.models.gguf import read_gguf_header, summarize

    s = summarize(read_gguf_header(gguf))
    assert (s["input_bytes"], s["output_bytes"], s["output_tied"]) == (178_257_920, 178_257_920 + 2560, True)
    facts = memory.ModelFacts.from_summary("g", "gguf", gguf, s)
    split = memory.llamacpp_layer_split(facts, s["tensor_data_bytes"], s["quant"])
    assert split.per_layer == pytest.approx((246_587_904 - 178_257_920) / 18)  # 3.80 MB, not the old 13.0 MB
    # -ngl 5: the embedding copy + 4 layers on the GPU; RAM keeps the whole embedding and 14 layers.
    assert split.gpu_weights(5, 18) == int(178_260_480 + 4 * split.per_layer)
    assert split.host_weights(5, 18, s["tensor_data_bytes"]) == int(246_587_904 - 4 * split.per_layer)


def test_tied_estimate_from_the_parameter_count():
    """Gemma 3 270M's catalog shape: 268M parameters of which ~168M outside the dense layers = one 262144 x 640
    matrix, so the estimate ties the output (the file holds it once)."""
    from stackgen.models.facts import ModelFacts

    g = ModelFacts(name="g", source="catalog", architecture="gemma3", params=268_098_176, active_params=268_098_176,
                   layers=18, hidden=640, ffn=2048, heads=4, kv_heads=1, head_dim_k=256, head_dim_v=256,
                   vocab=262144, context_length=32768)
    s = memory.llamacpp_layer_split(g, 246_587_904)
    assert s.output_in_file == 0 and s.output == s.input
    assert s.per_layer == pytest.approx((246_587_904 - s.input) / 18)


def test_partial_plan_places_layers_the_llama_cpp_way():
    """A plan of the file model on a GPU too small for it: its GPU weights are the output + N - 1 layers and its KV
    on the GPU is N - 1 layers' share, exactly."""
    hw = HardwareSpec(gpus=(GPUSpec(vendor="nvidia", name="GPU", memory_gib=4, bandwidth_gbs=300, count=1,
                                    tier="consumer"),), memory_gib=32, memory_bandwidth_gbs=50, cpu=CPUSpec(cores=8))
    wl = WorkloadSpec(concurrent_users=1, context_tokens=8192)
    p = memory.plan_llamacpp(_file_model(), wl, hw, memory.initial_budget(hw), FILE, "Q4_K_M", "file")
    n = p.gpu_layers
    assert 1 < n < 32
    kv = p.kv_cache_bytes
    expected = (Q6K_OUT + int((n - 1) * 131_071_626.0)) + int(kv * (n - 1) / 32) + p.compute_bytes + 1024 * MIB
    assert p.gpu_bytes == pytest.approx(expected, abs=2)
    assert p.gpu_bytes <= 4 * GIB


def test_estimate_finds_a_tied_output_from_the_parameter_count():
    """Gemma 2 9B (catalog: 9.24e9 parameters, 42 layers, hidden 3584, ffn 14336, 16 heads and 8 KV heads of
    256 + 256, vocab 256000) ties its output to the embedding. A dense layer holds 3584 x (16 x 512 + 8 x 512)
    + 3 x 3584 x 14336 = 198,180,864 parameters; 42 of them 8,323,596,288, leaving 916,403,712 outside the layers:
    one vocab x hidden matrix (917,504,000), under the 1.5 matrices that would mean two. So the file holds the
    embedding once (output_in_file 0) and the GPU copy of the output is embedding-sized:
    int(917,504,000 x 5.76e9 / 9.24e9) = 571,950,545 B; each layer (5.76e9 - 571,950,545) / 42."""
    g = load_profiles().models["gemma-2-9b-it"]
    assert 42 * (3584 * (16 * 512 + 8 * 512) + 3 * 3584 * 14336) == 8_323_596_288
    s = memory.llamacpp_layer_split(g, 5_760_000_000, "Q4_K_M")
    assert (s.source, s.input, s.output, s.output_in_file) == ("estimate", 571_950_545, 571_950_545, 0)
    assert s.per_layer == pytest.approx((5_760_000_000 - 571_950_545) / 42)


def test_which_split_a_model_gets():
    """The file's tensor list is used when the model has one and the plan is for that file (no format named, or the
    file's own quant): Q4_K_M's embedding 295,501,824 B is the input. A catalog model (no tensor list) is estimated
    even when no format is named. A tied file (no output.weight) holds the embedding once: the output's GPU copy is
    not in the file, so the 32 layers share file - embedding: (4,920,734,016 - 295,501,824) / 32 = 144,538,506 B."""
    f = _file_model()
    assert memory.llamacpp_layer_split(f, FILE).source == "file"
    assert memory.llamacpp_layer_split(f, FILE, "Q4_K_M").input == Q4K_EMBD
    assert memory.llamacpp_layer_split(M8, FILE).source == "estimate"
    tied = memory.llamacpp_layer_split(replace(f, gguf_output_tied=True, gguf_output_bytes=Q4K_EMBD), FILE)
    assert (tied.input, tied.output, tied.output_in_file) == (Q4K_EMBD, Q4K_EMBD, 0)
    assert tied.per_layer == (FILE - Q4K_EMBD) / 32 == 144_538_506.0


@pytest.mark.parametrize("missing", ["vocab", "params"])
def test_a_model_without_vocab_or_parameter_count_splits_evenly(missing):
    """Without vocab x hidden or the parameter count there is nothing to size the embedding by: the file is spread
    over the 32 layers and the output layer alike, 4,920,734,016 / 33 = 149,113,152 B each (no input in the split)."""
    m = replace(M8, **{missing: 0})
    s = memory.llamacpp_layer_split(m, FILE, "Q4_K_M")
    assert (s.input, s.output, s.output_in_file, s.per_layer, s.source) == (
        0, 149_113_152, 149_113_152, FILE / 33, "estimate")
    assert FILE / 33 == 149_113_152.0
