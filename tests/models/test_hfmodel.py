"""Tests for stackgen.models.hf on hand-written model folders (no torch needed)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

from stackgen.models.hf import HFModelError, HFModelInfo, read_hf_folder, read_safetensors_header

_DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U32": 4, "U8": 1, "F8_E4M3": 1}


def write_safetensors(path: Path, tensors: Mapping[str, tuple[str, Sequence[int]]], metadata: Any = None) -> int:
    """A valid safetensors file with zero weights; returns its data size."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * _DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return offset


Shards = Mapping[str, Mapping[str, tuple[str, Sequence[int]]]]


def make_folder(root: Path, config: Mapping[str, Any], shards: Shards) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    for name, tensors in shards.items():
        write_safetensors(root / name, tensors)
    return root


def llama_tensors(hidden: int, ffn: int, layers: int, vocab: int, kv_dim: int, dtype: str = "BF16") -> dict:
    t: dict[str, tuple[str, Sequence[int]]] = {"model.embed_tokens.weight": (dtype, [vocab, hidden])}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = (dtype, [hidden, hidden])
        t[p + "self_attn.k_proj.weight"] = (dtype, [kv_dim, hidden])
        t[p + "self_attn.v_proj.weight"] = (dtype, [kv_dim, hidden])
        t[p + "self_attn.o_proj.weight"] = (dtype, [hidden, hidden])
        t[p + "mlp.up_proj.weight"] = (dtype, [ffn, hidden])
        t[p + "input_layernorm.weight"] = (dtype, [hidden])
    t["model.norm.weight"] = (dtype, [hidden])
    return t


def _params(tensors: Mapping[str, tuple[str, Sequence[int]]]) -> int:
    total = 0
    for _, shape in tensors.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "vocab_size": 1024,
    "torch_dtype": "bfloat16",
}


def test_tiny_llama(tmp_path: Path) -> None:
    tensors = llama_tensors(128, 256, 2, 1024, 64)
    folder = make_folder(tmp_path / "m", TINY_LLAMA, {"model.safetensors": tensors})
    info = read_hf_folder(folder)
    s = info.summarize()
    expected = {
        "architecture": "LlamaForCausalLM", "model_type": "llama", "layers": 2, "hidden": 128, "ffn": 256,
        "heads": 4, "kv_heads": 2, "head_dim_k": 32, "head_dim_v": 32, "context_length": 512,
        "sliding_window": None, "swa_layers": None, "experts": None, "vocab_size": 1024,
        "params": _params(tensors), "weights_bytes": 2 * _params(tensors), "dtype": "bfloat16",
        "quantization": None, "quant": "BF16",
    }
    assert {k: s[k] for k in expected} == expected
    assert info.dtype_bytes == {"BF16": 2 * _params(tensors)}
    assert info.defaults_used == ()


def test_defaults_for_missing_kv_heads_and_head_dim(tmp_path: Path) -> None:
    cfg = {k: v for k, v in TINY_LLAMA.items() if k not in ("num_key_value_heads", "head_dim", "torch_dtype")}
    cfg["dtype"] = "float16"  # transformers 5 spelling
    cfg["num_key_value_heads"] = None
    weights = {"model.safetensors": llama_tensors(128, 256, 2, 1024, 128, "F16")}
    s = read_hf_folder(make_folder(tmp_path / "m", cfg, weights)).summarize()
    assert s["kv_heads"] == 4 and s["head_dim_k"] == s["head_dim_v"] == 32
    assert s["dtype"] == "float16" and s["quant"] == "F16"


def test_dtype_from_weights_when_config_has_none(tmp_path: Path) -> None:
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "torch_dtype"}
    weights = {"model.safetensors": llama_tensors(128, 256, 2, 1024, 64, "F32")}
    info = read_hf_folder(make_folder(tmp_path / "m", cfg, weights))
    assert info.dtype == "F32" and info.summarize()["quant"] == "F32"


GEMMA3_270M_TEXT = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "max_position_embeddings": 32768,
    "sliding_window": 512,
    "vocab_size": 262144,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
    "torch_dtype": "bfloat16",
}


def test_gemma3_270m_matches_the_gguf_facts(tmp_path: Path) -> None:
    """The same model as the GGUF test file: both readers must agree on shape."""
    weights = {"model.safetensors": {"model.norm.weight": ("BF16", [640])}}
    folder = make_folder(tmp_path / "g", GEMMA3_270M_TEXT, weights)
    s = read_hf_folder(folder).summarize()
    assert (s["layers"], s["hidden"], s["ffn"], s["heads"], s["kv_heads"]) == (18, 640, 2048, 4, 1)
    assert (s["head_dim_k"], s["head_dim_v"], s["context_length"], s["vocab_size"]) == (256, 256, 32768, 262144)
    assert s["sliding_window"] == 512 and s["swa_layers"] == 15
    assert s["layer_types"] is not None and s["sliding_window_pattern"] is None


def test_legacy_pattern_key_without_layer_types(tmp_path: Path) -> None:
    cfg = {k: v for k, v in GEMMA3_270M_TEXT.items() if k != "layer_types"}
    cfg["_sliding_window_pattern"] = 3
    s = read_hf_folder(make_folder(tmp_path / "g", cfg, {})).summarize()
    assert s["sliding_window_pattern"] == 3 and s["swa_layers"] == 12


def test_gemma3_multimodal_nested_text_config(tmp_path: Path) -> None:
    """gemma-3-4b-it style: save_pretrained left the class defaults out of text_config."""
    cfg = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "sliding_window": 1024,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        },
        "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16},
        "mm_tokens_per_image": 256,
    }
    shards = {
        "model-00001-of-00002.safetensors": {"language_model.model.embed_tokens.weight": ("BF16", [262208, 8])},
        "model-00002-of-00002.safetensors": {"vision_tower.patch.weight": ("BF16", [1152, 8])},
    }
    info = read_hf_folder(make_folder(tmp_path / "g4", cfg, shards))
    s = info.summarize()
    assert s["architecture"] == "Gemma3ForConditionalGeneration"
    assert (s["layers"], s["hidden"], s["ffn"]) == (34, 2560, 10240)  # text_config wins over vision_config
    assert (s["heads"], s["kv_heads"], s["head_dim_k"]) == (8, 4, 256)  # Gemma3TextConfig defaults
    assert s["sliding_window"] == 1024 and s["sliding_window_pattern"] == 6
    assert s["swa_layers"] == 34 - 34 // 6
    assert s["context_length"] == 131072 and s["vocab_size"] == 262208
    assert {"num_attention_heads", "num_key_value_heads", "head_dim"} <= set(info.defaults_used)
    assert "hidden_size" not in info.defaults_used
    assert s["params"] == (262208 + 1152) * 8 and s["weights_bytes"] == 2 * s["params"]
    assert len(info.safetensors_files) == 2


def test_moe_config(tmp_path: Path) -> None:
    cfg = dict(TINY_LLAMA, architectures=["MixtralForCausalLM"], model_type="mixtral",
               num_local_experts=8, num_experts_per_tok=2, sliding_window=None)
    weights = {"model.safetensors": llama_tensors(128, 256, 2, 1024, 64)}
    s = read_hf_folder(make_folder(tmp_path / "moe", cfg, weights)).summarize()
    assert s["experts"] == {"total": 8, "active": 2}
    assert s["sliding_window"] is None
    qwen = dict(TINY_LLAMA, model_type="qwen2_moe", num_experts=60, num_experts_per_tok=4)
    s = read_hf_folder(make_folder(tmp_path / "qmoe", qwen, {"model.safetensors": {}})).summarize()
    assert s["experts"] == {"total": 60, "active": 4}


def test_qwen2_disabled_sliding_window(tmp_path: Path) -> None:
    cfg = dict(TINY_LLAMA, model_type="qwen2", sliding_window=32768, use_sliding_window=False, max_window_layers=28)
    s = read_hf_folder(make_folder(tmp_path / "q", cfg, {"model.safetensors": {}})).summarize()
    assert s["sliding_window"] is None and s["swa_layers"] is None
    mistral = dict(TINY_LLAMA, model_type="mistral", sliding_window=4096)
    s = read_hf_folder(make_folder(tmp_path / "mi", mistral, {"model.safetensors": {}})).summarize()
    assert s["sliding_window"] == 4096 and s["swa_layers"] == 2  # every layer slides


def test_mla_head_dims(tmp_path: Path) -> None:
    cfg = dict(TINY_LLAMA, model_type="deepseek_v3", qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
               n_routed_experts=256, num_experts_per_tok=8)
    s = read_hf_folder(make_folder(tmp_path / "ds", cfg, {"model.safetensors": {}})).summarize()
    assert (s["head_dim_k"], s["head_dim_v"]) == (192, 128)
    assert s["experts"] == {"total": 256, "active": 8}


@pytest.mark.parametrize(
    "qc, method, bits",
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}, "awq", 4),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}, "gptq", 4),
        ({"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3"}, "fp8", 8),
        ({"quant_method": "compressed-tensors", "format": "float-quantized"}, "compressed-tensors", None),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes", 4),
    ],
)
def test_quantization_config(tmp_path: Path, qc: dict, method: str, bits: int | None) -> None:
    cfg = dict(TINY_LLAMA, quantization_config=qc, torch_dtype="float16")
    info = read_hf_folder(make_folder(tmp_path / "q", cfg, {"model.safetensors": {}}))
    assert (info.quantization, info.quantization_bits) == (method, bits)
    s = info.summarize()
    assert s["quantization"] == s["quant"] == method and s["dtype"] == "float16"


def test_awq_packed_params(tmp_path: Path) -> None:
    """int32 qweight holds eight 4-bit weights; zeros and scales are not parameters."""
    cfg = dict(TINY_LLAMA, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 64})
    tensors = {
        "model.layers.0.mlp.up_proj.qweight": ("I32", [128, 256 // 8]),
        "model.layers.0.mlp.up_proj.qzeros": ("I32", [2, 256 // 8]),
        "model.layers.0.mlp.up_proj.scales": ("F16", [2, 256]),
        "model.norm.weight": ("F16", [128]),
    }
    info = read_hf_folder(make_folder(tmp_path / "awq", cfg, {"model.safetensors": tensors}))
    assert info.params == 128 * 256 + 128
    assert info.weights_bytes == 128 * 32 * 4 + 2 * 32 * 4 + 2 * 256 * 2 + 128 * 2
    assert info.dtype_bytes == {"I32": 128 * 32 * 4 + 2 * 32 * 4, "F16": 2 * 256 * 2 + 128 * 2}


def test_index_limits_files_to_its_shards(tmp_path: Path) -> None:
    """Mistral repos ship consolidated.safetensors beside the shards."""
    shard = {"model.norm.weight": ("BF16", [128])}
    folder = make_folder(tmp_path / "mi", TINY_LLAMA, {"model-00001-of-00001.safetensors": shard,
                                                        "consolidated.safetensors": shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 256}, "weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}))
    info = read_hf_folder(folder)
    assert info.weights_bytes == 256 and len(info.safetensors_files) == 1
    (folder / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(HFModelError, match="model-00001-of-00001.safetensors.*missing"):
        read_hf_folder(folder)


def test_no_weights_is_not_an_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "cfg-only", TINY_LLAMA, {})
    info = read_hf_folder(folder)
    assert info.weights_bytes == 0 and info.params == 0 and info.safetensors_files == ()


# --------------------------------------------------------------------------
# Errors


def test_missing_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(HFModelError, match=r"config\.json.*missing config\.json"):
        read_hf_folder(tmp_path / "m")
    with pytest.raises(HFModelError, match="not a directory"):
        read_hf_folder(tmp_path / "nope")


def test_bad_json_config(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{'hidden_size': 1}")
    with pytest.raises(HFModelError, match=r"config\.json.*not valid JSON"):
        read_hf_folder(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(HFModelError, match="not a JSON object"):
        read_hf_folder(folder)


def _st_error(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(HFModelError) as info:
        read_safetensors_header(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_header_too_large(tmp_path: Path) -> None:
    assert "too large" in _st_error(tmp_path, struct.pack("<Q", 100_000_001) + b"{}")


def test_truncated_and_malformed_headers(tmp_path: Path) -> None:
    assert "truncated" in _st_error(tmp_path, b"\x10\0\0")
    assert "truncated" in _st_error(tmp_path, struct.pack("<Q", 64) + b"{}")
    assert "not valid JSON" in _st_error(tmp_path, struct.pack("<Q", 4) + b"{]]]")
    assert "not valid JSON" in _st_error(tmp_path, struct.pack("<Q", 2) + b"\xff\xfe")
    assert "not a JSON object" in _st_error(tmp_path, struct.pack("<Q", 2) + b"[]")
    bad_entries = [
        [1],
        {"dtype": "F16", "shape": [2]},
        {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]},
        {"dtype": "F16", "shape": [2.0], "data_offsets": [0, 4]},
        {"dtype": 5, "shape": [], "data_offsets": [0, 0]},
    ]
    for entry in bad_entries:
        raw = json.dumps({"w": entry}).encode()
        assert "malformed" in _st_error(tmp_path, struct.pack("<Q", len(raw)) + raw + b"\0" * 8)


def test_every_cut_point_of_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    size = write_safetensors(path, {"a": ("F32", [4, 4]), "b": ("BF16", [3])})
    full = path.stat().st_size
    read_safetensors_header(path)
    for cut in range(full - 1, -1, -1):
        os.truncate(path, cut)
        with pytest.raises(HFModelError):
            read_safetensors_header(path)
    assert size == 70


def test_truncated_shard_names_file_and_tensor(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", TINY_LLAMA, {"model.safetensors": {"w": ("F32", [1000])}})
    st = folder / "model.safetensors"
    os.truncate(st, st.stat().st_size - 10)
    with pytest.raises(HFModelError, match=r"model\.safetensors: truncated.*'w'"):
        read_hf_folder(folder)


def test_info_is_frozen(tmp_path: Path) -> None:
    info = read_hf_folder(make_folder(tmp_path / "m", TINY_LLAMA, {}))
    assert isinstance(info, HFModelInfo)
    with pytest.raises(AttributeError):
        info.params = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.config["x"] = 1  # type: ignore[index]


# --------------------------------------------------------------------------
# Real folders that .ci/provision.sh builds (skipped where it has not run)


def _provisioned(var: str) -> Path:
    value = os.environ.get(var)
    if not value or not Path(value).is_dir():
        pytest.skip(f"${var} does not point at a folder (.ci/provision.sh sets it)")
    return Path(value)


def test_provisioned_tiny_llama() -> None:
    """.ci/build_tiny_llama.py: LlamaConfig(128, 256, 2 layers, 4/2 heads, head_dim 32), float32, untied."""
    s = read_hf_folder(_provisioned("STACKGEN_TINY_LLAMA")).summarize()
    assert (s["layers"], s["hidden"], s["ffn"], s["heads"], s["kv_heads"]) == (2, 128, 256, 4, 2)
    assert (s["head_dim_k"], s["context_length"], s["vocab_size"]) == (32, 512, 1024)
    per_layer = 2 * 128 * 128 + 2 * 64 * 128 + 3 * 256 * 128 + 2 * 128
    assert s["params"] == 2 * 1024 * 128 + 2 * per_layer + 128
    assert s["weights_bytes"] == 4 * s["params"] and s["quant"] == "F32"


def test_provisioned_gemma_hf_agrees_with_gguf() -> None:
    """The same Gemma 3 270M converted to safetensors must plan like the GGUF."""
    from stackgen.models.gguf import read_gguf_header, summarize

    hf = read_hf_folder(_provisioned("STACKGEN_GEMMA_HF")).summarize()
    gguf_path = os.environ.get("STACKGEN_GGUF")
    if not gguf_path or not Path(gguf_path).is_file():
        pytest.skip("$STACKGEN_GGUF is not set")
    gg = summarize(read_gguf_header(gguf_path))
    for key in ("layers", "hidden", "ffn", "heads", "kv_heads", "head_dim_k", "head_dim_v",
                "sliding_window", "swa_layers", "vocab_size"):
        assert hf[key] == gg[key], key
    assert abs(hf["params"] - gg["params"]) / gg["params"] < 0.01


# --------------------------------------------------------------------------
# What the planner gets from a folder (stackgen.models.facts.resolve_model)


def _facts(folder: Path, quant: str | None = None):
    from stackgen.models.facts import resolve_model

    return resolve_model(f"./{folder.name}", quant, folder.parent, {})


DSV2_LITE = {  # deepseek-ai/DeepSeek-V2-Lite config.json, the attention part
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
    "intermediate_size": 10944, "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
    "kv_lora_rank": 512, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 64, "num_experts_per_tok": 6, "max_position_embeddings": 163840, "vocab_size": 102400,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("model_type", ["deepseek_v2", "deepseek_v3", "kimi_k2"])
def test_mla_caches_one_latent_per_token_and_layer(tmp_path: Path, model_type: str) -> None:
    """vLLM, SGLang and mlx_lm cache kv_lora_rank + qk_rope_head_dim = 576 values per token per layer for an MLA
    model, not 16 heads x (192 + 128): 18.12 GB for 8 x 8192 tokens of DeepSeek-V2-Lite was 2.04 GB."""
    from stackgen.plan.memory import vllm_kv_bytes_per_request

    cfg = dict(DSV2_LITE, model_type=model_type)
    folder = make_folder(tmp_path / "dsv2", cfg, {"model.safetensors": {"model.norm.weight": ("BF16", [2048])}})
    s = read_hf_folder(folder).summarize()
    assert s["kv_heads"] == 1 and s["head_dim_k"] + s["head_dim_v"] == 512 + 64
    facts = _facts(folder)
    assert facts.kv_bytes_per_token_per_layer(2) == (512 + 64) * 2
    per_request = vllm_kv_bytes_per_request(facts, 8192, "auto")
    assert per_request == 27 * 8192 * (512 + 64) * 2
    assert vllm_kv_bytes_per_request(facts, 8192, "auto", tp=4) == per_request  # the latent is not split by TP


def test_mla_fields_without_kv_lora_rank_stay_per_head(tmp_path: Path) -> None:
    """vLLM runs MLA only for its DeepSeek-family model types with a kv_lora_rank; others keep K and V per head."""
    cfg = {k: v for k, v in DSV2_LITE.items() if k != "kv_lora_rank"}
    s = read_hf_folder(make_folder(tmp_path / "a", cfg, {})).summarize()
    assert (s["kv_heads"], s["head_dim_k"], s["head_dim_v"]) == (16, 192, 128)
    other = dict(DSV2_LITE, model_type="minicpm3")
    s = read_hf_folder(make_folder(tmp_path / "b", other, {})).summarize()
    assert (s["kv_heads"], s["head_dim_k"], s["head_dim_v"]) == (16, 192, 128)


def _linear(name: str, out: int, inp: int, dtype: str) -> dict:
    return {f"{name}.weight": (dtype, [out, inp])}


@pytest.mark.parametrize("qc, tensors, what", [
    # llm-compressor W4A16: eight 4-bit weights per int32 element of weight_packed
    ({"quant_method": "compressed-tensors", "format": "pack-quantized"},
     {"model.layers.0.mlp.up_proj.weight_packed": ("I32", [256, 128 // 8]),
      "model.layers.0.mlp.up_proj.weight_scale": ("BF16", [256, 1])}, "compressed-tensors"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True},
     {"model.layers.0.mlp.up_proj.weight": ("U8", [256 * 128 // 2, 1])}, "bitsandbytes"),
    ({"quant_method": "mxfp4"}, {"model.layers.0.mlp.experts.gate_up_proj_blocks": ("U8", [256, 64])}, "mxfp4"),
])
def test_a_quantization_the_planner_has_no_format_for_is_refused(tmp_path: Path, qc: dict, tensors: dict,
                                                                   what: str) -> None:
    """A local W4A16 folder of 37 GB was planned as bf16 from its element counts, 22.39 GB: now refused with the fix,
    as the remote path refuses it (one function, HFModelInfo.checkpoint_format)."""
    from stackgen.errors import ModelRefError

    folder = make_folder(tmp_path / "q", dict(TINY_LLAMA, quantization_config=qc), {"model.safetensors": tensors})
    assert read_hf_folder(folder).checkpoint_format is None
    with pytest.raises(ModelRefError, match=f"quantized with {what}, which stackgen cannot size") as info:
        _facts(folder)
    assert "AWQ or GPTQ checkpoint" in info.value.hint


def test_compressed_tensors_fp8_folder_plans_its_fp8_bytes(tmp_path: Path) -> None:
    """A compressed-tensors FP8 folder was planned as bf16 16.06 GB estimate for 8.03 GB of F8_E4M3; now fp8 at its
    own bytes, as hf:org/repo gives for the same files."""
    tensors = {**_linear("model.layers.0.mlp.up_proj", 256, 128, "F8_E4M3"),
               "model.embed_tokens.weight": ("BF16", [1024, 128])}
    qc = {"quant_method": "compressed-tensors", "format": "float-quantized"}
    folder = make_folder(tmp_path / "ct", dict(TINY_LLAMA, quantization_config=qc), {"model.safetensors": tensors})
    facts = _facts(folder)
    assert facts.quant == "fp8"
    assert facts.hf_bytes("fp8") == (256 * 128 + 2 * 1024 * 128, "file")


def test_mlx_quantized_folder_plans_its_file_bytes(tmp_path: Path) -> None:
    """mlx_lm's 4-bit folders carry {"group_size": 64, "bits": 4} and no quant_method: the MLX format, its bytes."""
    tensors = {"model.layers.0.mlp.up_proj.weight": ("U32", [256, 128 // 8]),
               "model.layers.0.mlp.up_proj.scales": ("BF16", [256, 2]),
               "model.layers.0.mlp.up_proj.biases": ("BF16", [256, 2])}
    cfg = dict(TINY_LLAMA, quantization={"group_size": 64, "bits": 4})
    folder = make_folder(tmp_path / "mlx", cfg, {"model.safetensors": tensors})
    facts = _facts(folder)
    assert facts.quant == "4bit"
    assert facts.mlx_bytes("4bit") == (256 * 16 * 4 + 2 * 256 * 2 * 2, "file")


@pytest.mark.parametrize("nest", ["llm_config", "language_config", "text_config"])
def test_the_llm_nested_under_llm_config_is_read(tmp_path: Path, nest: str) -> None:
    """InternVL nests its LLM under llm_config: `validate` ended in 'internal error' (no num_hidden_layers on top)."""
    llm = {k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "torch_dtype")}
    cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "torch_dtype": "bfloat16",
           nest: llm, "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24}}
    weights = {"model.safetensors": llama_tensors(128, 256, 2, 1024, 64)}
    facts = _facts(make_folder(tmp_path / "ivl", cfg, weights))
    assert (facts.layers, facts.hidden, facts.heads, facts.kv_heads, facts.head_dim_k) == (2, 128, 4, 2, 32)
    assert facts.architecture == "InternVLChatModel" and facts.vocab == 1024


@pytest.mark.parametrize("layers, says", [(None, "config.json has no num_hidden_layers"),
                                          ("32", "config.json's num_hidden_layers is '32', not an integer"),
                                          (32.5, "config.json's num_hidden_layers is 32.5, not an integer")])
def test_a_missing_or_non_integer_layer_count_is_refused_at_the_model_line(write_stack, cli, layers, says) -> None:
    """`validate` and `plan` said 'internal error' (int(None) in ModelFacts.from_summary); now the model's line."""
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "num_hidden_layers"}
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    stack = write_stack("version: 1\nhardware: a100-80gb\nservices:\n  chat:\n    model: ./m\n    engine: vllm\n")
    make_folder(stack.parent / "m", cfg, {"model.safetensors": llama_tensors(128, 256, 2, 1024, 64)})
    res = cli("validate", stack)
    assert res.exit_code == 1
    assert f"{stack}:5:12: services.chat.model: m: {says}" in res.output
    assert "write num_hidden_layers as a positive integer" in res.output and "internal error" not in res.output


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_float32_checkpoint_is_planned_at_the_16_bits_it_loads_in(tmp_path: Path, engine: str) -> None:
    """vLLM's --dtype auto loads float32 weights as bf16/fp16 (config/model.py _resolve_auto_dtype), SGLang's as fp16:
    a 32.12 GB fp32 Llama 8B folder was planned at 32.12 GB; now the F32 tensors at 2 bytes, the rest as stored."""
    from stackgen import engines

    tensors = llama_tensors(128, 256, 2, 1024, 64, "F32")
    tensors["model.rotary.inv_freq"] = ("BF16", [64])
    cfg = dict(TINY_LLAMA, torch_dtype="float32")
    facts = _facts(make_folder(tmp_path / "f32", cfg, {"model.safetensors": tensors}))
    f32 = 4 * (_params(tensors) - 64)
    assert facts.quant == "fp32" and facts.hf_sizes == {"fp32": f32 + 128, "bf16": f32 // 2 + 128}
    w = engines.get(engine).weights(facts)
    assert (w.format, w.bytes, w.source) == ("bf16", f32 // 2 + 128, "file")
    assert "float32 weights in 16 bits" in w.note
    # each engine's own rule (review L4: SGLang was said to load bf16, but downcasts float32 to float16)
    assert ("fp16 for every model but Gemma's" in w.note) == (engine == "sglang")
    assert ("bf16, or fp16 where the GPU has no bf16" in w.note) == (engine == "vllm")


def test_consolidated_copy_beside_shards_without_an_index_counts_once(tmp_path: Path) -> None:
    """A Mistral download without model.safetensors.index.json (consolidated.safetensors + 4 shards) planned
    32.12 GB for a 16.06 GB model: the consolidated copy counted beside the shards. A lone one still counts."""
    shard = {"model.norm.weight": ("BF16", [128])}
    folder = make_folder(tmp_path / "mi", TINY_LLAMA, {"model-00001-of-00002.safetensors": shard,
                                                        "model-00002-of-00002.safetensors": shard,
                                                        "consolidated.safetensors": {"norm.weight": ("BF16", [256])}})
    info = read_hf_folder(folder)
    assert info.weights_bytes == 2 * 256
    assert [Path(f).name for f in info.safetensors_files] == ["model-00001-of-00002.safetensors",
                                                             "model-00002-of-00002.safetensors"]
    alone = make_folder(tmp_path / "cons", TINY_LLAMA, {"consolidated.safetensors": {"norm.weight": ("BF16", [256])}})
    assert read_hf_folder(alone).weights_bytes == 512


@pytest.mark.parametrize("change, says", [
    ({"num_hidden_layers": -4}, "num_hidden_layers is -4; the number of transformer layers must be positive"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0; the number of attention heads must be positive"),
    ({"num_attention_heads": None}, "config.json has no num_attention_heads"),
    ({"hidden_size": 0}, "hidden_size is 0; the hidden size must be positive"),
    ({"num_key_value_heads": -8}, "num_key_value_heads is -8; it must be positive"),
    ({"num_key_value_heads": 64}, "num_key_value_heads is 64, which does not divide num_attention_heads (4)"),
    ({"num_key_value_heads": 3}, "num_key_value_heads is 3, which does not divide num_attention_heads (4)"),
    ({"head_dim": -32}, "head_dim is -32; it must be positive"),
    ({"vocab_size": -1}, "vocab_size is -1; it must be positive"),
])
def test_impossible_config_values_are_refused_not_planned(write_stack, cli, change, says) -> None:
    """num_hidden_layers: -4 planned 'KV cache ... (all 8: -1.07 GB)' and fit; no num_attention_heads planned one head
    of hidden width, 274.88 GB of KV for 8 users. Now refused at the model's line with what to write."""
    cfg = {k: v for k, v in dict(TINY_LLAMA, **change).items() if v is not None}
    stack = write_stack("version: 1\nhardware: a100-80gb\nservices:\n  chat:\n    model: ./m\n    engine: vllm\n")
    make_folder(stack.parent / "m", cfg, {"model.safetensors": llama_tensors(128, 256, 2, 1024, 64)})
    res = cli("validate", stack)
    assert res.exit_code == 1 and f"{stack}:5:12: services.chat.model: m: config.json" in res.output
    assert says in res.output and "(write " in res.output


def test_engines_ruled_out_by_a_field_get_no_memory_hint(write_stack, cli):
    """Review L8: a safetensors folder with `system:` (which neither vLLM nor SGLang keeps) on an A100: plan said why
    each was refused, then "Each of these fits: a fp8 file of this model (vLLM fits it ...)", though vLLM already
    fit and no quant, context or user count lifts a `system:` refusal."""
    stack = write_stack("version: 1\nname: sy\nhardware: 1x a100-80gb\nservices:\n"
                        "  a: {model: ./m, port: 19904, system: be brief}\ntargets: [script]\n")
    make_folder(stack.parent / "m", TINY_LLAMA, {"model.safetensors": llama_tensors(128, 256, 2, 1024, 64)})
    res = cli("plan", stack)
    assert res.exit_code == 1, res.output
    assert "no server-side system message" in res.output, res.output
    assert "Each of these fits" not in res.output and "fits it" not in res.output, res.output
